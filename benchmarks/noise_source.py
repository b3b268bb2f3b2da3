"""A control for issue 3's "CMCD beats supervised-only": builtin:mfeat's zer and fou views beside a pure-noise source
view (216-d like fac, no class signal), so a compare from it measures what a teacher adds through the train-split
labels it is trained on alone (the protocol gives the teacher all of them), with nothing from its view.

    python benchmarks/noise_source.py /tmp/mfeat-noise
    cmcd-edge compare --data /tmp/mfeat-noise --source noise --target zer --methods cmcd,kd,fitnet,supervised --seeds 3
"""

from __future__ import annotations

import sys

import numpy as np

from cmcd_edge import datasets


def main() -> None:
    ds = datasets.load("builtin:mfeat")
    noise = np.random.default_rng(0).normal(size=(ds.n_rows, 216)).astype(np.float32)
    views = {"noise": datasets.ViewSpec(noise, "vector"),
             **{v: datasets.ViewSpec(np.asarray(ds.view(v), dtype=np.float32), "vector") for v in ("zer", "fou")}}
    datasets.write_dataset(sys.argv[1], views, np.asarray(ds.labels), list(ds.classes))
    print(f"wrote {sys.argv[1]}")


if __name__ == "__main__":
    main()
