"""Peak memory of a distill whose source view is large: the view preloaded as float32 (``preload: always``) against
read from its memory map batch by batch (``preload: never``), same data, same seed.

The dataset: ``--rows`` rows (default 40,000) of a 3x64x64 uint8 camera source (class prototype + noise: 0.49 GB on
disk, 1.97 GB as float32) and a 16-feature float32 target; 10 classes. Each mode runs `cmcd-edge distill` in a child
process (1 teacher epoch, 2 distill epochs, 1 fine-tune epoch) while this script samples the child's
/proc/PID/status every 20 ms: peak anonymous memory (RssAnon: what the process allocated; the memory map's pages are
file-backed and reclaimable) and peak resident set (VmHWM, the map's pages included). It checks that both modes
write byte-identical student weights.

    .venv/bin/python benchmarks/stream_memory.py --work /tmp/stream --out benchmarks/results/stream_memory.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from cmcd_edge import datasets

CONFIG = {"teacher_epochs": 1, "epochs": 2, "finetune_epochs": 1}


def make_dataset(folder: Path, rows: int, classes: int = 10) -> datasets.Dataset:
    rng = np.random.default_rng(0)
    y = rng.integers(0, classes, rows)
    proto_img = rng.integers(0, 256, size=(classes, 3, 64, 64)).astype(np.int16)
    cam = np.empty((rows, 3, 64, 64), np.uint8)
    for i in range(0, rows, 4096):  # built in chunks: this script should not need the memory it measures
        part = y[i:i + 4096]
        noise = rng.integers(-90, 90, size=(len(part), 3, 64, 64), dtype=np.int16)
        cam[i:i + 4096] = np.clip(proto_img[part] // 2 + 64 + noise, 0, 255).astype(np.uint8)
    proto_vec = rng.normal(size=(classes, 16)).astype(np.float32)
    feat = (proto_vec[y] * 0.5 + rng.normal(size=(rows, 16))).astype(np.float32)
    views = {"cam": datasets.ViewSpec(cam, "image"), "feat": datasets.ViewSpec(feat, "vector")}
    return datasets.write_dataset(folder, views, y, [str(c) for c in range(classes)], name="stream", force=True)


def _status(pid: int) -> dict[str, int]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmHWM", "RssAnon", "VmRSS"):
                out[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return out


def run_mode(data: Path, out: Path, mode: str) -> dict:
    cfg = out.with_suffix(".json")
    cfg.write_text(json.dumps({**CONFIG, "preload": mode}))
    cmd = [str(Path(sys.executable).parent / "cmcd-edge"), "-q", "distill", "--data", str(data), "--source", "cam",
           "--target", "feat", "--config", str(cfg), "--out", str(out), "--force"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = {"RssAnon": 0, "VmHWM": 0}

    def sample() -> None:
        while proc.poll() is None:
            s = _status(proc.pid)
            for k in peak:
                peak[k] = max(peak[k], s.get(k, 0))
            time.sleep(0.02)

    th = threading.Thread(target=sample)
    th.start()
    log = proc.communicate()[0]
    th.join()
    if proc.returncode:
        raise SystemExit(f"{mode}: distill failed ({proc.returncode}):\n{log}")
    metrics = json.loads((out / "metrics.json").read_text())
    return {"mode": mode, "wall_s": round(time.perf_counter() - t0, 1), "peak_anon_gib": round(peak["RssAnon"] / 2**30, 3),
            "peak_rss_gib": round(peak["VmHWM"] / 2**30, 3), "test_accuracy": metrics["test_accuracy"],
            "teacher_test_accuracy": metrics["teacher_test_accuracy"],
            "student_sha256": hashlib.sha256((out / "student.safetensors").read_bytes()).hexdigest()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True, help="scratch folder for the dataset and the runs")
    ap.add_argument("--out", required=True, help="results JSON")
    ap.add_argument("--rows", type=int, default=40000)
    args = ap.parse_args()
    work = Path(args.work)
    ds = make_dataset(work / "ds", args.rows)
    view = ds.view("cam")
    results = [run_mode(work / "ds", work / f"run-{m}", m) for m in ("always", "never")]
    same = results[0]["student_sha256"] == results[1]["student_sha256"]
    doc = {"rows": args.rows, "source_shape": list(view.shape[1:]), "source_disk_gib": round(view.nbytes / 2**30, 3),
           "source_float32_gib": round(view.size * 4 / 2**30, 3), "config": CONFIG, "identical_students": same,
           "machine": platform.processor() or platform.machine(), "results": results}
    Path(args.out).write_text(json.dumps(doc, indent=2))
    print(f"source cam {view.shape}: {doc['source_disk_gib']} GiB uint8 on disk, {doc['source_float32_gib']} GiB float32")
    print("| preload | peak anonymous (GiB) | peak RSS incl. map pages (GiB) | wall (s) | test top-1 (%) |")
    print("|---|---|---|---|---|")
    for r in results:
        print(f"| {r['mode']} | {r['peak_anon_gib']:.2f} | {r['peak_rss_gib']:.2f} | {r['wall_s']:.0f} | "
              f"{100 * r['test_accuracy']:.2f} |")
    print(f"student weights identical across modes: {same}")
    if not same:
        raise SystemExit("the two modes wrote different students")


if __name__ == "__main__":
    main()
