"""A larger paired dataset than mfeat, for the pipeline at scale: 20,000 rows, a 3x32x32 image source (class
prototype x 0.6 + unit noise), a 6x128 sequence target (prototype x 0.25 + unit noise: weak per-sample signal, the
"cheap sensor"), half the rows unlabeled (label -1), 10 classes, seed 0.

    .venv/bin/python benchmarks/scale_synthetic.py /tmp/scale/arrays
    .venv/bin/cmcd-edge data from-arrays /tmp/scale/ds --view cam=/tmp/scale/arrays/cam.npy:image \\
        --view imu=/tmp/scale/arrays/imu.npy:sequence --labels /tmp/scale/arrays/labels.npy
    .venv/bin/cmcd-edge distill --data /tmp/scale/ds --source cam --target imu --out /tmp/scale/run
    .venv/bin/cmcd-edge export /tmp/scale/run --out /tmp/scale/bundle --int8 --fp16
    .venv/bin/cmcd-edge bench /tmp/scale/bundle --batch 1,8
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def main(out: Path, n: int = 20000, classes: int = 10) -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, classes, n)
    proto_img = rng.normal(size=(classes, 3, 32, 32)).astype(np.float32)
    proto_seq = rng.normal(size=(classes, 6, 128)).astype(np.float32)
    rng.normal(size=(n,))  # kept so the arrays match the ones BENCHMARKS.md was measured on
    cam = (proto_img[y] * 0.6 + rng.normal(size=(n, 3, 32, 32))).astype(np.float32)
    imu = (proto_seq[y] * 0.25 + rng.normal(size=(n, 6, 128))).astype(np.float32)
    labels = y.copy()
    labels[rng.random(n) < 0.5] = -1
    out.mkdir(parents=True, exist_ok=True)
    for name, arr in (("cam", cam), ("imu", imu), ("labels", labels)):
        np.save(out / f"{name}.npy", arr)


if __name__ == "__main__":
    main(Path(sys.argv[1]), *(int(a) for a in sys.argv[2:3]))  # optional row count (20,000)
