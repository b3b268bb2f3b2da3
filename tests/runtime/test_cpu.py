"""runtime/cpu.py: the CPU's int8 class, and the warning when a bundle's INT8 variant was quantized for a CPU whose
kernels this one lacks (full-range weights saturate in VPMADDUBSW on x86 without VNNI)."""

from __future__ import annotations

import logging

import pytest

from cmcd_edge.runtime import Predictor, cpu
from tests.helpers import edited_bundle

FULL = {"name": "cpu", "isa": "x86-vnni", "activation": "u8", "weight": "s8", "reduce_range": False}
SEVEN_BIT = {**FULL, "isa": "x86-avx2", "reduce_range": True}


@pytest.mark.parametrize("machine,flags,isa", [
    ("x86_64", {"fpu", "avx2", "avx512f", "avx512_vnni"}, "x86-vnni"),
    ("x86_64", {"avx2", "avx_vnni"}, "x86-vnni"),  # Alder Lake and later: VNNI on AVX2 registers
    ("x86_64", {"avx2", "amx_int8"}, "x86-vnni"),
    ("x86_64", {"avx2", "avx512f", "fma"}, "x86-avx2"),  # Skylake-SP: AVX-512 but no VNNI
    ("x86_64", {"sse4_2"}, "x86"),
    ("aarch64", {"asimd", "asimddp"}, "arm64"),
])
def test_cpu_isa_from_flags(machine, flags, isa):
    assert cpu.cpu_isa(machine, flags) == isa


def test_read_cpuinfo_takes_the_first_cpus_model_and_flags(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512_vnni\n\n"
                    "processor\t: 1\nmodel name\t: other\nflags\t\t: fpu\n")
    assert cpu.read_cpuinfo(info) == ("AMD EPYC", {"fpu", "avx2", "avx512_vnni"})
    assert cpu.read_cpuinfo(tmp_path / "missing") == (None, set())


@pytest.mark.parametrize("preset,isa,risky", [
    (FULL, "x86-avx2", True), (FULL, "x86", True),
    (FULL, "x86-vnni", False), (FULL, "arm64", False),
    (SEVEN_BIT, "x86-avx2", False),
    # s8 activations warned too, conservatively: AVX2's only int8 multiply is the same 16-bit pair sum
    ({**FULL, "isa": "arm64", "activation": "s8"}, "x86-avx2", True),
    (None, "x86-avx2", False),  # a bundle that does not say how it was quantized: nothing to go on
])
def test_int8_risk_only_for_full_range_weights_on_x86_without_vnni(preset, isa, risky):
    risk = cpu.int8_risk(preset, isa)
    assert (risk is not None) == risky
    if risky:
        assert "--target cpu-avx2" in risk and isa in risk


@pytest.mark.parametrize("preset,warned", [(FULL, True), (SEVEN_BIT, False)])
def test_loading_a_vnni_bundle_on_a_cpu_without_vnni_warns_with_the_fix(toy_bundle, tmp_path, monkeypatch, caplog,
                                                                          preset, warned):
    def with_preset(manifest: dict) -> None:
        for v in manifest["variants"]:
            if v["precision"] == "int8":
                v["preset"] = preset

    bundle = edited_bundle(toy_bundle, tmp_path / "b", with_preset)
    monkeypatch.setattr(cpu, "cpu_isa", lambda: "x86-avx2")
    with caplog.at_level(logging.WARNING, logger="cmcd_edge.runtime.predictor"):  # int8 asked for: on an AVX2 host
        p = Predictor.load(bundle, variant="int8", backend="cpu", threads=1)  # auto may take the faster fp32
    assert p.variant.precision == "int8"  # still loaded: the warning says how to check and fix it
    said = [r.getMessage() for r in caplog.records if "no VNNI" in r.getMessage()]
    assert len(said) == warned and (not said or said[0].startswith(f"variant int8 of {bundle}: it was quantized"))
    fp32 = Predictor.load(bundle, variant="fp32", backend="cpu", threads=1)
    assert fp32.variant.precision == "fp32" and len([r for r in caplog.records if "no VNNI" in r.getMessage()]) == warned
