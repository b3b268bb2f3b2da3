"""select-teacher with a view's own teacher (``--teacher VIEW=FILE``) against the teacher it trains itself, when both
are the same network (BENCHMARKS.md, "select-teacher with your own teacher").

``distill --data builtin:mfeat --source fac --target zer`` trains fac's teacher (seed 0, 80 epochs); this script
rebuilds it from the run's teacher.json and teacher.safetensors, saves it as ONNX (outputs ``embedding`` and
``logits``), and ranks fac for zer twice on seed 0: with ``--teacher-epochs 80`` (select-teacher trains the same
teacher again: same seed, splits and code) and with ``--teacher fac=teacher.onnx``. The two I(T;S), delta and teacher
top-1 should agree up to onnxruntime's rounding against torch's.

    .venv/bin/python benchmarks/select_own_teacher.py /tmp/own --out benchmarks/results/select_own_teacher.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

CLI = [sys.executable, "-m", "cmcd_edge"]
RANK = ["select-teacher", "--data", "builtin:mfeat", "--target", "zer", "--candidates", "fac", "--seeds", "1",
        "--device", "cpu"]


class Both(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        logits, emb = self.net.forward_both(x)
        return emb, logits


def main() -> None:
    from cmcd_edge.distill import students

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("work", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    run = a.work / "run"
    subprocess.run([*CLI, "distill", "--data", "builtin:mfeat", "--source", "fac", "--target", "zer", "--out", str(run),
                    "--force"], check=True, capture_output=True)
    spec = json.loads((run / "teacher.json").read_text())
    net = students.build(students.NetSpec.from_json({k: v for k, v in spec.items() if k not in ("kind", "view")}))
    net.load_state_dict(load_file(run / "teacher.safetensors"))
    onnx_file = a.work / "teacher.onnx"
    batch = torch.export.Dim("batch")
    torch.onnx.export(Both(net.eval()), (torch.randn(4, *net.spec.in_shape),), str(onnx_file), dynamo=True,
                      external_data=False, dynamic_shapes=({0: batch},), input_names=["x"],
                      output_names=["embedding", "logits"])
    rows = {}
    for name, extra in (("trained by select-teacher (80 epochs)", ["--teacher-epochs", "80"]),
                        ("--teacher fac=teacher.onnx", ["--teacher", f"fac={onnx_file}"])):
        out = a.work / f"rank-{len(rows)}.json"
        t = time.perf_counter()
        subprocess.run([*CLI, *RANK, *extra, "--out", str(out)], check=True, capture_output=True)
        r = json.loads(out.read_text())["ranking"][0]
        rows[name] = {"i_ts": r["mi_teacher_student"]["mean"], "i_sy": r["mi_student_label"]["mean"],
                      "delta": r["delta"], "teacher_top1": r["teacher_test_accuracy"]["mean"],
                      "wall_s": round(time.perf_counter() - t, 1)}
        print(f"{name}: I(T;S) {rows[name]['i_ts']:.4f}, I(S;Y) {rows[name]['i_sy']:.4f}, delta "
              f"{rows[name]['delta']:+.4f}, teacher top-1 {100 * rows[name]['teacher_top1']:.2f}%, "
              f"{rows[name]['wall_s']} s", flush=True)
    a.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
