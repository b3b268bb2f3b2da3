"""cnn1d's stem: stride 2 against stride 1 by sequence length. Shipped: stride 2 from ``students.STEM_STRIDE_FROM``
(32) steps on, stride 1 under it, as cnn2d does for images under 32 pixels (before session 35: stride 2 always).

A synthetic set of 1,500 rows, 6 classes (3 frequencies x 2 waveforms, sine or square, random phase and per-channel
gain) in noise: a vector source ``src`` (a class mean shift, mlp teacher, the same in both arms) and four sequence
targets of 3 channels and 8, 16, 24 and 48 steps (the waveform sampled over the same time span). Each (target,
method, seed) is run twice, with the stem's stride forced to 2 and to 1 (by patching ``STEM_STRIDE_FROM``); the
table marks the one the shipped rule picks. Methods: ``supervised`` on every train label (what the architecture can
learn from the target alone), ``supervised`` on 10% and ``cmcd`` on 10% (the protocol's setting). Prints and stores
test top-1 per run and the medians per arm (BENCHMARKS.md, "cnn1d's stem on short sequences"). About 16 minutes on
2 cores (5 seeds).

    .venv/bin/python benchmarks/cnn1d_stem.py /tmp/stem [--seeds 5]
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from bn_warm_start import pct, run_cli  # the scratch-folder studies' table cell and command line

RESULTS = Path(__file__).parent / "results" / "cnn1d_stem.json"
TARGETS = {"seq8": 8, "seq16": 16, "seq24": 24, "seq48": 48}
SETTINGS = {"supervised@100%": ("supervised", 1.0), "supervised@10%": ("supervised", 0.1), "cmcd@10%": ("cmcd", 0.1)}


def make(out: Path):
    from cmcd_edge import datasets

    rng = np.random.default_rng(7)
    n, k = 1500, 6
    y = rng.integers(0, k, n)
    freq = 1.0 + (y % 3) * 0.75  # cycles over the window
    square = y // 3 == 1
    phase = rng.uniform(0, 2 * np.pi, n)
    gain = rng.uniform(0.5, 1.5, (n, 3))
    views = {"src": datasets.ViewSpec((rng.normal(0, 1, (n, 20)) + 1.5 * np.eye(k, 20)[y]).astype(np.float32),
                                      "vector")}
    for name, steps in TARGETS.items():
        t = np.arange(steps) / steps
        wave = np.sin(2 * np.pi * freq[:, None] * t + phase[:, None])  # (N, T)
        wave = np.where(square[:, None], np.sign(wave), wave)
        x = gain[:, :, None] * wave[:, None, :] + rng.normal(0, 0.6, (n, 3, steps))
        views[name] = datasets.ViewSpec(x.astype(np.float32), "sequence")
    names = ["sine-slow", "sine-mid", "sine-fast", "square-slow", "square-mid", "square-fast"]
    return datasets.write_dataset(out, views, y, names, name="cnn1d-stem", force=True)


def main(work: Path, seeds: tuple[int, ...]) -> None:
    from cmcd_edge.distill import students
    from cmcd_edge.distill.config import DistillConfig
    from cmcd_edge.distill.pipeline import run_distill

    t0 = time.perf_counter()
    ds = make(work / "ds")
    shipped = students.STEM_STRIDE_FROM
    arms = {"stem stride 2": 0, "stem stride 1": 10**9}
    rows = []
    try:
        for target in TARGETS:
            for setting, (method, fraction) in SETTINGS.items():
                for seed in seeds:
                    for arm, stride_from in arms.items():
                        students.STEM_STRIDE_FROM = stride_from
                        cfg = DistillConfig(data=str(ds.root), source="src", target=target, method=method, seed=seed,
                                            labeled_fraction=fraction, device="cpu", teacher_cache=str(work / "tc"))
                        res = run_distill(cfg, None)
                        rows.append({"target": target, "setting": setting, "seed": seed, "arm": arm,
                                     "test_accuracy": res.metrics["test_accuracy"], "macs": res.metrics["macs"],
                                     "params": res.metrics["params"]})
                        print(json.dumps(rows[-1]), flush=True)
    finally:
        students.STEM_STRIDE_FROM = shipped
    summary, table = {}, ["| target (shipped stride) | setting | " + " | ".join(f"{a}: top-1 per seed; median" for a in arms)
                          + " | median, stride 1 - stride 2 | MACs, stride 2 -> 1 |", "|---|---|---|---|---|---|"]
    for target, steps in TARGETS.items():
        for setting in SETTINGS:
            per_arm = {}
            for arm in arms:
                mine = [r for r in rows if (r["target"], r["setting"], r["arm"]) == (target, setting, arm)]
                accs = [r["test_accuracy"] for r in mine]
                per_arm[arm] = {"test_accuracy": accs, "median_test_accuracy": float(np.median(accs)),
                                "macs": mine[0]["macs"]}
            summary[f"{target} {setting}"] = per_arm
            stride2, stride1 = per_arm.values()
            gain = 100 * (stride1["median_test_accuracy"] - stride2["median_test_accuracy"])
            table.append(f"| [3, {steps}] ({2 if steps >= shipped else 1}) | {setting} | "
                         + " | ".join(f"{pct(a['test_accuracy'])}; {100 * a['median_test_accuracy']:.1f}"
                                      for a in (stride2, stride1))
                         + f" | {gain:+.1f} | {stride2['macs']:,} -> {stride1['macs']:,} |")
    print("\n".join(table))
    RESULTS.write_text(json.dumps({"seeds": list(seeds), "wall_s": round(time.perf_counter() - t0, 1), "runs": rows,
                                   "summary": summary}, indent=1) + "\n")


if __name__ == "__main__":
    run_cli(main, __doc__)
