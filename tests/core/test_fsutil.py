"""fsutil: outputs that cannot be written are one line naming the path (was: an internal error with a temp name),
an output another process is writing is refused (was: both wrote into it), and JSON is written strict."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import subprocess
import sys

import pytest

from cmcd_edge.errors import EnvironmentFailure, UserError
from cmcd_edge.fsutil import atomic_dir, exclusive, make_dir, write_json
from tests.helpers import assert_one_line_error, synthetic_paired


def test_make_dir_names_the_file_in_the_way(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match=r"^.*/f: is a file where a folder is needed$"):
        make_dir(tmp_path / "f")
    with pytest.raises(UserError, match=r"/f: is a file where a folder is needed \(on the way to .*/f/a/b\)$"):
        make_dir(tmp_path / "f" / "a" / "b")
    assert make_dir(tmp_path / "a" / "b").is_dir()


def test_write_json_to_a_folder_or_under_a_file_is_refused(tmp_path):
    with pytest.raises(UserError, match="is a folder; name a file to write"):
        write_json(tmp_path, {})
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match="/f: is a file where a folder is needed"):
        write_json(tmp_path / "f" / "out.json", {})
    assert (tmp_path / "f").read_text() == "x"


def test_atomic_dir_over_a_file_is_refused_even_with_force(tmp_path):
    (tmp_path / "f").write_text("x")
    for force in (False, True):
        with pytest.raises(UserError, match="/f: is a file; name a folder to write"):
            with atomic_dir(tmp_path / "f", force=force):
                pass
    assert (tmp_path / "f").read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["f"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc takes no new files on Linux only")
def test_a_folder_that_takes_no_files_is_an_environment_failure_naming_the_output(tmp_path):
    with pytest.raises(EnvironmentFailure, match=r"^cannot write /proc/bundle: "):
        with atomic_dir("/proc/bundle"):
            pass
    with pytest.raises(EnvironmentFailure, match=r"^cannot write /proc/p.json: "):
        write_json("/proc/p.json", {})


def test_exclusive_refuses_a_second_holder_and_names_its_pid(tmp_path):
    out = tmp_path / "run"
    with exclusive(out):
        assert (tmp_path / ".run.lock").read_text() == f"{os.getpid()}\n"
        with pytest.raises(UserError, match=rf"/run: another cmcd-edge process \(pid {os.getpid()}\) is writing it; "):
            with exclusive(out):
                pass
        with pytest.raises(UserError, match="another cmcd-edge process"):  # export and write_dataset take it too
            with atomic_dir(out):
                pass
        (tmp_path / "link").symlink_to(tmp_path / "run")
        for spelling in (tmp_path / "link", tmp_path / "x" / ".." / "run"):
            with pytest.raises(UserError, match="another cmcd-edge process"):
                with exclusive(spelling):
                    pass
        (tmp_path / "link").unlink()
    assert not list(tmp_path.iterdir())  # the lock file goes with its holder; no folder was made
    with exclusive(out):
        pass


def test_exclusive_is_free_again_when_its_holder_is_killed(tmp_path):
    hold = "import sys, time; from cmcd_edge.fsutil import exclusive\nwith exclusive(sys.argv[1]):\n" \
           "    print('held', flush=True); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", hold, str(tmp_path / "b")], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "held\n"
        with pytest.raises(UserError, match=rf"\(pid {proc.pid}\)"):
            with exclusive(tmp_path / "b"):
                pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (tmp_path / ".b.lock").exists()  # kill -9 leaves the file, not the lock
    with exclusive(tmp_path / "b"):
        pass
    assert not (tmp_path / ".b.lock").exists()


@pytest.mark.parametrize("command", ["distill", "distill --resume", "compare", "export", "select-teacher"])
def test_a_command_refuses_an_out_another_process_is_writing(cli, toy_run, tmp_path, command):
    data = synthetic_paired(tmp_path / "toy", n=200).root
    flags = {"distill": ["distill", "--data", data, "--source", "src", "--target", "tgt"],
             "compare": ["compare", "--data", data, "--source", "src", "--target", "tgt", "--methods", "kd"],
             "export": ["export", toy_run],
             "select-teacher": ["select-teacher", "--data", data, "--target", "tgt"]}[command.split()[0]]
    out = tmp_path / ("out.json" if command == "select-teacher" else "out")
    with exclusive(out):  # as a run in another terminal holds it (one process cannot hold one output twice)
        res = cli(*flags, *command.split()[1:], "--out", out)
    assert_one_line_error(res, 2, f"{out}: another cmcd-edge process (pid {os.getpid()}) is writing it")
    assert not out.exists()


def test_exclusive_on_a_filesystem_without_locks_warns_and_goes_on(tmp_path, monkeypatch, caplog):
    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    ran = False
    with exclusive(tmp_path / "run"):
        ran = True
    assert ran and "run: cannot lock it (No locks available); make sure no other cmcd-edge process" in caplog.text


def test_write_json_writes_strict_json_and_names_a_nan_it_wrote_as_null(tmp_path, caplog):
    """json.dumps writes NaN as a bare NaN, which strict parsers reject (JavaScript's JSON.parse, Go, jq's --strict
    readers): a results.json with one unscored teacher could not be read by a dashboard."""
    write_json(tmp_path / "r.json", {"methods": {"kd": {"runs": [0.5, float("nan")]}}, "ok": 1.0, "inf": float("inf")})
    text = (tmp_path / "r.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"methods": {"kd": {"runs": [0.5, None]}}, "ok": 1.0, "inf": None}
    assert "methods.kd.runs[1], inf not a finite number, written as null" in caplog.text


def test_open_atomic_leaves_the_old_file_until_the_block_ends_and_nothing_when_it_raises(tmp_path):
    """predict streams its .json and .csv through it: a reader sees the old file or the whole new one, never half."""
    from cmcd_edge.fsutil import open_atomic

    out = tmp_path / "p.csv"
    out.write_text("old\n")
    with open_atomic(out, "w") as f:
        f.write("new,")
        assert out.read_text() == "old\n"  # not yet replaced
        f.write("row\n")
    assert out.read_text() == "new,row\n"
    with pytest.raises(KeyboardInterrupt), open_atomic(out, "w") as f:
        f.write("half")
        raise KeyboardInterrupt
    assert out.read_text() == "new,row\n" and [p.name for p in tmp_path.iterdir()] == ["p.csv"]  # no temp left
