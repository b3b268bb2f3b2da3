"""select-teacher's I(S; Y) probe against the truth, on class-Gaussian embeddings shaped like a student's on a small
held-out set (128-d, the class signal in 4 of the dims, 4 classes): the truth by Monte Carlo with the exact posterior,
the probe before session 19 (one half fits, the other scores, a fixed L2 of 1e-3) and the probe now (cross-fitted
halves, L2 chosen by cross-validation inside each half). Both are lower bounds; the nearer the truth the better.
Then select-teacher itself (3 seeds) on a 600-row dataset made here (a 4-class sequence target, a good and a weak
vector source), once with each probe, beside the mixed KSG estimate it also reports.

    python benchmarks/label_probe.py --reps 5 --data-out /tmp/small --out benchmarks/results/label_probe.json
    cmcd-edge compare --data /tmp/small --source good --target tgt --methods cmcd,supervised --seeds 3 --no-upper-bound
    (and --source weak, --source noise): what distilling from each source gains, beside the verdicts
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

import numpy as np

from cmcd_edge import datasets
from cmcd_edge.distill import mi
from cmcd_edge.distill.mi import label_mi_probe, probe_bound
from cmcd_edge.distill.select import rank_teachers

K, DIMS = 4, 128


def sample(n: int, sep: float, rng) -> tuple[np.ndarray, np.ndarray]:
    y = rng.integers(0, K, n)
    h = rng.normal(size=(n, DIMS))
    h[:, :K] += np.eye(K)[y] * sep
    return h, y


def true_mi(sep: float, n: int = 400_000) -> float:
    """I(H; Y) = log K - E[-log p(y | h)]; only the K signal dims matter, the posterior is softmax(sep * h[:K])."""
    rng = np.random.default_rng(12345)
    y = rng.integers(0, K, n)
    logits = (np.eye(K)[y] * sep + rng.normal(size=(n, K))) * sep
    top = logits.max(1, keepdims=True)
    logz = np.log(np.exp(logits - top).sum(1)) + top[:, 0]
    return float(np.log(K) - np.mean(logz - logits[np.arange(n), y]))


def fixed_l2_probe(h: np.ndarray, y: np.ndarray, seed: int) -> float:
    """The probe up to session 18: fit on one half with L2 1e-3, score on the other."""
    perm = np.random.default_rng(seed).permutation(len(h))
    fit, ev = perm[: len(h) // 2], perm[len(h) // 2:]
    return max(0.0, probe_bound(h[fit], y[fit], h[ev], y[ev], K, 1e-3))


def small_dataset(out: Path) -> str:
    """600 rows, 4 classes: a sequence target (8 x 20) with a weak class shift, a good source (32-d, a class shift in
    every dim), a weak one (24-d, only the last class shifted) and one of pure noise (32-d, no class signal)."""
    rng = np.random.default_rng(0)
    raw = rng.choice([3, 7, 9, 12], size=600)
    good = rng.normal(size=(600, 32)) + raw[:, None] * 0.3
    tgt = rng.normal(size=(600, 8, 20)) + raw[:, None, None] * 0.1
    weak = np.random.default_rng(1).normal(size=(600, 24)) + (raw == 12)[:, None] * 2.0
    noise = np.random.default_rng(5).normal(size=(600, 32))
    views = {"good": datasets.ViewSpec(good.astype(np.float32), "vector"),
             "weak": datasets.ViewSpec(weak.astype(np.float32), "vector"),
             "noise": datasets.ViewSpec(noise.astype(np.float32), "vector"),
             "tgt": datasets.ViewSpec(tgt.astype(np.float32), "sequence")}
    labels = np.searchsorted([3, 7, 9, 12], raw)
    datasets.write_dataset(out, views, labels, ["3", "7", "9", "12"])
    return str(out)


def select_both_ways(data: str) -> dict:
    """select-teacher's ranking with each probe (the students and teachers are the same bits: CPU runs repeat)."""
    new, out = mi.label_mi_probe, {}
    for name, probe in (("before", lambda h, y, n_classes, seed=0: fixed_l2_probe(h, y, seed)), ("now", new)):
        mi.label_mi_probe = probe
        try:
            res = rank_teachers(data, "tgt", seeds=3, device="cpu")
        finally:
            mi.label_mi_probe = new
        out[name] = {r["view"]: {"i_sy": r["mi_student_label"], "i_ts": r["mi_teacher_student"], "delta": r["delta"],
                                 "verdict": r["verdict"], "teacher_top1": r["teacher_test_accuracy"],
                                 "i_sy_ksg": r["estimators"]["mi_student_label"]["ksg_mixed"]} for r in res["ranking"]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data-out", type=Path, help="write the 600-row dataset here (default: a temp folder)")
    args = ap.parse_args()
    rows = []
    print(f"{'sep':>4} {'rows':>5} {'true':>6}  {'fixed L2 (before)':>20}  {'cross-fitted, CV L2 (now)':>26}")
    for sep in (1.0, 1.5, 2.5):
        truth = true_mi(sep)
        for n in (240, 800, 2000):
            before, now = [], []
            for rep in range(args.reps):
                h, y = sample(n, sep, np.random.default_rng(1000 * rep + n))
                before.append(fixed_l2_probe(h, y, rep))
                now.append(label_mi_probe(h, y, K, seed=rep))
            rows.append({"sep": sep, "rows": n, "true": truth, "before": before, "now": now})
            print(f"{sep:>4} {n:>5} {truth:>6.3f}  {np.median(before):>8.3f} (min {min(before):.3f})"
                  f"  {np.median(now):>13.3f} (min {min(now):.3f})", flush=True)
    logging.disable(logging.INFO)
    with tempfile.TemporaryDirectory() as tmp:
        sel = select_both_ways(small_dataset(args.data_out or Path(tmp) / "small"))
    print("\nselect-teacher, 600-row sequence target, 240 held-out rows, seeds 0-2 (I(S;Y) mean +- std)")
    for name, views in sel.items():
        for view, r in views.items():
            print(f"{name:>6} {view:<5} teacher {100 * r['teacher_top1']['mean']:4.1f}%  I(T;S) {r['i_ts']['mean']:.3f}  "
                  f"I(S;Y) {r['i_sy']['mean']:.3f} +- {r['i_sy']['std']:.3f}  "
                  f"(ksg mixed {r['i_sy_ksg']['mean']:.3f} +- {r['i_sy_ksg']['std']:.3f})  "
                  f"delta {r['delta']:+.3f}  {r['verdict']}")
    args.out.write_text(json.dumps({"reps": args.reps, "dims": DIMS, "classes": K, "rows": rows, "select": sel},
                                   indent=1))


if __name__ == "__main__":
    main()
