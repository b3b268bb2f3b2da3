"""Mutual-information estimators for teacher selection (numpy, torch for the InfoNCE critic). Nats throughout."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn


def _digamma(x: np.ndarray) -> np.ndarray:
    """psi(x) for x >= 1 (recurrence up to 6, then the asymptotic series): no scipy needed."""
    x = np.asarray(x, dtype=np.float64).copy()
    acc = np.zeros_like(x)
    while (small := x < 6).any():
        acc[small] -= 1.0 / x[small]
        x[small] += 1
    inv, inv2 = 1.0 / x, 1.0 / x**2
    return acc + np.log(x) - 0.5 * inv - inv2 * (1 / 12 - inv2 * (1 / 120 - inv2 / 252))


def pca(x: np.ndarray, dims: int) -> np.ndarray:
    """Centered projection on the top ``dims`` principal directions."""
    x = np.asarray(x, dtype=np.float64)
    x = x - x.mean(0)
    if x.shape[1] <= dims:
        return x
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return x @ vt[:dims].T


def gaussian_mi(x: np.ndarray, y: np.ndarray, dims: int = 8) -> float:
    """Closed form for jointly Gaussian variables on PCA-reduced embeddings:
    I = 1/2 (log det C_x + log det C_y - log det C_xy) = -1/2 sum log(1 - rho_i^2) over canonical correlations.
    Assumes joint Gaussianity (exact for it, a lower bound on the Gaussian part of the dependence otherwise) and
    n >> dims; the first-order small-sample bias dx dy / 2n is subtracted."""
    a, b = pca(x, dims), pca(y, dims)
    a = (a - a.mean(0)) / (a.std(0) + 1e-12)
    b = (b - b.mean(0)) / (b.std(0) + 1e-12)
    c = np.cov(np.c_[a, b].T)
    da = a.shape[1]
    sign_x, ld_x = np.linalg.slogdet(c[:da, :da])
    sign_y, ld_y = np.linalg.slogdet(c[da:, da:])
    sign_j, ld_j = np.linalg.slogdet(c + 1e-9 * np.eye(len(c)))
    bias = a.shape[1] * b.shape[1] / (2 * len(a))  # E[estimate] under independence ~ dx dy / 2n
    return float(max(0.0, 0.5 * (ld_x + ld_y - ld_j) - bias))


def _cheb(x: np.ndarray) -> np.ndarray:
    """Pairwise max-norm distances (N, N)."""
    d = np.zeros((len(x), len(x)))
    for j in range(x.shape[1]):
        np.maximum(d, np.abs(x[:, j:j + 1] - x[:, j][None, :]), out=d)
    return d


def cca(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Canonical correlation analysis: (A, B, rho) with a @ A and b @ B the canonical variates (unit variance,
    pairwise correlations rho, descending, uncorrelated across pairs)."""
    a, b = a - a.mean(0), b - b.mean(0)

    def inv_sqrt(c: np.ndarray) -> np.ndarray:
        w, v = np.linalg.eigh(c)
        return v @ np.diag(1 / np.sqrt(np.maximum(w, 1e-12))) @ v.T

    wa, wb = inv_sqrt(np.cov(a.T).reshape(a.shape[1], -1)), inv_sqrt(np.cov(b.T).reshape(b.shape[1], -1))
    u, rho, vt = np.linalg.svd(wa @ (a.T @ b / (len(a) - 1)) @ wb)
    k = len(rho)
    return wa @ u[:, :k], wb @ vt[:k].T, rho


def _ksg(a: np.ndarray, b: np.ndarray, k: int, rng: np.random.Generator) -> float:
    """KSG estimator 1 on one pair of sample sets (N, da), (N, db), max-norm, unclipped."""
    a = a / (a.std(0) + 1e-12) + 1e-10 * rng.normal(size=a.shape)  # the jitter breaks ties
    b = b / (b.std(0) + 1e-12) + 1e-10 * rng.normal(size=b.shape)
    dx, dy = _cheb(a), _cheb(b)
    dj = np.maximum(dx, dy)
    np.fill_diagonal(dj, np.inf)
    eps = np.partition(dj, k - 1, axis=1)[:, k - 1]
    nx = (dx < eps[:, None]).sum(1) - 1
    ny = (dy < eps[:, None]).sum(1) - 1
    return float(_digamma(k) + _digamma(len(a)) - np.mean(_digamma(nx + 1) + _digamma(ny + 1)))


def ksg_pairs_mi(x: np.ndarray, y: np.ndarray, k: int = 4, dims: int = 8, seed: int = 0) -> float:
    """Kraskov-Stoegbauer-Grassberger estimator 1 (Phys. Rev. E 69, 2004), k = 4, on canonical pairs: x and y are
    PCA-reduced to at most ``dims`` dims each, CCA turns them into pairs (u_i, v_i), and
    I = sum_i KSG(u_i; v_i), each KSG in two dimensions.

    Why pairs: KSG on the joint 2 x ``dims``-dimensional space (``ksg_mi``) underestimates jointly Gaussian pairs badly
    (20-50% low at 4-8 dims and n = 2000: the k-NN balls stop being local), while in two dimensions it is nearly
    unbiased. Assumes the canonical pairs are independent of each other: exact for jointly Gaussian variables (CCA
    makes them so). **Not** for class-clustered embeddings: every pair then carries the same class information and the
    sum counts it once per pair (10 Gaussian clusters, true MI <= log 10 = 2.30 nats: ~9 nats here, joint KSG 2.30),
    which is why select-teacher reports ``ksg_mi``. Continuous, tie-free samples (a 1e-10 jitter breaks ties)."""
    rng = np.random.default_rng(seed)
    a, b = pca(x, dims), pca(y, dims)
    ca, cb, _ = cca(a, b)
    u, v = a @ ca, b @ cb
    return float(max(0.0, sum(_ksg(u[:, i:i + 1], v[:, i:i + 1], k, rng) for i in range(u.shape[1]))))


def ksg_mi(x: np.ndarray, y: np.ndarray, k: int = 4, dims: int = 8, seed: int = 0) -> float:
    """Kraskov-Stoegbauer-Grassberger estimator 1 (Phys. Rev. E 69, 2004), k = 4, on the joint space of PCA projections
    of at most ``dims`` dims each (k-NN estimators degrade in high dimension, hence the projection, as latentmi does):
    I = psi(k) + psi(N) - < psi(n_x + 1) + psi(n_y + 1) >, max-norm. Assumes continuous, tie-free samples (a 1e-10
    jitter breaks ties). Biased low when the MI is spread over several dimensions (jointly Gaussian, 4-8 dims, n = 2000:
    20-50% low); right on class-clustered embeddings, where ``ksg_pairs_mi`` and the Gaussian closed form overcount."""
    rng = np.random.default_rng(seed)
    return float(max(0.0, _ksg(pca(x, dims), pca(y, dims), k, rng)))


def ksg_mixed_label_mi(x: np.ndarray, y: np.ndarray, k: int = 4, dims: int = 8) -> float:
    """Ross (PLoS ONE 2014) estimator for a continuous x and a discrete label y:
    I = psi(N) - <psi(N_y)> + psi(k) - <psi(m)>, where for each point the distance to its k-th neighbour within its
    own class sets a radius and m counts all points within it. Assumes every class has more than k samples."""
    a = pca(x, dims)
    a = a / (a.std(0) + 1e-12)
    n = len(a)
    d = _cheb(a)
    np.fill_diagonal(d, np.inf)
    psi_ny, psi_m = np.zeros(n), np.zeros(n)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        if len(idx) <= k:
            raise ValueError(f"class {c} has {len(idx)} held-out samples; the mixed KSG estimator needs > {k}")
        r = np.partition(d[np.ix_(idx, idx)], k - 1, axis=1)[:, k - 1]
        m = (d[idx] <= r[:, None]).sum(1)
        psi_ny[idx], psi_m[idx] = _digamma(len(idx)), _digamma(np.maximum(m, 1))
    return float(max(0.0, _digamma(n) - psi_ny.mean() + _digamma(k) - psi_m.mean()))


def _gaussian_critic(a: np.ndarray, b: np.ndarray, ridge: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """(M, Q) of the log density ratio log p(y | x) / p(y) of a Gaussian fitted to (a, b), up to terms in x alone
    (they cancel in InfoNCE's softmax over y): s(x, y) = x^T M y - 1/2 y^T Q y."""
    a, b = a - a.mean(0), b - b.mean(0)
    eye_a, eye_b = ridge * np.eye(a.shape[1]), ridge * np.eye(b.shape[1])
    ca, cb, cab = a.T @ a / (len(a) - 1) + eye_a, b.T @ b / (len(a) - 1) + eye_b, a.T @ b / (len(a) - 1)
    reg = cab.T @ np.linalg.inv(ca)  # E[y | x] = reg x
    resid_inv = np.linalg.inv(cb - reg @ cab + eye_b)
    return (resid_inv @ reg).T, resid_inv - np.linalg.inv(cb)


def infonce_mi(x: np.ndarray, y: np.ndarray, dims: int = 8, folds: int = 5, steps: int = 300, seed: int = 0,
               patience: int = 4) -> float:
    """InfoNCE lower bound (van den Oord et al. 2018; Poole et al. 2019), I >= log N + mean_i log softmax_j s(x_i, y_j)_ii,
    cross-fitted: the rows are split in ``folds`` parts; for each, the critic is trained on the others and the bound is
    evaluated on it; the mean over parts is returned (every row held out once).

    The critic is the Gaussian log density ratio fitted in closed form on the training rows (x^T M y - 1/2 y^T Q y:
    the optimal critic when the pair is jointly Gaussian) plus a separable MLP residual f(x).g(y), zero at the start,
    trained on 4/5 of them and early-stopped on the last 1/5 (``patience`` checks of 20 steps without a rise), for the
    dependence a Gaussian misses. Why this critic: an MLP critic learned from scratch on ~1000 rows pays roughly
    (parameters) / (2 n) nats on held-out rows, which at 0.1 nats in 8 dims is most of the signal (-60%). Inputs are
    PCA-reduced to ``dims`` (8, as for the other estimators): at 16 the Gaussian part has ~400 parameters and on mfeat's
    800 held-out rows the held-out bound drops (fac -> zer: 1.53 nats at 16 dims, 1.86 at 8; higher is tighter).
    Assumes the rows are i.i.d.; a lower bound in expectation (any critic gives one), capped at log N of the held-out
    part and loose for large MI; an overfit critic only lowers it."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    a, b = pca(x, dims), pca(y, dims)
    a, b = (a - a.mean(0)) / (a.std(0) + 1e-12), (b - b.mean(0)) / (b.std(0) + 1e-12)
    at, bt = torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32)
    parts = np.array_split(rng.permutation(len(a)), folds)
    values = []
    for k in range(folds):
        rest = np.concatenate([parts[j] for j in range(folds) if j != k])
        critic = _Critic(*_gaussian_critic(a[rest], b[rest]), a.shape[1], b.shape[1])
        n_val = len(rest) // 5
        critic.fit(at, bt, torch.from_numpy(rest[n_val:]), torch.from_numpy(rest[:n_val]), steps, patience)
        with torch.no_grad():
            values.append(float(critic.bound(at, bt, torch.from_numpy(parts[k]))))
    return float(max(0.0, np.mean(values)))


class _Critic(nn.Module):
    """s(x, y) = x^T M y - 1/2 y^T Q y (the Gaussian part, fixed) + f(x).g(y) (a separable MLP residual, zero at first)."""

    def __init__(self, m: np.ndarray, q: np.ndarray, dx: int, dy: int) -> None:
        super().__init__()
        self.register_buffer("m", torch.tensor(m, dtype=torch.float32))
        self.register_buffer("q", torch.tensor(q, dtype=torch.float32))
        self.f = nn.Sequential(nn.Linear(dx, 64), nn.ReLU(), nn.Linear(64, 32))
        self.g = nn.Sequential(nn.Linear(dy, 64), nn.ReLU(), nn.Linear(64, 32))
        nn.init.zeros_(self.f[2].weight)
        nn.init.zeros_(self.f[2].bias)

    def bound(self, a: torch.Tensor, b: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """log N + mean_i log softmax_j s(x_i, y_j)_ii over the rows ``idx``."""
        xa, yb = a[idx], b[idx]
        scores = xa @ self.m @ yb.T - 0.5 * ((yb @ self.q) * yb).sum(1)[None, :] + self.f(xa) @ self.g(yb).T  # (n, n)
        return torch.log(torch.tensor(float(len(idx)))) + torch.log_softmax(scores, dim=1).diag().mean()

    def fit(self, a: torch.Tensor, b: torch.Tensor, tr: torch.Tensor, va: torch.Tensor, steps: int, patience: int) -> None:
        """Train the residual on ``tr``, keep the state with the best bound on ``va``."""
        opt = torch.optim.AdamW(self.parameters(), lr=1e-3, weight_decay=1e-2)
        with torch.no_grad():
            best, best_state, since = float(self.bound(a, b, va)), copy.deepcopy(self.state_dict()), 0
        for step in range(steps):
            loss = -self.bound(a, b, tr[torch.randint(0, len(tr), (min(128, len(tr)),))])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step % 20 == 19:
                with torch.no_grad():
                    v = float(self.bound(a, b, va))
                if v > best:
                    best, best_state, since = v, copy.deepcopy(self.state_dict()), 0
                else:
                    since += 1
                    if since >= patience:  # the held-out bound stopped rising: more steps only overfit the residual
                        break
        self.load_state_dict(best_state)


def label_mi_probe(h: np.ndarray, y: np.ndarray, n_classes: int, seed: int = 0) -> float:
    """I(H; Y) = H(Y) - H(Y | H) >= H(Y) - CE, with CE the held-out cross-entropy of a logistic probe trained on the
    other half (a variational bound: any probe's CE upper-bounds H(Y | H)). Assumes labels in 0..n_classes-1."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(h))
    tr, te = perm[: len(h) // 2], perm[len(h) // 2:]
    x = torch.tensor((h - h[tr].mean(0)) / (h[tr].std(0) + 1e-6), dtype=torch.float32)
    yt = torch.tensor(y, dtype=torch.long)
    lin = nn.Linear(x.shape[1], n_classes)
    opt = torch.optim.LBFGS(lin.parameters(), lr=0.5, max_iter=200)

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(lin(x[tr]), yt[tr]) + 1e-3 * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        ce = float(nn.functional.cross_entropy(lin(x[te]), yt[te]))
    p = np.bincount(y[te], minlength=n_classes) / len(te)
    h_y = float(-(p[p > 0] * np.log(p[p > 0])).sum())
    return max(0.0, h_y - ce)
