"""Mutual-information estimators for teacher selection (numpy, torch for the InfoNCE critic). Nats throughout."""

from __future__ import annotations

import contextlib
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


def cca(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Canonical correlation analysis: (A, B, rho), square and invertible, with a @ A and b @ B the canonical variates
    (unit variance; column i of each correlates rho_i with the other's column i for i < len(rho), descending; every
    other pair of columns is uncorrelated). The larger side's extra columns complete its basis."""
    a, b = a - a.mean(0), b - b.mean(0)

    def inv_sqrt(c: np.ndarray) -> np.ndarray:
        w, v = np.linalg.eigh(c)
        return v @ np.diag(1 / np.sqrt(np.maximum(w, 1e-12))) @ v.T

    wa, wb = inv_sqrt(np.cov(a.T).reshape(a.shape[1], -1)), inv_sqrt(np.cov(b.T).reshape(b.shape[1], -1))
    u, rho, vt = np.linalg.svd(wa @ (a.T @ b / (len(a) - 1)) @ wb, full_matrices=True)
    return wa @ u, wb @ vt.T, rho


class _MaxNorm:
    """Max-norm distances between all rows, over any group of coordinates, from per-coordinate tables built once.
    Coordinates are standardised and jittered by 1e-10 (ties break the k-NN counts)."""

    def __init__(self, x: np.ndarray, rng: np.random.Generator) -> None:
        x = x / (x.std(0) + 1e-12) + 1e-10 * rng.normal(size=x.shape)
        self.cols = [np.abs(x[:, j:j + 1] - x[:, j][None, :]) for j in range(x.shape[1])]  # D x (N, N)

    def dist(self, cols: tuple[int, ...]) -> np.ndarray:
        d = self.cols[cols[0]].copy()
        for c in cols[1:]:
            np.maximum(d, self.cols[c], out=d)
        return d


def _multi_info(table: _MaxNorm, groups: list[tuple[int, ...]], k: int) -> float:
    """KSG estimator 1 of the multi-information (total correlation) among coordinate groups G_1..G_m (Kraskov,
    Stoegbauer, Grassberger, Phys. Rev. E 69, 2004, eq. 9): psi(k) + (m - 1) psi(N) - < sum_j psi(n_j + 1) >, where
    eps_i is the distance to row i's k-th neighbour in the joint max-norm and n_j counts rows closer than eps_i in G_j.
    For m = 2 it is KSG's I(G_1; G_2)."""
    if len(groups) < 2:
        return 0.0
    ds = [table.dist(g) for g in groups]
    joint = ds[0].copy()
    for d in ds[1:]:
        np.maximum(joint, d, out=joint)
    np.fill_diagonal(joint, np.inf)
    eps = np.partition(joint, k - 1, axis=1)[:, k - 1]
    counts = sum(_digamma((d < eps[:, None]).sum(1)) for d in ds)  # row i counts itself: n_j + 1
    return float(_digamma(k) + (len(groups) - 1) * _digamma(len(joint)) - np.mean(counts))


def ksg_mi(x: np.ndarray, y: np.ndarray, k: int = 4, dims: int = 8, seed: int = 0) -> float:
    """Kraskov-Stoegbauer-Grassberger (Phys. Rev. E 69, 2004) estimator 1, k = 4, on PCA projections of at most
    ``dims`` dims each: the larger of two KSG constructions, ``ksg_joint_mi`` (the textbook joint-space estimate) and
    ``ksg_canonical_mi`` (canonical pairs plus a total-correlation correction).

    Why the larger: at these sample sizes each is biased *low* where it fails, and each is close where the other
    fails. Joint KSG reads jointly Gaussian pairs 20-50% low at 4-8 dims and n = 2000 (the k-NN balls stop being
    local), where the canonical construction is close; the canonical one saturates when a side's own coordinates share
    several nats (class-clustered embeddings: its total-correlation terms exceed log N, and it reads far low, even
    below zero), where joint KSG is close (10 clusters: 2.30 of log 10 = 2.30). latentmi's advice is the same in kind:
    its KSG estimates sit below the truth, so of several projections take the one with the highest estimate. The cost
    of the max is a small upward bias where both are noise (independent variables, n = 2000, 10 samples each: +0.01
    nats at 2 and 4 dims, +0.04 at 8)."""
    a, b = pca(x, dims), pca(y, dims)  # projected once for both constructions
    return max(_ksg_joint(a, b, k, seed), _ksg_canonical(a, b, k, seed))


def ksg_canonical_mi(x: np.ndarray, y: np.ndarray, k: int = 4, dims: int = 8, seed: int = 0) -> float:
    """KSG through an exact decomposition that keeps the k-NN searches low-dimensional where the sides are weakly
    structured. CCA maps x to u and y to v, invertibly per side, so I(x; y) = I(u; v), and with the canonical pairs
    z_i = (u_i, v_i):

        I(u; v) = sum_i I(u_i; v_i) + TC(z_1, ..., z_m) - TC(u_1, ...) - TC(v_1, ...)

    (TC: total correlation; the larger side's extra coordinates join the z's as singletons), each term a KSG estimate.
    For jointly Gaussian pairs the TC terms are zero and each pair term is a nearly unbiased 2-D KSG. Where a side's
    coordinates share much (class clusters: TC of several nats, beyond log N) the TC terms saturate and the estimate
    falls far low; ``ksg_mi`` then takes the joint estimate. The pairs are found by sample CCA, which fits the sample's
    chance correlations: under independence the pair sum reads ~dx dy / 2n (8 + 8 dims, n = 2000: 0.015 measured,
    0.016 predicted), subtracted as in ``gaussian_mi``. Continuous, tie-free samples (a 1e-10 jitter breaks ties)."""
    return _ksg_canonical(pca(x, dims), pca(y, dims), k, seed)


def _ksg_canonical(a: np.ndarray, b: np.ndarray, k: int, seed: int) -> float:
    """``ksg_canonical_mi`` on PCA projections already made."""
    rng = np.random.default_rng(seed)
    ca, cb, rho = cca(a, b)
    u, v = a @ ca, b @ cb  # (N, da), (N, db): canonical variates
    da, db, m = u.shape[1], v.shape[1], len(rho)
    table = _MaxNorm(np.c_[u, v], rng)
    us, vs = [(i,) for i in range(da)], [(da + j,) for j in range(db)]
    pairs = [(i, da + i) for i in range(m)]
    singles = us[m:] + vs[m:]  # the larger side's coordinates without a canonical partner
    pair_sum = sum(_multi_info(table, [(i,), (j,)], k) for i, j in pairs)
    correction = _multi_info(table, pairs + singles, k) - _multi_info(table, us, k) - _multi_info(table, vs, k)
    selection = da * db / (2 * len(u))  # sample CCA picks the pairs' directions: the same bias gaussian_mi subtracts
    return float(max(0.0, pair_sum + correction - selection))


def ksg_joint_mi(x: np.ndarray, y: np.ndarray, k: int = 4, dims: int = 8, seed: int = 0) -> float:
    """The textbook KSG estimator 1 on the joint space of PCA projections of at most ``dims`` dims each, as latentmi
    does: I = psi(k) + psi(N) - < psi(n_x + 1) + psi(n_y + 1) >, max-norm. Right on class-clustered embeddings; 20-50%
    low on jointly Gaussian pairs at 4-8 dims, n = 2000 (benchmarks/mi_synthetic.py)."""
    return _ksg_joint(pca(x, dims), pca(y, dims), k, seed)


def _ksg_joint(a: np.ndarray, b: np.ndarray, k: int, seed: int) -> float:
    """``ksg_joint_mi`` on PCA projections already made."""
    rng = np.random.default_rng(seed)
    da, db = a.shape[1], b.shape[1]
    groups = [tuple(range(da)), tuple(range(da, da + db))]
    return float(max(0.0, _multi_info(_MaxNorm(np.c_[a, b], rng), groups, k)))


def ksg_mixed_label_mi(x: np.ndarray, y: np.ndarray, k: int = 4, dims: int = 8) -> float:
    """Ross (PLoS ONE 2014) estimator for a continuous x and a discrete label y:
    I = psi(N) - <psi(N_y)> + psi(k) - <psi(m)>, where for each point the distance to its k-th neighbour within its
    own class sets a radius and m counts all points within it. Assumes every class has more than k samples."""
    a = pca(x, dims)
    n = len(a)
    d = _MaxNorm(a, np.random.default_rng(0)).dist(tuple(range(a.shape[1])))
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
    with _one_thread():
        for k in range(folds):
            rest = np.concatenate([parts[j] for j in range(folds) if j != k])
            critic = _Critic(*_gaussian_critic(a[rest], b[rest]), a.shape[1], b.shape[1])
            n_val = len(rest) // 5
            critic.fit(at, bt, torch.from_numpy(rest[n_val:]), torch.from_numpy(rest[:n_val]), steps, patience)
            with torch.no_grad():
                values.append(float(critic.bound(at, bt, torch.from_numpy(parts[k]))))
    return float(max(0.0, np.mean(values)))


@contextlib.contextmanager
def _one_thread():
    """The critic's steps are ~40 ops on (128, 64) tensors: a second thread costs more to wake than it computes (the
    critic's fits run 1.2x faster on one thread here, to the same bits; benchmarks/infonce_speed.py)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


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
        opt = torch.optim.AdamW(self.parameters(), lr=1e-3, weight_decay=1e-2, foreach=True)  # one op per update for
        # all 8 tensors (a CPU's default is the per-tensor loop): 1.07x faster fits, the same bits
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


PROBE_RIDGES = (1e-3, 1e-2, 1e-1, 1.0, 10.0)  # L2 strengths the probe chooses among (inner cross-validation)
LABEL_PROBE = "crossfit-cv-l2"  # names label_mi_probe's method in select-teacher's progress key: a change re-measures


def _fit_probe(x: torch.Tensor, y: torch.Tensor, n_classes: int, ridge: float) -> nn.Linear:
    """A multinomial logistic probe, L2-penalised, fitted by L-BFGS (deterministic: zero start)."""
    lin = nn.Linear(x.shape[1], n_classes)
    nn.init.zeros_(lin.weight)
    nn.init.zeros_(lin.bias)
    opt = torch.optim.LBFGS(lin.parameters(), lr=0.5, max_iter=200)

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(lin(x), y) + ridge * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return lin


def _probe_ce(fit_x: np.ndarray, fit_y: np.ndarray, eval_x: np.ndarray, eval_y: np.ndarray, n_classes: int,
              ridge: float) -> float:
    """Held-out cross-entropy (nats) of a probe fitted on (fit_x, fit_y), features standardised on fit_x."""
    mu, sd = fit_x.mean(0), fit_x.std(0) + 1e-6
    lin = _fit_probe(torch.tensor((fit_x - mu) / sd, dtype=torch.float32), torch.tensor(fit_y, dtype=torch.long),
                     n_classes, ridge)
    with torch.no_grad():
        return float(nn.functional.cross_entropy(lin(torch.tensor((eval_x - mu) / sd, dtype=torch.float32)),
                                                 torch.tensor(eval_y, dtype=torch.long)))


def probe_bound(fit_x: np.ndarray, fit_y: np.ndarray, eval_x: np.ndarray, eval_y: np.ndarray, n_classes: int,
                ridge: float) -> float:
    """H(Y) - CE on the eval rows (nats), for a probe fitted on the fit rows: one variational lower bound on I(H; Y)."""
    return label_entropy(eval_y, n_classes) - _probe_ce(fit_x, fit_y, eval_x, eval_y, n_classes, ridge)


def label_entropy(y: np.ndarray, n_classes: int) -> float:
    """H(Y) of the labels ``y`` as they are spread (nats): the most any I(H; Y) can be."""
    p = np.bincount(y, minlength=n_classes) / len(y)
    return float(-(p[p > 0] * np.log(p[p > 0])).sum())


def _choose_ridge(x: np.ndarray, y: np.ndarray, n_classes: int, rng: np.random.Generator, folds: int = 3) -> float:
    """The ridge of PROBE_RIDGES with the lowest cross-validated cross-entropy on (x, y) alone."""
    part = rng.permutation(len(x)) % folds
    scores = [np.mean([_probe_ce(x[part != f], y[part != f], x[part == f], y[part == f], n_classes, r)
                       for f in range(folds)]) for r in PROBE_RIDGES]
    return PROBE_RIDGES[int(np.argmin(scores))]


def label_mi_probe(h: np.ndarray, y: np.ndarray, n_classes: int, seed: int = 0) -> float:
    """I(H; Y) = H(Y) - H(Y | H) >= H(Y) - CE, with CE the held-out cross-entropy of a logistic probe (a variational
    bound: any probe's CE upper-bounds H(Y | H); Barber and Agakov 2003). Cross-fitted: the rows are halved, a probe
    fitted on each half is scored on the other, and the two bounds are averaged. Each probe's L2 strength is chosen
    by cross-validation inside its own half, so the scored half never picks it. (A fixed small L2 overfitted a
    128-d embedding of a few hundred rows: on 240 held-out rows of a 4-class synthetic set with 0.64 nats it read
    0.00, and 0.07 where the mixed KSG read 0.47.) Assumes labels in 0..n_classes-1."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(h))
    halves = (perm[: len(h) // 2], perm[len(h) // 2:])
    bounds = [probe_bound(h[fit], y[fit], h[ev], y[ev], n_classes, _choose_ridge(h[fit], y[fit], n_classes, rng))
              for fit, ev in (halves, halves[::-1])]
    return max(0.0, float(np.mean(bounds)))
