"""TensorRT in the runtime: what runs without TensorRT (keying, naming, manifest entries, refusal, fallback) is
tested here for real; building and running an engine is marked `tensorrt` and skips where TensorRT is missing."""

from __future__ import annotations

import importlib.util
import logging
import shutil

import numpy as np
import pytest

from cmcd_edge.export.trt_build import add_engine
from cmcd_edge.runtime import Predictor, predictor, trt
from cmcd_edge.runtime.errors import BundleError, EngineMismatch
from cmcd_edge.runtime.manifest import DeviceKey, EngineEntry, load_manifest, sha256_file
from tests.helpers import assert_one_line_error

ORIN = DeviceKey("10.3.0", "Orin", "8.7")
H100 = DeviceKey("10.3.0", "NVIDIA H100 80GB HBM3", "9.0")
HAVE_TRT = importlib.util.find_spec("tensorrt") is not None


def _with_engine(src, tmp_path, key: DeviceKey, precision="int8", payload=b"not a real plan", sha=None):
    bundle = tmp_path / "bundle"
    shutil.copytree(src, bundle)
    name = trt.engine_filename(precision, key)
    (bundle / name).write_bytes(payload)
    entry = EngineEntry(name, precision, sha or sha256_file(bundle / name), len(payload), key, 32, "int8")
    add_engine(bundle, entry)
    return bundle


def test_engine_filename_carries_version_gpu_and_compute_capability():
    assert trt.engine_filename("int8", ORIN) == "model.int8.trt10.3.0.orin.sm87.engine"
    assert trt.engine_filename("fp16", H100) == "model.fp16.trt10.3.0.nvidia-h100-80gb-hbm3.sm90.engine"
    assert DeviceKey("10.3.0", "Orin", "8.7") == ORIN and DeviceKey("11.0.0", "Orin", "8.7") != ORIN


def test_manifest_lists_engine_with_its_key(trt_bundle, tmp_path):
    bundle = _with_engine(trt_bundle, tmp_path, ORIN)
    (e,) = load_manifest(bundle).engines
    assert e.key == ORIN and e.precision == "int8" and e.max_batch == 32 and e.source_variant == "int8"
    assert e.sha256 == sha256_file(bundle / e.file)


def test_match_engine_picks_the_engine_of_this_device(trt_bundle, tmp_path):
    bundle = _with_engine(trt_bundle, tmp_path, ORIN)
    add_engine(bundle, EngineEntry(trt.engine_filename("int8", H100), "int8", "0" * 64, 1, H100, 8, "int8"))
    m = load_manifest(bundle)
    assert trt.match_engine(m, H100).key == H100
    assert trt.match_engine(m, ORIN).key == ORIN


def test_engine_for_another_device_is_refused_with_the_fix(trt_bundle, tmp_path):
    bundle = _with_engine(trt_bundle, tmp_path, ORIN)
    with pytest.raises(EngineMismatch) as err:
        trt.match_engine(load_manifest(bundle), DeviceKey("11.0.0", "Orin", "8.7"))
    msg = str(err.value)
    assert "TensorRT 11.0.0 on Orin" in msg and "TensorRT 10.3.0 on Orin" in msg
    assert msg.endswith("rebuild with cmcd-edge build-engine on this device")
    with pytest.raises(EngineMismatch, match="no fp16 engine"):
        trt.match_engine(load_manifest(bundle), ORIN, precision="fp16")


def test_bundle_without_engine_says_how_to_build_one(toy_bundle):
    with pytest.raises(EngineMismatch, match="no TensorRT engine; rebuild with cmcd-edge build-engine"):
        trt.match_engine(load_manifest(toy_bundle), ORIN)


def _pretend_gpu(monkeypatch, key: DeviceKey):
    """This machine has no GPU: pretend the hardware probe found one (only the probe is replaced)."""
    monkeypatch.setattr(predictor, "available_backends", lambda: ["tensorrt", "cpu"])
    monkeypatch.setattr(trt, "current_device_key", lambda device=0: key)


def test_auto_falls_back_past_a_mismatched_engine_with_a_warning(trt_bundle, tmp_path, monkeypatch, caplog):
    bundle = _with_engine(trt_bundle, tmp_path, ORIN)
    _pretend_gpu(monkeypatch, H100)
    with caplog.at_level(logging.WARNING, logger="cmcd_edge.runtime.predictor"):
        p = Predictor.load(bundle)
    assert p.backend == "cpu"
    text = caplog.text
    assert "backend tensorrt skipped" in text and "falling back to cpu" in text and "rebuild with cmcd-edge" in text


def test_explicit_tensorrt_backend_refuses_a_mismatched_engine(trt_bundle, tmp_path, monkeypatch):
    bundle = _with_engine(trt_bundle, tmp_path, ORIN)
    _pretend_gpu(monkeypatch, H100)
    with pytest.raises(EngineMismatch, match="rebuild with cmcd-edge build-engine on this device"):
        Predictor.load(bundle, backend="tensorrt")


def test_tampered_engine_is_refused_before_tensorrt_reads_it(trt_bundle, tmp_path, monkeypatch):
    bundle = _with_engine(trt_bundle, tmp_path, ORIN, sha="f" * 64)
    _pretend_gpu(monkeypatch, ORIN)
    with pytest.raises(BundleError, match="sha256 .* does not match"):
        Predictor.load(bundle, backend="tensorrt")


def test_ort_tensorrt_cache_is_keyed_by_model_tensorrt_and_gpu(monkeypatch, tmp_path):
    monkeypatch.setenv("CMCD_EDGE_CACHE", str(tmp_path))
    a = trt.ort_cache_dir("a" * 64, ORIN)
    assert a.parent == tmp_path / "ort-tensorrt"
    assert len({a, trt.ort_cache_dir("b" * 64, ORIN), trt.ort_cache_dir("a" * 64, H100),
                trt.ort_cache_dir("a" * 64, DeviceKey("11.0.0", "Orin", "8.7"))}) == 4


def test_predict_on_missing_tensorrt_backend_is_one_line(cli, toy_bundle, tmp_path):
    if HAVE_TRT:
        pytest.skip("TensorRT is installed here")
    x = tmp_path / "x.npy"
    np.save(x, np.zeros(load_manifest(toy_bundle).sample_shape, np.float32))
    res = cli("predict", toy_bundle, x, "--backend", "tensorrt")
    assert_one_line_error(res, 1, "backend 'tensorrt' is not available here")


@pytest.mark.tensorrt
@pytest.mark.skipif(not HAVE_TRT, reason="TensorRT is not importable here (install it on a GPU machine / Jetson)")
def test_engine_built_here_agrees_with_onnx(trt_bundle, tmp_path):
    from cmcd_edge.export.trt_build import EngineConfig, build_engine

    bundle = tmp_path / "bundle"
    shutil.copytree(trt_bundle, bundle)
    entry = build_engine(EngineConfig(bundle=str(bundle), precision="int8", max_batch=16))
    assert entry.key == trt.current_device_key()
    p_trt = Predictor.load(bundle, backend="tensorrt")
    p_cpu = Predictor.load(bundle, variant="fp32", backend="cpu")
    x = np.random.default_rng(0).normal(size=(40, *p_cpu.input_shape)).astype(np.float32)
    agree = (p_trt.predict(x).argmax(1) == p_cpu.predict(x).argmax(1)).mean()
    assert agree >= 0.95
