"""The device side as a user installs it: a fresh venv, `pip install .` with no extras (numpy, onnxruntime, click),
then `cmcd-edge predict` and `cmcd-edge bench` on a bundle. Needs the package index (as `make test` does)."""

from __future__ import annotations

import shutil
import subprocess
import venv

import numpy as np

from cmcd_edge.runtime.manifest import load_manifest
from tests.conftest import ROOT

SOURCES = ("pyproject.toml", "README.md", "cmcd_edge", "distill", "calib", "export", "runtime")


def test_fresh_venv_without_extras_runs_predict_and_bench(toy_bundle, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:  # what a wheel is built from; keeps build litter out of the checkout
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(ROOT / name, src / name)
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py, cli = env_dir / "bin" / "python", env_dir / "bin" / "cmcd-edge"
    res = subprocess.run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check", str(src)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    for heavy in ("torch", "onnx", "safetensors"):
        probe = subprocess.run([py, "-c", f"import {heavy}"], capture_output=True, text=True)
        assert probe.returncode != 0, f"{heavy} got installed without an extra"
    x = tmp_path / "x.npy"
    np.save(x, np.random.default_rng(0).normal(size=(3, *load_manifest(toy_bundle).sample_shape)).astype(np.float32))
    res = subprocess.run([cli, "predict", str(toy_bundle), str(x)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert len(res.stdout.strip().splitlines()) == 3
    res = subprocess.run([cli, "bench", str(toy_bundle), "--batch", "1", "--duration", "0.2", "--warmup", "0",
                          "--no-accuracy"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "jetson: no" in res.stdout and "int8" in res.stdout
    res = subprocess.run([cli, "data", "info", "builtin:mfeat"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "rows 2000  views 6" in res.stdout, res.stderr[-2000:]  # the data is in the wheel
    res = subprocess.run([cli, "distill", "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0  # help works without torch; running it says which extra to install
