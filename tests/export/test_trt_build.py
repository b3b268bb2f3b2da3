"""build-engine: the build plan per TensorRT version, manifest updates, and its CLI errors (no TensorRT needed)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil

import pytest

from cmcd_edge.errors import BundleError, UserError
from cmcd_edge.export.trt_build import EngineConfig, add_engine, plan_build
from cmcd_edge.fsutil import exclusive
from cmcd_edge.runtime.manifest import DeviceKey, EngineEntry, load_manifest
from tests.helpers import assert_one_line_error

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None


def test_int8_plan_uses_the_symmetric_qdq_variant_strongly_typed(trt_bundle):
    plan = plan_build(load_manifest(trt_bundle), "int8", 10)
    assert plan.variant.precision == "int8" and plan.variant.target == "tensorrt"
    assert plan.strongly_typed and not plan.fp16_flag


def test_int8_plan_refuses_the_cpu_preset_with_the_fix(toy_bundle):
    with pytest.raises(BundleError, match="re-export with cmcd-edge export RUN --int8 --target tensorrt"):
        plan_build(load_manifest(toy_bundle), "int8", 10)


def test_fp16_plan_is_a_builder_flag_on_tensorrt_10_and_an_fp16_onnx_on_11(trt_bundle, toy_bundle):
    p10 = plan_build(load_manifest(trt_bundle), "fp16", 10)
    assert p10.variant.name == "fp32" and p10.fp16_flag and not p10.strongly_typed
    p11 = plan_build(load_manifest(trt_bundle), "fp16", 11)
    assert p11.variant.precision == "fp16" and p11.strongly_typed and not p11.fp16_flag
    with pytest.raises(BundleError, match="re-export with cmcd-edge export RUN --fp16"):
        plan_build(load_manifest(toy_bundle), "fp16", 11)


def test_add_engine_replaces_the_same_device_and_keeps_others(trt_bundle, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(trt_bundle, bundle)
    a, b = DeviceKey("10.3.0", "Orin", "8.7"), DeviceKey("10.8.0", "NVIDIA L4", "8.9")
    add_engine(bundle, EngineEntry("e1.engine", "int8", "1" * 64, 10, a, 8, "int8"))
    add_engine(bundle, EngineEntry("e2.engine", "int8", "2" * 64, 10, b, 8, "int8"))
    add_engine(bundle, EngineEntry("e1.engine", "int8", "3" * 64, 11, a, 16, "int8"))
    engines = load_manifest(bundle).engines
    assert [(e.file, e.sha256[0], e.max_batch) for e in engines] == [("e2.engine", "2", 8), ("e1.engine", "3", 16)]
    assert not list(bundle.glob(".*.tmp"))


def test_manifest_engine_with_unknown_source_variant_is_refused(trt_bundle, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(trt_bundle, bundle)
    raw = json.loads((bundle / "manifest.json").read_text())
    raw["engines"] = [{**EngineEntry("e.engine", "int8", "0" * 64, 1, DeviceKey("10", "g", "8.7"), 1, "int4").to_json()}]
    (bundle / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="source_variant 'int4' is not a variant"):
        load_manifest(bundle)


@pytest.mark.parametrize("kw, needle", [({"precision": "int4"}, "--precision 'int4'"),
                                        ({"max_batch": 0}, "--max-batch 0"),
                                        ({"opt_batch": 9, "max_batch": 4}, "--opt-batch 9")])
def test_engine_config_rejects_bad_flags(kw, needle):
    with pytest.raises(UserError, match=needle):
        EngineConfig(bundle="b", **kw)


def test_build_engine_without_tensorrt_is_one_line(cli, trt_bundle):
    if HAVE_TRT:
        pytest.skip("TensorRT is installed here")
    res = cli("build-engine", trt_bundle)
    assert_one_line_error(res, 1, "TensorRT is not importable here")


def test_build_engine_refuses_a_bundle_another_process_is_writing(cli, trt_bundle):
    """Two builds at once (fp16 in one terminal, int8 in another) each rewrote manifest.json from what they had read:
    the later one dropped the other's engine entry."""
    with exclusive(trt_bundle):
        res = cli("build-engine", trt_bundle, "--precision", "fp16")
    assert_one_line_error(res, 2, f"{trt_bundle}: another cmcd-edge process (pid {os.getpid()}) is writing it")


def test_export_engine_needs_the_tensorrt_target(cli, toy_run, tmp_path):
    res = cli("export", toy_run, "--out", tmp_path / "b", "--engine")
    assert_one_line_error(res, 2, "--engine builds from the TensorRT INT8 variant")
    assert not (tmp_path / "b").exists()


def test_export_engine_without_tensorrt_fails_before_writing(cli, toy_run, tmp_path):
    if HAVE_TRT:
        pytest.skip("TensorRT is installed here")
    res = cli("export", toy_run, "--out", tmp_path / "b", "--target", "tensorrt", "--engine")
    assert_one_line_error(res, 1, "TensorRT is not importable here")
    assert not (tmp_path / "b").exists() and not list(tmp_path.glob(".*.tmp"))


def test_export_for_tensorrt_without_engine_says_how_to_build_one(cli, toy_run, tmp_path):
    """Was: the table and '-> OUT', and nothing of the engine a --target tensorrt bundle still needs."""
    res = cli("export", toy_run, "--out", tmp_path / "b", "--target", "tensorrt")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == (
        "no TensorRT engine built (--engine builds one where TensorRT and the GPU are): on the device, "
        f"cmcd-edge build-engine {tmp_path / 'b'}")
    assert "build-engine" not in cli("export", toy_run, "--out", tmp_path / "c").stdout  # a CPU bundle needs none
