"""Calibration-row selection: stratified quotas, k-center coverage, distinct rows, flag errors."""

from __future__ import annotations

import numpy as np
import pytest

from cmcd_edge.calib.select import _quotas, check_size, k_center_greedy, select_rows
from cmcd_edge.errors import UserError


@pytest.mark.parametrize(("counts", "size", "want"), [
    ([60, 30, 10], 20, [12, 6, 2]),  # exact proportions
    ([5, 5, 1], 7, [3, 3, 1]),  # floors 3/3/0, the largest remainder (0.64) gets the last row
    ([1, 1, 98], 3, [0, 0, 3]),  # a tiny class may get none
    ([2, 2], 4, [2, 2]),  # every row
])
def test_quotas_split_size_by_largest_remainder(counts, size, want):
    assert _quotas(counts, size) == want


@pytest.mark.parametrize("method", ["random", "coverage"])
def test_select_rows_distinct_sorted_subset_stratified(method):
    rng = np.random.default_rng(0)
    rows = np.arange(1000, 1100)
    labels = np.repeat([0, 1, 2], [60, 30, 10])
    emb = rng.normal(size=(100, 4))
    got = select_rows(rows, 20, method, labels=labels, embeddings=emb, seed=3)
    assert len(got) == 20 and len(np.unique(got)) == 20 and np.all(np.diff(got) > 0)
    assert set(got) <= set(rows)
    assert np.bincount(labels[got - 1000]).tolist() == [12, 6, 2]
    assert np.array_equal(got, select_rows(rows, 20, method, labels=labels, embeddings=emb, seed=3))  # seeded


def test_select_rows_unlabeled_rows_are_a_stratum_of_their_own():
    labels = np.array([-1] * 50 + [0] * 25 + [1] * 25)
    got = select_rows(np.arange(100), 10, "random", labels=labels)
    assert np.bincount(labels[got] + 1).tolist() in ([5, 2, 3], [5, 3, 2])


def test_k_center_greedy_takes_one_row_per_far_cluster():
    centres = np.array([[0, 0], [100, 0], [0, 100], [100, 100]], dtype=float)
    x = np.repeat(centres, 5, axis=0) + np.random.default_rng(1).normal(size=(20, 2))
    got = k_center_greedy(x, 4, np.random.default_rng(0))
    assert sorted(got // 5) == [0, 1, 2, 3]


@pytest.mark.parametrize("seed", range(5))
def test_k_center_greedy_within_twice_the_optimal_radius(seed):
    """Gonzalez's guarantee: the covering radius is at most twice the best possible (points 0..10, 3 centres: the best
    radius is 2, so at most 4); the second pick is the end farthest from the random first."""
    x = np.arange(11, dtype=float)[:, None]
    got = k_center_greedy(x, 3, np.random.default_rng(seed))
    assert np.abs(x - x[got].T).min(1).max() <= 4
    assert got[1] == (0 if got[0] >= 5 else 10)


def test_k_center_greedy_distinct_rows_when_samples_repeat():
    """Three distinct samples repeated ten times each: after three picks every distance is 0 (was: row 0 taken again
    and again, so a 6-row calibration set held 4 copies of one row)."""
    x = np.repeat(np.eye(3), 10, axis=0)
    got = k_center_greedy(x, 6, np.random.default_rng(0))
    assert len(np.unique(got)) == 6
    assert sorted({int(i) // 10 for i in got}) == [0, 1, 2]  # the first three still span the three samples
    assert len(np.unique(select_rows(np.arange(30), 30, "coverage", embeddings=x))) == 30


def test_select_rows_unknown_method_lists_valid():
    with pytest.raises(UserError, match="--calib-select 'kcenter'; valid: random, coverage"):
        select_rows(np.arange(10), 2, "kcenter")


@pytest.mark.parametrize(("size", "msg"), [(0, "--calib-size 0: must be >= 1"),
                                           (11, "--calib-size 11: larger than the 10 calibration rows")])
def test_check_size_bad_sizes(size, msg):
    with pytest.raises(UserError, match=msg):
        check_size(size, 10)
    assert check_size(10, 10) == 10
