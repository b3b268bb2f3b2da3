"""MI estimators on jointly Gaussian pairs with known MI (dims 2..8, n = 2000, MI 0.1..2 nats): each estimator's
mean over ``--reps`` independent samples (its bias) with the std across samples (its noise at n = 2000), and whether
the mean meets issue 4's bar (gaussian within 5%, ksg within 15%, infonce below the truth and within 30%); then
class-clustered pairs whose MI is bounded by log 10, where the Gaussian closed form overcounts and KSG's canonical
construction reads low (ksg takes the larger of its joint and canonical constructions).

    python benchmarks/mi_synthetic.py --reps 10 --out benchmarks/results/mi_synthetic.json
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cmcd_edge.distill.mi import gaussian_mi, infonce_mi, ksg_canonical_mi, ksg_joint_mi, ksg_mi

# ksg (what select-teacher reports) is the larger of its two constructions, computed once each below
ESTIMATORS = {"gaussian": gaussian_mi, "ksg": ksg_mi, "ksg_joint": ksg_joint_mi, "ksg_canonical": ksg_canonical_mi,
              "infonce": infonce_mi}
BAR = {"gaussian": 5, "ksg": 15, "ksg_joint": 15, "ksg_canonical": 15, "infonce": 30}


def pairs(d: int, mi: float, n: int, rng):
    """d independent coordinate pairs with equal correlation rho: I = -d/2 log(1 - rho^2)."""
    rho = np.sqrt(1 - np.exp(-2 * mi / d))
    x = rng.normal(size=(n, d))
    return x, rho * x + np.sqrt(1 - rho**2) * rng.normal(size=(n, d))


def clusters(n: int, rng, k: int = 10, dims: int = 32):
    """x and y independent given one of k classes (class-clustered embeddings, like mfeat's): I(X; Y) <= log k."""
    c = rng.integers(0, k, n)
    x = (rng.normal(size=(k, dims)) * 3)[c] + rng.normal(size=(n, dims))
    return x, (rng.normal(size=(k, dims)) * 3)[c] + rng.normal(size=(n, dims))


def estimates(sample: Callable[[int], tuple[np.ndarray, np.ndarray]], reps: int) -> dict[str, list[float]]:
    """Every estimator on ``reps`` independent samples; sample(r) draws the r-th."""
    est: dict[str, list[float]] = {k: [] for k in ESTIMATORS}
    for r in range(reps):
        x, y = sample(r)
        for k, fn in ESTIMATORS.items():
            if k != "ksg":
                est[k].append(fn(x, y) if k == "gaussian" else fn(x, y, seed=r))
        est["ksg"].append(max(est["ksg_joint"][-1], est["ksg_canonical"][-1]))
        if r == 0 and est["ksg"][-1] != ksg_mi(x, y, seed=r):  # the shortcut must be what ksg_mi computes
            raise AssertionError("ksg_mi is no longer max(ksg_joint_mi, ksg_canonical_mi)")
    return est


def cluster_table(reps: int) -> dict:
    est = estimates(lambda r: clusters(800, np.random.default_rng(7000 + r)), reps)
    out = {k: {"mean": float(np.mean(v)), "std": float(np.std(v))} for k, v in est.items()}
    print(f"10 class clusters, 32 dims, n = 800, I(X;Y) <= log 10 = {np.log(10):.3f}: "
          + ", ".join(f"{k} {v['mean']:.3f} +-{v['std']:.3f}" for k, v in out.items()))
    return {"upper_bound": float(np.log(10)), "reps": reps, "estimators": out}


def meets(name: str, mean: float, truth: float) -> bool:
    err = 100 * (mean - truth) / truth
    return (-BAR[name] <= err <= 0) if name == "infonce" else abs(err) <= BAR[name]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rows = []
    print(f"{'dims':>4}{'true':>5}" + "".join(f"{k:>24}" for k in ESTIMATORS))
    for d in (2, 4, 8):
        for mi in (0.1, 0.5, 1.0, 2.0):
            est = estimates(lambda r, d=d, mi=mi: pairs(d, mi, 2000, np.random.default_rng(1000 * d + r)), args.reps)
            row = {"dims": d, "true_mi": mi, "reps": args.reps, "estimators": {}}
            cells = []
            for k, v in est.items():
                mean, std = float(np.mean(v)), float(np.std(v))
                row["estimators"][k] = {"mean": mean, "std": std, "rel_err_pct": 100 * (mean - mi) / mi,
                                        "meets": meets(k, mean, mi)}
                cells.append(f"{mean:7.3f} +-{std:5.3f} {100 * (mean - mi) / mi:+5.0f}%{'' if meets(k, mean, mi) else '!'}")
            rows.append(row)
            print(f"{d:>4}{mi:>5.1f}" + "".join(f"{c:>24}" for c in cells), flush=True)
    for k in ESTIMATORS:
        bad = [(r["dims"], r["true_mi"]) for r in rows if not r["estimators"][k]["meets"]]
        print(f"{k}: meets the bar in {len(rows) - len(bad)}/{len(rows)} cells; misses {bad}")
    clustered = cluster_table(min(args.reps, 10))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"gaussian_pairs": rows, "class_clusters": clustered}, indent=2))


if __name__ == "__main__":
    main()
