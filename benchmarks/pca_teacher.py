"""A label-free teacher for mfeat's fac view: the whitened top-64 principal components of fac, fitted on the train
rows of one seed's split (PCA_TEACHER_SEED, default 0) and on no label at all. Distilling from it shows what the fac
view itself teaches a 10%-label target student, without the train labels a built-in teacher learns and passes on
(BENCHMARKS.md, session 20). Has no logits, so only the representation losses (cmd, cmc, fitnet) can use it.

    PYTHONPATH=benchmarks PCA_TEACHER_SEED=0 cmcd-edge compare --data builtin:mfeat --source fac --target zer \
        --teacher pca_teacher:factory --methods cmd,cmc,fitnet,supervised --seed 0 --seeds 1 --no-upper-bound --out D0
    (seeds 1 and 2 the same, each with its own PCA_TEACHER_SEED), then
    python benchmarks/pca_teacher.py --label-free 'D{seed}' --built-in benchmarks/results/compare-zer
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

DIMS = 64


class PCATeacher(nn.Module):
    def __init__(self, mean: np.ndarray, proj: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("mean", torch.from_numpy(mean.astype(np.float32)))  # (F,)
        self.register_buffer("proj", torch.from_numpy(proj.astype(np.float32)))  # (F, DIMS), whitening included

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) @ self.proj  # (B, DIMS)


def factory() -> nn.Module:
    from cmcd_edge import datasets
    from cmcd_edge.splitting import make_splits

    ds = datasets.load("builtin:mfeat")
    seed = int(os.environ.get("PCA_TEACHER_SEED", "0"))
    train = make_splits(ds, seed, labeled_fraction=0.1).train  # every train row, labeled or not; labels unused
    x = datasets.read_rows(ds.view("fac"), train).astype(np.float64)
    mean, scale = x.mean(0), x.std(0) + 1e-8
    _, s, vt = np.linalg.svd((x - mean) / scale, full_matrices=False)
    proj = (vt[:DIMS].T / (s[:DIMS] / np.sqrt(len(x) - 1))) / scale[:, None]  # standardise, rotate, whiten
    return PCATeacher(mean, proj)


def main() -> None:
    ap = argparse.ArgumentParser(description="label-free (PCA) teacher against the built-in one, seed by seed")
    ap.add_argument("--label-free", required=True, help="compare folders, '{seed}' standing for the seed")
    ap.add_argument("--built-in", type=Path, required=True, help="the stored compare of the same target, seeds 0-2")
    ap.add_argument("--seeds", default="0,1,2")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    built = json.loads((args.built_in / "results.json").read_text())
    free = {s: json.loads((Path(args.label_free.format(seed=s)) / "results.json").read_text()) for s in seeds}
    sup = [free[s]["methods"]["supervised"]["test_accuracy"]["runs"][0] for s in seeds]
    sup_built = [built["methods"]["supervised"]["test_accuracy"]["runs"][built["seeds"].index(s)] for s in seeds]
    if sup != sup_built:
        raise SystemExit(f"supervised differs from the stored compare ({sup} vs {sup_built}): not the same protocol")
    print(f"{built['target']}: test top-1 (%), mean +- sd over seeds {seeds}; gain = method - supervised, per seed")
    print(f"{'method':<10}{'PCA teacher (no labels)':>26}{'gain':>16}{'built-in teacher':>20}{'gain':>16}")
    for m in ("cmd", "cmc", "fitnet"):
        a = np.array([free[s]["methods"][m]["test_accuracy"]["runs"][0] for s in seeds]) * 100
        b = np.array([built["methods"][m]["test_accuracy"]["runs"][built["seeds"].index(s)] for s in seeds]) * 100
        base = np.array(sup) * 100
        print(f"{m:<10}{a.mean():>19.1f} +- {a.std(ddof=1):.1f}{(a - base).mean():>+10.1f} +- {(a - base).std(ddof=1):.1f}"
              f"{b.mean():>13.1f} +- {b.std(ddof=1):.1f}{(b - base).mean():>+10.1f} +- {(b - base).std(ddof=1):.1f}")
    base = np.array(sup) * 100
    print(f"{'supervised':<10}{base.mean():>19.1f} +- {base.std(ddof=1):.1f}")
    tacc = built["teacher_test_accuracy"]["mean"] * 100
    print(f"(built-in teacher: trained on every fac train label, test top-1 {tacc:.1f}%)")


if __name__ == "__main__":
    main()
