"""Classification figures beside top-1, numpy only (the device side scores a bundle with them, distill a student):
macro-F1, per-class top-1 and the confusions behind it."""

from __future__ import annotations

import numpy as np


def macro_f1(pred: np.ndarray, y: np.ndarray, n_classes: int) -> float:
    """Unweighted mean over classes present in y or pred of 2TP / (2TP + FP + FN)."""
    f1s = []
    for c in range(n_classes):
        tp = np.sum((pred == c) & (y == c))
        fp, fn = np.sum((pred == c) & (y != c)), np.sum((pred != c) & (y == c))
        if tp + fp + fn:
            f1s.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1s)) if f1s else 0.0


def per_class(pred: np.ndarray, y: np.ndarray, classes: tuple[str, ...]) -> dict[str, dict]:
    """Top-1 of each class y holds: ``{name: {"rows": n, "top1": correct / n}}``, in class order."""
    return {classes[c]: {"rows": int((y == c).sum()), "top1": float((pred[y == c] == c).mean())}
            for c in np.unique(y)}


def confusions(pred: np.ndarray, y: np.ndarray, classes: tuple[str, ...]) -> list[dict]:
    """Every mistake, grouped: ``[{"true", "pred", "rows"}]`` for each off-diagonal cell of the confusion matrix that
    is not empty, most rows first (ties in class order). At most one entry per wrong prediction, so it stays small
    whatever the number of classes, and sums exactly over runs."""
    wrong = pred != y
    cells, counts = np.unique(np.stack([y[wrong], pred[wrong]], axis=1), axis=0, return_counts=True)
    order = sorted(range(len(counts)), key=lambda i: (-counts[i], *cells[i]))
    return [{"true": classes[cells[i][0]], "pred": classes[cells[i][1]], "rows": int(counts[i])} for i in order]
