"""cmcd-edge distill under torchrun on CPU (2 gloo ranks, real processes). A kill -9 of a torchrun run and its
--resume are with the other kill tests in test_distill_cli.py; the ranks' collectives in-process in test_ddp.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import synthetic_paired

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return synthetic_paired(tmp_path_factory.mktemp("data") / "toy").root


@pytest.fixture(scope="module")
def fast_cfg(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "fast.json"
    path.write_text(json.dumps({"teacher_epochs": 3, "finetune_epochs": 2}))
    return str(path)


def _errors(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("Error:")]


def test_torchrun_two_processes_on_cpu(toy, tmp_path, fast_cfg):
    out = tmp_path / "ddp"
    args = [*TORCHRUN, "-m", "cmcd_edge", "distill", "--data", str(toy), "--source", "src", "--target", "tgt",
            "--epochs", "3", "--device", "cpu", "--config", fast_cfg, "--teacher-cache", str(tmp_path / "cache"),
            "--out", str(out)]
    res = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((out / "metrics.json").read_text())["test_accuracy"] > 0.25
    # rank 0 alone reports (each line came once per rank)
    assert res.stdout.count("test top-1") == 1 and res.stderr.count("distill: epoch") == 1, res.stdout + res.stderr
    # another method of the same teacher: every rank takes it from the cache that rank 0 wrote
    again = subprocess.run([*args[:-1], str(tmp_path / "cmd"), "--method", "cmd"], capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "teacher: epoch" not in again.stderr and again.stderr.count("(no teacher training)") == 1, again.stderr
    assert (tmp_path / "cmd" / "teacher.safetensors").read_bytes() == (out / "teacher.safetensors").read_bytes()
    # rank 0 refuses the folder; rank 1 ends quietly (was: "Error: internal error: RuntimeError: ... Connection closed
    # by peer" below rank 0's line)
    res = subprocess.run(args, capture_output=True, text=True, timeout=300)
    refused = f"Error: --out {out} already holds a finished run: pass --force to replace it"
    assert res.returncode != 0 and _errors(res.stderr) == [refused], res.stderr[-3000:]


def test_torchrun_a_rank_that_fails_later_leaves_one_real_error_line(toy, tmp_path):
    """A user's teacher factory that fails on rank 0 only (weights missing on that node): rank 0 prints its error; rank
    1, waiting in the next collective, printed "Error: internal error: RuntimeError: [...gloo/transport/tcp/pair.cc:553]
    Connection closed by peer [127.0.0.1]:56199. ... GLHF!" as if it were a second fault. It now says that another
    rank ended first. (--monitor-interval 5: torchrun would otherwise often SIGTERM rank 1 before it gets that far.)"""
    (tmp_path / "rank_teacher.py").write_text(
        "import os\nimport torch\n\n\ndef factory():\n"
        "    if os.environ['RANK'] == '0':\n        raise OSError('weights file missing on this node')\n"
        "    return torch.nn.Linear(16, 8)\n")
    args = [*TORCHRUN[:-2], "--monitor-interval", "5", *TORCHRUN[-2:], "-m", "cmcd_edge", "distill", "--data",
            str(toy), "--source", "src", "--target", "tgt", "--teacher", "rank_teacher:factory", "--device", "cpu",
            "--method", "cmd", "--out", str(tmp_path / "run")]  # cmd: rank 1's teacher, without logits, serves it
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    res = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode != 0
    errors = _errors(res.stderr)
    assert errors[0] == ("Error: --teacher rank_teacher:factory: cannot build the model (OSError: weights file missing "
                         "on this node)"), res.stderr[-3000:]
    assert len(errors) == 2 and errors[1].startswith("Error: rank 1: another process of this torchrun ended first"), \
        res.stderr[-3000:]
    assert "internal error" not in res.stderr and "GLHF" not in res.stderr
