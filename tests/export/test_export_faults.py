"""Faults during export: kill -9 mid-export and mid-calibration, and a full disk. The previous bundle stays intact,
no temp litter survives the next run, and a full disk is one clear line with no partial bundle."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cmcd_edge.runtime import Predictor
from cmcd_edge.runtime.manifest import sha256_file
from tests.conftest import CLI
from tests.helpers import INTERRUPTED, assert_one_line_error


def _digest(folder: Path) -> dict:
    return {p.name: sha256_file(p) for p in sorted(folder.iterdir())}


def _kill_when(args, ready, timeout=120.0, sig=signal.SIGKILL) -> subprocess.CompletedProcess | None:
    """Start ``args``; send ``sig`` (kill -9) to its process group as soon as ``ready()``; the finished process if the
    signal came while it ran, else None."""
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline:
        if ready():
            os.killpg(proc.pid, sig)
            _, err = proc.communicate(timeout=timeout)
            return subprocess.CompletedProcess(args, proc.returncode, "", err)
        time.sleep(0.002)
    proc.communicate()
    return None


def _temps(parent: Path, name: str) -> list[Path]:
    return list(parent.glob(f".{name}.*.tmp"))


@pytest.mark.parametrize("stage, marker", [("export", "model.fp32.onnx"), ("calibration", ".model.pre.onnx")])
def test_kill9_keeps_the_previous_bundle_and_the_next_run_clears_litter(toy_run, toy_bundle, tmp_path, stage, marker):
    bundle = tmp_path / "bundle"
    shutil.copytree(toy_bundle, bundle)
    before = _digest(bundle)
    args = [*CLI, "export", str(toy_run), "--out", str(bundle), "--force", "--max-accuracy-drop", "5"]

    def ready() -> bool:  # the new bundle is being written (export) / the quantizer has its input (calibration on)
        return any((t / marker).exists() for t in _temps(tmp_path, "bundle"))

    assert _kill_when(args, ready) is not None, f"export finished before the {stage} stage could be killed"
    assert _digest(bundle) == before, "the previous bundle changed"
    assert _temps(tmp_path, "bundle"), "expected the killed run's temp folder (else the kill came too late)"
    res = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert not _temps(tmp_path, "bundle") and not list(tmp_path.glob(".*.tmp"))
    assert Predictor.load(bundle, variant="int8").variant.name == "int8"  # whole: its INT8 file loads and checks out


def test_ctrl_c_during_calibration_keeps_the_previous_bundle_and_says_so(toy_run, toy_bundle, tmp_path):
    """Ctrl-C used to end in click's bare "Aborted!" (exit 1), leaving the user to wonder what state --out was in."""
    bundle = tmp_path / "bundle"
    shutil.copytree(toy_bundle, bundle)
    before = _digest(bundle)
    args = [*CLI, "export", str(toy_run), "--out", str(bundle), "--force", "--max-accuracy-drop", "5"]
    res = _kill_when(args, lambda: any((t / ".model.pre.onnx").exists() for t in _temps(tmp_path, "bundle")),
                     sig=signal.SIGINT)
    assert res is not None, "export finished before it could be interrupted"
    assert_one_line_error(res, INTERRUPTED, f"interrupted: {bundle} is as it was before this export")
    assert _digest(bundle) == before
    assert not _temps(tmp_path, "bundle")  # unlike kill -9, an interrupt cleans up its temp folder at once


def _limit_file_size(limit: int):
    def preexec() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return preexec


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    if sys.platform != "linux" or os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@pytest.mark.parametrize("how", ["tmpfs", "rlimit"])
def test_full_disk_during_export_is_one_line_and_leaves_nothing(toy_run, tmp_path, how):
    args = [*CLI, "export", str(toy_run), "--max-accuracy-drop", "5"]
    if how == "tmpfs":
        disk = tmp_path / "disk"
        if not _mount_tmpfs(disk, "24k"):
            pytest.skip("cannot mount a tmpfs here (needs root on Linux); the rlimit case covers the same path")
        try:
            res = subprocess.run([*args, "--out", str(disk / "bundle")], capture_output=True, text=True, timeout=300)
            left = list(disk.iterdir())
        finally:
            subprocess.run(["umount", str(disk)], capture_output=True)
    else:
        disk = tmp_path / "disk"
        disk.mkdir()
        res = subprocess.run([*args, "--out", str(disk / "bundle")], capture_output=True, text=True, timeout=300,
                             preexec_fn=_limit_file_size(12_000))
        left = list(disk.iterdir())
    assert_one_line_error(res, 1)
    last = res.stderr.strip().splitlines()[-1]
    assert "space" in last or "File too large" in last, last
    assert left == [], f"partial output left behind: {left}"
