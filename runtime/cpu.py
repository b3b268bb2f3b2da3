"""The CPU's int8 instruction set, from /proc/cpuinfo (stdlib only): which INT8 preset an export makes, and whether
a bundle's INT8 variant suits the CPU it is loaded on.

x86 CPUs without VNNI (AVX2, AVX-512 before Cascade Lake, AMD before Zen 4) multiply u8 x s8 pairs with VPMADDUBSW,
whose 16-bit sums saturate on full-range 8-bit weights; VNNI's VPDPBUSD accumulates in 32 bits. So a variant quantized
with full-range weights on a VNNI CPU can lose accuracy on an older one, and 7-bit weights (reduce_range) avoid it
(onnxruntime's quantization docs; OpenVINO, "Saturation (overflow) issue workaround")."""

from __future__ import annotations

import functools
import platform
from pathlib import Path

VNNI_FLAGS = frozenset({"amx_int8", "avx512_vnni", "avx_vnni"})
ISAS = ("x86-vnni", "x86-avx2", "x86", "arm64")


@functools.lru_cache(maxsize=4)
def read_cpuinfo(path: Path = Path("/proc/cpuinfo")) -> tuple[str | None, frozenset[str]]:
    """(model name, flags) of the first CPU listed; (None, empty) where the file is missing (macOS, Windows). Read
    once per process: a Predictor load asks twice (the INT8 check and the auto pick), bench once more."""
    model, flags = None, frozenset()
    try:
        text = path.read_text()
    except OSError:
        return model, flags
    for line in text.splitlines():
        if line.startswith("model name") and model is None:
            model = line.split(":", 1)[1].strip()
        if line.startswith(("flags", "Features")) and not flags:
            flags = frozenset(line.split(":", 1)[1].split())
    return model, flags


def cpu_isa(machine: str | None = None, flags: frozenset[str] | set[str] | None = None) -> str:
    """This CPU's int8 class, one of ISAS (``machine`` and ``flags`` default to this machine's)."""
    machine = (machine or platform.machine()).lower()
    if machine in ("aarch64", "arm64"):
        return "arm64"
    flags = read_cpuinfo()[1] if flags is None else flags
    if flags & VNNI_FLAGS:
        return "x86-vnni"
    if "avx2" in flags:
        return "x86-avx2"
    return "x86"


def int8_risk(preset: dict | None, isa: str) -> str | None:
    """Why an INT8 variant quantized with ``preset`` (the manifest's record) may lose accuracy on a CPU of ``isa``;
    None when it suits, or when the bundle does not say how it was quantized."""
    if not isinstance(preset, dict) or preset.get("reduce_range") is not False:
        return None
    if isa not in ("x86-avx2", "x86"):
        return None
    return (f"it was quantized with full-range 8-bit weights (preset {preset.get('isa')}), and this CPU ({isa}) has "
            "no VNNI: onnxruntime's x86 int8 kernels can saturate here and lose accuracy. Export for this CPU with "
            "`cmcd-edge export RUN --target cpu-avx2` (7-bit weights, any x86), and measure with `cmcd-edge bench "
            "BUNDLE --data DATA`")
