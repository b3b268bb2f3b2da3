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
    ("labels_range", ["--labels ", "y.npy: label -5 out of range"]),
    ("labels_float", ["--labels ", "y.npy: expected integer class ids or class names, got 0.0526"]),
    ("labels_2d", ["--labels ", "y.npy: expected one label per row, shape [20], got [20, 2]"]),
    ("labels_rows", ["--labels ", "y.npy: 19 labels but the views have 20 rows"]),
    ("empty", ["--view a=", "a.npy: empty"]),
])
def test_from_arrays_bad_input(cli, tmp_path, case, needles):
    rng = np.random.default_rng(1)
    kw = {
        "rows": {"b": rng.normal(size=(19, 3))},
        "nan": {"a": np.full((20, 4), np.nan)},
        "labels_range": {"y": np.arange(20) - 5},
        "labels_float": {"y": np.linspace(0, 1, 20)},
        "labels_2d": {"y": np.zeros((20, 2), np.int64)},
        "labels_rows": {"y": np.arange(19) % 2},
        "empty": {"a": np.zeros((20, 0), np.float32)},
    }[case]
    res = cli("data", "from-arrays", tmp_path / "out", *_arrays(tmp_path, **kw))
    _assert_one_line_error(res, *needles)
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.*"))


def _written(cli, tmp_path):
    assert cli("data", "from-arrays", tmp_path / "ds", *_arrays(tmp_path)).returncode == 0
    return tmp_path / "ds"


def _aux(tmp_path, name, arr):
    np.save(tmp_path / f"{name}.npy", arr)
    return str(tmp_path / f"{name}.npy")


def test_from_arrays_catches_layouts_the_kind_from_ndim_would_read_wrong(cli, tmp_path):
    """Was: camera frames as PIL/OpenCV give them, [N, H, W, C], became an image of H channels of W x C pixels, and
    [N, H, W] grayscale frames a sequence, both without a word."""
    rng = np.random.default_rng(0)
    hwc = rng.integers(0, 256, size=(20, 16, 16, 3), dtype=np.uint8)
    args = _arrays(tmp_path, a=hwc)
    _assert_one_line_error(cli("data", "from-arrays", tmp_path / "ds", *args), f"--view a={tmp_path / 'a.npy'}: shape "
                           "[20, 16, 16, 3] looks channels-last (the last axis has 3); image views are [N, C, H, W]: "
                           "save np.moveaxis(x, -1, 1), or append :image to keep this layout")
    assert not (tmp_path / "ds").exists()
    res = cli("data", "from-arrays", tmp_path / "ds", *_arrays(tmp_path, a=np.moveaxis(hwc, -1, 1)))
    assert res.returncode == 0 and "a image [3, 16, 16], b vector [3]" in res.stdout, res.stderr
    args[1] += ":image"  # the user says this layout is meant
    assert cli("data", "from-arrays", tmp_path / "ds2", *args).returncode == 0
    res = cli("data", "from-arrays", tmp_path / "ds3", *_arrays(tmp_path, a=hwc[..., 0]))
    assert res.returncode == 0 and "a sequence [16, 16]" in res.stdout
    assert "a 3-d uint8 array is taken as a sequence (16 channels x 16 steps); if it holds grayscale images or " \
           "depth maps, append :image to read it as [N, 1, H, W], or :sequence to say it is one" in res.stderr


def test_from_arrays_catches_time_major_sequences_and_square_maps(cli, tmp_path):
    """Was: accelerometer windows stored time-major, [N, T, C] as Keras and most activity datasets keep them, became
    T channels of C steps, and float depth maps [N, H, W] a sequence, both without a word."""
    rng = np.random.default_rng(0)
    tc = rng.normal(size=(20, 64, 6)).astype(np.float32)
    args = _arrays(tmp_path, a=tc)
    _assert_one_line_error(cli("data", "from-arrays", tmp_path / "ds", *args), f"--view a={tmp_path / 'a.npy'}: shape "
                           "[20, 64, 6] looks time-major (64 steps of 6 channels); sequence views are [N, C, T]: save "
                           "np.moveaxis(x, -1, 1), or append :sequence to keep this layout")
    assert not (tmp_path / "ds").exists()
    res = cli("data", "from-arrays", tmp_path / "ds", *_arrays(tmp_path, a=np.moveaxis(tc, -1, 1)))
    assert res.returncode == 0 and "a sequence [6, 64]" in res.stdout and "warning" not in res.stderr, res.stderr
    args = _arrays(tmp_path, a=tc)
    args[1] += ":sequence"  # the user says this layout is meant
    res = cli("data", "from-arrays", tmp_path / "ds2", *args)
    assert res.returncode == 0 and "a sequence [64, 6]" in res.stdout, res.stderr
    res = cli("data", "from-arrays", tmp_path / "ds3", *_arrays(tmp_path, a=tc[:, :16, :4]))  # 16 >= 4 * 4: refused
    assert res.returncode != 0 and "looks time-major" in res.stderr
    res = cli("data", "from-arrays", tmp_path / "ds4", *_arrays(tmp_path, a=tc[:, :15, :4]))  # 15 < 16: kept
    assert res.returncode == 0 and "a sequence [15, 4]" in res.stdout, res.stderr
    depth = rng.uniform(0.5, 4.0, size=(20, 16, 16)).astype(np.float32)
    res = cli("data", "from-arrays", tmp_path / "ds5", *_arrays(tmp_path, a=depth))
    assert res.returncode == 0 and "a sequence [16, 16]" in res.stdout
    assert "a 3-d square float32 array is taken as a sequence (16 channels x 16 steps)" in res.stderr
    res = cli("data", "from-arrays", tmp_path / "ds6", *_arrays(tmp_path, a=depth[:, None]))
    assert res.returncode == 0 and "a image [1, 16, 16]" in res.stdout and "warning" not in res.stderr, res.stderr


def test_from_arrays_kind_adds_the_channel_axis_of_a_one_channel_view(cli, tmp_path):
    """Was: `:image` on [N, H, W] depth maps, the fix the warning above points to, failed ('an image view must be
    [N, C, H, W]'), and a one-channel signal [N, T] could only be a vector of T features."""
    rng = np.random.default_rng(0)
    depth = rng.uniform(0.5, 4.0, size=(20, 16, 12)).astype(np.float32)
    args = _arrays(tmp_path, a=depth)
    args[1] += ":image"
    res = cli("data", "from-arrays", tmp_path / "ds", *args)
    assert res.returncode == 0 and "a image [1, 16, 12]" in res.stdout, res.stderr
    stored = np.load(tmp_path / "ds" / "views" / "a.npy")
    assert stored.shape == (20, 1, 16, 12) and np.array_equal(stored[:, 0], depth)
    signal = rng.normal(size=(20, 50)).astype(np.float32)
    args = _arrays(tmp_path, a=signal)
    args[1] += ":sequence"
    res = cli("data", "from-arrays", tmp_path / "ds2", *args)
    assert res.returncode == 0 and "a sequence [1, 50]" in res.stdout, res.stderr
    args = _arrays(tmp_path, a=signal)
    args[1] += ":image"  # two axes short of an image: still refused
    _assert_one_line_error(cli("data", "from-arrays", tmp_path / "ds3", *args), "an image view must be [N, C, H, W], "
                           "got shape [20, 50]")


def test_from_arrays_refuses_a_view_name_given_twice(cli, tmp_path):
    """The second --view a=... used to replace the first without a word."""
    args = _arrays(tmp_path)
    args[3] = args[3].replace("b=", "a=")
    _assert_one_line_error(cli("data", "from-arrays", tmp_path / "ds", *args), "--view a=", "b.npy: view 'a' given twice")
    assert not (tmp_path / "ds").exists()


def test_from_arrays_takes_class_names_as_labels(cli, tmp_path):
    """String labels (what a CSV column or a folder of class names gives) used to fail with an internal UFuncTypeError:
    now their sorted names are the classes and an empty string marks an unlabeled row."""
    args = _arrays(tmp_path)
    args[-1] = _aux(tmp_path, "names", np.array(["dog", "cat", "", "cat"] * 5))
    res = cli("data", "from-arrays", tmp_path / "ds", *args)
    assert res.returncode == 0, res.stderr
    s = json.loads(cli("data", "info", tmp_path / "ds", "--json").stdout)
    assert s["classes"] == ["cat", "dog"] and s["label_counts"] == {"cat": 10, "dog": 5} and s["unlabeled"] == 5
    res = cli("data", "from-arrays", tmp_path / "ds2", *args, "--classes", "dog,cat,bird")  # the user's order
    assert res.returncode == 0, res.stderr
    s = json.loads(cli("data", "info", tmp_path / "ds2", "--json").stdout)
    assert s["classes"] == ["dog", "cat", "bird"] and s["label_counts"] == {"dog": 5, "cat": 10, "bird": 0}
    assert "--classes: class 'bird' has no rows" in res.stderr
    _assert_one_line_error(cli("data", "from-arrays", tmp_path / "ds3", *args, "--classes", "dog,bird"),
                           "--labels ", "names.npy: label 'cat' is not in --classes (dog, bird)")
    res = cli("data", "from-arrays", tmp_path / "ds4", *args, "--classes", "dog, cat")  # was: ' cat' not in --classes
    assert res.returncode == 0, res.stderr
    assert json.loads(cli("data", "info", tmp_path / "ds4", "--json").stdout)["classes"] == ["dog", "cat"]


def test_from_arrays_sparse_class_ids_warn_once_with_the_way_to_renumber(cli, tmp_path):
    """Ids 0, 5, 10 make 11 classes, 8 of them empty. Was: eight lines of "--classes: class '1' has no rows", naming a
    flag the user never passed; now one line names --labels, the count and how to number only the classes present."""
    args = _arrays(tmp_path, y=(np.arange(20) % 3) * 5)
    res = cli("data", "from-arrays", tmp_path / "ds", *args)
    assert res.returncode == 0, res.stderr
    warned = [ln for ln in res.stderr.splitlines() if "no rows" in ln]
    assert len(warned) == 1 and "--classes:" not in warned[0].split("y.npy")[0], res.stderr
    assert f"--labels {tmp_path / 'y.npy'}: 8 of 11 class ids 0..10 have no rows ('1', '2', '3', '4', '6', '7', '8', " \
           "'9'); each still gets a student output: pass class names (strings)" in warned[0], warned[0]
    assert len(json.loads(cli("data", "info", tmp_path / "ds", "--json").stdout)["classes"]) == 11
    res = cli("data", "from-arrays", tmp_path / "ds2", *args[:-1], _aux(tmp_path, "names", np.array(["a", "b"] * 10)),
              "--classes", "a,b,c,d")
    assert "--classes: classes 'c', 'd' have no rows" in res.stderr and res.stderr.count("no rows") == 1, res.stderr


def test_from_arrays_object_labels_get_the_save_recipe(cli, tmp_path):
    """pandas' .values of a text column is an object array; np.save pickles it. Was: numpy's bare "Object arrays
    cannot be loaded when allow_pickle=False", with no way forward."""
    args = _arrays(tmp_path)
    args[-1] = str(tmp_path / "obj.npy")
    np.save(args[-1], np.array(["cat", "dog"] * 10, dtype=object), allow_pickle=True)
    _assert_one_line_error(cli("data", "from-arrays", tmp_path / "ds", *args), "--labels ",
                           "obj.npy: an object array", "np.save(FILE, arr.astype(str))")


def test_from_arrays_takes_named_groups_and_splits_and_a_column_of_labels(cli, tmp_path):
    args = _arrays(tmp_path, y=(np.arange(20) % 2).reshape(20, 1))  # a column, as from a CSV reader
    groups = _aux(tmp_path, "g", np.array([f"subject{i % 4}" for i in range(20)]))
    splits = _aux(tmp_path, "s", np.array(["train", "train", "val", "test"] * 5))
    res = cli("data", "from-arrays", tmp_path / "ds", *args, "--groups", groups, "--splits", splits)
    assert res.returncode == 0, res.stderr
    from cmcd_edge import datasets

    ds = datasets.load(tmp_path / "ds")
    assert ds.labels.tolist() == [i % 2 for i in range(20)]
    assert ds.groups.tolist() == [i % 4 for i in range(20)]
    assert ds.fixed_splits.tolist() == [0, 0, 1, 2] * 5


def test_from_arrays_and_validate_warn_of_a_split_without_labeled_rows(cli, tmp_path):
    """Was: both said nothing (validate printed 'ok'), and the first distill on the data was refused. A warning, not
    a refusal: bench --data ... --rows all scores such data (a held-out set in one split)."""
    splits = _aux(tmp_path, "s", np.array(["train", "train", "test", "test"] * 5))  # no val rows
    res = cli("data", "from-arrays", tmp_path / "ds", *_arrays(tmp_path), "--splits", splits)
    assert res.returncode == 0, res.stderr
    warning = [line for line in res.stderr.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "the val split is without labeled rows" in warning[0], res.stderr
    assert "or fix splits.npy" in warning[0] and "distill, compare, select-teacher and export refuse" in warning[0]
    two = cli("data", "from-arrays", tmp_path / "two", *_arrays(tmp_path), "--groups",
              _aux(tmp_path, "g", np.arange(20) % 2))  # two subjects: no third split for one of them
    assert two.returncode == 0 and "2 groups in groups.npy" in two.stderr and "need 3 or more groups" in two.stderr
    res = cli("data", "validate", tmp_path / "ds")
    assert res.returncode == 0 and "ok:" in res.stdout
    assert "ds: the val split is without labeled rows" in res.stderr and "or fix splits.npy" in res.stderr
    (tmp_path / "fine").mkdir()
    fine = cli("data", "validate", _written(cli, tmp_path / "fine"))
    assert fine.returncode == 0 and "warning" not in fine.stderr
    one = cli("data", "from-arrays", tmp_path / "one", *_arrays(tmp_path)[2:])  # one view: a held-out set for bench
    assert one.returncode == 0 and "(20 rows, 1 view, 2 classes)" in one.stdout, one.stdout


@pytest.mark.parametrize("flag, arr, needle", [
    ("--splits", np.arange(20) % 4, "s.npy: values must be 0 (train), 1 (val) or 2 (test), got 3"),
    ("--splits", np.array(["train", "dev"] * 10), "s.npy: values must be train, val or test, got 'dev'"),
    ("--splits", np.arange(15) % 3, "s.npy: 15 entries but the views have 20 rows"),
    ("--groups", np.zeros((20, 2)), "s.npy: expected one group id per row, shape [20], got [20, 2]"),
])
def test_from_arrays_bad_groups_and_splits_name_the_flag(cli, tmp_path, flag, arr, needle):
    """These used to name the temp folder's copy (.out.x1y2.tmp/splits.npy), or pass: 2-d groups were written."""
    res = cli("data", "from-arrays", tmp_path / "out", *_arrays(tmp_path), flag, _aux(tmp_path, "s", arr))
    _assert_one_line_error(res, f"{flag} ", needle)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


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
