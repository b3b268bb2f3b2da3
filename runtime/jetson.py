"""Jetson facts for bench: board detection, power mode, clocks, and tegrastats sampling (RAM, GR3D, power rails).

Parsers take the documented tegrastats line format, e.g.
``RAM 2448/7772MB (lfb 1x4MB) SWAP 0/3886MB CPU [12%@1190,off] GR3D_FREQ 37% VDD_IN 4037mW/4037mW ...``
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

_RAM = re.compile(r"RAM (\d+)/(\d+)MB")
_GR3D = re.compile(r"GR3D_FREQ (\d+)%")
_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]+) (\d+)mW/(\d+)mW")
_RAIL_OLD = re.compile(r"\b(POM_5V_IN|VDD_IN|VDD_[A-Z0-9_]+) (\d+)/(\d+)")


def parse_tegrastats(line: str) -> dict:
    """One tegrastats line -> {"ram_used_mb", "ram_total_mb", "gr3d_pct", "rails_mw": {name: instant mW}}."""
    out: dict = {"rails_mw": {}}
    if m := _RAM.search(line):
        out["ram_used_mb"], out["ram_total_mb"] = int(m.group(1)), int(m.group(2))
    if m := _GR3D.search(line):
        out["gr3d_pct"] = int(m.group(1))
    rails = _RAIL.findall(line) or _RAIL_OLD.findall(line)
    for name, now, _avg in rails:
        out["rails_mw"][name] = int(now)
    return out


def total_power_mw(sample: dict) -> float | None:
    """Board input power: VDD_IN (Orin) or POM_5V_IN (Xavier/Nano); else the sum of the rails."""
    rails = sample.get("rails_mw", {})
    for key in ("VDD_IN", "POM_5V_IN"):
        if key in rails:
            return float(rails[key])
    return float(sum(rails.values())) if rails else None


def detect() -> dict:
    """{"jetson": bool, "model", "l4t", "nvpmodel", "clocks_locked"}; never raises."""
    info: dict = {"jetson": False}
    release = Path("/etc/nv_tegra_release")
    model = Path("/proc/device-tree/model")
    if release.exists():
        info.update(jetson=True, l4t=release.read_text(errors="replace").splitlines()[0][:120])
    if model.exists():
        text = model.read_text(errors="replace").strip("\x00\n ")
        if "jetson" in text.lower() or "nvidia" in text.lower():
            info.update(jetson=True, model=text)
    if info["jetson"]:
        info["nvpmodel"] = _cmd(["nvpmodel", "-q"])
        clocks = _cmd(["jetson_clocks", "--show"])
        info["jetson_clocks"] = clocks
        info["clocks_locked"] = clocks_locked(clocks) if clocks else None
    return info


def clocks_locked(show: str) -> bool:
    """jetson_clocks --show prints 'MinFreq=X MaxFreq=Y CurrentFreq=Z' per CPU/GPU; locked when min == max."""
    pairs = re.findall(r"MinFreq=(\d+) MaxFreq=(\d+)", show)
    return bool(pairs) and all(a == b for a, b in pairs)


def _cmd(args: list[str]) -> str | None:
    if shutil.which(args[0]) is None:
        return None
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=10).stdout.strip()[:2000]
    except (OSError, subprocess.SubprocessError):
        return None


class TegrastatsSampler:
    """Runs ``tegrastats --interval MS`` in the background during a benchmark; ``stop()`` returns parsed samples."""

    def __init__(self, interval_ms: int = 100) -> None:
        self.interval_ms, self.samples, self._proc, self._thread = interval_ms, [], None, None

    def start(self) -> TegrastatsSampler:
        if shutil.which("tegrastats") is None:
            return self
        self._proc = subprocess.Popen(["tegrastats", "--interval", str(self.interval_ms)], stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL, text=True)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        for line in self._proc.stdout:
            self.samples.append((time.perf_counter(), parse_tegrastats(line)))

    def stop(self) -> list[dict]:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=5)
        return [s for _, s in self.samples]
