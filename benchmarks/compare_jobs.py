"""`compare --jobs 2` against `--jobs 1`: the 8-method x 3-seed mfeat compare, fresh processes, interleaved.

    python benchmarks/compare_jobs.py --target zer --rounds 2 --out benchmarks/results/compare_jobs.json

Prints and writes each round's wall, the medians and their ratio, whether each setting gave the same figures in every
round (CPU runs are deterministic for a thread count), and each method's mean test top-1 under both (a --jobs 2 run
trains on one thread, so its bits, and figures, are not --jobs 1's).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="zer")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", required=True, type=Path)
    a = ap.parse_args()
    walls: dict[int, list[float]] = {1: [], 2: []}
    runs: dict[int, list[dict]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            for jobs in ((1, 2) if r % 2 == 0 else (2, 1)):
                out = Path(tmp) / f"r{r}-j{jobs}"
                t0 = time.perf_counter()
                subprocess.run([sys.executable, "-m", "cmcd_edge", "-q", "compare", "--data", "builtin:mfeat",
                                "--source", "fac", "--target", a.target, "--seeds", "3", "--jobs", str(jobs),
                                "--out", str(out)], check=True, stdout=subprocess.DEVNULL)
                walls[jobs].append(round(time.perf_counter() - t0, 1))
                res = json.loads((out / "results.json").read_text())
                runs[jobs].append({m: v["test_accuracy"]["runs"] for m, v in res["methods"].items()})
                print(f"round {r}: --jobs {jobs} {walls[jobs][-1]:.1f} s", flush=True)
    med = {j: statistics.median(w) for j, w in walls.items()}
    doc = {"target": a.target, "walls_s": walls, "median_s": med, "ratio": round(med[1] / med[2], 2),
           "same_figures_every_round": {j: all(r == runs[j][0] for r in runs[j]) for j in runs},
           "mean_test_top1": {j: {m: round(100 * statistics.mean(v), 2) for m, v in runs[j][0].items()} for j in runs}}
    a.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"median --jobs 1 {med[1]:.1f} s, --jobs 2 {med[2]:.1f} s ({med[1] / med[2]:.2f}x); same figures every "
          f"round: {doc['same_figures_every_round']}")


if __name__ == "__main__":
    main()
