"""Static INT8 (QDQ, per-channel weights) with per-target presets, and the FP16 variant.

Presets (``--target``):
- ``cpu``: this machine's ISA; ``cpu-vnni``, ``cpu-avx2``, ``cpu-arm64``: the device's, when that is another CPU (a
  bundle made on a VNNI workstation for an AVX2 box; runtime/cpu.py warns when a variant is loaded where it may
  saturate). AVX-512 VNNI / AVX-VNNI / AMX: full-range U8S8 (the issue asked for S8S8; measured here, ORT's x86 QDQ
  kernels run U8S8 and S8S8 was slower, see BENCHMARKS.md). AVX2 without VNNI: U8S8 with reduce_range (7-bit
  weights; without it u8*s8 pairs saturate in VPMADDUBSW and accuracy drops). arm64: S8S8.
- ``tensorrt``: symmetric S8 activations and weights, every zero point 0 (TensorRT's explicit quantization).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from cmcd_edge.errors import UserError
from cmcd_edge.registry import check_choice
from cmcd_edge.runtime.cpu import cpu_isa

log = logging.getLogger(__name__)
TARGETS = ("auto", "cpu", "cpu-vnni", "cpu-avx2", "cpu-arm64", "tensorrt")
CPU_TARGETS = {"cpu-vnni": "x86-vnni", "cpu-avx2": "x86-avx2", "cpu-arm64": "arm64"}  # the device's CPU, named


@dataclass(frozen=True)
class Preset:
    name: str
    isa: str
    activation: str  # "s8" | "u8"
    weight: str
    reduce_range: bool
    symmetric: bool
    per_channel: bool = True  # False (--per-tensor): one scale per weight tensor, a smaller file, less accuracy

    def to_json(self) -> dict:
        return asdict(self)


def preset_for(target: str, isa: str | None = None) -> Preset:
    target = check_choice("--target", target, TARGETS)
    if target == "tensorrt":
        return Preset("tensorrt", "tensorrt", "s8", "s8", reduce_range=False, symmetric=True)
    if isa is None:
        isa = CPU_TARGETS[target] if target in CPU_TARGETS else cpu_isa()
    if isa == "arm64":
        return Preset("cpu", isa, "s8", "s8", reduce_range=False, symmetric=False)
    if isa == "x86-vnni":  # ORT's x86 int8 kernels are U8S8 (VPDPBUSD); VNNI accumulates without saturation
        return Preset("cpu", isa, "u8", "s8", reduce_range=False, symmetric=False)
    return Preset("cpu", isa, "u8", "s8", reduce_range=True, symmetric=False)


def preprocess(fp32: Path, out: Path) -> None:
    """onnxruntime's quant_pre_process: symbolic shape inference and graph optimisation before calibration."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(fp32), str(out), skip_symbolic_shape=False)


def quantize(pre: Path, out: Path, preset: Preset, ranges: dict, method: str,
             exclude: list[str] | None = None) -> None:
    """quantize_static (QDQ, per-channel) from precomputed ranges (handed over through ORT's calibration cache)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from cmcd_edge.calib.ranges import ort_method, write_ort_cache

    qt = {"s8": QuantType.QInt8, "u8": QuantType.QUInt8}
    extra = {"ActivationSymmetric": preset.symmetric, "WeightSymmetric": True}
    if preset.name == "tensorrt":
        # TensorRT takes int8 QDQ only: biases stay float (it fuses them), per-channel weights on the output axis
        extra.update({"QDQOpTypePerChannelSupportToAxis": {"MatMul": 1}, "QuantizeBias": False})
    with tempfile.TemporaryDirectory(prefix="cmcd-q.") as tmp:
        cache = Path(tmp) / "ranges.json"
        write_ort_cache(ranges, cache)
        quantize_static(str(pre), str(out), calibration_data_reader=None, quant_format=QuantFormat.QDQ,
                        per_channel=preset.per_channel, reduce_range=preset.reduce_range, activation_type=qt[preset.activation],
                        weight_type=qt[preset.weight], nodes_to_exclude=list(exclude or []),
                        calibrate_method=ort_method(method), extra_options=extra, calibration_cache_path=cache)
    from cmcd_edge.export.compact import compact
    from cmcd_edge.export.speed import fold_input_normalization

    if preset.name == "cpu":  # onnxruntime CPU only: TensorRT wants its per-tensor input Q/DQ untouched
        fold_input_normalization(out)
    compact(out, derive_bias_scales=preset.name != "tensorrt")


LAYER_OPS = {"Conv", "MatMul", "Gemm"}  # the weighted layers; the others pass a quantized tensor on
QDQ_OPS = LAYER_OPS | {"Add", "Mul", "AveragePool", "GlobalAveragePool", "Relu", "Clip", "Concat"}


def quantizable_nodes(model_path: Path, ops: set[str] = QDQ_OPS) -> list[str]:
    """Names of the nodes whose inputs get QDQ pairs (candidates for the gate's exclusion); with ``ops=LAYER_OPS``,
    of the weighted layers among them."""
    import onnx

    return [n.name for n in onnx.load(str(model_path)).graph.node if n.op_type in ops and n.name]


def float_units(model_path: Path, candidates: list[str]) -> list[list[str]]:
    """For each weighted layer among ``candidates``, in graph order: the layer and the candidates its output flows
    through up to and including the next weighted layers. In QDQ a tensor is quantized at its readers' inputs, so an
    outlier channel a layer writes is rounded into the next layer's per-tensor input scale whether or not the layer
    itself is float: only the layer and its readers float together keep that tensor float."""
    import onnx

    from cmcd_edge.export.compact import readers

    graph = onnx.load(str(model_path)).graph
    read_by = readers(graph)
    keep = set(candidates)
    units = []
    for layer in graph.node:
        if layer.op_type not in LAYER_OPS or layer.name not in keep:
            continue
        unit, todo, seen = [layer.name], list(layer.output), set(layer.output)
        while todo:
            for n in read_by.get(todo.pop(), []):
                if n.name in keep and n.name not in unit:
                    unit.append(n.name)
                if n.op_type not in LAYER_OPS:  # Relu, Add, a Reshape: the tensor goes on to its readers
                    todo += [o for o in n.output if o not in seen]
                    seen.update(n.output)
        units.append(unit)
    return units


def to_fp16(fp32: Path, out: Path) -> None:
    """FP16 weights and compute, float32 inputs and outputs (onnxconverter-common)."""
    try:
        import onnx
        from onnxconverter_common import float16
    except ImportError as exc:
        raise UserError("--fp16 needs onnxconverter-common: pip install 'cmcd-edge[train]'") from exc
    model = onnx.load(str(fp32))
    model.graph.ClearField("value_info")  # stale float32 value_info from the exporter would clash with fp16 types
    _split_outputs_used_inside(model)
    model = float16.convert_float_to_float16(model, keep_io_types=True)
    onnx.save(model, str(out))


def _split_outputs_used_inside(model) -> None:
    """A graph output that also feeds a node (the embedding feeds the head) gets its own Identity, so that
    keep_io_types casts only the output, not the head's input."""
    import onnx

    consumed = {i for n in model.graph.node for i in n.input}
    for out in model.graph.output:
        if out.name not in consumed:
            continue
        inner = out.name + "_inner"
        for n in model.graph.node:
            n.output[:] = [inner if o == out.name else o for o in n.output]
            n.input[:] = [inner if i == out.name else i for i in n.input]
        model.graph.node.append(onnx.helper.make_node("Identity", [inner], [out.name], name=out.name + "_out"))


def check_tensorrt_qdq(path: Path) -> list[str]:
    """What TensorRT's explicit quantization needs: every QuantizeLinear/DequantizeLinear zero point is 0 and int8.
    Returns the problems found (empty when the model is fine)."""
    import onnx

    from cmcd_edge.export.compact import constants

    model = onnx.load(str(path))
    consts = constants(model)
    problems = []
    n_qdq = 0
    for n in model.graph.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        n_qdq += 1
        if len(n.input) < 3 or not n.input[2]:
            continue  # no zero point given: 0 by the ONNX spec (int8 when the output type says so)
        if n.input[2] not in consts:
            problems.append(f"{n.name}: zero point {n.input[2]} is not a constant")
            continue
        zp = consts[n.input[2]]
        if zp.dtype.name != "int8":
            problems.append(f"{n.name}: zero point dtype {zp.dtype.name} (TensorRT takes int8)")
        elif (zp != 0).any():
            problems.append(f"{n.name}: non-zero zero point (asymmetric)")
    if n_qdq == 0:
        problems.append("no QuantizeLinear/DequantizeLinear nodes: the model is not quantized")
    return problems
