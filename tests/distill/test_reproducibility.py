"""Reproducibility: the same seed and data give bit-identical student weights on CPU, and the same export gives the
same ONNX bytes (FP32 and INT8)."""

from __future__ import annotations

import json

from cmcd_edge.distill.config import DistillConfig
from cmcd_edge.distill.pipeline import run_distill
from cmcd_edge.export.bundle import ExportConfig, run_export


def test_same_seed_same_student_bytes(toy_run, tmp_path):
    cfg = DistillConfig.from_json(json.loads((toy_run / "run.json").read_text())["config"])
    run_distill(cfg, tmp_path / "again")
    assert (tmp_path / "again" / "student.safetensors").read_bytes() == (toy_run / "student.safetensors").read_bytes()
    a = json.loads((toy_run / "metrics.json").read_text())
    b = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert a["test_accuracy"] == b["test_accuracy"]


def test_same_run_same_onnx_bytes(toy_run, toy_bundle, tmp_path):
    run_export(ExportConfig(run=str(toy_run), out=str(tmp_path / "b"), max_accuracy_drop=5.0))
    for name in ("model.fp32.onnx", "model.int8.onnx", "calibration.json"):
        assert (tmp_path / "b" / name).read_bytes() == (toy_bundle / name).read_bytes(), name
