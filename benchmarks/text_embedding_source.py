"""A source no teacher file can take (text through a tokenizer), brought as its embeddings in a vector view: the
README's two ways, on a synthetic 384-d 'text embedding' (5 classes, noisy class centres) -> [3, 40] imu set, 1,000
rows, 10% labels, 20 epochs, seed 0. Prints each run's test top-1.

    python benchmarks/text_embedding_source.py /tmp/tx
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np


def main(root: str) -> None:
    out = Path(root)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    n = 1000
    y = rng.integers(0, 5, n)
    centers = rng.normal(size=(5, 384))
    np.save(out / "text_emb.npy", (centers[y] + rng.normal(0, 2.0, (n, 384))).astype(np.float32))
    np.save(out / "imu.npy", (rng.normal(size=(n, 3, 40)) + y[:, None, None] * 0.15).astype(np.float32))
    np.save(out / "y.npy", y)
    (out / "emb.py").write_text("def identity():\n    return lambda x: x\n")
    cli = [sys.executable, "-m", "cmcd_edge"]
    subprocess.run([*cli, "data", "from-arrays", str(out / "ds"), "--view", f"text={out / 'text_emb.npy'}",
                    "--view", f"imu={out / 'imu.npy'}", "--labels", str(out / "y.npy")], check=True)
    base = [*cli, "distill", "--data", str(out / "ds"), "--source", "text", "--target", "imu", "--epochs", "20",
            "--force"]
    for name, extra in (("builtin", []), ("identity", ["--teacher", "emb:identity", "--method", "cmd"]),
                        ("supervised", ["--method", "supervised"])):
        res = subprocess.run([*base, *extra, "--out", str(out / name)], check=True, capture_output=True, text=True,
                             env={"PYTHONPATH": str(out), "PATH": "/usr/bin:/bin"})
        print(name, res.stdout.strip().splitlines()[-1] if res.stdout.strip() else res.stderr.strip().splitlines()[-1])


if __name__ == "__main__":
    main(sys.argv[1])
