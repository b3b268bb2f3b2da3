"""arrays: the NAME=FILE[:KIND] argument of `data from-arrays --view`."""

from __future__ import annotations

import pytest

from cmcd_edge.arrays import parse_view_arg
from cmcd_edge.errors import UserError


@pytest.mark.parametrize("arg,want", [
    ("rgb=x.npy", ("rgb", "x.npy", None)),
    ("depth=d/x.npy:image", ("depth", "d/x.npy", "image")),
    ("imu=all.npz:gyro", ("imu", "all.npz:gyro", None)),
    ("imu=all.npz:gyro:sequence", ("imu", "all.npz:gyro", "sequence")),
    ("v=one.npz:vector", ("v", "one.npz", "vector")),  # a single-array .npz with a kind
])
def test_parse_view_arg_splits_name_file_and_kind(arg, want):
    assert parse_view_arg(arg) == want


@pytest.mark.parametrize("arg,needle", [
    ("a=x.npy:vectr", "--view 'a=x.npy:vectr': unknown kind 'vectr' (did you mean 'vector'?); valid: vector, sequence, image"),
    ("a=all.npz:gyro:img", "--view 'a=all.npz:gyro:img': unknown kind 'img'"),
    ("../a=x.npy", "view name '../a' must be a plain identifier"),
    ("x.npy", "expected NAME=FILE.npy[:KIND]"),
])
def test_parse_view_arg_refuses_a_misspelt_kind_and_bad_names(arg, needle):
    """A misspelt kind used to be read as part of the file name: '--view x.npy:vectr: no such file'."""
    with pytest.raises(UserError) as err:
        parse_view_arg(arg)
    assert needle in str(err.value)


def test_load_array_says_a_csv_is_no_npy_and_how_to_convert_it(tmp_path):
    """numpy reads a file without its header as a pickle, so a CSV used to get numpy's advice to pass allow_pickle."""
    from cmcd_edge.arrays import load_array

    (tmp_path / "x.csv").write_text("1.0,2.0\n3.0,4.0\n")
    with pytest.raises(UserError) as err:
        load_array(str(tmp_path / "x.csv"), "--view")
    msg = str(err.value)
    assert msg.startswith(f"--view {tmp_path / 'x.csv'}: not a .npy or .npz file") and "np.loadtxt" in msg
    assert "pickle" not in msg
