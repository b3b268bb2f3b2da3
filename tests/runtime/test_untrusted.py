"""Untrusted runs and bundles: a planted pickle payload is never executed, wherever it is planted; engines load only
when listed and hashed. (Path escapes, symlinks and sha256 mismatches: tests/runtime/test_predictor.py.)"""

from __future__ import annotations

import json
import os
import pickle
import shutil

import pytest

from cmcd_edge.errors import BundleError, UserError
from cmcd_edge.runtime import Predictor
from cmcd_edge.runtime.manifest import sha256_file
from tests.helpers import assert_one_line_error


class Payload:
    """Unpickling this creates a folder: proof that the bytes were executed."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _plant(path, marker) -> None:
    path.write_bytes(pickle.dumps(Payload(marker)))


@pytest.fixture
def run_copy(toy_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(toy_run, out)
    return out


def test_pickle_as_student_weights_is_refused_by_export(cli, run_copy, tmp_path):
    marker = tmp_path / "PWNED"
    _plant(run_copy / "student.safetensors", marker)
    res = cli("export", run_copy, "--out", tmp_path / "bundle")
    assert_one_line_error(res, 2, "student.safetensors")
    assert not marker.exists() and not (tmp_path / "bundle").exists()


@pytest.mark.parametrize("victim", ["checkpoint.pt", "teacher_outputs.safetensors"])
@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")  # the hostile pickle is the point
def test_pickle_in_a_resumed_run_is_refused(run_copy, tmp_path, victim):
    from cmcd_edge.distill.config import DistillConfig
    from cmcd_edge.distill.pipeline import run_distill

    marker = tmp_path / "PWNED"
    (run_copy / "metrics.json").unlink()  # a run killed before it finished
    _plant(run_copy / victim, marker)
    cfg = DistillConfig.from_json(json.loads((run_copy / "run.json").read_text())["config"])
    with pytest.raises(UserError, match=victim.replace(".", r"\.")):
        run_distill(cfg, run_copy, resume=True)
    assert not marker.exists()


def test_pickle_as_bundle_model_is_refused(toy_bundle, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(toy_bundle, bundle)
    marker = tmp_path / "PWNED"
    _plant(bundle / "model.int8.onnx", marker)
    m = json.loads((bundle / "manifest.json").read_text())
    for v in m["variants"]:
        if v["name"] == "int8":
            v["sha256"] = sha256_file(bundle / "model.int8.onnx")  # the attacker also rewrote the manifest
    (bundle / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="onnxruntime cannot load"):
        Predictor.load(bundle, variant="int8")
    assert not marker.exists()


def test_unlisted_engine_file_is_never_loaded(toy_bundle, tmp_path, monkeypatch):
    from cmcd_edge.runtime import predictor, trt
    from cmcd_edge.runtime.manifest import DeviceKey

    bundle = tmp_path / "bundle"
    shutil.copytree(toy_bundle, bundle)
    key = DeviceKey("10.3.0", "Orin", "8.7")
    (bundle / trt.engine_filename("int8", key)).write_bytes(b"a plan nobody listed")
    monkeypatch.setattr(predictor, "available_backends", lambda: ["tensorrt", "cpu"])
    monkeypatch.setattr(trt, "current_device_key", lambda device=0: key)
    with pytest.raises(BundleError, match="no TensorRT engine"):
        Predictor.load(bundle, backend="tensorrt")
    assert Predictor.load(bundle).backend == "cpu"
