"""`cmcd-edge demo` (run whole by `make demo`): what it tells a user who stops it."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import click

from tests.conftest import CLI
from tests.helpers import INTERRUPTED, assert_one_line_error


def test_ctrl_c_during_demo_says_it_starts_over(tmp_path):
    """The demo runs select-teacher, distill, compare... in one process, and each registers its own Ctrl-C advice:
    the demo's line used to be the stage's ("rerun the same command to continue"), but a rerun demo replaces --out."""
    out = tmp_path / "demo-out"
    proc = subprocess.Popen([*CLI, "demo", "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    for line in proc.stdout:
        if line.startswith("== 2. select-teacher"):
            break
    time.sleep(1.0)  # inside select-teacher, whose own advice (with --out) is "rerun the same command to continue"
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    res = subprocess.CompletedProcess(proc.args, proc.returncode, "", err)
    assert_one_line_error(res, INTERRUPTED, "interrupted: `cmcd-edge demo` starts over when rerun", str(out))


def test_demo_passes_each_stage_command_only_its_own_parameters(tmp_path, monkeypatch):
    """The demo calls each stage's command with keyword arguments (ctx.invoke), which click does not check against
    the command's parameters: renaming bench's BUNDLE to BUNDLE... left `bundle=` in the demo, a TypeError that only
    the last of its stages, minutes in, would hit. Each call is recorded here instead of run, and checked."""
    from click.testing import CliRunner

    from cmcd_edge import cli_demo
    from cmcd_edge.cli import main

    calls: dict[str, set[str]] = {}
    real = cli_demo.command

    def recording(ctx, name):
        cmd = real(ctx, name)
        return click.Command(name, params=cmd.params, callback=lambda **kw: calls.setdefault(name, set(kw)))

    monkeypatch.setattr(cli_demo, "command", recording)
    res = CliRunner().invoke(main, ["demo", "--out", str(tmp_path / "d")])
    assert res.exit_code == 0, res.output
    assert set(calls) == {"select-teacher", "distill", "compare", "export", "bench"}
    for name, passed in calls.items():
        expected = {p.name for p in main.get_command(None, name).params if p.expose_value}
        assert passed == expected, (name, passed - expected)
