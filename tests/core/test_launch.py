"""launch: the torchrun environment read and checked in one place, so a half-set or garbled one is a one-line error
before any folder is made, never torch.distributed's ValueError or a traceback from the error handler."""

from __future__ import annotations

import pytest

from cmcd_edge.errors import UserError
from cmcd_edge.launch import Launch, launch, launched_as
from tests.conftest import invoke_cli

TORCHRUN = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


def _env(monkeypatch, **values):
    for key in TORCHRUN:
        monkeypatch.delenv(key, raising=False)
    for key, value in values.items():
        monkeypatch.setenv(key, value)


def test_launch_is_one_process_without_torchrun(monkeypatch):
    _env(monkeypatch)
    assert launch() == Launch(rank=0, local_rank=0, world=1)
    _env(monkeypatch, WORLD_SIZE="1", LOCAL_RANK="0")
    assert not launch().distributed


def test_launch_reads_what_torchrun_sets(monkeypatch):
    _env(monkeypatch, **TORCHRUN)
    assert launch() == Launch(rank=1, local_rank=1, world=2)


@pytest.mark.parametrize("env, needle", [
    ({"WORLD_SIZE": "2"}, "WORLD_SIZE=2 but RANK, MASTER_ADDR, MASTER_PORT not set: launch the command with "
                          "`torchrun --nproc_per_node 2 -m cmcd_edge ...`"),
    ({**TORCHRUN, "MASTER_PORT": ""}, "WORLD_SIZE=2 but MASTER_PORT not set"),
    ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two': not a whole number"),
    ({"WORLD_SIZE": "0"}, "WORLD_SIZE=0: must be >= 1"),
    ({**TORCHRUN, "RANK": "2"}, "RANK=2: must be in 0..1 for WORLD_SIZE=2"),
    ({**TORCHRUN, "LOCAL_RANK": "gpu1"}, "LOCAL_RANK='gpu1': not a whole number"),
])
def test_launch_names_the_variable_that_is_wrong(monkeypatch, env, needle):
    _env(monkeypatch, **env)
    with pytest.raises(UserError, match="^" + needle.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        launch()
    assert launched_as() is None  # what the error handler and the log level use: they never raise


@pytest.mark.parametrize("world, needle", [
    ("2", "Error: WORLD_SIZE=2 but RANK, MASTER_ADDR, MASTER_PORT not set"),
    ("x", "Error: WORLD_SIZE='x': not a whole number"),
])
def test_distill_with_a_stray_world_size_is_one_line_and_makes_no_folder(monkeypatch, tmp_path, world, needle):
    """A WORLD_SIZE left over in a shell or job script: before, torch.distributed's "internal error: ValueError: ...
    env:// rendezvous: environment variable RANK expected, but not set" (2), or a traceback from the handler (x)."""
    _env(monkeypatch, WORLD_SIZE=world)
    res = invoke_cli("distill", "--data", "builtin:mfeat", "--source", "fac", "--target", "zer", "--epochs", "1",
                     "--out", tmp_path / "run")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [res.stderr.strip()] and res.stderr.startswith(needle)
    assert not (tmp_path / "run").exists()
