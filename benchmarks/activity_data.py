"""A synthetic activity set: a 3-axis accelerometer source (clean class frequency) and a noisy 2-axis gyroscope
target, 3,000 windows of 128 steps, 6 classes, 30 subjects (groups). With 10% labels the gyroscope alone reaches about
24% top-1 (chance 16.7%); distilled from the accelerometer, 96% (BENCHMARKS.md, session 24).

    python benchmarks/activity_data.py /tmp/har
"""

from __future__ import annotations

import sys

import numpy as np

from cmcd_edge import datasets


def make(out: str) -> datasets.Dataset:
    rng = np.random.default_rng(0)
    n, k = 3000, 6
    y = rng.integers(0, k, n)
    t = np.linspace(0, 1, 128)
    freq = 1 + y * 0.7
    acc = np.stack([np.sin(2 * np.pi * freq[:, None] * t * (c + 1) + rng.normal(0, 0.3, (n, 1))) for c in range(3)],
                   1) + rng.normal(0, 0.8, (n, 3, 128))
    gyro = np.stack([np.cos(2 * np.pi * freq[:, None] * t * (c + 1)) for c in range(2)], 1) * 0.5 + \
        rng.normal(0, 1.2, (n, 2, 128))
    rng.random(n)  # the draw that made the sparse-label variant's mask: keeps the groups below as they were made
    groups = rng.integers(0, 30, n)
    views = {"acc": datasets.ViewSpec(acc.astype(np.float32), "sequence"),
             "gyro": datasets.ViewSpec(gyro.astype(np.float32), "sequence")}
    return datasets.write_dataset(out, views, y, ["walk", "run", "sit", "stand", "up", "down"], name="activity",
                                  groups=groups, force=True)


if __name__ == "__main__":
    print(make(sys.argv[1]).root)
