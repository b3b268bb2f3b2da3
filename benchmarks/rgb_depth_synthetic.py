"""A small synthetic camera pair for the image -> image case: 4,000 rows, 8 classes, seed 0. Class c is a shape
(c % 4: disc, square, diamond, bar) at a near or far depth (c // 4). The rgb view (3x32x32 uint8, random colours,
brightness slightly lower when far) shows the shape but hides most of the depth; the depth view (1x32x32 float32,
metres, background 3 m) shows both. So a teacher on rgb is weak (about 67%), yet its shapes help a depth student.

    .venv/bin/python benchmarks/rgb_depth_synthetic.py /tmp/u27
    cd /tmp/u27 && cmcd-edge data from-arrays ds --view rgb=rgb.npy --view depth=depth.npy --labels y.npy
    cmcd-edge distill --data ds --source rgb --target depth --teacher-cache tc --out runs/cmcd
    cmcd-edge distill --data ds --source rgb --target depth --method supervised --out runs/sup
    cmcd-edge export runs/cmcd --int8 --out bundle && cmcd-edge bench bundle
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def main(out: Path, n: int = 4000, h: int = 32) -> None:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:h]
    rgb = np.zeros((n, 3, h, h), np.uint8)
    depth = np.zeros((n, 1, h, h), np.float32)
    y = rng.integers(0, 8, n)
    for i in range(n):
        c = y[i]
        cx, cy = rng.uniform(10, 22, 2)
        r = rng.uniform(5, 9)
        shape = c % 4
        if shape == 0:
            m = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
        elif shape == 1:
            m = (abs(xx - cx) < r) & (abs(yy - cy) < r)
        elif shape == 2:
            m = (abs(xx - cx) + abs(yy - cy)) < r
        else:
            m = (abs(xx - cx) < r) & (abs(yy - cy) < r / 3)
        d = 1.0 + (c // 4) * 0.6 + rng.normal(0, 0.15)
        dep = np.full((h, h), 3.0) + rng.normal(0, 0.3, (h, h))
        dep[m] = d
        depth[i, 0] = dep
        col = rng.integers(40, 255, 3)
        bg = rng.integers(0, 80, 3)
        img = np.empty((3, h, h))
        img[:] = bg[:, None, None]
        img[:, m] = col[:, None] * (1.2 - (c // 4) * 0.4)
        img += rng.normal(0, 20, img.shape)
        rgb[i] = np.clip(img, 0, 255).astype(np.uint8)
    out.mkdir(parents=True, exist_ok=True)
    for name, arr in (("rgb", rgb), ("depth", depth), ("y", y)):
        np.save(out / f"{name}.npy", arr)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
