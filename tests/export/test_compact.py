"""compact(): a smaller INT8 file that computes exactly the same thing."""

from __future__ import annotations

import numpy as np
import onnx

from cmcd_edge.export.compact import compact
from cmcd_edge.runtime.manifest import load_manifest
from cmcd_edge.runtime.session import make_session


def test_compact_is_bit_identical_and_smaller(toy_bundle, tmp_path, monkeypatch):
    from cmcd_edge.calib.ranges import compute_ranges
    from cmcd_edge.export import compact as compact_mod
    from cmcd_edge.export import quantize

    x = np.random.default_rng(0).normal(size=(64, *load_manifest(toy_bundle).sample_shape)).astype(np.float32) * 3
    pre, raw = tmp_path / "pre.onnx", tmp_path / "raw.onnx"
    quantize.preprocess(toy_bundle / "model.fp32.onnx", pre)
    ranges = compute_ranges(pre, "input", x, "minmax")
    monkeypatch.setattr(compact_mod, "compact", lambda path, **_: None)  # the quantizer's own output, uncompacted
    quantize.quantize(pre, raw, quantize.preset_for("cpu"), ranges, "minmax")
    monkeypatch.undo()
    before = make_session(raw).run(None, {"input": x})
    kernels_before = _optimized_ops(raw, tmp_path / "opt-before.onnx")
    sizes = compact(raw)
    after = make_session(raw).run(None, {"input": x})
    assert sizes["bytes_after"] < 0.90 * sizes["bytes_before"]
    assert "Mul" in {n.op_type for n in onnx.load(str(raw)).graph.node}  # bias scales derived, not stored
    assert _optimized_ops(raw, tmp_path / "opt-after.onnx") == kernels_before  # onnxruntime fuses the same kernels
    for a, b in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)
    assert {o.name for o in onnx.load(str(raw)).graph.output} == {"logits", "embedding"}


def test_bundle_int8_has_no_zero_bias_zero_points(toy_bundle):
    from onnx import numpy_helper

    model = onnx.load(str(toy_bundle / "model.int8.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "DequantizeLinear" and len(n.input) > 2 and n.input[2] in inits:
            zp = inits[n.input[2]]
            assert not (zp.dtype == np.int32 and not zp.any()), n.name


def _optimized_ops(path, out) -> list[str]:
    """The op types onnxruntime actually runs after its graph optimisations (QDQ groups fused into QGemm etc.)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.optimized_model_filepath = str(out)
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sorted(n.op_type for n in onnx.load(str(out)).graph.node)


def test_ranks_and_readers_describe_a_small_graph():
    from onnx import TensorProto, helper

    from cmcd_edge.export.compact import ranks, readers

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="r"),
             helper.make_node("Add", ["a", "x"], ["b"], name="add"),
             helper.make_node("ReduceMean", ["b"], ["y"], name="mean", keepdims=0)]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    assert ranks(model) == {"x": 3, "a": 3, "b": 3, "y": 0}
    by = readers(model.graph)
    assert [n.name for n in by["x"]] == ["r", "add"]
    assert [n.name for n in by["b"]] == ["mean"] and "y" not in by
