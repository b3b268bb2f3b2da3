"""Property-based sweeps of the device side: the manifest reader (missing, extra, wrong-typed fields, unknown
schema_version) and Predictor inputs (rank, size, dtype, non-contiguous, NaN, empty batch). The answer is a working
result or a one-line BundleError / InputShapeError; nothing else escapes."""

from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cmcd_edge.runtime import Predictor
from cmcd_edge.runtime.errors import BundleError, InputShapeError
from cmcd_edge.runtime.manifest import load_manifest

JSON_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-3, 10**12), st.floats(allow_nan=True),
                        st.text(max_size=8), st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3),
                                                                                                  st.integers(), max_size=2))


def _paths(obj, prefix=()):
    """Every key path in a JSON document."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield (*prefix, k)
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield (*prefix, i)
            yield from _paths(v, (*prefix, i))


def _parent(doc, path):
    for p in path[:-1]:
        doc = doc[p]
    return doc


@pytest.fixture(scope="module")
def bundle_copy(toy_bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("props") / "bundle"
    shutil.copytree(toy_bundle, out)
    return out, json.loads((toy_bundle / "manifest.json").read_text())


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_manifest_mutations_load_or_give_one_line_bundle_error(bundle_copy, data):
    root, original = bundle_copy
    doc = copy.deepcopy(original)
    paths = list(_paths(doc))
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        try:
            parent = _parent(doc, path)
            action = data.draw(st.sampled_from(["delete", "replace", "add"]))
            if action == "delete":
                del parent[path[-1]]
            elif action == "replace":
                parent[path[-1]] = data.draw(JSON_VALUES)
            elif isinstance(parent, dict):
                parent[data.draw(st.text(min_size=1, max_size=5))] = data.draw(JSON_VALUES)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed this path
    if data.draw(st.booleans()):
        doc["schema_version"] = data.draw(st.integers(-2, 5))
    (root / "manifest.json").write_text(json.dumps(doc))
    try:
        p = Predictor.load(root, threads=1)
    except BundleError as exc:
        msg = str(exc)
        assert msg and "\n" not in msg
        return
    # accepted: it must then work on a well-formed input
    x = np.zeros((2, *p.input_shape), np.float32)
    assert p.predict(x).shape[0] == 2


def test_manifest_unknown_schema_version_names_the_fix(bundle_copy):
    root, original = bundle_copy
    (root / "manifest.json").write_text(json.dumps({**original, "schema_version": 7}))
    with pytest.raises(BundleError, match="schema_version 7 is not supported.*re-export"):
        load_manifest(root)
    (root / "manifest.json").write_text(json.dumps(original))


DTYPES = ["float32", "float64", "float16", "int32", "uint8", "bool", "complex64", "U2", "object"]


@st.composite
def inputs(draw, sample_shape):
    dtype = draw(st.sampled_from(DTYPES))
    kind = draw(st.sampled_from(["single", "batch", "empty", "wrong_size", "wrong_rank", "scalar"]))
    batch = draw(st.integers(1, 6))
    shape = {"single": sample_shape, "batch": (batch, *sample_shape), "empty": (0, *sample_shape),
             "wrong_size": (batch, *(d + draw(st.sampled_from([-1, 1])) for d in sample_shape)),
             "wrong_rank": (batch, 1, *sample_shape), "scalar": ()}[kind]
    assume(all(d >= 0 for d in shape))
    rng = np.random.default_rng(draw(st.integers(0, 100)))
    if dtype in ("U2", "object"):
        arr = np.full(shape, "a", dtype=dtype)
    else:
        arr = (rng.normal(size=shape) * 3).astype(dtype)
    special = draw(st.sampled_from(["none", "nan", "inf", "noncontiguous", "list"]))
    if special in ("nan", "inf") and arr.dtype.kind == "f" and arr.size:
        arr.flat[draw(st.integers(0, arr.size - 1))] = np.nan if special == "nan" else np.inf
    elif special == "noncontiguous" and arr.ndim >= 1 and arr.size:
        arr = np.repeat(arr, 2, axis=-1)[..., ::2]
    elif special == "list":
        return arr.tolist(), arr
    return arr, arr


@pytest.fixture(scope="module")
def pred(toy_bundle):
    return Predictor.load(toy_bundle, threads=1)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_predictor_inputs_work_or_raise_input_shape_error(pred, data):
    given_x, arr = data.draw(inputs(pred.input_shape))
    shape = pred.input_shape
    ok_shape = arr.shape == shape or (arr.ndim == len(shape) + 1 and arr.shape[1:] == shape and arr.shape[0] > 0)
    ok_dtype = arr.dtype.kind in "fiu"
    finite = ok_dtype and bool(np.isfinite(arr.astype(np.float64)).all())
    if ok_shape and ok_dtype and finite:
        out = pred.predict(given_x)
        ref = pred.predict(np.ascontiguousarray(arr, dtype=np.float32))
        np.testing.assert_array_equal(out, ref)
    else:
        with pytest.raises(InputShapeError) as err:
            pred.predict(given_x)
        assert "\n" not in str(err.value)
