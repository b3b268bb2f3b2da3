"""compare with a loaded teacher (``--teacher FILE.pt2``): how long each seed's teacher step takes, for this checkout
and, with ``--baseline DIR`` (another checkout, e.g. a git worktree of an earlier commit), for that code too.

The data: a camera-like source (6,000 rows of 3x64x64 uint8) and a 16-feature target, 5 classes; the teacher: a
4-conv CNN saved as an ExportedProgram with a dynamic batch. ``compare --methods supervised --seeds 3 --epochs 5``
(supervised alone, so the teacher step is most of what differs). Codes interleaved within each round, ``--reps``
rounds; medians of the whole command's wall time and of each seed's teacher seconds (compare's log line).

    git worktree add /tmp/base22 f92aa9e
    .venv/bin/python benchmarks/loaded_teacher.py --baseline /tmp/base22 --out benchmarks/results/loaded_teacher.json
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from ddp_teacher import baseline_args, shim
from torch import nn

ARGS = ["compare", "--source", "cam", "--target", "feat", "--methods", "supervised", "--seeds", "3",
        "--no-upper-bound", "--epochs", "5", "--device", "cpu"]


def make_data(tmp: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    n, k = 6000, 5
    y = rng.integers(0, k, n)
    img = rng.normal(0, 1, (n, 3, 64, 64))
    for c in range(k):
        img[y == c, :, c * 12:c * 12 + 12, :] += 1.0
    np.save(tmp / "cam.npy", np.clip(img * 40 + 128, 0, 255).astype(np.uint8))
    np.save(tmp / "feat.npy", (rng.normal(0, 1, (n, 16)) + 0.6 * np.eye(k, 16)[y]).astype(np.float32))
    np.save(tmp / "y.npy", y)
    subprocess.run([sys.executable, "-m", "cmcd_edge", "data", "from-arrays", str(tmp / "data"), "--view",
                    f"cam={tmp / 'cam.npy'}", "--view", f"feat={tmp / 'feat.npy'}", "--labels", str(tmp / "y.npy")],
                   check=True, cwd=tmp, capture_output=True)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1), nn.ReLU(), nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(),
                        nn.Conv2d(64, 128, 3, 2, 1), nn.ReLU(), nn.Conv2d(128, 128, 3, 1, 1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()  # (B, 128)
    batch = torch.export.Dim("batch")
    teacher = tmp / "teacher.pt2"
    torch.export.save(torch.export.export(net, (torch.randn(4, 3, 64, 64),), dynamic_shapes=({0: batch},)),
                      str(teacher))
    return tmp / "data", teacher


def run_once(pythonpath: Path | None, tmp: Path, data: Path, teacher: Path) -> dict:
    out = Path(tempfile.mkdtemp(dir=tmp)) / "cmp"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "cmcd_edge", *ARGS, "--data", str(data), "--teacher", str(teacher),
                          "--out", str(out)], capture_output=True, text=True, env=env, cwd=tmp, timeout=1200)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"compare failed:\n{res.stderr[-2000:]}")
    seconds = [float(s) for s in re.findall(r"seed \d+: teacher cam test accuracy \S+ \(([\d.]+)s\)", res.stderr)]
    outputs = [hashlib.sha256((out / "teachers" / f"seed{s}" / "teacher_outputs.safetensors").read_bytes()).hexdigest()
               for s in range(3)]
    test = json.loads((out / "results.json").read_text())["methods"]["supervised"]["test_accuracy"]["runs"]
    return {"wall_s": wall, "teacher_s": seconds, "outputs_sha256": outputs, "test_accuracy": test}


def main() -> None:
    args = baseline_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        data, teacher = make_data(tmp)
        codes = {"this checkout": None}
        if args.baseline is not None:
            codes[f"baseline {args.baseline}"] = shim(args.baseline.resolve(), tmp)
        runs: dict[str, list[dict]] = {c: [] for c in codes}
        for rep in range(args.reps):
            for code, path in codes.items():
                r = run_once(path, tmp, data, teacher)
                runs[code].append(r)
                print(f"round {rep + 1}: {code:>30}  wall {r['wall_s']:5.1f} s  teacher s per seed "
                      f"{', '.join(f'{s:.1f}' for s in r['teacher_s'])}", flush=True)
    rows = []
    print("\n| code | compare wall (s), median | runs (s) | teacher s per seed (medians) | same outputs and "
          "accuracies in every run |\n|---|---|---|---|---|")
    first = next(iter(runs.values()))[0]
    for code, rs in runs.items():
        walls = [r["wall_s"] for r in rs]
        per_seed = [statistics.median(r["teacher_s"][i] for r in rs) for i in range(3)]
        same = all(r["outputs_sha256"] == first["outputs_sha256"] and r["test_accuracy"] == first["test_accuracy"]
                   for r in rs)
        rows.append({"code": code, "wall_s_median": statistics.median(walls), "wall_s": walls,
                     "teacher_s_median_per_seed": per_seed, "same_outputs_and_accuracies": same})
        print(f"| {code} | {statistics.median(walls):.1f} | {', '.join(f'{w:.1f}' for w in walls)} | "
              f"{', '.join(f'{s:.1f}' for s in per_seed)} | {'yes' if same else 'NO'} |")
    Path(args.out).write_text(json.dumps({"args": ARGS, "results": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
