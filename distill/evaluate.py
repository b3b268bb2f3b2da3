"""The modality gap the CMCD bound speaks of. (Macro-F1, per-class top-1 and the confusions, numpy only, are in
``cmcd_edge.runtime.scores``, which the device side scores bundles with too.)"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def chance_bar(y: np.ndarray) -> tuple[float, float]:
    """(chance, bar) for top-1 on labels ``y``: the commonest class's share, and that plus two binomial standard
    errors over ``len(y)`` rows. A classifier scoring under the bar is not above chance (at about 98%, one-sided)."""
    chance = float(np.bincount(y).max() / len(y))
    return chance, chance + 2 * (chance * (1 - chance) / len(y)) ** 0.5


def _standardize(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    return (x - ref.mean(0)) / (ref.std(0) + 1e-6)


def modality_gap(s_emb: np.ndarray, t_emb: np.ndarray, fit_rows: np.ndarray, clf_rows: np.ndarray,
                 eval_rows: np.ndarray, seed: int = 0) -> dict:
    """A total-variation proxy between the source (teacher) and target (student) embedding distributions.

    The student embedding is first mapped into the teacher space by ridge regression fitted on ``fit_rows`` (the two
    live in different spaces; the map is what any distiller can at best align). A logistic domain classifier then
    learns source-vs-target on ``clf_rows`` and is scored on ``eval_rows``; with held-out accuracy a,
    TV >= 2a - 1 (a classifier's advantage lower-bounds the total variation), reported clipped at 0.
    """
    s = _standardize(s_emb, s_emb[fit_rows])
    t = _standardize(t_emb, t_emb[fit_rows])
    a = np.c_[s[fit_rows], np.ones(len(fit_rows))]
    w = np.linalg.solve(a.T @ a + 1.0 * np.eye(a.shape[1]), a.T @ t[fit_rows])
    mapped = np.c_[s, np.ones(len(s))] @ w

    def domain_xy(rows):
        x = np.concatenate([mapped[rows], t[rows]]).astype(np.float32)
        return torch.from_numpy(x), torch.cat([torch.zeros(len(rows)), torch.ones(len(rows))])

    xc, yc = domain_xy(clf_rows)
    xe, ye = domain_xy(eval_rows)
    gen = torch.Generator().manual_seed(seed)
    lin = torch.nn.Linear(xc.shape[1], 1)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(lin.weight.shape, generator=gen) * 0.01)
        lin.bias.zero_()
    opt = torch.optim.LBFGS(lin.parameters(), lr=0.5, max_iter=100)

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(lin(xc).squeeze(1), yc) + 1e-3 * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        acc = float(((lin(xe).squeeze(1) > 0).float() == ye).float().mean())
    return {"domain_accuracy": round(acc, 4), "tv_proxy": round(max(0.0, 2 * acc - 1), 4)}
