"""Distill training speed per method: paired rows of the distill batch per second of training step (forward, backward,
optimizer; evaluation and checkpoints excluded), as metrics.json's `distill_samples_per_s` records it. One teacher
(fac, seed 0) shared by every run; methods interleaved, `--reps` rounds, medians reported.

    .venv/bin/python benchmarks/train_speed.py --device cpu --out benchmarks/results/train_speed.json

On a CUDA machine `--device cuda` measures the same with autocast (bf16, or fp16 with loss scaling).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import tempfile
from pathlib import Path

import numpy as np
import torch

from cmcd_edge.distill.compare import teacher_for_seed
from cmcd_edge.distill.config import DistillConfig
from cmcd_edge.distill.pipeline import run_distill

METHODS = ("cmcd", "cmd", "cmc", "kd", "fitnet", "rkd", "crd", "supervised")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--target", default="zer")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    base = DistillConfig(data="builtin:mfeat", source="fac", target=args.target, device=args.device)
    speeds: dict[str, list[float]] = {m: [] for m in METHODS}
    meta = {}
    with tempfile.TemporaryDirectory() as tmp:
        teacher = teacher_for_seed(base, Path(tmp) / "teacher")
        for _ in range(args.reps):
            for m in METHODS:
                metrics = run_distill(dataclasses.replace(base, method=m), None, teacher=teacher).metrics
                speeds[m].append(metrics["distill_samples_per_s"])
                meta = {k: metrics[k] for k in ("train_device", "train_autocast", "params")}
    res = {"target": args.target, "batch_size": base.batch_size, "reps": args.reps, **meta,
           "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
           "threads": torch.get_num_threads(),
           "samples_per_s": {m: {"median": float(np.median(v)), "runs": v} for m, v in speeds.items()}}
    Path(args.out).write_text(json.dumps(res, indent=1))
    print(f"fac -> {args.target}, distill batch {base.batch_size}, {res['train_device']}"
          f"{', ' + res['train_autocast'] + ' autocast' if res['train_autocast'] else ''}, torch {res['torch']}, "
          f"{res['threads']} threads; median of {args.reps} interleaved rounds")
    for m, v in res["samples_per_s"].items():
        print(f"  {m:<11} {v['median']:>9,.0f} samples/s   (runs: {', '.join(f'{x:,.0f}' for x in v['runs'])})")


if __name__ == "__main__":
    main()
