"""How often does issue 3's acceptance hold on a random choice of three seeds? Thirteen seeds per target, read back
from `compare` outputs (test top-1 of each method and seed), and every one of the C(13, 3) = 286 seed triples scored
the way the acceptance scores seeds 0-2:

    (a) cmcd - supervised >= 5 points                     (mean over the triple)
    (b) cmcd >= max(kd, fitnet, rkd, crd) - 1 point       (each a mean over the triple; the best baseline is picked
                                                           per triple, as the acceptance picks it)

Also the thirteen-seed means, cmcd minus each baseline paired by seed (standard error), and cmcd minus the best
baseline with a bootstrap over seeds that re-picks the best baseline in every resample (the max over four noisy means
is biased upward; a fixed "best" would hide that).

    cmcd-edge compare --data builtin:mfeat --source fac --target fou --methods cmcd,kd,fitnet,rkd,crd,supervised \
        --seed 3 --seeds 10 --no-upper-bound --out benchmarks/results/compare-fou-seeds3-12      # and --target zer
    .venv/bin/python benchmarks/seed_study.py --out benchmarks/results/seed_study.json
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np

BASELINES = ("kd", "fitnet", "rkd", "crd")
METHODS = ("cmcd", "supervised") + BASELINES
RESULTS = Path("benchmarks/results")


def load(target: str, dirs: list[str]) -> dict[str, dict[int, float]]:
    """method -> seed -> test top-1 (%), merged over compare outputs; a seed seen twice must agree (CPU runs are
    deterministic: the same code, data and seed give the same student)."""
    acc: dict[str, dict[int, float]] = {m: {} for m in METHODS}
    for d in dirs:
        res = json.loads((RESULTS / d / "results.json").read_text())
        if res["target"] != target:
            raise SystemExit(f"{d}: a compare for target {res['target']!r}, not {target!r}")
        for m, r in res["methods"].items():
            if m not in acc:
                continue
            for seed, a in zip(res["seeds"], r["test_accuracy"]["runs"], strict=True):
                if seed in acc[m] and abs(acc[m][seed] - 100 * a) > 1e-9:
                    raise SystemExit(f"{d}: {m} seed {seed} reads {100 * a:.2f}, another compare {acc[m][seed]:.2f}")
                acc[m][seed] = 100 * a
    return acc


def criterion(acc: dict[str, np.ndarray], rows) -> tuple[float, float]:
    """(cmcd - supervised, cmcd - best baseline) on the seeds at ``rows`` (means over those seeds)."""
    c = acc["cmcd"][rows].mean()
    return c - acc["supervised"][rows].mean(), c - max(acc[b][rows].mean() for b in BASELINES)


def study(target: str, dirs: list[str], boot: int, rng: np.random.Generator) -> dict:
    raw = load(target, dirs)
    if any(0 not in raw[m] or 2 not in raw[m] for m in METHODS):
        raise SystemExit(f"{target}: the compares {dirs} lack seeds 0-2 of some method")
    seeds = sorted(set.intersection(*(set(raw[m]) for m in METHODS)))
    acc = {m: np.array([raw[m][s] for s in seeds]) for m in METHODS}
    n = len(seeds)
    paired = {}
    for b in BASELINES + ("supervised",):
        d = acc["cmcd"] - acc[b]
        paired[b] = {"mean": float(d.mean()), "se": float(d.std(ddof=1) / np.sqrt(n))}
    everything = np.arange(n)
    sup_gap, best_gap = criterion(acc, everything)
    draws = [criterion(acc, rng.integers(0, n, n))[1] for _ in range(boot)]
    triples = [criterion(acc, np.array(t)) for t in itertools.combinations(range(n), 3)]
    first = seeds.index(0), seeds.index(1), seeds.index(2)
    return {
        "seeds": seeds,
        "mean": {m: float(acc[m].mean()) for m in METHODS},
        "sd": {m: float(acc[m].std(ddof=1)) for m in METHODS},
        "cmcd_minus": paired,
        "best_baseline": max(BASELINES, key=lambda b: acc[b].mean()),
        "cmcd_minus_best": {"all_seeds": float(best_gap), "boot_ci95": [float(np.percentile(draws, 2.5)),
                                                                         float(np.percentile(draws, 97.5))]},
        "cmcd_minus_supervised_all_seeds": float(sup_gap),
        "triples": [[float(a), float(b)] for a, b in triples],
        "seeds_0_2": [float(x) for x in criterion(acc, np.array(first))],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--targets", default="zer,fou")
    ap.add_argument("--dirs", default="compare-{t},compare-{t}-seeds3-12", help="compare outputs under "
                                                                                 "benchmarks/results, {t}: target")
    ap.add_argument("--verify", default="", help="earlier compares of some of the same seeds (comma-separated): "
                                                  "loaded beside their target's, and must agree run for run")
    ap.add_argument("--boot", type=int, default=10000)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    verify = [d for d in args.verify.split(",") if d]
    res = {}
    for t in args.targets.split(","):
        extra = [d for d in verify if json.loads((RESULTS / d / "results.json").read_text())["target"] == t]
        res[t] = study(t, [d.format(t=t) for d in args.dirs.split(",")] + extra, args.boot, rng)
        if extra:
            print(f"{t}: {', '.join(extra)} agree run for run with the compares above")
    for t, r in res.items():
        print(f"fac -> {t}, {len(r['seeds'])} seeds (test top-1 %, mean +- sd; cmcd - method paired by seed, se)")
        for m in METHODS:
            p = r["cmcd_minus"].get(m)
            diff = "" if p is None else f"   cmcd - {m}: {p['mean']:+.2f} ({p['se']:.2f})"
            print(f"  {m:<11} {r['mean'][m]:6.2f} +- {r['sd'][m]:.2f}{diff}")
        b, lo_hi = r["cmcd_minus_best"], r["cmcd_minus_best"]["boot_ci95"]
        print(f"  cmcd - best baseline ({r['best_baseline']}): {b['all_seeds']:+.2f}, bootstrap 95% "
              f"[{lo_hi[0]:+.2f}, {lo_hi[1]:+.2f}] (best re-picked per resample)")
        tri = np.array(r["triples"])
        ok_a, ok_b = tri[:, 0] >= 5, tri[:, 1] >= -1
        print(f"  {len(tri)} seed triples: (a) >= 5 over supervised {ok_a.mean():.0%}, (b) within 1 of the best "
              f"baseline {ok_b.mean():.0%}, both {(ok_a & ok_b).mean():.0%}; cmcd - best baseline over triples: "
              f"median {np.median(tri[:, 1]):+.2f}, 10-90% [{np.percentile(tri[:, 1], 10):+.2f}, "
              f"{np.percentile(tri[:, 1], 90):+.2f}]; seeds 0-2: {r['seeds_0_2'][1]:+.2f} "
              f"(rank {int((tri[:, 1] < r['seeds_0_2'][1]).sum()) + 1} of {len(tri)}, 1 = worst)")
    targets = list(res)
    if len({tuple(res[t]["seeds"]) for t in targets}) > 1:
        raise SystemExit("the targets have different seeds; the joint figure needs the same seeds on each")
    if len(targets) > 1:
        both = np.ones(len(res[targets[0]]["triples"]), bool)
        for t in targets:
            tri = np.array(res[t]["triples"])
            both &= (tri[:, 0] >= 5) & (tri[:, 1] >= -1)
        print(f"acceptance on {' and '.join(targets)} at once (same triple for each): {both.mean():.0%} of triples")
        res["all_targets_pass_fraction"] = float(both.mean())
    Path(args.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
