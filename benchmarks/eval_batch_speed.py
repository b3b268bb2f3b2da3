"""Inference rows/s of the default networks by batch size on the CPU (2 threads, random rows), and the batch that
``students.eval_batch`` picks. Batch sizes interleaved within each round, ``--reps`` rounds, medians reported.

    .venv/bin/python benchmarks/eval_batch_speed.py --out benchmarks/results/eval_batch_speed.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from cmcd_edge.distill import students

NETS = [("image", (3, 64, 64), "student"), ("image", (3, 64, 64), "teacher"), ("image", (3, 32, 32), "teacher"),
        ("image", (3, 32, 32), "student"), ("image", (1, 16, 15), "teacher"), ("sequence", (6, 128), "teacher"),
        ("vector", (216,), "teacher")]
BATCHES = (1024, 256, 128, 64, 32, 16)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--rows", type=int, default=2048)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(2)
    cpu = torch.device("cpu")
    results = []
    print("| network (largest activation a row) | " + " | ".join(f"{b} rows" for b in BATCHES) + " | eval_batch |")
    print("|---|" + "---|" * (len(BATCHES) + 1))
    for kind, shape, role in NETS:
        spec = students.default_spec(kind, shape, 10, role=role)
        net = students.train_layout(students.build(spec)).eval()
        x = torch.randn(args.rows, *shape)
        speeds: dict[int, list[float]] = {b: [] for b in BATCHES}
        with torch.no_grad():
            net(x[:64])  # warm-up
            for _ in range(args.reps):
                for b in BATCHES:
                    t = time.perf_counter()
                    for i in range(0, args.rows, b):
                        net(x[i:i + b])
                    speeds[b].append(args.rows / (time.perf_counter() - t))
        med = {b: statistics.median(v) for b, v in speeds.items()}
        pick = students.eval_batch(spec, cpu)
        largest_kb = students.activations(spec).largest * 4 / 1024
        name = f"{'x'.join(map(str, shape))} {spec.arch} {role} ({largest_kb:.0f} KB)"
        results.append({"network": name, "rows_per_s": {str(b): round(v) for b, v in med.items()}, "eval_batch": pick})
        print(f"| {name} | " + " | ".join(f"{med[b]:,.0f}" for b in BATCHES) + f" | {pick} |")
    with open(args.out, "w") as f:
        json.dump({"threads": 2, "rows": args.rows, "reps": args.reps, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
