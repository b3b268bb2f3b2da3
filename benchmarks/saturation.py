"""What an INT8 bundle scores on an x86 CPU without VNNI, emulated here on any CPU.

Without VNNI, onnxruntime's x86 u8 x s8 kernels multiply with VPMADDUBSW: each pair of adjacent products along K is
summed into a saturating int16 before the int32 accumulation. Full-range s8 weights (the VNNI preset) let a pair reach
255 * 127 * 2 = 64770 > 32767; 7-bit weights (reduce_range, the AVX2 preset) stay within 255 * 64 * 2 = 32640. This
runs a bundle's QDQ graph in numpy with the integer Gemms done as such, once exactly (what VNNI computes) and once
with the int16 pair saturation, on the bundle's test split. The exact pass must match onnxruntime's own INT8 output
here, which is the check that the emulation reads the graph right. Supports the MLP students' graph (Gemm, QDQ,
elementwise); for conv students it reports onnxruntime's figures on this CPU only.

    python benchmarks/saturation.py BUNDLE [BUNDLE ...] --out benchmarks/results/saturation.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from cmcd_edge import datasets
from cmcd_edge.runtime.session import make_session, run_batched
from cmcd_edge.splitting import make_splits


class NotEmulated(Exception):
    """The graph holds an op the emulation does not run (conv students)."""


def _axis_shape(scale: np.ndarray, x: np.ndarray, axis: int) -> np.ndarray:
    if scale.ndim == 0:
        return scale
    shape = [1] * x.ndim
    shape[axis] = -1
    return scale.reshape(shape)


def int_gemm(a: np.ndarray, w: np.ndarray, saturate: bool) -> tuple[np.ndarray, int, int]:
    """a (N, K) uint8 times w (K, M) int8 in int64, adjacent K pairs summed first (clipped to int16 if saturate);
    also how many pair sums the clip changed, of how many."""
    a, w = a.astype(np.int64), w.astype(np.int64)
    if a.shape[1] % 2:
        a, w = np.pad(a, ((0, 0), (0, 1))), np.pad(w, ((0, 1), (0, 0)))
    pairs = a[:, 0::2, None] * w[None, 0::2, :] + a[:, 1::2, None] * w[None, 1::2, :]  # (N, K/2, M)
    clipped = np.clip(pairs, -32768, 32767) if saturate else pairs
    return clipped.sum(1), int((clipped != pairs).sum()), pairs.size


def run_graph(model: onnx.ModelProto, x: np.ndarray, saturate: bool) -> tuple[dict[str, np.ndarray], int, int]:
    g = model.graph
    env: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    env[g.input[0].name] = x
    quant: dict[str, tuple[str, str, str | None, int]] = {}  # DQ output -> (integer tensor, scale, zero point, axis)
    clipped = total = 0
    for n in g.node:
        att = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        i = [env[name] if name else None for name in n.input]
        if n.op_type == "DequantizeLinear":
            q, s = i[0], i[1]
            z = i[2] if len(i) > 2 and i[2] is not None else np.zeros((), q.dtype)
            axis = att.get("axis", 1)
            out = (q.astype(np.float32) - _axis_shape(z, q, axis).astype(np.float32)) * _axis_shape(s, q, axis)
            quant[n.output[0]] = (n.input[0], n.input[1], n.input[2] if len(n.input) > 2 else None, axis)
        elif n.op_type == "QuantizeLinear":
            s, z = i[1], i[2]
            axis = att.get("axis", 1)
            lo, hi = (0, 255) if z.dtype == np.uint8 else (-128, 127)
            out = np.clip(np.rint(i[0] / _axis_shape(s, i[0], axis)) + _axis_shape(z, i[0], axis), lo, hi).astype(z.dtype)
        elif n.op_type == "Gemm":
            if att.get("transA", 0) or n.input[0] not in quant or n.input[1] not in quant:
                raise NotEmulated(f"node {n.name or n.output[0]}: only Gemm(DQ(u8 activations), DQ(s8 weights))")
            qa, sa, za, _ = quant[n.input[0]]
            qw, sw, zw, _ = quant[n.input[1]]
            a, w = env[qa], env[qw]
            w = w.T if att.get("transB", 0) else w  # (K, M)
            if a.dtype != np.uint8 or w.dtype != np.int8 or (zw is not None and np.any(env[zw] != 0)):
                raise NotEmulated(f"node {n.output[0]}: not u8 activations and symmetric s8 weights")
            acc, c, t = int_gemm(a, w, saturate)
            clipped, total = clipped + c, total + t
            acc = acc - env[za].astype(np.int64) * w.astype(np.int64).sum(0)  # the activation zero point's share
            out = (acc * (env[sa] * env[sw].reshape(-1))).astype(np.float32)
            if len(i) > 2 and i[2] is not None:
                out = out + i[2]
        elif n.op_type in ("Mul", "Sub", "Div", "Add"):
            out = {"Mul": np.multiply, "Sub": np.subtract, "Div": np.divide, "Add": np.add}[n.op_type](i[0], i[1])
        elif n.op_type == "Relu":
            out = np.maximum(i[0], 0)
        else:
            raise NotEmulated(f"op {n.op_type}")
        env[n.output[0]] = out
    return env, clipped, total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundles", nargs="+", type=Path)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    rows = []
    for b in args.bundles:
        manifest = json.loads((b / "manifest.json").read_text())
        src, int8 = manifest["source_run"], next(v for v in manifest["variants"] if v["precision"] == "int8")
        ds = datasets.load(src["data"])
        test = make_splits(ds, int(src["seed"]), labeled_fraction=float(src["labeled_fraction"])).test
        x = datasets.read_rows(ds.view(manifest["input"]["view"]), test).astype(np.float32)
        y = np.asarray(ds.labels)[test]
        model = onnx.load(str(b / int8["file"]))
        ort = run_batched(make_session(b / int8["file"]), x)
        fp32 = run_batched(make_session(b / "model.fp32.onnx"), x)
        row = {"bundle": str(b), "preset": int8["preset"], "test_rows": len(y),
               "fp32_top1": float((fp32.argmax(1) == y).mean()), "ort_int8_top1": float((ort.argmax(1) == y).mean()),
               "ort_int8_agreement_with_fp32": float((ort.argmax(1) == fp32.argmax(1)).mean())}
        head = (f"{b}  preset {int8['preset']['isa']} reduce_range={int8['preset']['reduce_range']}: fp32 "
                f"{100 * row['fp32_top1']:.2f}%  int8 (onnxruntime, this CPU) {100 * row['ort_int8_top1']:.2f}% "
                f"(agreement with fp32 {100 * row['ort_int8_agreement_with_fp32']:.2f}%)")
        try:
            exact, _, _ = run_graph(model, x, saturate=False)
            sat, clipped, total = run_graph(model, x, saturate=True)
        except NotEmulated as exc:
            rows.append({**row, "not_emulated": str(exc)})
            print(f"{head}  not emulated ({exc})")
            continue
        out = model.graph.output[0].name
        row = {**row,
               "emulated_exact_top1": float((exact[out].argmax(1) == y).mean()),
               "emulated_exact_vs_ort_max_abs": float(np.abs(exact[out] - ort).max()),
               "emulated_exact_vs_ort_top1_agreement": float((exact[out].argmax(1) == ort.argmax(1)).mean()),
               "emulated_no_vnni_top1": float((sat[out].argmax(1) == y).mean()),
               "no_vnni_vs_exact_top1_agreement": float((sat[out].argmax(1) == exact[out].argmax(1)).mean()),
               "no_vnni_vs_exact_max_abs": float(np.abs(sat[out] - exact[out]).max()),
               "clipped_pair_sums": clipped, "pair_sums": total}
        rows.append(row)
        print(f"{head}  emulated exact {100 * row['emulated_exact_top1']:.2f}% (max |diff| vs onnxruntime "
              f"{row['emulated_exact_vs_ort_max_abs']:.2g}, top-1 agreement "
              f"{100 * row['emulated_exact_vs_ort_top1_agreement']:.2f}%)  emulated without VNNI "
              f"{100 * row['emulated_no_vnni_top1']:.2f}% ({clipped} of {total} pair sums clipped; top-1 agreement "
              f"with exact {100 * row['no_vnni_vs_exact_top1_agreement']:.2f}%, max |logit diff| "
              f"{row['no_vnni_vs_exact_max_abs']:.3g})")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
