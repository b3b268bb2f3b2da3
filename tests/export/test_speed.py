"""Speed-aware INT8 (export/speed.py): the stem probe and the input-normalisation fold."""

from __future__ import annotations

import shutil

import numpy as np
import onnx

from cmcd_edge.export import quantize, speed
from cmcd_edge.export.bundle import ExportConfig, run_export
from cmcd_edge.runtime.manifest import load_manifest
from cmcd_edge.runtime.session import make_session


def test_mlp_has_no_stem_to_probe(toy_bundle):
    v = load_manifest(toy_bundle).variant("int8")
    assert v.extra["speed_float_nodes"] == [] and v.extra["stem_probe"] == {}


def test_fold_replaces_sub_div_quantize_and_stays_within_a_step(toy_bundle, tmp_path, monkeypatch):
    from cmcd_edge.calib.ranges import compute_ranges

    x = np.random.default_rng(0).normal(size=(256, *load_manifest(toy_bundle).sample_shape)).astype(np.float32) * 2
    pre, plain, folded = tmp_path / "pre.onnx", tmp_path / "plain.onnx", tmp_path / "folded.onnx"
    quantize.preprocess(toy_bundle / "model.fp32.onnx", pre)
    ranges = compute_ranges(pre, "input", x, "minmax")
    monkeypatch.setattr(speed, "fold_input_normalization", lambda path: False)
    quantize.quantize(pre, plain, quantize.preset_for("cpu"), ranges, "minmax")
    monkeypatch.undo()
    shutil.copy(plain, folded)
    assert speed.fold_input_normalization(folded)
    nodes = onnx.load(str(folded)).graph.node
    (first,) = [n for n in nodes if "input" in n.input]
    assert first.op_type == "QuantizeLinear" and len(first.input) == 3
    assert not {"Sub", "Div"} & {n.op_type for n in nodes}
    a = make_session(plain).run(["logits"], {"input": x})[0]
    b = make_session(folded).run(["logits"], {"input": x})[0]
    cos = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cos.mean() > 0.999 and (a.argmax(1) == b.argmax(1)).mean() >= 0.97
    assert not speed.fold_input_normalization(folded)  # already folded: the pattern is gone


def test_stem_float_keeps_the_first_conv_float_and_is_recorded(tmp_path):
    from cmcd_edge.distill.config import DistillConfig
    from cmcd_edge.distill.pipeline import run_distill
    from tests.helpers import synthetic_paired

    ds = synthetic_paired(tmp_path / "data", target_kind="image", target_shape=(3, 16, 16), n=300)
    cfg = DistillConfig(data=str(ds.root), source="src", target="tgt", epochs=2, teacher_epochs=2, finetune_epochs=1)
    run_distill(cfg, tmp_path / "run")
    for stem in ("float", "auto"):
        res = run_export(ExportConfig(run=str(tmp_path / "run"), out=str(tmp_path / stem), stem=stem,
                                      max_accuracy_drop=100.0))
        v = res.manifest["variants"][1]
        if stem == "float":
            assert len(v["speed_float_nodes"]) == 1 and v["stem_probe"] == {}
            first = next(n for n in onnx.load(str(tmp_path / stem / "model.int8.onnx")).graph.node if n.op_type
                         in ("Conv", "QLinearConv"))
            assert first.op_type == "Conv"  # stays float
        else:
            p = v["stem_probe"]
            assert p["int8_p50_us"] > 0 and p["float_stem_p50_us"] > 0
            assert v["speed_float_nodes"] == ([p["node"]] if p["kept_float"] else [])
