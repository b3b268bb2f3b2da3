"""Why ``bench`` takes several bundles: the p50 ratio of two identical bundles (one bundle copied twice, so the true
ratio is 1) measured by two ``bench`` runs, one after the other, against one ``bench A B`` run that interleaves them.

Each round runs, as fresh processes in this order, ``bench A``, ``bench B`` and ``bench A B`` (fp32, batch 1,
``--duration`` seconds a case); the ratio p50(B) / p50(A) of each way is printed per round, then the median, the
spread (max / min) and the largest distance from 1 over the rounds.

    .venv/bin/python benchmarks/bench_pairs.py BUNDLE --out benchmarks/results/bench_pairs.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CLI = [str(Path(sys.executable).with_name("cmcd-edge"))]


def p50s(bundles: list[Path], out: Path, duration: float) -> dict[str, float]:
    subprocess.run([*CLI, "-q", "bench", *map(str, bundles), "--variants", "fp32", "--batch", "1", "--no-accuracy",
                    "--duration", str(duration), "--out", str(out)], check=True, stdout=subprocess.DEVNULL)
    doc = json.loads(out.read_text())
    label = doc["bundles"][0]["label"] if len(bundles) == 1 else None
    return {r.get("bundle", label): r["p50_ms"] for r in doc["results"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--duration", type=float, default=1.0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    a, b = tmp / "A", tmp / "B"
    shutil.copytree(args.bundle, a)
    shutil.copytree(args.bundle, b)
    rows = []
    for r in range(args.rounds):
        sep_a = p50s([a], tmp / "a.json", args.duration)["A"]
        sep_b = p50s([b], tmp / "b.json", args.duration)["B"]
        joint = p50s([a, b], tmp / "ab.json", args.duration)
        rows.append({"round": r, "separate": sep_b / sep_a, "interleaved": joint["B"] / joint["A"],
                     "separate_p50_ms": [sep_a, sep_b], "interleaved_p50_ms": [joint["A"], joint["B"]]})
        print(f"round {r}: separate runs {rows[-1]['separate']:.3f}  one interleaved run {rows[-1]['interleaved']:.3f}",
              flush=True)
    summary = {}
    for way in ("separate", "interleaved"):
        v = [row[way] for row in rows]
        summary[way] = {"median": statistics.median(v), "spread": max(v) / min(v),
                        "worst_off_1": max(abs(x - 1) for x in v)}
        print(f"{way:>12}: median ratio {summary[way]['median']:.3f}  spread (max/min) {summary[way]['spread']:.3f}  "
              f"farthest from 1: {summary[way]['worst_off_1']:.3f}")
    if args.out:
        args.out.write_text(json.dumps({"bundle": str(args.bundle), "duration_s": args.duration, "rounds": rows,
                                        "summary": summary}, indent=1))
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
