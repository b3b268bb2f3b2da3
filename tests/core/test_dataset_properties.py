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

DTYPES = ["float32", "float32", "float64", "float16", "int16", "int64", "uint8", "bool", "complex64", "U3",
          "object"]
KINDS = ["vector", "sequence", "image", "video", 3]


@st.composite
def view_arrays(draw, rows: int, kind):
    dtype = draw(st.sampled_from(DTYPES))
    right = datasets.KIND_NDIM.get(kind, 2)  # mostly the kind's own rank, so the deeper checks get exercised
    ndim = draw(st.one_of(st.just(right), st.just(right), st.integers(0, 5)))
    dims = [rows] + draw(st.lists(st.integers(0, 4), min_size=max(ndim - 1, 0), max_size=max(ndim - 1, 0)))
    shape = tuple(dims[:ndim])
    if dtype == "object":
        arr = np.empty(shape, dtype=object)
    elif dtype == "U3":
        arr = np.full(shape, "abc")
    else:
        arr = np.random.default_rng(0).normal(size=shape).astype(dtype)
    if arr.dtype.kind == "f" and arr.size and draw(st.booleans()):
        arr.flat[draw(st.integers(0, arr.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    return arr


@st.composite
def datasets_on_disk(draw):
    rows = draw(st.integers(0, 12))
    n_views = draw(st.integers(1, 3))
    views = {}
    for i in range(n_views):
        kind = draw(st.sampled_from(KINDS))
        views[f"v{i}"] = (draw(view_arrays(rows + draw(st.sampled_from([0, 0, 0, 1])), kind)), kind)
    n_classes = draw(st.integers(0, 3))
    labels = draw(st.sampled_from(["ok", "float", "out_of_range", "short", "missing", "2d"]))
    return rows, views, n_classes, labels


def _write(root: Path, rows, views, n_classes, labels) -> None:
    (root / "views").mkdir(parents=True)
    meta = {"name": "h", "views": {n: {"kind": k} for n, (_, k) in views.items()}, "classes": [f"c{i}" for i in range(n_classes)]}
    (root / "dataset.json").write_text(json.dumps(meta))
    for name, (arr, _) in views.items():
        np.save(root / "views" / f"{name}.npy", arr, allow_pickle=True)  # an object array is saved as a pickle
    y = np.arange(rows, dtype=np.int64) % max(n_classes, 1)
    y = {"ok": y, "float": y.astype(np.float32), "out_of_range": y + 5, "short": y[:-1], "missing": None,
         "2d": y.reshape(-1, 1)}[labels]
    if y is not None:
        np.save(root / "labels.npy", y)


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


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(datasets_on_disk())
def test_data_validate_answers_valid_or_one_line_exit_2(case):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ds"
        _write(root, *case)
        res = CliRunner().invoke(main, ["data", "validate", str(root)])
        if res.exit_code == 0:
            _invariants(datasets.load(root))
        else:
            assert res.exit_code == 2, res.output
            lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
            assert len(lines) == 1 and lines[0].startswith("Error:"), res.output
            assert "Traceback" not in res.output and "internal error" not in res.output, res.output
        shutil.rmtree(root)


def test_object_view_is_never_unpickled(tmp_path):
    """A view saved as a pickle (object dtype) is refused by np.load(allow_pickle=False), not executed."""
    _write(tmp_path / "ds", 4, {"v0": (np.empty((4, 2), dtype=object), "vector")}, 2, "ok")
    res = CliRunner().invoke(main, ["data", "validate", str(tmp_path / "ds")])
    assert res.exit_code == 2 and "v0.npy" in res.output and "not a readable .npy" in res.output
