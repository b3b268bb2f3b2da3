"""Property-based bad-input sweep of the dataset loader (through `cmcd-edge data validate`, in-process): whatever
arrays and dataset.json a user hands over, the answer is either a valid dataset or one line naming the problem,
exit 2, no traceback."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cmcd_edge import datasets
from cmcd_edge.cli import main

NUMERIC = ["float32", "float64", "float16", "int16", "int64", "uint8"]
BAD_DTYPES = ["bool", "complex64", "U3", "object"]
HARMLESS = {"huge_dim", "extra_dims_of_one"}  # a dataset with only these must load
MUTATIONS = ["nan", "inf", "no_labels", "empty_dim", "wrong_rank", "bad_dtype", "bad_kind", "misaligned", "labels_float",
             "labels_out_of_range", "labels_short", "labels_2d", "no_classes", "view_file_missing", "bad_json",
             *sorted(HARMLESS)]


@st.composite
def datasets_on_disk(draw):
    """A valid dataset, then 0-2 mutations; every mutation outside HARMLESS must be refused."""
    rows = draw(st.integers(1, 12))
    n_classes = draw(st.integers(1, 3))
    views = {}
    for i in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(list(datasets.KIND_NDIM)))
        shape = (rows, *draw(st.lists(st.integers(1, 4), min_size=datasets.KIND_NDIM[kind] - 1,
                                      max_size=datasets.KIND_NDIM[kind] - 1)))
        arr = (np.random.default_rng(i).normal(size=shape) * 3).astype(draw(st.sampled_from(NUMERIC)))
        views[f"v{i}"] = [arr, kind]
    labels = np.arange(rows, dtype=np.int64) % n_classes
    muts = draw(st.lists(st.sampled_from(MUTATIONS), max_size=2, unique=True))
    name = draw(st.sampled_from(sorted(views)))
    arr, kind = views[name]
    meta_extra = {}
    for m in sorted(muts, key=lambda m: {"huge_dim": 0, "no_labels": 2}.get(m, 1)):  # replace first, delete last
        if m in ("nan", "inf"):
            if arr.size == 0 or arr.dtype.kind not in "fiu":
                muts = [x for x in muts if x != m] or ["empty_dim"]  # nothing to poison: the other mutation decides
                continue
            arr = arr.astype(np.float32)
            arr.flat[draw(st.integers(0, arr.size - 1))] = np.nan if m == "nan" else -np.inf
        elif m == "empty_dim":
            arr = np.zeros((arr.shape[0], 0, *arr.shape[2:]), arr.dtype)
        elif m == "wrong_rank":
            arr = arr.reshape(arr.shape[0], -1) if arr.ndim > 2 else arr[..., None]
        elif m == "bad_dtype":
            arr = np.empty(arr.shape, dtype=draw(st.sampled_from(BAD_DTYPES)))
        elif m == "bad_kind":
            kind = draw(st.sampled_from(["video", "VECTOR", 3, None]))
        elif m == "misaligned":
            arr = np.concatenate([arr, arr[:1]])
        elif m == "labels_float":
            labels = labels.astype(np.float32)
        elif m == "labels_out_of_range":
            labels = labels.copy()
            labels[-1] = draw(st.sampled_from([n_classes, -2, 10**6]))
        elif m == "labels_short":
            labels = labels[:-1]
        elif m == "labels_2d":
            labels = labels.reshape(-1, 1)
        elif m == "no_labels":
            labels = None
        elif m == "no_classes":
            meta_extra["classes"] = []
        elif m == "view_file_missing":
            meta_extra["missing_view"] = True
        elif m == "bad_json":
            meta_extra["bad_json"] = True
        elif m == "huge_dim":
            arr = np.zeros((arr.shape[0], 50_000), np.float32) if kind == "vector" else arr
        elif m == "extra_dims_of_one":
            arr = arr  # a no-op control: the unmutated dataset
    views[name] = [arr, kind]
    return views, labels, n_classes, meta_extra, muts


def _write(root: Path, views, labels, n_classes, meta_extra) -> None:
    (root / "views").mkdir(parents=True)
    classes = meta_extra["classes"] if "classes" in meta_extra else [f"c{i}" for i in range(n_classes)]
    meta = {"name": "h", "views": {n: {"kind": k} for n, (_, k) in views.items()}, "classes": classes}
    text = json.dumps(meta)
    (root / "dataset.json").write_text(text[:-3] if "bad_json" in meta_extra else text)
    for i, (name, (arr, _)) in enumerate(views.items()):
        if "missing_view" in meta_extra and i == 0:
            continue
        np.save(root / "views" / f"{name}.npy", arr, allow_pickle=True)  # an object array is saved as a pickle
    if labels is not None:
        np.save(root / "labels.npy", labels)


def _invariants(ds: datasets.Dataset) -> None:
    """What an accepted dataset guarantees to every stage."""
    n = ds.n_rows
    assert n > 0
    for name, info in ds.views.items():
        arr = ds.view(name)
        assert arr.shape[0] == n and arr.ndim == datasets.KIND_NDIM[info.kind] and arr.size > 0
        assert np.issubdtype(arr.dtype, np.number) and not np.issubdtype(arr.dtype, np.complexfloating)
        assert np.isfinite(np.asarray(arr, np.float64)).all()
    y = np.asarray(ds.labels)
    assert y.shape == (n,) and np.issubdtype(y.dtype, np.integer)
    assert ((y == -1) | ((y >= 0) & (y < ds.n_classes))).all()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(datasets_on_disk())
def test_data_validate_answers_valid_or_one_line_exit_2(case):
    *spec, muts = case
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ds"
        _write(root, *spec)
        res = CliRunner().invoke(main, ["data", "validate", str(root)])
        if set(muts) <= HARMLESS:
            assert res.exit_code == 0, (muts, res.output)
            _invariants(datasets.load(root))
        else:
            assert res.exit_code == 2, (muts, res.output)
            lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
            assert len(lines) == 1 and lines[0].startswith("Error:"), res.output
            assert "Traceback" not in res.output and "internal error" not in res.output, res.output
        shutil.rmtree(root)


def test_object_view_is_never_unpickled(tmp_path):
    """A view saved as a pickle (object dtype) is refused by np.load(allow_pickle=False), not executed."""
    _write(tmp_path / "ds", {"v0": (np.empty((4, 2), dtype=object), "vector")}, np.arange(4) % 2, 2, {})
    res = CliRunner().invoke(main, ["data", "validate", str(tmp_path / "ds")])
    assert res.exit_code == 2 and "v0.npy" in res.output and "not a readable .npy" in res.output
