"""``--teacher-cache``: what the second run of one teacher (another target view) costs with a warm cache and without
one, and whether its result is the same.

Three settings, each a second target after a first:
- camera: a loaded teacher (a 4-conv CNN ExportedProgram over 6,000 rows of 3x64x64 uint8, the data of
  loaded_teacher.py, plus a second 16-feature target ``feat2``), ``distill --method cmd --epochs 5`` (the teacher
  gives embeddings only; its pass is most of the wall);
- mfeat: the built-in teacher (``--teacher train`` on fac), ``distill --target fou`` with default epochs, after zer;
- mfeat select-teacher, 1 seed: ranking fac, pix, kar and mor for target fou, after the same for zer.
The cache is warmed once by the first target; then, ``--reps`` rounds, the second target's run without the cache
and with it, interleaved. Medians of the whole command's wall; every run's result is hashed (distill: the student's
bytes; select-teacher: each candidate's delta and teacher accuracy).

    .venv/bin/python benchmarks/teacher_cache.py --out benchmarks/results/teacher_cache.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from loaded_teacher import make_data


def distill(tmp: Path, args: list[str], cache: Path | None, warm: bool = True) -> dict:
    """One ``distill`` (or ``select-teacher``, when ``args`` starts with it); its result, hashed: the student's bytes,
    or the ranking's views, deltas and teacher accuracies."""
    command = ["select-teacher"] if args[0] == "select-teacher" else ["distill"]
    args = args[1:] if command == ["select-teacher"] else args
    out = Path(tempfile.mkdtemp(dir=tmp)) / ("rank.json" if command == ["select-teacher"] else "run")
    extra = [] if cache is None else ["--teacher-cache", str(cache)]
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "cmcd_edge", *command, *args, *extra, "--device", "cpu", "--out",
                          str(out)], capture_output=True, text=True, cwd=tmp, timeout=1200,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"{command[0]} failed:\n{res.stderr[-2000:]}")
    if cache is not None and warm and "(no teacher" not in res.stderr:
        raise SystemExit(f"the warm cache was not used:\n{res.stderr[-2000:]}")
    if command == ["select-teacher"]:
        ranking = [(r["view"], r["delta"], r["teacher_test_accuracy"]) for r in json.loads(out.read_text())["ranking"]]
        return {"wall_s": wall, "result_sha256": hashlib.sha256(json.dumps(ranking).encode()).hexdigest(),
                "top": ranking[0][0]}
    return {"wall_s": wall, "result_sha256": hashlib.sha256((out / "student.safetensors").read_bytes()).hexdigest(),
            "test_accuracy": json.loads((out / "metrics.json").read_text())["test_accuracy"]}


def settings(tmp: Path) -> dict[str, tuple[list[str], list[str]]]:
    data, teacher = make_data(tmp)
    rng = np.random.default_rng(1)
    y = np.load(tmp / "y.npy")
    np.save(tmp / "feat2.npy", (rng.normal(0, 1, (len(y), 16)) + 0.6 * np.eye(5, 16)[(y + 1) % 5]).astype(np.float32))
    data2 = tmp / "data2"
    subprocess.run([sys.executable, "-m", "cmcd_edge", "data", "from-arrays", str(data2), "--view",
                    f"cam={tmp / 'cam.npy'}", "--view", f"feat={tmp / 'feat.npy'}", "--view",
                    f"feat2={tmp / 'feat2.npy'}", "--labels", str(tmp / "y.npy")], check=True, cwd=tmp,
                   capture_output=True)
    cam = ["--data", str(data2), "--source", "cam", "--teacher", str(teacher), "--method", "cmd", "--epochs", "5"]
    mfeat = ["--data", "builtin:mfeat", "--source", "fac"]
    select = ["select-teacher", "--data", "builtin:mfeat", "--seeds", "1"]
    return {"camera (.pt2 CNN, 6,000 x 3x64x64)": ([*cam, "--target", "feat"], [*cam, "--target", "feat2"]),
            "mfeat (--teacher train on fac)": ([*mfeat, "--target", "zer"], [*mfeat, "--target", "fou"]),
            "mfeat select-teacher, 1 seed": ([*select, "--target", "zer", "--candidates", "fac,pix,kar,mor"],
                                             [*select, "--target", "fou", "--candidates", "fac,pix,kar,mor"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/teacher_cache.json"))
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for name, (first, second) in settings(tmp).items():
            cache = tmp / f"cache-{len(rows)}"
            distill(tmp, first, cache, warm=False)  # warms the cache
            runs: dict[str, list[dict]] = {"without cache": [], "warm cache": []}
            for rep in range(args.reps):
                for mode in runs:
                    r = distill(tmp, second, cache if mode == "warm cache" else None)
                    runs[mode].append(r)
                    print(f"{name}  round {rep + 1}: {mode:>13}  wall {r['wall_s']:5.1f} s", flush=True)
            shas = {r["result_sha256"] for rs in runs.values() for r in rs}
            without, warm = (statistics.median(r["wall_s"] for r in runs[m]) for m in runs)
            rows.append({"setting": name, "second": second, "wall_s_median_without": without,
                         "wall_s_median_warm": warm, "ratio": without / warm,
                         "walls": {m: [r["wall_s"] for r in rs] for m, rs in runs.items()},
                         "same_result_in_every_run": len(shas) == 1})
    print("\n| setting | second run without cache (s), median | with a warm cache (s), median | ratio | "
          "same result in every run |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['setting']} | {r['wall_s_median_without']:.1f} | {r['wall_s_median_warm']:.1f} | "
              f"{r['ratio']:.1f}x | {'yes' if r['same_result_in_every_run'] else 'NO'} |")
    args.out.write_text(json.dumps({"reps": args.reps, "results": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
