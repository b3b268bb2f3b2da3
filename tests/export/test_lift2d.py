"""export.lift2d: a graph's 1-D Convs run as 2-D ones, with the same outputs (onnxruntime's 1-D kernels are slow)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from cmcd_edge.export.lift2d import conv1d_as_conv2d
from cmcd_edge.runtime.session import make_session


def _graph(path, rng):
    """x [N, 3, 20] -> Sub([3, 1]) -> depthwise Conv1d (stride 2, pads) -> Relu -> pointwise Conv1d (+ bias) -> Clip
    -> Add (residual) -> [Flatten -> out "flat"] and [Unsqueeze(2) -> GlobalAveragePool -> out "pooled"]."""
    c = numpy_helper.from_array
    inits = [c(rng.normal(size=(3, 1)).astype(np.float32), "mean"),
             c(rng.normal(size=(3, 1, 5)).astype(np.float32), "w_dw"),
             c(rng.normal(size=(3, 3, 1)).astype(np.float32), "w_pw"), c(rng.normal(size=3).astype(np.float32), "b_pw"),
             c(np.array(-1.0, np.float32), "lo"), c(np.array(1.0, np.float32), "hi"), c(np.array([2], np.int64), "ax")]
    nodes = [helper.make_node("Sub", ["x", "mean"], ["s"]),
             helper.make_node("Conv", ["s", "w_dw"], ["d"], name="dw", group=3, kernel_shape=[5], pads=[2, 2],
                              strides=[2]),
             helper.make_node("Relu", ["d"], ["r"]),
             helper.make_node("Conv", ["r", "w_pw", "b_pw"], ["p"], name="pw", kernel_shape=[1]),
             helper.make_node("Clip", ["p", "lo", "hi"], ["k"]),
             helper.make_node("Add", ["k", "r"], ["a"]),
             helper.make_node("Flatten", ["a"], ["flat"]),
             helper.make_node("Unsqueeze", ["a", "ax"], ["a4"]),
             helper.make_node("GlobalAveragePool", ["a4"], ["pooled"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 20])],
                          [helper.make_tensor_value_info("flat", TensorProto.FLOAT, ["N", 30]),
                           helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["N", 3, 1, 1])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))


def test_conv1d_as_conv2d_keeps_outputs_and_lifts_the_region(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "m.onnx"
    _graph(path, rng)
    x = rng.normal(size=(4, 3, 20)).astype(np.float32)
    before = make_session(path).run(None, {"x": x})
    assert conv1d_as_conv2d(path) == 2
    after = make_session(path).run(None, {"x": x})
    for b, a in zip(before, after, strict=True):
        assert a.shape == b.shape and np.abs(a - b).max() < 1e-5
    g = onnx.load(str(path)).graph
    ops = [n.op_type for n in g.node]
    kernels = [list(a.ints) for n in g.node if n.op_type == "Conv" for a in n.attribute if a.name == "kernel_shape"]
    assert kernels == [[1, 5], [1, 1]]
    # one Unsqueeze in (the input, before Sub), one Squeeze out (for Flatten); the pool reads the 4-D tensor
    assert ops.count("Unsqueeze") == 1 and ops.count("Squeeze") == 1 and ops[0] == "Unsqueeze"
    assert conv1d_as_conv2d(path) == 0  # nothing left to lift


def test_conv1d_as_conv2d_leaves_a_graph_without_1d_convs_untouched(tmp_path):
    path = tmp_path / "m.onnx"
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 20])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 20])])
    onnx.save(helper.make_model(g, ir_version=8), str(path))
    before = path.read_bytes()
    assert conv1d_as_conv2d(path) == 0 and path.read_bytes() == before


@pytest.mark.parametrize("batch", [1, 32])
@pytest.mark.parametrize("shape", [(6, 64), (3, 16)])  # stems of stride 2 and 1
def test_conv1d_as_conv2d_on_a_cnn1d_student_matches_torch(tmp_path, batch, shape):
    import torch

    from cmcd_edge.distill import students
    from cmcd_edge.export import onnx_export

    torch.manual_seed(0)
    net = students.build(students.default_spec("sequence", shape, 5)).eval()
    x = np.random.default_rng(1).normal(size=(batch, *shape)).astype(np.float32)
    onnx_export.export_fp32(net, shape, tmp_path / "f.onnx", example=x)  # lifts
    got = make_session(tmp_path / "f.onnx").run(None, {onnx_export.INPUT: x})[0]
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()
