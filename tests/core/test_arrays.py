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
