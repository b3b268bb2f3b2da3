"""cli_base: the comma-separated flag values every command parses the same way; the CLI run in-process as the suite
runs it, against a real process."""

from __future__ import annotations

import pytest

from cmcd_edge.cli_base import csv_ints, csv_items, one_line
from cmcd_edge.errors import UserError
from tests.conftest import invoke_cli, run_cli


def test_csv_items_strips_and_drops_empty_items():
    assert csv_items(" dog, cat ,,bird", "--classes") == ["dog", "cat", "bird"]


def test_csv_ints_reads_positive_integers():
    assert csv_ints("1, 8,32", "--batch") == [1, 8, 32]


@pytest.mark.parametrize("parse,value,needle", [
    (csv_items, "cmcd,kd,cmcd", "--x: 'cmcd' appears twice"),
    (csv_ints, "1,4,1", "--x: 1 appears twice"),
    (csv_ints, "1, 01", "--x: 1 appears twice"),
    (csv_ints, "1,a", "--x '1,a': expected comma-separated integers"),
    (csv_ints, "0", "--x '0': expected positive integers"),
    (csv_ints, ",", "--x ',': expected positive integers"),
])
def test_csv_flags_refuse_repeats_and_bad_numbers(parse, value, needle):
    with pytest.raises(UserError) as err:
        parse(value, "--x")
    assert str(err.value) == needle


@pytest.mark.parametrize("argv", [
    ["distill", "--data", "builtin:mfeat", "--source", "fac", "--target", "fac", "--out", "{tmp}/run"],  # UserError
    ["export", "{tmp}/no-run", "--out", "{tmp}/b"],  # a missing path
    ["bench", "{tmp}", "--batch", "0"],  # a flag's own check
    ["--debug", "distill", "--data", "builtin:mfeat", "--source", "fac", "--target", "nope", "--out", "{tmp}/run"],
])
def test_cli_in_process_matches_a_real_process(argv, tmp_path):
    """The suite runs most commands in-process (invoke_cli); here each way must give the same exit code and stderr,
    traceback included, so the saving costs nothing in what the tests see."""
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    real, here = run_cli(*argv), invoke_cli(*argv)
    assert real.returncode == here.returncode != 0
    assert here.stderr.splitlines()[-1] == real.stderr.splitlines()[-1]
    assert ("Traceback" in here.stderr) == ("Traceback" in real.stderr) == ("--debug" in argv)


@pytest.mark.parametrize("world, rank, expected", [
    ("2", "1", "rank 1: another process of this torchrun ended first, so this one stopped too (Connection closed by "
               "peer); that process's error says why"),
    (None, None, None),  # outside torchrun the same message is an internal error, shown as one
    ("1", "0", None),
])
def test_peer_gone_names_the_other_rank_only_under_torchrun(monkeypatch, world, rank, expected):
    from cmcd_edge.cli_base import _peer_gone

    addr = None if world is None else "127.0.0.1"
    for key, value in (("WORLD_SIZE", world), ("RANK", rank), ("MASTER_ADDR", addr), ("MASTER_PORT", addr and "29500")):
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, value)
    gloo = RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:5")
    assert _peer_gone(gloo) == expected
    assert _peer_gone(RuntimeError("shape mismatch")) is None


@pytest.mark.parametrize("text,line", [
    ("--data d: no such view", "--data d: no such view"),
    ("--teacher t.pt: fails: The following operation failed.\nTraceback of TorchScript:\n  File x\n\n"
     "RuntimeError: mat1 and mat2 shapes cannot be multiplied\n",
     "--teacher t.pt: fails: The following operation failed. ... RuntimeError: mat1 and mat2 shapes cannot be "
     "multiplied"),
    ("  padded  \n", "padded"),
])
def test_one_line_keeps_the_first_line_and_the_cause(text, line):
    assert one_line(text) == line


def test_gpu_out_of_memory_is_one_line_of_advice(monkeypatch, tmp_path):
    """Was: 'internal error: OutOfMemoryError: CUDA out of memory. Tried to allocate ...' (rerun with --debug)."""
    import torch

    from cmcd_edge.distill import pipeline

    def short_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 7.6 GiB total)\nmore")

    monkeypatch.setattr(pipeline, "run_distill", short_of_memory)
    res = invoke_cli("distill", "--data", "builtin:mfeat", "--source", "fac", "--target", "zer", "--out",
                     str(tmp_path / "run"))
    assert res.returncode == 1, res.stderr
    assert res.stderr.strip() == ("Error: out of GPU memory (CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; "
                                  "7.6 GiB total)): lower --batch-size (the built-in teacher's: teacher_batch_size in "
                                  "--config), or run with --device cpu")
