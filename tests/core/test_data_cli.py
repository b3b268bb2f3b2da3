"""Bad input to the dataset commands: one line naming the file and the problem, exit 2, nothing written."""

from __future__ import annotations

import json

import numpy as np
import pytest


def _arrays(tmp_path, a=None, b=None, y=None):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(20, 4)).astype(np.float32) if a is None else a
    b = rng.normal(size=(20, 3)).astype(np.float32) if b is None else b
    y = np.arange(20) % 2 if y is None else y
    for name, arr in (("a", a), ("b", b), ("y", y)):
        np.save(tmp_path / f"{name}.npy", arr)
    return ["--view", f"a={tmp_path / 'a.npy'}", "--view", f"b={tmp_path / 'b.npy'}", "--labels", str(tmp_path / "y.npy")]


def _assert_one_line_error(res, *needles):
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.strip().splitlines() if ln]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_data_info_mfeat(cli):
    res = cli("data", "info", "builtin:mfeat", "--json")
    s = json.loads(res.stdout)
    assert s["rows"] == 2000 and len(s["views"]) == 6 and len(s["classes"]) == 10


def test_from_arrays_then_validate(cli, tmp_path):
    res = cli("data", "from-arrays", tmp_path / "ds", *_arrays(tmp_path))
    assert res.returncode == 0, res.stderr
    assert cli("data", "validate", tmp_path / "ds").returncode == 0


@pytest.mark.parametrize("case,needles", [
    ("rows", ["--view b=", "b.npy: 19 rows"]),
    ("nan", ["--view a=", "a.npy: NaN or Inf at row 0 and 19 more rows"]),
    ("labels_range", ["out of range"]),
    ("labels_float", ["integers"]),
    ("empty", ["--view a=", "a.npy: empty"]),
])
def test_from_arrays_bad_input(cli, tmp_path, case, needles):
    rng = np.random.default_rng(1)
    kw = {
        "rows": {"b": rng.normal(size=(19, 3))},
        "nan": {"a": np.full((20, 4), np.nan)},
        "labels_range": {"y": np.arange(20) - 5},
        "labels_float": {"y": np.linspace(0, 1, 20)},
        "empty": {"a": np.zeros((20, 0), np.float32)},
    }[case]
    res = cli("data", "from-arrays", tmp_path / "out", *_arrays(tmp_path, **kw))
    _assert_one_line_error(res, *needles)
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.*"))


def _written(cli, tmp_path):
    assert cli("data", "from-arrays", tmp_path / "ds", *_arrays(tmp_path)).returncode == 0
    return tmp_path / "ds"


def test_load_rejects_misaligned_rows(cli, tmp_path):
    ds = _written(cli, tmp_path)
    np.save(ds / "views" / "b.npy", np.zeros((7, 3), np.float32))
    _assert_one_line_error(cli("data", "info", ds), "different row counts", "b: 7")


def test_load_rejects_wrong_ndim(cli, tmp_path):
    ds = _written(cli, tmp_path)
    np.save(ds / "views" / "a.npy", np.zeros((20, 4, 2), np.float32))
    _assert_one_line_error(cli("data", "info", ds), "a.npy", "vector view must be [N, D]")


def test_validate_finds_nan_in_file(cli, tmp_path):
    ds = _written(cli, tmp_path)
    arr = np.load(ds / "views" / "a.npy")
    arr[13, 2] = np.inf
    np.save(ds / "views" / "a.npy", arr)
    _assert_one_line_error(cli("data", "validate", ds), "a.npy", "row 13")


def test_missing_dataset_json(cli, tmp_path):
    ds = _written(cli, tmp_path)
    (ds / "dataset.json").unlink()
    _assert_one_line_error(cli("data", "info", ds), "dataset.json", "missing")


def test_unknown_builtin(cli):
    _assert_one_line_error(cli("data", "info", "builtin:nope"), "builtin:nope", "builtin:mfeat")


def test_existing_output_refused_without_force(cli, tmp_path):
    ds = _written(cli, tmp_path)
    _assert_one_line_error(cli("data", "from-arrays", ds, *_arrays(tmp_path)), "--force")


def test_debug_shows_traceback(cli):
    res = cli("--debug", "data", "info", "builtin:nope")
    assert res.returncode == 2 and "Traceback" in res.stderr
