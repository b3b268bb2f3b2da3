"""Train/val/test splits of a dataset (fixed, group-aware or stratified by label) and the few labeled train rows a
distillation may use: the same rows for every method of a comparison, and for export's and bench's evaluation."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cmcd_edge.datasets import Dataset
from cmcd_edge.errors import DataError


@dataclass(frozen=True)
class Splits:
    """Row indices of each split, and the labeled rows of the train split."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    labeled: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


def make_splits(ds: Dataset, seed: int = 0, fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
                labeled_fraction: float = 1.0) -> Splits:
    """Train/val/test row indices: ``splits.npy`` when the dataset has one, else seeded and stratified by label,
    group-aware when ``groups.npy`` exists (whole groups go to one split). Then ``sample_labeled`` on train.

    Unlabeled rows (label -1) teach a student only through the teacher, so they belong to train: the stratified split
    puts all of them there, and val and test keep only labeled rows whatever the split (a row without a label cannot
    be scored)."""
    labels = np.asarray(ds.labels)
    present = np.unique(labels[labels >= 0])
    if present.size == 1:  # was: a 1-class "classifier" trained and scored 100%
        raise DataError(f"{ds.spec}: every labeled row is class {ds.classes[int(present[0])]!r}; a classifier "
                        "needs labeled rows of 2 or more classes")
    if ds.fixed_splits is not None:
        fixed = ds.fixed_splits
        train, val, test = (np.flatnonzero(fixed == k) for k in (0, 1, 2))
    elif ds.groups is not None:
        train, val, test = _group_split(np.asarray(ds.groups), fractions, seed, ds.spec)
    else:
        train, val, test = _stratified_split(labels, fractions, seed)
    val, test = val[labels[val] >= 0], test[labels[test] >= 0]
    for name, idx in (("train", train), ("val", val), ("test", test)):
        if idx.size == 0:
            what = "empty" if name == "train" else "without labeled rows"
            fix = " or fix splits.npy" if ds.fixed_splits is not None else ""  # (was said of data without one too)
            raise DataError(f"{ds.spec}: the {name} split is {what} ({ds.n_rows} rows, "
                            f"{int((labels >= 0).sum())} labeled); add labeled rows{fix}")
    labeled = sample_labeled(train, labels, labeled_fraction, seed)
    return Splits(train, val, test, labeled)


def _stratified_split(labels: np.ndarray, fractions: tuple[float, float, float], seed: int):
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[], [], []]
    for cls in np.unique(labels):
        if cls < 0:  # unlabeled: train only
            parts[0].append(np.flatnonzero(labels == cls))
            continue
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_train = int(round(fractions[0] * len(idx)))
        n_val = int(round(fractions[1] * len(idx)))
        for k, chunk in enumerate((idx[:n_train], idx[n_train:n_train + n_val], idx[n_train + n_val:])):
            parts[k].append(chunk)
    return tuple(np.sort(np.concatenate(p)).astype(np.int64) for p in parts)


def _group_split(groups: np.ndarray, fractions: tuple[float, float, float], seed: int, where: str):
    """Whole groups to train, val and test in ``fractions``, each split at least one group (was: 3 subjects gave
    2 / 1 / 0, and the refusal said to add labeled rows)."""
    rng = np.random.default_rng(seed)
    uniq = rng.permutation(np.unique(groups))
    n = len(uniq)
    if n < 3:
        raise DataError(f"{where}: {n} group{'s' if n > 1 else ''} in groups.npy, and a group's rows all go to one "
                        "split: train, val and test need 3 or more groups; add groups, or give fixed splits "
                        "(splits.npy, from-arrays --splits)")
    n_train, n_val = round(fractions[0] * n), max(1, round(fractions[1] * n))
    cuts = np.cumsum([min(n_train, n - n_val - 1), n_val])  # test keeps at least one group
    assign = np.split(uniq, cuts)
    return tuple(np.flatnonzero(np.isin(groups, g)).astype(np.int64) for g in assign)


def sample_labeled(train: np.ndarray, labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A seeded, stratified ``fraction`` of the labeled train rows, with at least one row of each class present."""
    if not 0.0 < fraction <= 1.0:
        raise DataError(f"labeled fraction {fraction} is outside (0, 1]")
    rng = np.random.default_rng(seed + 7919)
    picked = []
    for cls in np.unique(labels[train]):
        if cls < 0:
            continue
        idx = train[labels[train] == cls]
        n = max(1, int(round(fraction * len(idx))))
        picked.append(rng.choice(idx, size=n, replace=False))
    if not picked:
        raise DataError("the train split has no labeled rows")
    return np.sort(np.concatenate(picked)).astype(np.int64)


def classes_raised_to_one(train: np.ndarray, labels: np.ndarray, fraction: float) -> int:
    """How many classes ``sample_labeled`` gives one labeled row although ``fraction`` of their train rows rounds to
    none: each such row is a label the fraction did not ask for."""
    y = labels[train]
    return sum(1 for cls in np.unique(y[y >= 0]) if int(round(fraction * int((y == cls).sum()))) == 0)
