from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import settings

# CI explores the same examples every run (a failure reproduces); HYPOTHESIS_PROFILE=explore draws new ones
settings.register_profile("ci", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "cmcd_edge"]


def run_cli(*args: str, cwd: str | os.PathLike | None = None, env: dict | None = None, timeout: float = 600):
    """Run the CLI in a subprocess (as a user would) and return the CompletedProcess."""
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env={**os.environ, **(env or {})})


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture(scope="session")
def toy_run(tmp_path_factory):
    """A small finished distill run on synthetic paired data (vector target)."""
    from cmcd_edge.distill.config import DistillConfig
    from cmcd_edge.distill.pipeline import run_distill
    from tests.helpers import synthetic_paired

    root = tmp_path_factory.mktemp("toyrun")
    ds = synthetic_paired(root / "data", n=400)
    cfg = DistillConfig(data=str(ds.root), source="src", target="tgt", epochs=6, teacher_epochs=6, finetune_epochs=3,
                        batch_size=64)
    run_distill(cfg, root / "run")
    return root / "run"


@pytest.fixture(scope="session")
def toy_bundle(toy_run, tmp_path_factory):
    from cmcd_edge.export.bundle import ExportConfig, run_export

    out = tmp_path_factory.mktemp("toybundle") / "bundle"
    run_export(ExportConfig(run=str(toy_run), out=str(out), max_accuracy_drop=5.0))
    return out


@pytest.fixture(scope="session")
def trt_bundle(toy_run, tmp_path_factory):
    """The toy run exported for TensorRT: symmetric INT8 QDQ and an FP16 variant."""
    from cmcd_edge.export.bundle import ExportConfig, run_export

    out = tmp_path_factory.mktemp("trtbundle") / "bundle"
    run_export(ExportConfig(run=str(toy_run), out=str(out), target="tensorrt", fp16=True, max_accuracy_drop=5.0))
    return out
