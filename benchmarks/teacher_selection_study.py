"""Which epoch should a trained teacher keep? The students' checkpoint study (selection_study.py), run on teachers.
A validation-only study: the test split is never read.

Teachers select on one epoch's val accuracy (window 1) and stop 20 epochs after their last best; students average a
5-epoch window (session 5). Session 33 found the mfeat pix (cnn2d) teacher stopping at epoch 24-27 of 80 on seeds 0
and 1 since the warm-started BatchNorm (students.py) scores its early epochs fairly: one epoch at 0.975 val top-1
(one val row above the 0.9725 plateau that followed) won, and patience ran out. This trains each teacher for all
its epochs, keeps every epoch's val logits, cuts the val split (400 rows) into halves A and B many times, lets each
rule pick an epoch from A's figures, and scores that epoch on B. ``--old-bn`` also runs the conv teachers with
torch's BatchNorm (the code before session 32).

    .venv/bin/python benchmarks/teacher_selection_study.py --out benchmarks/results/teacher_selection_study.json
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from selection_study import EVERY_EPOCH, correct_and_nll, pipeline_pick, score_rules

from cmcd_edge import datasets
from cmcd_edge.distill import ddp, engine, students
from cmcd_edge.distill.engine import TeacherTraining
from cmcd_edge.distill.teachers import train_teacher
from cmcd_edge.splitting import make_splits

PATIENCE = 20  # the teacher phase's (teachers.py)
RULES = {f"window {w}" + ("" if p == PATIENCE else ", no early stop"): functools.partial(pipeline_pick, window=w,
                                                                                      patience=p)
         for p in (PATIENCE, EVERY_EPOCH) for w in (1, 3, 5)}


def val_trace(ds, view: str, seed: int, epochs: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-epoch val logits (E, N_val, K) of a teacher trained for all ``epochs``, and the val labels."""
    seen: list[torch.Tensor] = []
    real_acc, real_spec = engine.accuracy_and_loss, engine.PhaseSpec

    def spy(logits, y):
        seen.append(logits.detach().cpu().clone())
        return real_acc(logits, y)

    def full_length(*args, **kwargs):  # the teacher's phase, without its early stop
        return dataclasses.replace(real_spec(*args, **kwargs), patience=EVERY_EPOCH)

    engine.accuracy_and_loss, engine.PhaseSpec = spy, full_length
    try:
        splits = make_splits(ds, seed)
        train_teacher(ds, view, splits, TeacherTraining(epochs), seed=seed, device=torch.device("cpu"),
                      dist=ddp.Dist())
    finally:
        engine.accuracy_and_loss, engine.PhaseSpec = real_acc, real_spec
    return torch.stack(seen).numpy(), np.asarray(ds.labels)[splits.val]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--views", default="fac,pix,kar,fou,mor,zer")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=80)  # DistillConfig.teacher_epochs
    ap.add_argument("--cuts", type=int, default=50)
    ap.add_argument("--old-bn", action="store_true", help="also the conv teachers with torch's BatchNorm")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    ds = datasets.load("builtin:mfeat")
    arms = {"warm start": (students.BatchNorm1d, students.BatchNorm2d)}
    if args.old_bn:
        arms["torch BatchNorm"] = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)
    rng, rows, t0 = np.random.default_rng(0), [], time.perf_counter()
    try:
        for view in args.views.split(","):
            conv = ds.views[view].kind != "vector"
            for arm, (bn1, bn2) in arms.items():
                if arm != "warm start" and not conv:
                    continue  # the mlp never had the warm start: the same bits
                students.BatchNorm1d, students.BatchNorm2d = bn1, bn2
                for seed in range(args.seeds):
                    logits, y = val_trace(ds, view, seed, args.epochs)
                    scores = score_rules(logits, y, args.cuts, rng, RULES)
                    correct, nll = correct_and_nll(logits, y)
                    picks = {r: rule(correct.mean(1), nll.mean(1)) + 1 for r, rule in RULES.items()}
                    rows.append({"view": view, "bn": arm, "seed": seed,
                                 "held_out": {r: float(np.mean(v)) for r, v in scores.items()},
                                 "epoch_on_full_val": picks})
                    print(view, arm, seed, "  ".join(f"{r} {100 * np.mean(v):.2f} (ep {picks[r]})"
                                                     for r, v in scores.items()), flush=True)
    finally:
        students.BatchNorm1d, students.BatchNorm2d = arms["warm start"]
    summary = {}
    for arm in arms:
        mine = [row for row in rows if row["bn"] == arm]
        for r in RULES:
            diff = np.array([row["held_out"][r] - row["held_out"]["window 1"] for row in mine])
            summary[f"{arm}: {r}"] = {
                "mean_held_out": float(np.mean([row["held_out"][r] for row in mine])),
                "minus_window1": float(diff.mean()), "se": float(diff.std(ddof=1) / np.sqrt(len(diff))),
                "runs_better": int((diff > 1e-12).sum()), "runs_worse": int((diff < -1e-12).sum()),
                **{v: float(np.mean([row["held_out"][r] for row in mine if row["view"] == v]))
                   for v in sorted({row["view"] for row in mine})}}
    print(f"\n{'rule':<44} {'held-out val':>12} {'minus window 1':>14}  (se)  better/worse runs  per view")
    for r, s in summary.items():
        views = [k for k in s if k in args.views.split(",")]
        print(f"{r:<44} {100 * s['mean_held_out']:>12.2f} {100 * s['minus_window1']:>+14.2f}  ({100 * s['se']:.2f})"
              f"  {s['runs_better']}/{s['runs_worse']}  " + "  ".join(f"{v} {100 * s[v]:.2f}" for v in views))
    Path(args.out).write_text(json.dumps({"runs": rows, "summary": summary, "cuts": args.cuts, "epochs": args.epochs,
                                          "wall_s": round(time.perf_counter() - t0, 1)}, indent=2) + "\n")


if __name__ == "__main__":
    main()
