from __future__ import annotations

import numpy as np
import pytest

from cmcd_edge import datasets
from tests.helpers import toy_dataset


def test_mfeat_builtin_shapes_and_classes():
    ds = datasets.load("builtin:mfeat")
    assert ds.n_rows == 2000 and ds.n_classes == 10
    dims = {k: v.shape[1:] for k, v in ds.views.items()}
    assert dims == {"fou": (76,), "fac": (216,), "kar": (64,), "pix": (1, 16, 15), "zer": (47,), "mor": (6,)}
    assert np.bincount(ds.labels).tolist() == [200] * 10
    datasets.validate(ds)


def test_mfeat_views_are_row_aligned():
    """A ridge from pix predicts kar far better on aligned rows than on shuffled rows."""
    ds = datasets.load("builtin:mfeat")
    x = np.asarray(ds.view("pix"), np.float64).reshape(2000, -1)
    y = np.asarray(ds.view("kar"), np.float64)
    rng = np.random.default_rng(0)
    tr, te = np.split(rng.permutation(2000), [1500])

    def r2(yy):
        xt = np.c_[x[tr], np.ones(len(tr))]
        w = np.linalg.solve(xt.T @ xt + 10.0 * np.eye(xt.shape[1]), xt.T @ yy[tr])
        pred = np.c_[x[te], np.ones(len(te))] @ w
        return 1 - ((pred - yy[te]) ** 2).sum() / ((yy[te] - yy[te].mean(0)) ** 2).sum()

    aligned, shuffled = r2(y), r2(y[rng.permutation(2000)])
    assert aligned > 0.8 and shuffled < 0.1, (aligned, shuffled)


def test_views_are_memory_mapped():
    assert isinstance(datasets.load("builtin:mfeat").view("fac"), np.memmap)


def test_write_then_load_roundtrip(tmp_path):
    ds = toy_dataset(tmp_path)
    assert ds.views["b"].kind == "sequence" and ds.view("b").shape == (60, 2, 8)
    assert ds.fingerprint() == datasets.load(tmp_path / "toy").fingerprint()


def test_norm_stats_per_feature_and_channel():
    ds = datasets.load("builtin:mfeat")
    m, s = datasets.norm_stats(ds.view("pix"), np.arange(100), "image")
    assert m.shape == (1, 1, 1) and s.shape == (1, 1, 1)
    m, s = datasets.norm_stats(ds.view("fou"), np.arange(100), "vector")
    assert m.shape == (76,) and (s > 0).all()


@pytest.mark.parametrize("kind,shape", [("vector", (9,)), ("sequence", (3, 20)), ("image", (2, 5, 4))])
def test_norm_stats_chunked_matches_one_pass(kind, shape):
    """Chunks too small for the rows (as for a view larger than RAM) merge to the one-pass mean and std."""
    rng = np.random.default_rng(1)
    arr = (rng.normal(size=(700, *shape)) * 4 + 100).astype(np.float16)
    rows = rng.choice(700, 450, replace=False)
    m1, s1 = datasets.norm_stats(arr, rows, kind)
    per_row = 8 * int(np.prod(shape))
    m2, s2 = datasets.norm_stats(arr, rows, kind, chunk_bytes=per_row * 37)
    np.testing.assert_allclose(m2, m1, rtol=1e-6)
    np.testing.assert_allclose(s2, s1, rtol=1e-5)
    ref = arr[np.sort(rows)].astype(np.float64)
    axes = {"vector": (0,), "sequence": (0, 2), "image": (0, 2, 3)}[kind]
    np.testing.assert_allclose(s2, ref.std(axis=axes, keepdims=True)[0], rtol=1e-5)


def test_split_rows_reads_float32_slices_of_the_split(tmp_path):
    arr = (np.random.default_rng(2).random((40, 2, 3)) * 100).astype(np.uint8)
    np.save(tmp_path / "v.npy", arr)
    mapped = np.load(tmp_path / "v.npy", mmap_mode="r")
    rows = np.array([31, 4, 4, 17, 0, 39])  # any order, repeats allowed
    lazy = datasets.SplitRows(mapped, rows)
    assert len(lazy) == 6 and lazy.shape == (6, 2, 3)
    want = arr[rows].astype(np.float32)
    for key in (slice(None), slice(1, 4), slice(4, 100)):
        got = lazy[key]
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want[key])
    with pytest.raises(TypeError, match="takes a slice"):
        lazy[3]
