"""The accuracy gate's search: over budget, nodes ranked by what leaving each float gains on val, the worst kept float
until the test drop is within budget. Real export, quantization and onnxruntime sessions on a student whose head has
one outlier weight, so per-tensor INT8 rounds the head's other weights to zero (it had no test before session 21)."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import torch

from cmcd_edge.calib.ranges import compute_ranges
from cmcd_edge.distill import students
from cmcd_edge.export import gate, onnx_export, quantize
from cmcd_edge.runtime.session import make_session, top1


def _student_and_gate(tmp_path, outlier: float | None, layer: str = "head"):
    torch.manual_seed(0)
    net = students.build(students.default_spec("vector", (8,), 4)).eval()
    if outlier is not None:
        with torch.no_grad():  # one weight far above the rest: a per-tensor scale rounds the others to zero
            (net.head if layer == "head" else net.encoder[4]).weight[0, 0] = outlier
    x = np.random.default_rng(0).normal(size=(600, 8)).astype(np.float32)
    fp32, pre = tmp_path / "fp32.onnx", tmp_path / "pre.onnx"
    onnx_export.export_fp32(net, (8,), fp32, example=x[:64])
    quantize.preprocess(fp32, pre)
    _, logits = top1(make_session(fp32), x, np.zeros(len(x), np.int64))
    y = logits.argmax(1)  # FP32 is right on every row: the drop is INT8's alone
    preset = dataclasses.replace(quantize.preset_for("cpu"), per_channel=False)
    ranges = compute_ranges(pre, onnx_export.INPUT, x[:128], "minmax", symmetric=preset.symmetric)

    def q(exclude, path):
        quantize.quantize(pre, path, preset, ranges, "minmax", exclude)

    res = gate.run_gate(q, quantize.quantizable_nodes(pre), tmp_path / "int8.onnx", fp32, (x[400:], y[400:]),
                        (x[200:400], y[200:400]), gate.Budget(1.0))
    head = next(n.name for n in onnx.load(str(pre)).graph.node if "net.head.weight" in n.input)
    return res, head


def test_gate_keeps_the_node_that_loses_accuracy_float_and_only_it(tmp_path):
    res, head = _student_and_gate(tmp_path, 30.0)
    assert res.sensitivity, "INT8 of the whole graph was within budget: the outlier did not bite"
    assert res.sensitivity[0]["node"] == head and res.sensitivity[0]["val_gain_points"] > 10
    assert all(s["val_gain_points"] <= 0 for s in res.sensitivity[1:])  # no other node explains the loss
    assert res.excluded == [head] and res.passed and res.drop_points <= 1.0
    assert res.agreement >= 0.99


def test_gate_passes_a_well_quantized_graph_without_a_search(tmp_path):
    res, _ = _student_and_gate(tmp_path, None)
    assert res.passed and res.excluded == [] and res.sensitivity == []


def test_gate_keeps_no_node_float_that_gains_nothing_and_fails_instead(tmp_path):
    """An outlier mid-network spreads the loss over every activation after it: no one node kept float wins anything
    back on val. Was: the search kept nodes float anyway, in graph order, until the test drop passed (6 of the 7
    nodes), and the bundle shipped a nearly-FP32 graph as its 'int8' variant, gate passed."""
    res, _ = _student_and_gate(tmp_path, 200.0, layer="hidden")
    assert res.sensitivity and all(s["val_gain_points"] <= 0 for s in res.sensitivity)
    assert res.excluded == [] and not res.passed and res.drop_points > 10
