from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from cmcd_edge.runtime import Predictor
from cmcd_edge.runtime.errors import BundleError, InputShapeError, UserError
from cmcd_edge.runtime.manifest import load_manifest
from tests.conftest import CLI
from tests.helpers import assert_one_line_error, edited_bundle


@pytest.fixture(scope="module")
def pred(toy_bundle):
    return Predictor.load(toy_bundle, variant="int8", threads=1)  # auto may pick fp32 here: see the timing tests


def _x(pred, n=5, seed=0):
    return np.random.default_rng(seed).normal(size=(n, *pred.input_shape)).astype(np.float32)


def _timed(toy_bundle, tmp_path, p50: dict, isa: str | None = None, gate_int8: str = "passed"):
    """A copy of the toy bundle whose manifest says the export timed its CPU variants at ``p50`` (us) on this kind
    of CPU, or with ``isa="other"`` on another kind, whatever this host is."""
    from cmcd_edge.runtime import cpu

    def timed(m: dict) -> None:
        here = cpu.cpu_isa()
        other = next(i for i in cpu.ISAS if i != here)
        m["cpu_timed_on"] = {"isa": {None: here, "other": other}[isa], "cpu": "test CPU", "batch": 1, "threads": 1}
        for v in m["variants"]:
            v.pop("cpu_p50_us", None)
            if v["name"] in p50:
                v["cpu_p50_us"] = p50[v["name"]]
            if v["name"] == "int8":
                v["gate"] = gate_int8

    return edited_bundle(toy_bundle, tmp_path / "b", timed)


@pytest.mark.parametrize("p50,isa,picked", [
    ({"fp32": 10.0, "int8": 15.0}, None, "fp32"),  # an INT8 MLP slower than FP32 where it was timed
    ({"fp32": 60.0, "int8": 49.0}, None, "int8"),  # a conv student: INT8 faster
    ({"fp32": 10.0, "int8": 10.5}, None, "int8"),  # within 10%: the precision preference (the smaller file) stands
    ({"fp32": 10.0, "int8": 15.0}, "other", "int8"),  # timed on another kind of CPU: says nothing about this one
    ({"fp32": 10.0}, None, "int8"),  # INT8 not timed
    ({"fp32": True, "int8": 15.0}, None, "int8"),  # not a number of microseconds: ignored
    ({"fp32": float("nan"), "int8": 15.0}, None, "int8"),
    ({"fp32": "10", "int8": 15.0}, None, "int8"),
    ({"fp32": 10**400, "int8": 15.0}, None, "int8"),  # past float's range (was an OverflowError)
])
def test_auto_takes_the_cpu_variant_that_ran_faster_at_export_on_this_kind_of_cpu(toy_bundle, tmp_path, p50, isa,
                                                                                   picked):
    """A tiny MLP runs slower in INT8 than in FP32 (the quantize/dequantize boundaries cost more than the int8 GEMMs
    save: mfeat zer FP32 10.3 us, INT8 14.9 us); auto used to load the INT8 one anyway."""
    p = Predictor.load(_timed(toy_bundle, tmp_path, p50, isa), backend="cpu", threads=1)
    assert p.variant.name == picked and p.backend == "cpu"


def test_auto_never_takes_a_faster_variant_that_failed_the_gate(toy_bundle, tmp_path):
    b = _timed(toy_bundle, tmp_path, {"fp32": 20.0, "int8": 10.0}, gate_int8="failed")
    assert Predictor.load(b, backend="cpu", threads=1).variant.name == "fp32"


def test_export_times_its_cpu_variants_for_auto(toy_bundle):
    from cmcd_edge.runtime import cpu

    m = json.loads((toy_bundle / "manifest.json").read_text())
    assert m["cpu_timed_on"]["isa"] == cpu.cpu_isa() and (m["cpu_timed_on"]["batch"], m["cpu_timed_on"]["threads"]) == (1, 1)
    timed = {v["name"]: v["cpu_p50_us"] for v in m["variants"] if "cpu_p50_us" in v}
    assert set(timed) == {"fp32", "int8"} and all(0 < t < 1e5 for t in timed.values())


def test_predict_single_and_batch_agree(pred):
    x = _x(pred)
    batch = pred.predict(x)
    assert batch.shape == (5, len(pred.classes))
    np.testing.assert_allclose(pred.predict(x[2]), batch[2], rtol=1e-5, atol=1e-5)
    names, probs = pred.classify(x)
    assert len(names) == 5 and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert pred.embed(x).shape[0] == 5


def test_repr_says_what_was_loaded(pred, toy_bundle):
    """In a REPL or a log line the Predictor names its bundle, variant, backend, input and classes (was: an address)."""
    text = repr(pred)
    assert text.startswith(f"Predictor({str(toy_bundle)!r}, variant='int8' (int8, gate passed), backend='cpu'")
    assert f"input=[batch, {', '.join(map(str, pred.input_shape))}]" in text and f"{len(pred.classes)} classes" in text
    assert pred.describe()["gate"] == "passed" and pred.describe()["max_batch"] == pred.max_batch


def test_float64_and_noncontiguous_inputs_are_cast(pred):
    x = _x(pred, 6)
    ref = pred.predict(x)
    np.testing.assert_allclose(pred.predict(x.astype(np.float64)), ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(pred.predict(np.asfortranarray(x)), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kw,needle", [({"max_batch": 0}, "max_batch 0: must be >= 1"),
                                        ({"threads": -1}, "threads -1: must be >= 0 (0: onnxruntime's default)")])
def test_load_refuses_a_bad_max_batch_or_thread_count(toy_bundle, kw, needle):
    """max_batch=0 used to load, then fail every predict with range()'s 'arg 3 must not be zero'."""
    with pytest.raises(UserError, match=re.escape(needle)):
        Predictor.load(toy_bundle, **kw)


def test_a_run_folder_given_for_a_bundle_gets_the_export_command(toy_run):
    """Was: 'manifest.json: missing (not a cmcd-edge bundle?)', with no way forward."""
    with pytest.raises(BundleError, match=re.escape(f"{toy_run}: a distill run, not a bundle: export it first "
                                                    f"(cmcd-edge export {toy_run} --out BUNDLE)")):
        Predictor.load(toy_run)


def test_large_batches_are_split(toy_bundle):
    p = Predictor.load(toy_bundle, variant="fp32", max_batch=4)
    x = _x(p, 11)
    np.testing.assert_allclose(p.predict(x), Predictor.load(toy_bundle, variant="fp32").predict(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bad,msg", [
    (lambda s: np.zeros((2, s[0] + 1), np.float32), "does not match"),
    (lambda s: np.zeros((2, 1, s[0]), np.float32), "does not match"),
    (lambda s: np.zeros((0, s[0]), np.float32), "empty batch"),
    (lambda s: np.full((2, s[0]), np.nan, np.float32), "NaN or Inf in sample 0 and 1 more"),
    (lambda s: np.stack([np.zeros(s[0]), np.r_[np.inf, np.zeros(s[0] - 1)]]).astype(np.float32), "Inf in sample 1 "),
    (lambda s: np.full(s[0], np.nan, np.float32), r"NaN or Inf \(allow_nonfinite"),  # one sample: no index
    (lambda s: np.array([["a"] * s[0]]), "not numeric"),
])
def test_bad_inputs(pred, bad, msg):
    with pytest.raises(InputShapeError, match=msg):
        pred.predict(bad(pred.input_shape))


def test_transposed_axes_get_a_hint(toy_bundle, tmp_path):
    b = _copy(toy_bundle, tmp_path)  # the toy's 8 features recast as a [2, 4] sequence: the check runs before the model
    man = json.loads((b / "manifest.json").read_text())
    man["input"].update(shape=["batch", 2, 4], layout="NCT")
    (b / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(BundleError, match=r"variant fp32 fails on a batch of 1 in the manifest's input shape \[2, 4\] "
                                          r"\(InvalidArgument: .*re-export the bundle"):
        Predictor.load(b, variant="fp32")  # the warm-up finds the manifest and the model at odds (was: the first call)
    p = Predictor.load(b, variant="fp32", warmup=())
    with pytest.raises(InputShapeError, match=r"\[3, 4, 2\] does not match .* another order \(NCT expected\): axes "
                                              r"transposed\?"):
        p.predict(np.zeros((3, 4, 2), np.float32))
    with pytest.raises(InputShapeError) as exc:  # other sizes: no hint
        p.predict(np.zeros((3, 4, 3), np.float32))
    assert "transposed" not in str(exc.value)


def test_a_missing_channel_axis_gets_a_hint(toy_bundle, tmp_path):
    """Was: a batch of one-channel depth maps [N, H, W] for a [1, H, W] bundle got only 'does not match'."""
    b = _copy(toy_bundle, tmp_path)  # the toy's 8 features recast as a one-channel [1, 8] sequence
    man = json.loads((b / "manifest.json").read_text())
    man["input"].update(shape=["batch", 1, 8], layout="NCT")
    (b / "manifest.json").write_text(json.dumps(man))
    p = Predictor.load(b, variant="fp32", warmup=())
    with pytest.raises(InputShapeError, match=r"\[3, 8\] does not match .*; the channel axis \(1\) is missing: add it "
                                              r"with x\[:, None\]$"):
        p.predict(np.zeros((3, 8), np.float32))
    with pytest.raises(InputShapeError, match=r"input shape \[8\] .* add it with x\[None\]$"):
        p.predict(np.zeros(8, np.float32))
    with pytest.raises(InputShapeError) as exc:  # other sizes: no hint
        p.predict(np.zeros((3, 7), np.float32))
    assert "missing" not in str(exc.value)


def test_nan_pass_through_when_allowed(toy_bundle):
    p = Predictor.load(toy_bundle, variant="fp32", allow_nonfinite=True)
    x = _x(p, 2)
    x[0, 0] = np.nan
    assert p.predict(x).shape == (2, len(p.classes))


def _copy(bundle, tmp_path):
    out = tmp_path / "b"
    shutil.copytree(bundle, out)
    return out


def test_tampered_model_refused(toy_bundle, tmp_path):
    b = _copy(toy_bundle, tmp_path)
    data = bytearray((b / "model.int8.onnx").read_bytes())
    data[-10] ^= 0xFF
    (b / "model.int8.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        Predictor.load(b, variant="int8")


def test_truncated_onnx_with_matching_hash_gives_clear_error(toy_bundle, tmp_path):
    b = _copy(toy_bundle, tmp_path)
    path = b / "model.fp32.onnx"
    path.write_bytes(path.read_bytes()[:200])
    m = json.loads((b / "manifest.json").read_text())
    from cmcd_edge.runtime.manifest import sha256_file

    for v in m["variants"]:
        if v["name"] == "fp32":
            v["sha256"] = sha256_file(path)
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="onnxruntime cannot load"):
        Predictor.load(b, variant="fp32")


@pytest.mark.parametrize("mutate,msg", [
    (lambda m: m.pop("input"), "missing field 'input'"),
    (lambda m: m.update(schema_version=99), "schema_version 99 is not supported"),
    (lambda m: m["variants"][0].update(file="../escape.onnx"), "escapes the bundle"),
    (lambda m: m["variants"][0].update(file="/etc/passwd"), "plain relative path"),
    (lambda m: m["variants"][0].update(size_bytes="big"), "'size_bytes' must be int"),
])
def test_manifest_validation(toy_bundle, tmp_path, mutate, msg):
    b = _copy(toy_bundle, tmp_path)
    m = json.loads((b / "manifest.json").read_text())
    mutate(m)
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match=msg):
        load_manifest(b)


def test_symlink_out_of_bundle_refused(toy_bundle, tmp_path):
    b = _copy(toy_bundle, tmp_path)
    outside = tmp_path / "outside.onnx"
    shutil.copy(b / "model.fp32.onnx", outside)
    (b / "model.fp32.onnx").unlink()
    os.symlink(outside, b / "model.fp32.onnx")
    with pytest.raises(BundleError, match="outside the bundle"):
        Predictor.load(b, variant="fp32")


def test_predict_cli_and_errors(toy_bundle, cli, tmp_path):
    p = Predictor.load(toy_bundle)
    np.save(tmp_path / "x.npy", _x(p, 3))
    res = cli("predict", toy_bundle, tmp_path / "x.npy", "--out", tmp_path / "p.json")
    assert res.returncode == 0, res.stderr
    assert len(json.loads((tmp_path / "p.json").read_text())["predictions"]) == 3
    np.save(tmp_path / "bad.npy", np.zeros((3, 999), np.float32))
    assert_one_line_error(cli("predict", toy_bundle, tmp_path / "bad.npy"), 2, "bad.npy: input shape", "does not match")
    x = _x(p, 3)
    x[2, 0] = np.nan
    np.save(tmp_path / "nan.npy", x)
    assert_one_line_error(cli("predict", toy_bundle, tmp_path / "nan.npy"), 2, "nan.npy: input contains NaN or Inf in "
                          "sample 2")
    res = cli("predict", toy_bundle, tmp_path / "nan.npy", "--allow-nonfinite", "--out", tmp_path / "n.json")
    assert res.returncode == 0, res.stderr
    assert len(json.loads((tmp_path / "n.json").read_text())["predictions"]) == 3
    assert_one_line_error(cli("predict", toy_bundle, tmp_path / "x.npy", "--top", "0"), 2, "--top", "0 is not in the range")
    # was: a blank line per sample


def test_predict_piped_into_head_ends_quietly(toy_bundle, tmp_path):
    """`cmcd-edge predict B x.npy | head -1`: was 'Error: internal error: BrokenPipeError' once head had its line."""
    p = Predictor.load(toy_bundle)
    np.save(tmp_path / "x.npy", _x(p, 5000))  # ~150 KB of lines: more than a pipe holds
    proc = subprocess.Popen([*CLI, "predict", str(toy_bundle), str(tmp_path / "x.npy")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().startswith("0: ")
    proc.stdout.close()  # what head does after its line
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 1 and err == "", err


def test_load_warms_the_session_up_at_the_given_batch_sizes(toy_bundle, monkeypatch):
    """Was: a device app's first request paid the session's first-run work (fresh processes here, medians: a cnn1d
    bundle's first call 325 us without a warm-up, 83 us with; BENCHMARKS.md). ``warmup=()`` skips it (the predict
    command runs once). A manifest at odds with its model now fails at load, in the warm-up."""
    from cmcd_edge.runtime import predictor as pr

    seen: list[int] = []

    class Recording:  # the real session, its runs' batch sizes noted
        def __init__(self, session):
            self._session = session

        def __getattr__(self, name):
            return getattr(self._session, name)

        def run(self, names, feed):
            seen.append(next(iter(feed.values())).shape[0])
            return self._session.run(names, feed)

    real_open, opened = pr._open, []

    def recording_open(*args):
        chosen, session = real_open(*args)
        opened.append(chosen.name)
        return chosen, Recording(session)

    monkeypatch.setattr(pr, "_open", recording_open)
    p = Predictor.load(toy_bundle, backend="cpu")
    assert seen == [1, 1] and p.describe()["warmup_batches"] == [1] and p.describe()["warmup_ms"] > 0
    seen.clear()
    Predictor.load(toy_bundle, backend="cpu", warmup=(1, 8))
    assert seen == [1, 1, 8, 8]
    seen.clear()
    Predictor.load(toy_bundle, backend="cpu", warmup=())
    assert seen == []
    opened.clear()
    for bad in (0, 300, 2.0):
        with pytest.raises(UserError, match=re.escape(f"warmup batch {bad!r}: must be an integer in [1, 256]")):
            Predictor.load(toy_bundle, backend="cpu", warmup=(bad,))
    assert opened == []  # refused before a session was made


def test_runtime_and_bench_work_without_torch(toy_bundle, tmp_path):
    """The device side: predict and bench with torch (and onnx) made unimportable."""
    code = ("import sys; sys.modules['torch'] = None; sys.modules['onnx'] = None; "
            "from cmcd_edge.cli import main; sys.argv = ['cmcd-edge'] + sys.argv[1:]; main()")
    res = subprocess.run([sys.executable, "-c", code, "bench", str(toy_bundle), "--duration", "0.1", "--warmup", "0",
                          "--batch", "1"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
