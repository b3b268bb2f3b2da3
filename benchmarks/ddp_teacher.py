"""The built-in teacher under torchrun: one process (2 threads) against `torchrun --nproc_per_node 2` (1 thread a rank),
for this checkout and, with ``--baseline DIR`` (another checkout, e.g. a git worktree of an earlier commit), for that
code too. A teacher-heavy distill: builtin:mfeat pix (the 16x15 image view, a cnn2d teacher) -> fou, 15 teacher epochs
without early stop, 1 student epoch, no fine-tune. Configurations interleaved within each round, ``--reps`` rounds,
medians of the run's own wall_s (metrics.json: load, teacher, student, final metrics; not the interpreter start).

    git worktree add /tmp/base 6896904
    .venv/bin/python benchmarks/ddp_teacher.py --baseline /tmp/base --out benchmarks/results/ddp_teacher.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = {"epochs": 1, "finetune_epochs": 0, "teacher_epochs": 15, "patience": 100}
ARGS = ["distill", "--data", "builtin:mfeat", "--source", "pix", "--target", "fou", "--device", "cpu"]
LAUNCH = {"1 process": [sys.executable, "-m", "cmcd_edge"],
          "torchrun x2": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
                          "cmcd_edge"]}


def shim(checkout: Path, tmp: Path) -> Path:
    """A folder whose cmcd_edge package is ``checkout``'s code (cmcd_edge/ plus the stage folders that setuptools maps
    into it), to put first on PYTHONPATH ahead of this venv's editable install."""
    pkg = tmp / "shim" / "cmcd_edge"
    pkg.mkdir(parents=True)
    for entry in (checkout / "cmcd_edge").iterdir():
        (pkg / entry.name).symlink_to(entry)
    for stage in ("distill", "calib", "export", "runtime"):
        (pkg / stage).symlink_to(checkout / stage)
    probe = subprocess.run([sys.executable, "-c", "import cmcd_edge.distill.teachers as t; print(t.__file__)"],
                           capture_output=True, text=True, cwd=tmp, env={**os.environ, "PYTHONPATH": str(pkg.parent)})
    if not probe.stdout.startswith(str(pkg)):
        raise SystemExit(f"the shim does not take precedence: cmcd_edge.distill.teachers from {probe.stdout.strip()}")
    return pkg.parent


def run_once(launch: list[str], pythonpath: Path | None, tmp: Path, cfg: Path) -> dict:
    out = Path(tempfile.mkdtemp(dir=tmp)) / "run"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    # cwd tmp: from this checkout's root, `-m cmcd_edge` would find ./cmcd_edge ahead of PYTHONPATH's shim
    res = subprocess.run([*launch, *ARGS, "--config", str(cfg), "--out", str(out)], capture_output=True, text=True,
                         env=env, cwd=tmp, timeout=1200)
    if res.returncode != 0:
        raise SystemExit(f"{launch[-1]} failed:\n{res.stderr[-2000:]}")
    m = json.loads((out / "metrics.json").read_text())
    return {"wall_s": m["wall_s"], "teacher_test_accuracy": m["teacher_test_accuracy"],
            "test_accuracy": m["test_accuracy"]}


def baseline_args() -> argparse.Namespace:
    """--out, --baseline DIR and --reps: the flags of a benchmark of this checkout against another."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--baseline", type=Path, default=None, help="another checkout to measure the same way")
    ap.add_argument("--reps", type=int, default=3)
    return ap.parse_args()


def main() -> None:
    args = baseline_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        cfg = tmp / "cfg.json"
        cfg.write_text(json.dumps(CONFIG))
        codes = {"this checkout": None}
        if args.baseline is not None:
            codes[f"baseline {args.baseline}"] = shim(args.baseline.resolve(), tmp)
        runs: dict[tuple[str, str], list[dict]] = {(c, m): [] for c in codes for m in LAUNCH}
        for rep in range(args.reps):
            for code, path in codes.items():
                for mode, launch in LAUNCH.items():
                    r = run_once(launch, path, tmp, cfg)
                    runs[(code, mode)].append(r)
                    print(f"round {rep + 1}: {code:>30} {mode:>12}  wall {r['wall_s']:6.1f} s", flush=True)
    rows = []
    print("\n| code | launch | wall_s (median) | runs | teacher test top-1 | student test top-1 |\n|---|---|---|---|---|---|")
    for (code, mode), rs in runs.items():
        walls = [r["wall_s"] for r in rs]
        row = {"code": code, "launch": mode, "wall_s_median": statistics.median(walls), "wall_s": walls,
               "teacher_test_accuracy": rs[0]["teacher_test_accuracy"], "test_accuracy": rs[0]["test_accuracy"]}
        rows.append(row)
        print(f"| {code} | {mode} | {row['wall_s_median']:.1f} | {', '.join(f'{w:.1f}' for w in walls)} | "
              f"{100 * row['teacher_test_accuracy']:.1f}% | {100 * row['test_accuracy']:.1f}% |")
    Path(args.out).write_text(json.dumps({"config": CONFIG, "args": ARGS, "results": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
