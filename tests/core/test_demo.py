"""`cmcd-edge demo` (run whole by `make demo`): what it tells a user who stops it."""

from __future__ import annotations

import os
import signal
import subprocess
import time

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
