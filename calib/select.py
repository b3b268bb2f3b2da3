"""Which rows calibrate INT8: ``random`` (seeded, stratified when labels exist) or ``coverage`` (k-center greedy on
the student's embeddings, class-balanced where labels exist: the set spans the embedding space, tails included)."""

from __future__ import annotations

import numpy as np

from cmcd_edge.errors import UserError

METHODS = ("random", "coverage")


def check_size(size: int, available: int, flag: str = "--calib-size") -> int:
    if size < 1:
        raise UserError(f"{flag} {size}: must be >= 1")
    if size > available:
        raise UserError(f"{flag} {size}: larger than the {available} calibration rows available (train split)")
    return size


def select_rows(rows: np.ndarray, size: int, method: str, *, labels: np.ndarray | None = None,
                embeddings: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    """Pick ``size`` of ``rows``. ``labels`` and ``embeddings`` are indexed like ``rows``."""
    if method not in METHODS:
        raise UserError(f"--calib-select {method!r}; valid: {', '.join(METHODS)}")
    rng = np.random.default_rng(seed)
    groups = _class_groups(labels, len(rows))
    quota = _quotas([len(g) for g in groups], size)
    picked = []
    for g, q in zip(groups, quota, strict=True):
        if q == 0:
            continue
        if method == "random" or embeddings is None:
            picked.append(rng.choice(g, size=q, replace=False))
        else:
            picked.append(g[k_center_greedy(embeddings[g], q, rng)])
    return np.sort(rows[np.concatenate(picked)])


def _class_groups(labels: np.ndarray | None, n: int) -> list[np.ndarray]:
    if labels is None or (labels < 0).all():
        return [np.arange(n)]
    return [np.flatnonzero(labels == c) for c in np.unique(labels)]


def _quotas(counts: list[int], size: int) -> list[int]:
    """Split ``size`` across groups in proportion to their counts, never over a group's count."""
    total = sum(counts)
    quota = [min(c, int(size * c / total)) for c in counts]
    order = np.argsort([-(size * c / total - q) for c, q in zip(counts, quota, strict=True)])
    i = 0
    while sum(quota) < size:
        k = order[i % len(order)]
        if quota[k] < counts[k]:
            quota[k] += 1
        i += 1
    return quota


def k_center_greedy(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Sener & Savarese (ICLR 2018) core-set: repeatedly take the point farthest from those already taken.

    ``k`` distinct rows (``k <= len(x)``). Once every row left duplicates a taken one (repeated samples: a sensor at
    rest, a saturated frame), the farthest is at distance 0 and would be a row already taken: the rest are drawn at
    random from the rows not yet taken."""
    x = np.asarray(x, dtype=np.float32)
    first = int(rng.integers(len(x)))
    chosen = [first]
    dist = np.linalg.norm(x - x[first], axis=1)
    while len(chosen) < k:
        nxt = int(dist.argmax())
        if dist[nxt] == 0:
            rest = np.setdiff1d(np.arange(len(x)), chosen)
            chosen += rng.choice(rest, size=k - len(chosen), replace=False).tolist()
            break
        chosen.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(x - x[nxt], axis=1))
    return np.asarray(chosen)
