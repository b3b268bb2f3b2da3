"""The machine's speed over time: one bundle's FP32 model (raw ``session.run``, batch 1, 1 thread) timed in
consecutive 0.5 s blocks in one process; the median of each block. On the build machine (a cloud VM) the blocks sit
at two levels and switch every few seconds: why ``bench`` interleaves cases and why two bench runs disagree.

    python benchmarks/speed_levels.py /tmp/cmcd-demo/bundle --blocks 30 --runs 2
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--blocks", type=int, default=30)
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args()
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(args.bundle / "model.fp32.onnx"), so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    x = np.random.default_rng(0).normal(size=(1, *inp.shape[1:])).astype(np.float32)
    for _ in range(args.runs):
        medians = []
        for _ in range(args.blocks):
            t, end = [], time.perf_counter() + 0.5
            while time.perf_counter() < end:
                t0 = time.perf_counter_ns()
                sess.run(None, {inp.name: x})
                t.append(time.perf_counter_ns() - t0)
            medians.append(np.median(t) / 1e3)
        print(" ".join(f"{m:.1f}" for m in medians), "us")


if __name__ == "__main__":
    main()
