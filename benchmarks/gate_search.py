"""The accuracy gate's node search on students with planted outliers (BENCHMARKS.md, "The gate's search: a layer with
its output, greedy rounds").

Two small runs trained here: the tests' toy (``tests/conftest.py::toy_run``: 400 rows, 4 classes, an mlp student
on an 8-feature target) and a sequence one (800 rows, a [3, 64] target, a cnn1d student). Each case copies a run,
writes one weight per named tensor far above the rest (per-tensor INT8 of that layer rounds its other weights to
zero), and exports it with 7-bit per-tensor weights (``--per-tensor --target cpu-avx2``, the same integer sums on
every x86 CPU) and ``--allow-accuracy-drop``, so a failed variant is written and measured. It prints and stores
FP32 and INT8 test top-1, the worst class's drop, the nodes kept float, the gate, and the export's wall time.

    .venv/bin/python benchmarks/gate_search.py /tmp/gate    # about 1 minute on 2 cores
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "gate_search.json"
FLAGS = ["--per-tensor", "--target", "cpu-avx2", "--stem", "int8", "--allow-accuracy-drop"]
CLASS_BUDGET = ["--max-accuracy-drop", "100", "--max-class-drop", "20"]  # only the class budget judges
CASES = [  # name, run, outliers, gate flags
    ("mlp, first layer", "mlp", {"encoder.0.weight": 50.0}, CLASS_BUDGET),
    ("mlp, hidden layer", "mlp", {"encoder.4.weight": 200.0}, CLASS_BUDGET),
    ("mlp, hidden layer and embedding", "mlp", {"encoder.4.weight": 200.0, "to_embed.weight": 200.0}, CLASS_BUDGET),
    ("cnn1d, a pointwise conv", "seq", {"encoder.4.pw.weight": 30.0}, []),
]


def train(work: Path) -> dict[str, Path]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from cmcd_edge.distill.config import DistillConfig
    from cmcd_edge.distill.pipeline import run_distill
    from tests.helpers import synthetic_paired

    runs = {}
    for name, kind, n, shape, epochs in [("mlp", "vector", 400, None, 6), ("seq", "sequence", 800, (3, 64), 8)]:
        runs[name] = work / f"run-{name}"
        if not (runs[name] / "metrics.json").exists():
            ds = synthetic_paired(work / f"data-{name}", kind, n=n, target_shape=shape)
            cfg = DistillConfig(data=str(ds.root), source="src", target="tgt", epochs=epochs, teacher_epochs=6,
                                finetune_epochs=3, batch_size=64)
            run_distill(cfg, runs[name], force=True)
    return runs


def planted(run: Path, folder: Path, outliers: dict[str, float]) -> Path:
    from safetensors.torch import load_file, save_file

    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(run, folder)
    state = load_file(folder / "student.safetensors")
    for weight, value in outliers.items():
        state[weight][0, 0] = value
    save_file(state, folder / "student.safetensors")
    return folder


def main(work: Path) -> None:
    from cmcd_edge.export.bundle import load_report
    from cmcd_edge.export.gate import worst_class

    runs = train(work)
    rows = []
    for i, (name, run, outliers, gate_flags) in enumerate(CASES):
        src = planted(runs[run], work / f"case{i}", outliers)
        out = work / f"bundle{i}"
        shutil.rmtree(out, ignore_errors=True)
        t = time.perf_counter()
        res = subprocess.run([sys.executable, "-m", "cmcd_edge", "export", str(src), "--out", str(out), *FLAGS,
                              *gate_flags], capture_output=True, text=True, check=True)
        wall = time.perf_counter() - t
        rep = load_report(out)
        fp32, int8 = (next(v for v in rep["variants"] if v["name"] == k) for k in ("fp32", "int8"))
        cls, lost, _ = worst_class(rep["per_class_top1"]["fp32"], rep["per_class_top1"]["int8"])
        rows.append({"case": name, "outliers": outliers, "gate_flags": gate_flags,
                     "fp32_top1": fp32["test_accuracy"], "int8_top1": int8["test_accuracy"],
                     "worst_class": cls, "worst_class_drop_points": round(lost, 2),
                     "float_nodes": int8["float_nodes"], "gate": int8["gate"], "export_s": round(wall, 1),
                     "search_log": [ln.strip() for ln in res.stderr.splitlines() if ln.startswith("  ")]})
        r = rows[-1]
        print(f"| {name} | {100 * r['fp32_top1']:.2f} | {100 * r['int8_top1']:.2f} | {cls}: -{lost:.1f} | "
              f"{', '.join(r['float_nodes']) or 'none'} | {r['gate']} | {wall:.1f} |", flush=True)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    print(f"-> {RESULTS}")


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("work", type=Path, help="a scratch folder (the runs and bundles go there)")
    main(ap.parse_args().work)
