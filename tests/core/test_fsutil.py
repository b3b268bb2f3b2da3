"""fsutil: outputs that cannot be written are one line naming the path (was: an internal error with a temp name)."""

from __future__ import annotations

import sys

import pytest

from cmcd_edge.errors import EnvironmentFailure, UserError
from cmcd_edge.fsutil import atomic_dir, make_dir, write_json


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
