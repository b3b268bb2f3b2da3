"""One teacher as an ExportedProgram (.pt2) and as ONNX (.onnx): the same outputs, student and time? (BENCHMARKS.md,
"A teacher as ONNX".)

The camera-like set of ``loaded_teacher.py`` (6,000 rows of 3x64x64 uint8, a 16-feature target, 5 classes) and its
4-conv CNN (random weights: this measures the teacher's plumbing, not its quality), saved both ways with a dynamic
batch (``torch.onnx.export(..., dynamo=True)``, one file). Each is distilled into the target (``--method cmd``: the
CNN gives embeddings only; 5 epochs, CPU, seed 0), the two interleaved over ``--reps`` rounds. It prints and stores
the largest difference between the two teachers' outputs, each student's test top-1, and the medians of the teacher's
pass over the 6,000 rows (``load_teacher`` timed in-process) and of the whole distill command's wall.

    .venv/bin/python benchmarks/onnx_teacher.py --out benchmarks/results/onnx_teacher.json    # about 50 s on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from loaded_teacher import make_data

ARGS = ["distill", "--source", "cam", "--target", "feat", "--method", "cmd", "--epochs", "5", "--device", "cpu"]


def as_onnx(pt2: Path, out: Path) -> Path:
    program = torch.export.load(str(pt2))
    batch = torch.export.Dim("batch")
    torch.onnx.export(program.module(), (torch.randn(4, 3, 64, 64),), str(out), dynamo=True, external_data=False,
                      dynamic_shapes=({0: batch},), input_names=["x"], output_names=["embedding"])
    return out


def teacher_pass_s(ref: Path, data: Path) -> tuple[float, torch.Tensor]:
    from cmcd_edge import datasets
    from cmcd_edge.distill.user_teacher import load_teacher
    from cmcd_edge.splitting import make_splits

    ds = datasets.load(str(data))
    t = time.perf_counter()
    out = load_teacher(str(ref), ds, "cam", make_splits(ds, 0), torch.device("cpu"))
    return time.perf_counter() - t, out.emb


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        data, pt2 = make_data(tmp)
        onnx_file = as_onnx(pt2, tmp / "teacher.onnx")
        teachers = {"pt2": pt2, "onnx": onnx_file}
        rows: dict[str, dict] = {k: {"teacher_s": [], "wall_s": [], "test_accuracy": None} for k in teachers}
        embs = {}
        for _ in range(a.reps):
            for kind, ref in teachers.items():
                s, embs[kind] = teacher_pass_s(ref, data)
                rows[kind]["teacher_s"].append(s)
                run = tmp / f"run-{kind}"
                t = time.perf_counter()
                subprocess.run([sys.executable, "-m", "cmcd_edge", *ARGS, "--data", str(data), "--teacher", str(ref),
                                "--out", str(run), "--force"], check=True, capture_output=True,
                               env={**os.environ, "PYTHONWARNINGS": "ignore"})
                rows[kind]["wall_s"].append(time.perf_counter() - t)
                rows[kind]["test_accuracy"] = json.loads((run / "metrics.json").read_text())["test_accuracy"]
        diff = float((embs["pt2"] - embs["onnx"]).abs().max() / embs["pt2"].abs().max())
        result = {"max_rel_output_diff": diff, "reps": a.reps,
                  **{k: {**v, "teacher_s_median": statistics.median(v["teacher_s"]),
                         "wall_s_median": statistics.median(v["wall_s"])} for k, v in rows.items()}}
    for k in teachers:
        r = result[k]
        print(f"{k}: teacher pass {r['teacher_s_median']:.2f} s, distill command {r['wall_s_median']:.1f} s, "
              f"student test top-1 {100 * r['test_accuracy']:.2f}%")
    print(f"largest |pt2 - onnx| / max |pt2| over the teachers' outputs: {diff:.1e}")
    a.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
