"""Splits: stratified and seeded, group-aware, fixed from splits.npy, unlabeled rows in train only, and the
stratified labeled fraction."""

from __future__ import annotations

import numpy as np
import pytest

from cmcd_edge import datasets
from cmcd_edge.datasets import ViewSpec
from cmcd_edge.errors import DataError
from cmcd_edge.splitting import classes_raised_to_one, make_splits
from tests.helpers import toy_dataset


def test_splits_stratified_and_seeded():
    ds = datasets.load("builtin:mfeat")
    s1, s2 = make_splits(ds, seed=3), make_splits(ds, seed=3)
    assert np.array_equal(s1.test, s2.test)
    assert len(s1.train) == 1200 and len(s1.val) == 400 and len(s1.test) == 400
    assert np.bincount(ds.labels[s1.test]).tolist() == [40] * 10
    assert not set(s1.train) & set(s1.test) and not set(s1.val) & set(s1.test)
    assert not np.array_equal(s1.test, make_splits(ds, seed=4).test)


def test_splits_group_aware(tmp_path):
    groups = np.repeat(np.arange(20), 3)
    ds = toy_dataset(tmp_path, groups=groups)
    s = make_splits(ds, seed=0)
    sides = [set(groups[idx]) for idx in (s.train, s.val, s.test)]
    assert not (sides[0] & sides[1]) and not (sides[0] & sides[2]) and not (sides[1] & sides[2])


def test_splits_fixed_file_is_used(tmp_path):
    fixed = np.array([0, 0, 0, 1, 2] * 12)
    s = make_splits(toy_dataset(tmp_path, splits=fixed), seed=9)
    assert np.array_equal(s.val, np.flatnonzero(fixed == 1))


def test_splits_of_mfeat_are_pinned():
    """Every benchmark figure rests on these rows: a change to the split code must not move them silently."""
    import hashlib

    s = make_splits(datasets.load("builtin:mfeat"), seed=0, labeled_fraction=0.1)
    digest = hashlib.sha256(b"".join(a.astype(np.int64).tobytes() for a in (s.train, s.val, s.test, s.labeled)))
    assert digest.hexdigest()[:16] == "aa12a55886b71257"


def _partly_labeled(tmp_path, **kw):
    labels = np.arange(60) % 3
    labels[np.arange(60) % 4 != 0] = -1  # three rows in four unlabeled
    views = {"a": ViewSpec(np.random.default_rng(0).normal(size=(60, 5)).astype(np.float32), "vector")}
    return datasets.write_dataset(tmp_path / "partly", views, labels, ["x", "y", "z"], **kw), labels


def test_splits_put_unlabeled_rows_in_train_and_score_only_labeled_ones(tmp_path):
    ds, labels = _partly_labeled(tmp_path)
    s = make_splits(ds, seed=0, labeled_fraction=1.0)
    assert set(np.flatnonzero(labels < 0)) <= set(s.train)
    assert (labels[s.val] >= 0).all() and (labels[s.test] >= 0).all() and len(s.val) and len(s.test)
    assert (labels[s.labeled] >= 0).all()


def test_fixed_splits_drop_unlabeled_rows_from_val_and_test(tmp_path):
    fixed = np.array([0, 1, 2, 2, 1] * 12)
    ds, labels = _partly_labeled(tmp_path, splits=fixed)
    s = make_splits(ds, seed=0)
    assert np.array_equal(s.test, np.flatnonzero((fixed == 2) & (labels >= 0)))


def test_a_val_split_without_labeled_rows_is_a_data_error(tmp_path):
    fixed = np.array([0, 1, 2, 2] * 15)  # val gets rows 1, 5, 9...: all unlabeled
    ds, _ = _partly_labeled(tmp_path, splits=fixed)
    with pytest.raises(DataError, match="val split is without labeled rows"):
        make_splits(ds, seed=0)


def test_too_few_labels_for_a_val_split_does_not_point_to_a_splits_file_there_is_none_of(tmp_path):
    labels = np.full(40, -1)
    labels[:2] = [0, 1]  # two labeled rows: the stratified split puts both in train
    views = {"a": ViewSpec(np.zeros((40, 3), np.float32), "vector")}
    ds = datasets.write_dataset(tmp_path / "few", views, labels, ["x", "y"])
    with pytest.raises(DataError, match=r"without labeled rows .*; add labeled rows$"):
        make_splits(ds, seed=0)


def test_labeled_rows_of_one_class_are_a_data_error(tmp_path):
    """Was: a one-class dataset trained a teacher and a student, and read 100% top-1 on a task with nothing to tell
    apart. Unlabeled rows and a second class name without rows do not make a second class."""
    labels = np.where(np.arange(40) % 4 == 0, -1, 1)
    views = {"a": ViewSpec(np.zeros((40, 3), np.float32), "vector")}
    ds = datasets.write_dataset(tmp_path / "one", views, labels, ["x", "y"])
    with pytest.raises(DataError, match=r"one: every labeled row is class 'y'; a classifier needs labeled rows of 2 "):
        make_splits(ds, seed=0)


@pytest.mark.parametrize("n_groups", [3, 4, 5, 7, 10])
def test_group_split_gives_every_split_a_group(tmp_path, n_groups):
    """Was: 3 groups went 2 / 1 / 0, and the refusal said to add labeled rows."""
    labels = np.arange(60) % 3
    views = {"a": ViewSpec(np.zeros((60, 3), np.float32), "vector")}
    ds = datasets.write_dataset(tmp_path / "g", views, labels, ["x", "y", "z"], groups=np.arange(60) % n_groups)
    for seed in range(5):
        s = make_splits(ds, seed=seed)
        per_split = [set(np.asarray(ds.groups)[idx]) for idx in (s.train, s.val, s.test)]
        assert all(per_split) and sum(map(len, per_split)) == n_groups  # each group in exactly one split


def test_fewer_than_three_groups_is_one_line_that_says_why(tmp_path):
    views = {"a": ViewSpec(np.zeros((60, 3), np.float32), "vector")}
    ds = datasets.write_dataset(tmp_path / "g", views, np.arange(60) % 3, ["x", "y", "z"], groups=np.arange(60) % 2)
    with pytest.raises(DataError, match="2 groups in groups.npy.*need 3 or more groups; add groups, or give fixed"):
        make_splits(ds, seed=0)


def test_labeled_fraction_stratified_with_every_class():
    ds = datasets.load("builtin:mfeat")
    s = make_splits(ds, seed=0, labeled_fraction=0.01)
    assert set(ds.labels[s.labeled]) == set(range(10))
    assert set(s.labeled) <= set(s.train)
    assert len(make_splits(ds, seed=0, labeled_fraction=0.1).labeled) == 120


@pytest.mark.parametrize("frac,raised,rows", [(0.1, 0, 120), (0.01, 0, 10), (0.004, 10, 10), (0.002, 10, 10)])
def test_classes_raised_to_one_counts_the_labels_a_fraction_did_not_ask_for(frac, raised, rows):
    """mfeat has 120 train rows per class: 1% rounds to one row of each, 0.4% to none, yet each class takes one.
    With half the labels gone (about 60 a class), 2% still asks for a row of each, 0.5% for none."""
    ds = datasets.load("builtin:mfeat")
    s = make_splits(ds, seed=0, labeled_fraction=frac)
    assert (classes_raised_to_one(s.train, ds.labels, frac), len(s.labeled)) == (raised, rows)
    labels = np.where(np.arange(len(ds.labels)) % 2, -1, ds.labels)  # unlabeled rows count for no class
    s = make_splits(datasets.load("builtin:mfeat"), seed=0)
    assert classes_raised_to_one(s.train, labels, 0.005) == 10 and classes_raised_to_one(s.train, labels, 0.02) == 0


@pytest.mark.parametrize("frac", [0.0, -0.1, 1.5])
def test_labeled_fraction_out_of_range(frac):
    with pytest.raises(DataError, match="outside"):
        make_splits(datasets.load("builtin:mfeat"), labeled_fraction=frac)
