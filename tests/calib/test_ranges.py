"""Range statistics on a real ONNX Runtime calibrator, and the keyed calibration cache."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from cmcd_edge.calib.ranges import CalibKey, compute_ranges, load_cache, save_cache
from cmcd_edge.errors import UserError

KEY = CalibKey("a" * 64, "b" * 64, "minmax", "random", 4, False, 0)


@pytest.fixture(scope="module")
def relu_model(tmp_path_factory):
    """y = Relu(x), x: [batch, 3]."""
    from onnx import TensorProto, helper, save

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])])
    path = tmp_path_factory.mktemp("calib") / "relu.onnx"
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    return path


def _range(ranges: dict, name: str) -> tuple[float, float]:
    t = ranges["data"][name]  # ORT's TensorsData as CalibrationCacheEncoder writes it: an array or a plain float

    def value(v) -> float:
        return float(np.ravel(v["data"] if isinstance(v, dict) else v)[0])

    return value(t["lowest"]), value(t["highest"])


def test_minmax_ranges_are_the_data_extremes(relu_model):
    x = np.array([[-3.0, 0.5, 1.0], [2.0, -1.0, 4.0]] * 4, np.float32)
    got = compute_ranges(relu_model, "x", x, "minmax")
    assert _range(got, "x") == (-3.0, 4.0)
    assert _range(got, "y") == (0.0, 4.0)  # after Relu
    json.dumps(got)  # JSON-able, as calibration.json stores it


def test_percentile_range_clips_a_lone_outlier(relu_model):
    x = np.random.default_rng(0).normal(size=(4096, 3)).astype(np.float32)
    x[7, 1] = 1000.0
    mm = _range(compute_ranges(relu_model, "x", x, "minmax"), "x")
    pc = _range(compute_ranges(relu_model, "x", x, "percentile"), "x")
    assert mm[1] == 1000.0 and pc[1] < 10.0  # the 99.99th percentile ignores one row in 12,288 values


def test_cache_round_trip_and_atomic_write(tmp_path):
    ranges = {"x": {"lowest": -1.0, "highest": 1.0}}
    path = tmp_path / "calibration.json"
    save_cache(path, KEY, ranges, np.array([3, 1, 2]))
    assert load_cache(path, KEY) == ranges
    assert json.loads(path.read_text())["rows"] == [3, 1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["calibration.json"]  # no temp file left
    assert load_cache(tmp_path / "absent.json", KEY) is None


@pytest.mark.parametrize(("field", "value"), [("model_sha256", "c" * 64), ("method", "entropy"), ("seed", 1),
                                              ("size", 8)])
def test_cache_mismatch_names_the_field_and_the_fix(tmp_path, field, value):
    path = tmp_path / "calibration.json"
    save_cache(path, KEY, {}, np.arange(4))
    with pytest.raises(UserError, match=rf"{field}: cached .* vs now .*pass --recalibrate"):
        load_cache(path, replace(KEY, **{field: value}))


def test_cache_unreadable_says_recalibrate(tmp_path):
    path = tmp_path / "calibration.json"
    path.write_text("{not json")
    with pytest.raises(UserError, match="unreadable calibration cache; pass --recalibrate"):
        load_cache(path, KEY)


def test_ranges_bytes_do_not_depend_on_the_hash_seed(tmp_path):
    """ORT names tensors through a set: calibration.json must not carry that order (it changed between processes)."""
    import subprocess
    import sys

    from onnx import TensorProto, helper, save

    names = ["x", *[f"t{i}" for i in range(8)]]  # a chain of 8 Relus: 9 tensors whose set order varies by hash seed
    nodes = [helper.make_node("Relu", [a], [b]) for a, b in zip(names[:-1], names[1:], strict=True)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
                              [helper.make_tensor_value_info(names[-1], TensorProto.FLOAT, ["batch", 3])])
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), tmp_path / "m.onnx")
    code = ("import json, sys, numpy as np; from cmcd_edge.calib.ranges import compute_ranges; "
            "x = np.arange(24, dtype=np.float32).reshape(8, 3) - 9; "
            "sys.stdout.write(json.dumps(compute_ranges(sys.argv[1], 'x', x, 'minmax')))")
    outs = {subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.onnx")], capture_output=True, text=True,
                           check=True, env={"PYTHONHASHSEED": seed, "PATH": ""}).stdout for seed in ("1", "2", "3")}
    assert len(outs) == 1
