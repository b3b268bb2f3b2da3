"""Where a run trained: the record, and the warning when runs of one folder were made on other machines."""

from __future__ import annotations

from cmcd_edge.distill.machine import machine_name, other_machines


def test_other_machines_names_each_machine_but_this_one():
    here = {"cpu": "AMD EPYC", "cpu_capability": "AVX512", "threads": 2, "gpu": None}
    avx2 = {**here, "cpu_capability": "AVX2"}  # the same model name, other kernels: what sessions 15 and 17 met
    one = {**here, "threads": 1}  # compare --jobs 2 on this machine
    gpu = {"cpu": "Intel Xeon", "cpu_capability": "AVX512", "threads": 8, "gpu": "NVIDIA H200"}
    assert other_machines([], here, "x") is None and other_machines([here, here], here, "x") is None
    assert other_machines([avx2, here, gpu, avx2, one], here, "runs made").startswith(
        "runs made on AMD EPYC (AVX2, 2 threads) and AMD EPYC (AVX512, 1 thread) and Intel Xeon (AVX512, 8 threads), "
        "NVIDIA H200; this is AMD EPYC (AVX512, 2 threads): training repeats bit for bit on one CPU (or GPU) type and "
        "thread count only")


def test_machine_name_of_a_record_missing_a_field():
    assert machine_name({"cpu": "Edited"}) == "Edited (?, ? threads)"
