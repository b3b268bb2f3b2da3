"""Conv students on a few hundred rows: BatchNorm's running statistics, warm-started (shipped) against torch's.

A synthetic set of 200 rows, 2 classes, each view a small mean shift of the class in noise: a vector source ``src``
(mlp teacher, the same in both arms) and conv targets small enough that a layer reads mostly padding: a [4, 2] and a
[4, 64] sequence (cnn1d), a 1x3x3 and a 2x1x40 image (cnn2d). 120 train rows (12 labeled at the default 10%), so a
step or two per epoch. Each (target, method, seed) is distilled twice from the same cached teacher: as shipped
(``students.BatchNorm1d/2d``, ``_WarmStartStats``) and with torch's ``nn.BatchNorm1d/2d`` patched back in (the code
before session 32). It prints and stores test top-1 per run, the share of test rows given the majority prediction
(1.0 = one class for every row), and the medians per arm (BENCHMARKS.md, "Conv students on a few hundred rows").

    .venv/bin/python benchmarks/bn_warm_start.py /tmp/bnw [--seeds 5]    # about 3 minutes on 2 cores (5 seeds)
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "bn_warm_start.json"
TARGETS = {"seq2": ("sequence", (4, 2)), "seq64": ("sequence", (4, 64)), "img3": ("image", (1, 3, 3)),
           "img40": ("image", (2, 1, 40))}


def make(out: Path):
    from cmcd_edge import datasets

    rng = np.random.default_rng(32)
    n = 200
    y = rng.integers(0, 2, n)
    sign = (2 * y - 1).astype(np.float32)

    def shifted(shape, shift):  # a class-signed mean shift on a random direction, in unit noise
        direction = rng.normal(0, 1, shape).astype(np.float32)
        return (rng.normal(0, 1, (n, *shape)) + shift * sign.reshape(-1, *[1] * len(shape)) * direction).astype(
            np.float32)

    views = {"src": datasets.ViewSpec(shifted((10,), 1.0), "vector")}
    for name, (kind, shape) in TARGETS.items():
        views[name] = datasets.ViewSpec(shifted(shape, 0.5), kind)
    return datasets.write_dataset(out, views, y, ["a", "b"], name="bn-warm-start", force=True)


def main(work: Path, seeds: tuple[int, ...]) -> None:
    from torch import nn

    from cmcd_edge.distill import students
    from cmcd_edge.distill.config import DistillConfig
    from cmcd_edge.distill.pipeline import run_distill

    t0 = time.perf_counter()
    ds = make(work / "ds")
    arms = {"warm start (shipped)": (students.BatchNorm1d, students.BatchNorm2d),
            "torch BatchNorm (before)": (nn.BatchNorm1d, nn.BatchNorm2d)}
    rows = []
    try:
        for target in TARGETS:
            for method in ("supervised", "cmcd"):
                for seed in seeds:
                    for arm, (bn1, bn2) in arms.items():
                        students.BatchNorm1d, students.BatchNorm2d = bn1, bn2
                        cfg = DistillConfig(data=str(ds.root), source="src", target=target, method=method, seed=seed,
                                            device="cpu", teacher_cache=str(work / "tc"))
                        capture: dict = {}
                        res = run_distill(cfg, None, capture=capture)
                        rows.append({"target": target, "method": method, "seed": seed, "arm": arm,
                                     "test_accuracy": res.metrics["test_accuracy"],
                                     "majority_share": _majority_share(capture["student"], ds, target, seed)})
                        print(json.dumps(rows[-1]), flush=True)
    finally:
        students.BatchNorm1d, students.BatchNorm2d = arms["warm start (shipped)"]
    summary, table = {}, ["| target (student) | method | before: top-1 per seed | after | median before -> after | "
                          "runs with one class for every test row, before -> after |", "|---|---|---|---|---|---|"]
    for target, (kind, shape) in TARGETS.items():
        for method in ("supervised", "cmcd"):
            per_arm = {}
            for arm in arms:
                mine = [r for r in rows if (r["target"], r["method"], r["arm"]) == (target, method, arm)]
                per_arm[arm] = {"test_accuracy": [r["test_accuracy"] for r in mine],
                                "median_test_accuracy": float(np.median([r["test_accuracy"] for r in mine])),
                                "runs_one_class_for_every_row": sum(r["majority_share"] == 1.0 for r in mine)}
            summary[f"{target} {method}"] = per_arm
            before, after = per_arm["torch BatchNorm (before)"], per_arm["warm start (shipped)"]
            table.append(f"| {kind} {list(shape)} ({'cnn1d' if kind == 'sequence' else 'cnn2d'}) | {method} | "
                         f"{pct(before['test_accuracy'])} | {pct(after['test_accuracy'])} | "
                         f"{100 * before['median_test_accuracy']:.1f} -> {100 * after['median_test_accuracy']:.1f} | "
                         f"{before['runs_one_class_for_every_row']} -> {after['runs_one_class_for_every_row']} |")
    print("\n".join(table))
    RESULTS.write_text(json.dumps({"seeds": list(seeds), "wall_s": round(time.perf_counter() - t0, 1), "runs": rows,
                                   "summary": summary}, indent=1) + "\n")


def pct(accs: list[float]) -> str:
    """Top-1 fractions as a table cell of percents (cnn1d_stem.py uses it too)."""
    return " ".join(f"{100 * a:.1f}" for a in accs)


def _majority_share(student, ds, target: str, seed: int) -> float:
    """Share of the test rows that get the most common predicted class (1.0: eval mode says one class for all)."""
    import torch

    from cmcd_edge.splitting import make_splits

    test = make_splits(ds, seed).test
    x = torch.as_tensor(np.asarray(ds.view(target)[test], dtype=np.float32))
    student.eval()
    with torch.no_grad():
        pred = student(x).argmax(1).numpy()
    return float(np.bincount(pred).max() / len(pred))


def run_cli(main, doc: str) -> None:
    """The command line of the scratch-folder studies (this one and cnn1d_stem.py): WORK [--seeds N]."""
    import argparse

    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("work", type=Path, help="a scratch folder (the dataset and teacher cache go there)")
    ap.add_argument("--seeds", type=int, default=5)
    a = ap.parse_args()
    main(a.work, tuple(range(a.seeds)))


if __name__ == "__main__":
    run_cli(main, __doc__)
