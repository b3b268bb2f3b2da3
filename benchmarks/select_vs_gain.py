"""Spearman correlation between select-teacher's delta and the measured CMCD gain over supervised, per candidate.

    python benchmarks/select_vs_gain.py benchmarks/results/select-zer.json \
        fac=benchmarks/results/compare-zer pix=benchmarks/results/gain-zer-pix ...
"""

from __future__ import annotations

import json
import sys

import numpy as np


def ranks(a: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean rank)."""
    order = a.argsort()
    r = np.empty(len(a))
    r[order] = np.arange(len(a), dtype=float)
    for v in np.unique(a):
        r[a == v] = r[a == v].mean()
    return r


def spearman(x, y) -> float:
    rx, ry = ranks(np.asarray(x, float)), ranks(np.asarray(y, float))
    return float(np.corrcoef(rx, ry)[0, 1])


def main() -> None:
    sel = json.loads(open(sys.argv[1]).read())
    delta = {r["view"]: r["delta"] for r in sel["ranking"]}
    i_sy = {r["view"]: r["mi_student_label"]["mean"] for r in sel["ranking"]}
    estimators = sel["ranking"][0]["estimators"]["mi_teacher_student"]
    per_est = {e: {r["view"]: r["estimators"]["mi_teacher_student"][e]["mean"] - i_sy[r["view"]] for r in sel["ranking"]}
               for e in estimators}
    rows = []
    for arg in sys.argv[2:]:
        view, folder = arg.split("=", 1)
        res = json.loads(open(f"{folder}/results.json").read())["methods"]
        cm, sup = res["cmcd"]["test_accuracy"], res["supervised"]["test_accuracy"]
        rows.append((view, delta[view], 100 * (cm["mean"] - sup["mean"]), 100 * cm["std"]))
    print("| view | delta (nats) | CMCD gain over supervised (points) | CMCD std |")
    print("|---|---|---|---|")
    for v, d, g, s in sorted(rows, key=lambda r: -r[1]):
        print(f"| {v} | {d:+.3f} | {g:+.1f} | {s:.1f} |")
    gains = [r[2] for r in rows]
    print(f"\nSpearman(delta, gain) = {spearman([r[1] for r in rows], gains):+.2f} over {len(rows)} views "
          f"(primary estimator: {sel['primary_estimator']})")
    for e, d in per_est.items():
        vals = [d[r[0]] for r in rows]
        print(f"- with the {e} estimator of I(T;S): delta " + ", ".join(f"{r[0]} {v:+.2f}" for r, v in zip(rows, vals, strict=True))
              + f"; Spearman {spearman(vals, gains):+.2f}")


if __name__ == "__main__":
    main()
