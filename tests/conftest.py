from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import settings

# CI explores the same examples every run (a failure reproduces); HYPOTHESIS_PROFILE=explore draws new ones
settings.register_profile("ci", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# The Ctrl-C tests send SIGINT to a CLI child. A suite started in the background by a shell without job control
# (`make test &` in a script) has SIGINT ignored, which every child would inherit: restore Python's handler here, as
# a handler (unlike "ignored") resets to the default across exec
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_configure(config):
    """The suite runs on the CPU wherever it runs, as CI does (it has no GPU): on a machine with one, ``--device auto``
    would train there, and the tests that compare a run's bits, its ``train_device`` or its speed with the CPU's
    would fail for that alone (test_distill_cli checks ``train_device == "cpu"``; a partial run on an H200 in session 27
    had 5 failures whose names were lost). So GPUs are hidden from torch and from every child process, except under
    ``pytest -m tensorrt``, whose tests need one; the GPU paths are checked by ``benchmarks/gpu_check.sh``."""
    markexpr = config.getoption("markexpr") or ""
    if "tensorrt" not in markexpr.replace("not tensorrt", ""):
        os.environ["CUDA_VISIBLE_DEVICES"] = ""


@pytest.fixture(scope="session", autouse=True)
def _children_tmpdir(tmp_path_factory):
    """Child processes (torchrun makes a torchelastic_* folder per launch and never removes it) write their temp files
    under pytest's own base folder, which pytest prunes, not into the machine's /tmp (358 such folders had piled up
    there on the build machine)."""
    old = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(tmp_path_factory.mktemp("children-tmp"))
    yield
    if old is None:
        os.environ.pop("TMPDIR")
    else:
        os.environ["TMPDIR"] = old


ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "cmcd_edge"]


def run_cli(*args: str, cwd: str | os.PathLike | None = None, env: dict | None = None, timeout: float = 600):
    """Run the CLI in a subprocess (as a user would) and return the CompletedProcess."""
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env={**os.environ, **(env or {})})


@dataclass
class CliResult:
    """What ``invoke_cli`` saw, named as subprocess.CompletedProcess names it."""

    returncode: int
    stdout: str
    stderr: str


def invoke_cli(*args: str, env: dict | None = None) -> CliResult:
    """Run the CLI in this process (click's CliRunner): the user's argv, stdout, stderr and exit code, without the 2 s
    of interpreter and torch start-up a subprocess costs. Its logging handler is the command's own, as in a fresh
    process; an exception that escaped the CLI's error handling is appended to stderr as the traceback a user would
    see. Behaviour only a real process has (kill -9, Ctrl-C, torchrun, a fresh venv, the entry point) is tested with
    ``run_cli`` or Popen."""
    from click.testing import CliRunner

    from cmcd_edge.cli import main

    argv = [str(a) for a in args]
    root, pkg = logging.getLogger(), logging.getLogger("cmcd_edge")
    handlers, level, pkg_level, threads = root.handlers[:], root.level, pkg.level, torch_threads()
    root.handlers.clear()  # main's logging.basicConfig then installs its handler on this run's stderr
    old_argv, sys.argv = sys.argv, ["cmcd-edge", *argv]  # --debug is read from argv
    try:
        res = CliRunner(env=env).invoke(main, argv, prog_name="cmcd-edge")
    finally:
        sys.argv = old_argv
        for h in root.handlers:
            h.close()
        root.handlers[:] = handlers
        root.setLevel(level)
        pkg.setLevel(pkg_level)
        torch_threads(threads)
    stderr = res.stderr
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        stderr += "Traceback (most recent call last):\n" + "".join(traceback.format_exception(res.exception))
    return CliResult(res.exit_code, res.stdout, stderr)


def torch_threads(n: int | None = None) -> int | None:
    """torch's intra-op thread count (bench --threads sets it), read, or set back; None without torch."""
    try:
        import torch
    except ImportError:
        return None
    if n is not None:
        torch.set_num_threads(n)
    return torch.get_num_threads()


@pytest.fixture
def cli():
    """The CLI in this process; ``run_cli`` where a test needs a real process (cwd, a signal, the entry point)."""
    return invoke_cli


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
