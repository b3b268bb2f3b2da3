"""Run-to-run determinism on this CPU, with and without ``engine.settle_cpu_math`` (the warm-up of MKL's vector math).

Two probes, each in fresh processes (the fault is in the first multi-threaded call of a process), interleaved
(with, without, with, ...) so load drifts hit both alike:

- ``sqrt``: the process's first ``torch.sqrt`` of 8,192 floats against the correctly rounded result; a process
  counts as faulty when any element is more than 1 ulp off (MKL's accurate kernel is within 1 ulp).
- ``distill``: one small distill run (synthetic paired data, the kill -9 test's settings); counts the distinct
  teacher weight files over the runs (a deterministic trainer writes one).

    .venv/bin/python benchmarks/determinism.py --procs 30 --runs 10 --out benchmarks/results/determinism.json

Without the warm-up the fault is a race, so its rate moves with the host's load; on AMD hosts (MKL's generic path)
neither probe has shown it.
"""

from __future__ import annotations

import argparse
import collections
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

SQRT = """
import numpy as np, torch
from cmcd_edge.distill import engine
if {settle}:
    engine.settle_cpu_math()
x = torch.rand(512, 16, generator=torch.Generator().manual_seed(0)) ** 4 * 1e-3
ref = np.sqrt(x.numpy().astype(np.float64)).astype(np.float32)
y = torch.sqrt(x).numpy()
print(int((np.abs(y.view(np.int32) - ref.view(np.int32)) > 1).sum()))
"""

DISTILL = """
import hashlib, sys
from pathlib import Path
from cmcd_edge.distill import engine
from cmcd_edge.distill.config import DistillConfig
from cmcd_edge.distill.pipeline import run_distill
if not {settle}:
    engine.settle_cpu_math = lambda: None
out = Path(sys.argv[1])
run_distill(DistillConfig(data=sys.argv[2], source="src", target="tgt", epochs=40, teacher_epochs=20,
                          finetune_epochs=60, patience=100), out)
print(hashlib.sha1((out / "teacher.safetensors").read_bytes()).hexdigest()[:12])
"""


def _python(code: str, *args: str) -> str:
    res = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
    return res.stdout.strip().splitlines()[-1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--procs", type=int, default=30, help="fresh processes per arm for the sqrt probe")
    ap.add_argument("--runs", type=int, default=10, help="distill runs per arm")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.helpers import synthetic_paired

    arms = {"without warm-up": False, "with warm-up": True}
    faulty = {arm: 0 for arm in arms}
    teachers: dict[str, collections.Counter] = {arm: collections.Counter() for arm in arms}
    for _ in range(args.procs):
        for arm, settle in arms.items():
            faulty[arm] += int(_python(SQRT.format(settle=settle))) > 0
    with tempfile.TemporaryDirectory() as tmp:
        data = str(synthetic_paired(Path(tmp) / "toy").root)
        for i in range(args.runs):
            for arm, settle in arms.items():
                teachers[arm][_python(DISTILL.format(settle=settle), str(Path(tmp) / f"run{i}{settle}"), data)] += 1
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    result = {"cpu": cpu, "procs": args.procs, "runs": args.runs,
              "sqrt_faulty_processes": faulty, "distill_teacher_files": {a: dict(c) for a, c in teachers.items()}}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"CPU: {cpu}")
    print("| arm | first torch.sqrt > 1 ulp off (processes) | distinct teacher files over distill runs |")
    print("|---|---|---|")
    for arm in arms:
        counts = ", ".join(f"{n}x {h}" for h, n in teachers[arm].most_common())
        print(f"| {arm} | {faulty[arm]} of {args.procs} | {len(teachers[arm])} ({counts}) |")


if __name__ == "__main__":
    main()
