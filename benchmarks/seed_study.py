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

Then where the gaps live: each gap cmcd - baseline split, seed by seed, into the test rows of the pair of classes the
compare names most confused (`confused_pairs` in results.json: 6 <-> 9 on zer and fou) and the rest, from each run's
per-class top-1 (`test_per_class` in results.json); and how well the target view can tell that pair apart at all with
every one of its labeled rows (5-fold cross-validation, 5-NN and L2 logistic regression).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
from pathlib import Path

import numpy as np

BASELINES = ("kd", "fitnet", "rkd", "crd")
METHODS = ("cmcd", "supervised") + BASELINES
RESULTS = Path("benchmarks/results")


@functools.cache  # load, per_class, where_gaps_live and main each read the same compares
def _results(d: str) -> dict:
    return json.loads((RESULTS / d / "results.json").read_text())


def load(target: str, dirs: list[str]) -> dict[str, dict[int, float]]:
    """method -> seed -> test top-1 (%), merged over compare outputs; a seed seen twice must agree (CPU runs are
    deterministic: the same code, data and seed give the same student)."""
    acc: dict[str, dict[int, float]] = {m: {} for m in METHODS}
    for d in dirs:
        res = _results(d)
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


def per_class(dirs: list[str]) -> dict[str, dict[int, dict]]:
    """method -> seed -> {class: {"rows", "top1"}} of that run's test split, from the compares' results.json."""
    out: dict[str, dict[int, dict]] = {m: {} for m in METHODS}
    for d in dirs:
        res = _results(d)
        for m in METHODS:
            if m in res["methods"]:
                pc = res["methods"][m]["test_per_class"]
                for i, seed in enumerate(res["seeds"]):
                    out[m][seed] = {c: {"rows": v["rows"][i], "top1": v["runs"][i]} for c, v in pc.items()
                                    if v["rows"][i]}
    return out


def where_gaps_live(dirs: list[str], seeds: list[int]) -> dict:
    """Each gap cmcd - baseline (points of test top-1, mean over seeds) as the part from the test rows of the most
    confused pair plus the part from every other row; and each method's top-1 on the pair's rows."""
    pair = _results(dirs[0])["confused_pairs"][0]["classes"]
    pc = per_class(dirs)

    def parts(m: str, seed: int) -> tuple[float, float, float]:
        """(pair part, rest part) of 100 * top-1 over all test rows, and top-1 on the pair's rows (%)."""
        c = pc[m][seed]
        rows = sum(v["rows"] for v in c.values())
        hits = {k: v["top1"] * v["rows"] for k, v in c.items()}
        on_pair = sum(hits[k] for k in pair)
        return 100 * on_pair / rows, 100 * (sum(hits.values()) - on_pair) / rows, \
            100 * on_pair / sum(c[k]["rows"] for k in pair)

    share = float(np.mean([sum(pc["cmcd"][s][k]["rows"] for k in pair) / sum(v["rows"] for v in pc["cmcd"][s].values())
                           for s in seeds]))
    res = {"pair": pair, "pair_rows_share": share, "gaps": {},
           "pair_top1": {m: float(np.mean([parts(m, s)[2] for s in seeds])) for m in METHODS},
           "pair_top1_seeds_0_2": {m: float(np.mean([parts(m, s)[2] for s in (0, 1, 2)])) for m in METHODS}}
    first = [seeds.index(s) for s in (0, 1, 2)]
    for b in BASELINES:
        d = np.array([np.subtract(parts("cmcd", s)[:2], parts(b, s)[:2]) for s in seeds])  # (seeds, 2)
        res["gaps"][b] = {"all_seeds": {"pair": float(d[:, 0].mean()), "rest": float(d[:, 1].mean())},
                          "seeds_0_2": {"pair": float(d[first, 0].mean()), "rest": float(d[first, 1].mean())}}
    return res


def _softmax_regression(xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, decay: float = 1e-3) -> np.ndarray:
    """L2-regularised multinomial logistic regression (L-BFGS) on standardised features: predictions for ``xte``."""
    import torch

    mu, sd = xtr.mean(0), xtr.std(0) + 1e-9
    a, b = torch.tensor((xtr - mu) / sd), torch.tensor((xte - mu) / sd)
    y = torch.as_tensor(ytr, dtype=torch.long)
    w = torch.zeros(a.shape[1], int(y.max()) + 1, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(w.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, bias], max_iter=500)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(a @ w + bias, y) + decay * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return (b @ w + bias).argmax(1).numpy()


def pair_separability(target: str, pair: list[str], folds: int = 5) -> dict:
    """Can the target view tell the pair's classes apart at all? (a) Every labeled row of the two classes, 5-fold
    cross-validated: 5-NN and a two-class logistic regression (chance 50%). (b) A ten-class logistic regression on each
    of seeds 0-2's labeled train rows (all of them, not 10%; weight decay 1e-4, 1e-3, 1e-2), scored on the pair's test
    rows: how much of (a)'s cue survives among all classes."""
    from cmcd_edge import datasets
    from cmcd_edge.splitting import make_splits

    ds = datasets.load("builtin:mfeat")
    labels = np.asarray(ds.labels)
    x_all = np.asarray(ds.view(target), dtype=np.float64).reshape(len(labels), -1)
    a, b = (ds.classes.index(c) for c in pair)
    rows = np.flatnonzero((labels == a) | (labels == b))
    x, y = x_all[rows], (labels[rows] == b).astype(np.int64)
    perm = np.random.default_rng(0).permutation(len(rows))
    knn, logistic = [], []
    for k in range(folds):
        te = perm[k::folds]
        tr = np.setdiff1d(perm, te)
        mu, sd = x[tr].mean(0), x[tr].std(0) + 1e-9
        xtr, xte = (x[tr] - mu) / sd, (x[te] - mu) / sd
        near = np.argsort(((xte[:, None, :] - xtr[None, :, :]) ** 2).sum(-1), axis=1)[:, :5]
        knn.append(float(((y[tr][near].mean(1) > 0.5) == y[te]).mean()))
        logistic.append(float((_softmax_regression(x[tr], y[tr], x[te]) == y[te]).mean()))
    ten_class = []
    for seed in (0, 1, 2):
        s = make_splits(ds, seed)
        on_pair = s.test[np.isin(labels[s.test], (a, b))]
        for decay in (1e-4, 1e-3, 1e-2):
            pred = _softmax_regression(x_all[s.train], labels[s.train], x_all[on_pair], decay)
            ten_class.append(float((pred == labels[on_pair]).mean()))
    return {"rows": int(len(rows)), "knn5": 100 * float(np.mean(knn)), "logistic": 100 * float(np.mean(logistic)),
            "ten_class_logistic": {"mean": 100 * float(np.mean(ten_class)), "min": 100 * min(ten_class),
                                   "max": 100 * max(ten_class)}}


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
        extra = [d for d in verify if _results(d)["target"] == t]
        dirs = [d.format(t=t) for d in args.dirs.split(",")]
        res[t] = study(t, dirs + extra, args.boot, rng)
        res[t]["where_gaps_live"] = where_gaps_live(dirs, res[t]["seeds"])
        res[t]["where_gaps_live"]["separability"] = pair_separability(t, res[t]["where_gaps_live"]["pair"])
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
        w = r["where_gaps_live"]
        a, b = w["pair"]
        sep = w["separability"]
        print(f"  where the gaps live: the {a} <-> {b} test rows ({w['pair_rows_share']:.0%} of them; top-1 on those: "
              + ", ".join(f"{m} {v:.1f}" for m, v in w["pair_top1"].items()) + " (seeds 0-2: "
              + ", ".join(f"{m} {v:.1f}" for m, v in w["pair_top1_seeds_0_2"].items()) + "); the view alone, every labeled "
              f"{a}/{b} row, 5-fold: 5-NN {sep['knn5']:.1f}, logistic {sep['logistic']:.1f}; chance 50; a ten-class "
              f"logistic on all labeled train rows, seeds 0-2: {sep['ten_class_logistic']['mean']:.1f} "
              f"[{sep['ten_class_logistic']['min']:.1f}, {sep['ten_class_logistic']['max']:.1f}] on {a}/{b} test rows)")
        for bl, g in w["gaps"].items():
            al, f = g["all_seeds"], g["seeds_0_2"]
            print(f"    cmcd - {bl:<7} {len(r['seeds'])} seeds: {a}/{b} rows {al['pair']:+.2f} + the rest "
                  f"{al['rest']:+.2f}; seeds 0-2: {f['pair']:+.2f} + {f['rest']:+.2f}")
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
