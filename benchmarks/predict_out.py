"""``predict`` over a large input file: wall and peak memory (RSS) of each output (.json, .csv, .npz, printed lines),
for this code and, with ``--baseline``, a worktree of the code before (JSON and printed lines only: it had no other
format). Fresh processes, interleaved, ``--rounds`` rounds; medians. Peak RSS from GNU time (``/usr/bin/time -f %M``).

    python benchmarks/predict_out.py BUNDLE --rows 200000 --baseline /tmp/base24 --out benchmarks/results/predict_out.json
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

import numpy as np
from ddp_teacher import shim


def one(pythonpath: Path | None, bundle: str, x: Path, out: str | None) -> tuple[float, float]:
    args = ["/usr/bin/time", "-f", "%M", sys.executable, "-m", "cmcd_edge", "predict", bundle, str(x)] + \
        (["--out", out] if out else [])
    env = {**os.environ, **({"PYTHONPATH": str(pythonpath)} if pythonpath else {})}
    t0 = time.perf_counter()  # cwd: the input's folder, where no ./cmcd_edge shadows the shim
    res = subprocess.run(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=True, env=env,
                         cwd=x.parent)
    return time.perf_counter() - t0, int(res.stderr.strip().splitlines()[-1]) / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle")
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--baseline", type=Path, help="a worktree of the code before, run with this python")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    shape = json.loads((Path(args.bundle) / "manifest.json").read_text())["input"]["shape"][1:]
    x = tmp / "x.npy"
    np.save(x, np.random.default_rng(0).normal(size=(args.rows, *shape)).astype(np.float32))
    bundle = str(Path(args.bundle).resolve())
    base = shim(args.baseline.resolve(), tmp) if args.baseline else None
    cases = {f"now {f}": (None, str(tmp / f"p{f}") if f != "print" else None)
             for f in (".json", ".csv", ".npz", "print")}
    if base:
        cases |= {f"before {f}": (base, str(tmp / f"b{f}") if f != "print" else None) for f in (".json", "print")}
    got: dict[str, list[tuple[float, float]]] = {k: [] for k in cases}
    for _ in range(args.rounds):
        for name, (path, out) in cases.items():
            got[name].append(one(path, bundle, x, out))
    rows = {k: {"wall_s": statistics.median(w for w, _ in v), "peak_rss_mb": statistics.median(m for _, m in v)}
            for k, v in got.items()}
    for k, v in rows.items():
        print(f"{k:>14}: {v['wall_s']:6.2f} s  peak RSS {v['peak_rss_mb']:7.0f} MB")
    if args.out:
        args.out.write_text(json.dumps({"bundle": args.bundle, "rows": args.rows, "rounds": args.rounds,
                                        "results": rows}, indent=1))


if __name__ == "__main__":
    main()
