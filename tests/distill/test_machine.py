"""Where a run trained: the record, and the warning when runs of one folder were made on other machines."""

from __future__ import annotations

from cmcd_edge.distill.machine import other_machines


def test_other_machines_names_each_machine_but_this_one():
    here = {"cpu": "AMD EPYC", "cpu_capability": "AVX512", "gpu": None}
    avx2 = {**here, "cpu_capability": "AVX2"}  # the same model name, other kernels: what sessions 15 and 17 met
    gpu = {"cpu": "Intel Xeon", "cpu_capability": "AVX512", "gpu": "NVIDIA H200"}
    assert other_machines([], here, "x") is None and other_machines([here, here], here, "x") is None
    assert other_machines([avx2, here, gpu, avx2], here, "runs made").startswith(
        "runs made on AMD EPYC (AVX2) and Intel Xeon (AVX512), NVIDIA H200; this is AMD EPYC (AVX512): training "
        "repeats bit for bit on one CPU (or GPU) type only")
