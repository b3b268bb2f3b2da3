"""Speed-aware quantization for the CPU presets: an int8 node is not always faster than its float twin. The stem
convolution of an image student (3 input channels) is the measured case: onnxruntime's int8 kernel pads the 3
channels and took 64 us where the float NCHWc kernel took 30 us (BENCHMARKS.md). So the export times both choices,
interleaved at batch 1 on one thread on this machine (the CPU preset already targets this machine's ISA), and keeps
the stem float only when that is measurably faster. Accuracy is then judged by the gate as usual."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cmcd_edge.export.compact import readers
from cmcd_edge.runtime import bench
from cmcd_edge.runtime.session import make_session

log = logging.getLogger(__name__)
MIN_GAIN = 0.05  # keep the stem float only when the whole model gets at least 5% faster


def first_conv(model_path: Path) -> str | None:
    import onnx

    for n in onnx.load(str(model_path)).graph.node:
        if n.op_type == "Conv":
            return n.name or None
    return None


def float_stem_if_faster(pre: Path, quantize: Callable[[list[str], Path], None], sample: np.ndarray, tmp: Path,
                         duration_s: float = 0.6) -> tuple[list[str], dict]:
    """([stem] or [], the probe's figures). ``quantize(exclude, path)`` writes an INT8 model."""
    stem = first_conv(pre)
    if stem is None:
        return [], {}
    a, b = tmp / ".probe.int8.onnx", tmp / ".probe.stem.onnx"
    quantize([], a)
    quantize([stem], b)
    p50 = cpu_latency({"int8": a, "float-stem": b}, sample, duration_s)
    a.unlink()
    b.unlink()
    gain = p50["int8"] / p50["float-stem"] - 1
    probe = {"node": stem, "int8_p50_us": round(p50["int8"], 2), "float_stem_p50_us": round(p50["float-stem"], 2),
             "kept_float": gain >= MIN_GAIN}
    log.info("stem probe: %s int8 %.1f us, float stem %.1f us -> %s", stem, probe["int8_p50_us"],
             probe["float_stem_p50_us"], "float" if probe["kept_float"] else "int8")
    return ([stem] if probe["kept_float"] else []), probe


def cpu_latency(files: dict[str, Path], sample: np.ndarray, duration_s: float = 0.6) -> dict[str, float]:
    """p50 microseconds of each model at batch 1 on one thread, interleaved on this machine: the stem probe's
    figures, and what ``Predictor.load(variant="auto")`` reads to skip an INT8 variant that is slower than FP32 (tiny
    MLPs: the quantize/dequantize boundaries cost more than the int8 GEMMs save, BENCHMARKS.md)."""
    x = np.ascontiguousarray(sample[:1], np.float32)
    cases = []
    for name, path in files.items():
        sess = make_session(path, threads=1)
        inp = sess.get_inputs()[0].name
        cases.append(bench.Case(name, "cpu", 1, 1, lambda v, s=sess, i=inp: s.run(None, {i: v}), x))
    bench.run_interleaved(cases, duration_s=duration_s, warmup_s=0.2, min_count=50)
    return {r["variant"]: 1e3 * r["p50_ms"] for r in bench.results_of(cases)}


def fold_input_normalization(path: Path) -> bool:
    """input -> Sub(mean) -> Div(std) -> QuantizeLinear(s, z)  becomes  input -> QuantizeLinear(s * std_c, z_c) with a
    per-channel (axis 1) scale and zero point z_c = round(z - mean_c / (s * std_c)). Two float passes over the input
    go away (6 and 16 us of a 40 and 300 us model, BENCHMARKS.md). Not bit-exact: z_c is rounded, so an element may
    land one quantization step away (at most 1 step instead of 0.5); the accuracy gate scores the folded file.
    Skipped (False) when the pattern is not there or a zero point would saturate. The mean and std initializers are
    left for ``compact``, which runs next and drops every unused initializer."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    g = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    users = readers(g)
    inp = g.input[0].name
    lifted = users.get(inp, [])
    if len(lifted) == 1 and lifted[0].op_type == "Unsqueeze":  # a sequence graph run as 2-D (export/lift2d.py)
        inp = lifted[0].output[0]
    sub = next((n for n in users.get(inp, []) if n.op_type == "Sub"), None)
    if sub is None or len(users[inp]) != 1 or sub.input[1] not in inits:
        return False
    div = users.get(sub.output[0], [None])[0]
    if div is None or div.op_type != "Div" or len(users[sub.output[0]]) != 1 or div.input[1] not in inits:
        return False
    q = users.get(div.output[0], [None])[0]
    if q is None or q.op_type != "QuantizeLinear" or len(users[div.output[0]]) != 1 or len(q.input) < 3:
        return False
    s, z = inits.get(q.input[1]), inits.get(q.input[2])
    if s is None or z is None or s.size != 1:
        return False
    mean = inits[sub.input[1]].reshape(-1).astype(np.float64)
    std = inits[div.input[1]].reshape(-1).astype(np.float64)
    scale = float(s.reshape(-1)[0]) * std
    zc = np.round(float(z.reshape(-1)[0]) - mean / scale)
    info = np.iinfo(z.dtype)
    if zc.min() < info.min or zc.max() > info.max:
        log.info("input fold skipped: a per-channel zero point would saturate")
        return False
    g.initializer.extend([numpy_helper.from_array(scale.astype(np.float32), "input_scale_per_channel"),
                          numpy_helper.from_array(zc.astype(z.dtype), "input_zero_point_per_channel")])
    fused = helper.make_node("QuantizeLinear", [inp, "input_scale_per_channel", "input_zero_point_per_channel"],
                             [q.output[0]], axis=1, name="input_quantize")
    at = list(g.node).index(sub)
    for n in (sub, div, q):
        g.node.remove(n)
    g.node.insert(at, fused)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return True
