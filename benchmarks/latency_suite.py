"""Latency suite: edge-typical students (random weights), exported FP32 + INT8 (synthetic calibration), timed in one
interleaved run at batch 1, 1 thread: ORT INT8 vs ORT FP32 vs torch eager. Prints ratios; writes JSON.

    python benchmarks/latency_suite.py --out benchmarks/results/latency_suite.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from cmcd_edge.calib.ranges import compute_ranges
from cmcd_edge.distill import students
from cmcd_edge.export import onnx_export, quantize, speed
from cmcd_edge.runtime import bench as rb
from cmcd_edge.runtime.session import make_session

SUITE = {"cnn1d 6x256": ("sequence", (6, 256)), "cnn2d 3x96x96": ("image", (3, 96, 96)), "mlp 64": ("vector", (64,))}


def build(kind, shape, tmp: Path, name: str):
    torch.manual_seed(0)
    net = students.build(students.default_spec(kind, shape, 10)).eval()
    # random-weight BN would be an identity; give it statistics so the graph is representative
    for m in net.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_var.uniform_(0.5, 2.0)
            m.running_mean.normal_(0, 0.1)
    rng = np.random.default_rng(0)
    calib = rng.normal(size=(128, *shape)).astype(np.float32)
    held = rng.normal(size=(256, *shape)).astype(np.float32)
    fp32, pre, int8 = tmp / f"{name}.fp32.onnx", tmp / f"{name}.pre.onnx", tmp / f"{name}.int8.onnx"
    onnx_export.export_fp32(net, shape, fp32, example=calib)
    quantize.preprocess(fp32, pre)
    preset = quantize.preset_for("cpu")
    ranges = compute_ranges(pre, onnx_export.INPUT, calib, "minmax", symmetric=preset.symmetric)

    def q(exclude, path):
        quantize.quantize(pre, path, preset, ranges, "minmax", exclude)

    keep_float, probe = speed.float_stem_if_faster(pre, q, calib, tmp)  # what `export --stem auto` does
    q(keep_float, int8)
    return net, fp32, int8, held, preset, probe


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = {"environment": rb.environment(), "models": {}}
    with tempfile.TemporaryDirectory() as tmpd:
        tmp = Path(tmpd)
        cases, meta = [], {}
        for name, (kind, shape) in SUITE.items():
            key = name.split()[0]
            net, fp32, int8, held, preset, probe = build(kind, shape, tmp, key)
            s32, s8 = make_session(fp32, threads=1), make_session(int8, threads=1)
            l32 = s32.run(["logits"], {"input": held})[0]
            l8 = s8.run(["logits"], {"input": held})[0]
            cos = float(np.mean(np.sum(l32 * l8, 1) / (np.linalg.norm(l32, axis=1) * np.linalg.norm(l8, axis=1))))
            agree = float((l32.argmax(1) == l8.argmax(1)).mean())
            size = students.measure(net, shape)
            meta[key] = {"name": name, "params": size.params, "macs": size.macs, "preset": preset.to_json(),
                         "int8_agreement": agree, "int8_cosine": cos, "fp32_kb": fp32.stat().st_size / 1024,
                         "int8_kb": int8.stat().st_size / 1024, "stem_probe": probe}
            x = held[:1]

            def eager(x, net=net):
                with torch.inference_mode():
                    return net(torch.from_numpy(x))

            cases += [rb.Case(f"{key}:int8", "cpu", 1, 1, lambda x, s=s8: s.run(["logits"], {"input": x}), x),
                      rb.Case(f"{key}:fp32", "cpu", 1, 1, lambda x, s=s32: s.run(["logits"], {"input": x}), x),
                      rb.Case(f"{key}:torch", "torch", 1, 1, eager, x)]
        rb.run_interleaved(cases, duration_s=args.duration, warmup_s=1.0, min_count=100)
        res = rb.results_of(cases)
    for key, m in meta.items():
        p = {r["variant"].split(":")[1]: r["p50_ms"] for r in res if r["variant"].startswith(key + ":")}
        m.update({"p50_ms": p, "int8_vs_fp32": p["fp32"] / p["int8"], "int8_vs_torch": p["torch"] / p["int8"]})
        out["models"][key] = m
        print(f"{m['name']:<15} params {m['params']:>7,}  MACs {m['macs']:>11,}  p50 ms int8 {p['int8']:.4f}  "
              f"fp32 {p['fp32']:.4f}  torch {p['torch']:.4f}  INT8 vs FP32 {m['int8_vs_fp32']:.2f}x  "
              f"vs torch {m['int8_vs_torch']:.2f}x  agree {100 * m['int8_agreement']:.1f}%  cos {m['int8_cosine']:.5f}  "
              f"size {m['fp32_kb']:.0f}->{m['int8_kb']:.0f} KB  stem {'float' if m['stem_probe'].get('kept_float') else 'int8'}")
    out["results"] = res
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
