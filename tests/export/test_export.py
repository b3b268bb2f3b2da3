from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from cmcd_edge.errors import UserError
from cmcd_edge.export import quantize, speed
from cmcd_edge.export.bundle import ExportConfig, run_export
from cmcd_edge.runtime.manifest import load_manifest, sha256_file
from tests.helpers import assert_one_line_error, permute_rows, run_on_copied_data


def test_bundle_has_manifest_variants_and_reports(toy_bundle):
    m = load_manifest(toy_bundle)
    names = {v.name for v in m.variants}
    assert names == {"fp32", "int8"}
    for v in m.variants:
        assert sha256_file(toy_bundle / v.file) == v.sha256
        assert v.gate == "passed" and 0 <= v.test_accuracy <= 1
    raw = m.raw
    assert raw["calibration"]["method"] == "minmax" and raw["input"]["dtype"] == "float32"
    assert raw["variants"][0]["parity"]["max_abs_rel"] <= 1e-4
    assert {"report.json", "report.md", "calibration.json", "export.json"} <= {p.name for p in toy_bundle.iterdir()}
    int8 = m.variant("int8")
    assert int8.extra["agreement_with_fp32"] >= 0.95
    assert int8.size_bytes < m.variant("fp32").size_bytes


def test_report_md_says_where_the_bundle_came_from_and_how_int8_was_made(toy_bundle):
    """Was: report.md held the variant table alone; the run, calibration, gate budget and CPU timing were only in
    the JSON files."""
    m, report = load_manifest(toy_bundle).raw, json.loads((toy_bundle / "report.json").read_text())
    md = (toy_bundle / "report.md").read_text()
    src, cal = m["source_run"], m["calibration"]
    assert md.startswith("| variant | precision |")
    assert f"Source run: {src['path']} ({src['method']}, seed {src['seed']}, 10% of the train labels) on {src['data']}" in md
    assert f"Student: mlp, {m['student']['params']:,} parameters, {m['student']['macs']:,} MACs, input [batch, 8]." in md
    assert f"INT8: static QDQ, minmax calibration on {cal['size']} random train rows; preset {cal['preset']['name']}" in md
    assert f"may lose at most {report['max_accuracy_drop_points']:g} points of test top-1" in md
    int8 = next(v for v in m["variants"] if v["name"] == "int8")
    assert f"int8 {int8['cpu_p50_us']:.1f} us" in md


def test_export_refuses_existing_bundle_and_keeps_it(toy_run, toy_bundle, cli):
    before = (toy_bundle / "manifest.json").read_bytes()
    assert_one_line_error(cli("export", toy_run, "--out", toy_bundle), 2, "--force")
    assert (toy_bundle / "manifest.json").read_bytes() == before


@pytest.mark.parametrize("args,needles", [
    (["--calib-size", "0"], ["--calib-size 0"]),
    (["--calib-size", "100000"], ["larger than"]),
    (["--calib-method", "kl"], ["--calib-method 'kl'", "minmax, entropy, percentile"]),
    (["--target", "tpu"], ["--target 'tpu'", "auto, cpu, cpu-vnni, cpu-avx2, cpu-arm64, tensorrt"]),
    (["--max-accuracy-drop", "nan"], ["--max-accuracy-drop nan: must be >= 0"]),  # was: the whole export, then the gate
    # flags the rest of the command leaves without effect (were: accepted, a bundle made without them)
    (["--no-int8", "--calib-method", "entropy", "--per-tensor"], ["--calib-method entropy, --per-tensor: for the INT8 "
                                                                  "variant, which --no-int8 leaves out"]),
    (["--no-int8", "--max-accuracy-drop", "2"], ["--max-accuracy-drop 2.0: for the INT8 variant"]),
    (["--no-int8", "--max-class-drop", "5"], ["--max-class-drop 5.0: for the INT8 variant"]),
    (["--max-class-drop", "-1"], ["--max-class-drop -1.0: must be >= 0"]),
    (["--recalibrate"], ["--recalibrate: only with --force"]),
])
def test_export_bad_flags(toy_run, tmp_path, cli, args, needles):
    assert_one_line_error(cli("export", toy_run, "--out", tmp_path / "b", *args), 2, *needles)
    assert not (tmp_path / "b").exists() and not list(tmp_path.glob(".b.*"))


def test_export_no_int8_takes_the_gate_flags_with_fp16_and_any_flag_from_a_config_file(toy_run, tmp_path, cli):
    """The gate also judges the FP16 variant; a --config file may serve exports with and without INT8."""
    (tmp_path / "export.json").write_text(json.dumps({"calib_method": "entropy", "per_channel": False}))
    res = cli("export", toy_run, "--out", tmp_path / "b", "--no-int8", "--fp16", "--max-accuracy-drop", "5",
              "--config", tmp_path / "export.json")
    assert res.returncode == 0, res.stderr
    assert [v.name for v in load_manifest(tmp_path / "b").variants] == ["fp32", "fp16"]


def test_export_config_file_with_a_bad_value_names_the_file_and_the_key(toy_run, tmp_path, cli):
    (tmp_path / "e.json").write_text('{"calib_size": 0}')
    res = cli("export", toy_run, "--out", tmp_path / "b", "--config", tmp_path / "e.json")
    assert_one_line_error(res, 2, f"Error: --config {tmp_path / 'e.json'}: calib_size 0: must be >= 1")  # was: '--calib-size 0'
    assert not (tmp_path / "b").exists()


def test_export_of_a_bundle_folder_names_the_run_it_came_from(toy_run, toy_bundle):
    """Was: 'BUNDLE/run.json: missing'. A bundle records the run it was exported from."""
    from cmcd_edge.export.onnx_export import load_run

    with pytest.raises(UserError, match=f"{toy_bundle}: a bundle, not a distill run; it was exported from "
                                        f"{toy_run.resolve()}"):
        load_run(toy_bundle)


@pytest.mark.parametrize("damage", ["missing_student_json", "corrupt_safetensors", "unfinished", "killed_early"])
def test_export_bad_run_dir(toy_run, tmp_path, cli, damage):
    run = tmp_path / "run"
    shutil.copytree(toy_run, run)
    if damage == "missing_student_json":
        (run / "student.json").unlink()
        needle = "student.json: missing"
    elif damage == "corrupt_safetensors":
        (run / "student.safetensors").write_bytes(b"\x00" * 64)
        needle = "student.safetensors: corrupt"
    elif damage == "unfinished":
        (run / "metrics.json").unlink()
        needle = "did not finish"
    else:  # killed before the student was written: run.json says "running", no student files yet
        for name in ("metrics.json", "student.json", "student.safetensors"):
            (run / name).unlink()
        doc = json.loads((run / "run.json").read_text())
        (run / "run.json").write_text(json.dumps({**doc, "status": "running"}))
        needle = "did not finish (status 'running'); continue it with cmcd-edge distill ... --out"
    assert_one_line_error(cli("export", run, "--out", tmp_path / "b"), 2, needle)
    assert not (tmp_path / "b").exists()


def test_export_and_bench_refuse_nan_in_the_data(toy_run, toy_bundle, tmp_path, cli):
    def nan_at_row_3(data):
        arr = np.load(data / "views" / "tgt.npy")
        arr[3, 0] = np.nan
        np.save(data / "views" / "tgt.npy", arr)

    run, data = run_on_copied_data(toy_run, tmp_path, nan_at_row_3)
    assert_one_line_error(cli("export", run, "--out", tmp_path / "b", "--int8"), 2, "tgt.npy: NaN or Inf at row 3")
    assert not (tmp_path / "b").exists()  # calibration ranges from a NaN row would be NaN
    assert_one_line_error(cli("bench", toy_bundle, "--data", data, "--duration", "0.1"), 2, "tgt.npy: NaN or Inf")


def test_export_refuses_a_run_whose_data_changed_since_distill(toy_run, tmp_path, cli):
    """Was: export scored the run's data as it is now. Rows reordered after distill put rows the student trained on
    in the test split, and the gate and manifest recorded that figure (mfeat fac -> fou: 93.5% for a student whose
    test top-1 is 83.5%). A moved copy of the same data still exports."""
    run, data = run_on_copied_data(toy_run, tmp_path / "changed", permute_rows)
    res = cli("export", run, "--out", tmp_path / "b", "--no-int8")
    assert_one_line_error(res, 2, f"{run}: its data {data} changed since distill", "restore")
    assert not (tmp_path / "b").exists()
    moved, _ = run_on_copied_data(toy_run, tmp_path / "moved")
    res = cli("export", moved, "--out", tmp_path / "b", "--no-int8")
    assert res.returncode == 0, res.stderr[-2000:]


def test_export_data_says_where_the_runs_data_is_now(toy_run, tmp_path, cli):
    """Was: a run copied to another machine, its data at another path, could not be exported (`DATA: no such dataset
    folder`, no flag to name the data's new place, short of editing run.json). --data must hold the same files."""
    run, data = run_on_copied_data(toy_run, tmp_path)
    doc = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**doc, "config": {**doc["config"], "data": str(tmp_path / "gone")}}))
    res = cli("export", run, "--out", tmp_path / "b", "--no-int8")
    assert_one_line_error(res, 2, f"{run}: its data {tmp_path / 'gone'} is not there", "pass --data")
    changed = tmp_path / "changed"
    shutil.copytree(data, changed)
    permute_rows(changed)
    res = cli("export", run, "--out", tmp_path / "b", "--no-int8", "--data", changed)
    assert_one_line_error(res, 2, f"--data {changed}: its files differ from those {run} trained on")
    assert not (tmp_path / "b").exists()
    res = cli("export", run, "--out", tmp_path / "b", "--no-int8", "--data", data)
    assert res.returncode == 0, res.stderr[-2000:]
    assert load_manifest(tmp_path / "b").raw["source_run"]["data"] == str(data)  # where bench finds it


def test_force_reexport_reuses_matching_calibration_and_refuses_a_mismatch(toy_run, toy_bundle, tmp_path, cli):
    """The replaced bundle's calibration.json is the cache (was: never read, since --force skipped it and an existing
    --out without --force is refused first; its error named a --recalibrate flag that did not exist)."""
    out = tmp_path / "b"
    shutil.copytree(toy_bundle, out)  # toy_run exported with the default calibration flags
    cal, int8 = (out / "calibration.json").read_bytes(), (out / "model.int8.onnx").read_bytes()

    res = cli("export", toy_run, "--out", out, "--force", "--fp16", "--max-accuracy-drop", "5")
    assert res.returncode == 0, res.stderr
    assert "calibration (minmax, " in res.stderr and "): cached" in res.stderr
    assert (out / "calibration.json").read_bytes() == cal and (out / "model.int8.onnx").read_bytes() == int8
    assert (out / "model.fp16.onnx").exists()

    manifest = (out / "manifest.json").read_bytes()
    res = cli("export", toy_run, "--out", out, "--force", "--calib-method", "entropy", "--max-accuracy-drop", "5")
    assert_one_line_error(res, 2, "calibration.json: calibration cache was made for another",
                          "method: cached 'minmax' vs now 'entropy'", "pass --recalibrate")
    assert (out / "manifest.json").read_bytes() == manifest  # the old bundle is untouched

    res = cli("export", toy_run, "--out", out, "--force", "--recalibrate", "--calib-method", "entropy",
              "--max-accuracy-drop", "5")
    assert res.returncode == 0, res.stderr
    assert "): computed" in res.stderr
    assert json.loads((out / "calibration.json").read_text())["key"]["method"] == "entropy"


def test_a_calibration_cache_of_other_flags_is_refused_before_the_onnx_export(toy_run, toy_bundle, tmp_path,
                                                                               monkeypatch):
    """The flags' part of the cache key is checked up front (was: after the FP32 export and ONNX parity, seconds to
    minutes in); the model's part needs the exported graph and is checked where it was."""
    from cmcd_edge.export import onnx_export

    out = tmp_path / "b"
    shutil.copytree(toy_bundle, out)

    def no_export(*args, **kw):
        raise AssertionError("the FP32 export ran before the cache was checked")

    monkeypatch.setattr(onnx_export, "export_fp32", no_export)
    with pytest.raises(UserError, match="method: cached 'minmax' vs now 'entropy'.*pass --recalibrate"):
        run_export(ExportConfig(run=str(toy_run), out=str(out), force=True, calib_method="entropy",
                                max_accuracy_drop=5.0))
    with pytest.raises(AssertionError, match="the FP32 export ran"):  # matching flags: on to the export
        run_export(ExportConfig(run=str(toy_run), out=str(out), force=True, max_accuracy_drop=5.0))


def test_entropy_and_percentile_calibration(toy_run, tmp_path):
    for method in ("entropy", "percentile"):
        res = run_export(ExportConfig(run=str(toy_run), out=str(tmp_path / method), calib_method=method,
                                      calib_select="coverage", max_accuracy_drop=5.0))
        assert res.manifest["calibration"]["method"] == method
        assert res.manifest["calibration"]["select"] == "coverage"


def test_tensorrt_preset_is_symmetric_with_zero_points_zero(toy_run, tmp_path):
    import onnx

    res = run_export(ExportConfig(run=str(toy_run), out=str(tmp_path / "trt"), target="tensorrt",
                                  max_accuracy_drop=5.0))
    path = tmp_path / "trt" / "model.int8.onnx"
    onnx.checker.check_model(str(path))
    assert quantize.check_tensorrt_qdq(path) == []
    assert res.manifest["variants"][1]["target"] == "tensorrt"


def test_cpu_preset_is_asymmetric_and_flagged_by_tensorrt_check(toy_bundle):
    problems = quantize.check_tensorrt_qdq(toy_bundle / "model.int8.onnx")
    assert any("uint8" in p or "non-zero" in p for p in problems)


@pytest.mark.parametrize("isa,expect", [("x86-avx2", ("u8", True)), ("x86-vnni", ("u8", False)),
                                        ("arm64", ("s8", False))])
def test_cpu_presets_by_isa(isa, expect):
    p = quantize.preset_for("cpu", isa)
    assert (p.activation, p.reduce_range) == expect


@pytest.mark.parametrize("target,expect", [("cpu-avx2", ("x86-avx2", "u8", True)),
                                           ("cpu-vnni", ("x86-vnni", "u8", False)),
                                           ("cpu-arm64", ("arm64", "s8", False))])
def test_named_cpu_targets_quantize_for_that_cpu_not_this_one(target, expect):
    """A bundle made on a VNNI workstation for an AVX2 box: --target cpu-avx2 gives it 7-bit weights whatever this
    machine is (--target cpu means this machine's ISA)."""
    p = quantize.preset_for(target)
    assert (p.isa, p.activation, p.reduce_range) == expect


def test_export_for_another_cpu_records_its_preset_in_the_manifest(toy_run, tmp_path):
    res = run_export(ExportConfig(run=str(toy_run), out=str(tmp_path / "b"), target="cpu-avx2", max_accuracy_drop=5.0))
    int8 = [v for v in res.manifest["variants"] if v["name"] == "int8"][0]
    assert int8["target"] == "cpu" and (int8["preset"]["isa"], int8["preset"]["reduce_range"]) == ("x86-avx2", True)


def test_fp16_variant(toy_run, tmp_path):
    res = run_export(ExportConfig(run=str(toy_run), out=str(tmp_path / "b"), int8=False, fp16=True))
    fp16 = [v for v in res.manifest["variants"] if v["name"] == "fp16"][0]
    assert fp16["agreement_with_fp32"] >= 0.99


@pytest.mark.parametrize("stem", ["int8", "float"])
@pytest.mark.parametrize("kind,shape", [("sequence", (6, 256)), ("image", (3, 96, 96))])
def test_int8_agrees_with_fp32_on_conv_students(kind, shape, stem, tmp_path):
    """Random-weight cnn1d/cnn2d students, synthetic calibration: agreement >= 99%, cosine >= 0.999."""
    import torch

    from cmcd_edge.calib.ranges import compute_ranges
    from cmcd_edge.distill import students
    from cmcd_edge.export import onnx_export
    from cmcd_edge.export.gate import score

    torch.manual_seed(0)
    net = students.build(students.default_spec(kind, shape, 10)).eval()
    rng = np.random.default_rng(0)
    calib, held = (rng.normal(size=(n, *shape)).astype(np.float32) for n in (64, 200))
    fp32, pre, int8 = tmp_path / "f.onnx", tmp_path / "p.onnx", tmp_path / "q.onnx"
    onnx_export.export_fp32(net, shape, fp32, example=calib)
    quantize.preprocess(fp32, pre)
    preset = quantize.preset_for("cpu")
    exclude = [speed.first_conv(pre)] if stem == "float" else []
    quantize.quantize(pre, int8, preset, compute_ranges(pre, "input", calib, "minmax"), "minmax", exclude)
    from cmcd_edge.runtime.session import make_session, run_batched

    g = onnx.load(str(fp32)).graph
    used = {i for n in g.node for i in n.input}
    assert [i.name for i in g.initializer if i.name not in used] == []  # the pools' axes went with them
    ops = [n.op_type for n in onnx.load(str(int8)).graph.node]
    assert "ReduceMean" not in ops and "GlobalAveragePool" in ops  # the pool is rewritten and runs in int8
    if stem == "int8":  # the input normalisation is folded into one per-channel QuantizeLinear
        assert "Sub" not in ops and "Div" not in ops

    ref = run_batched(make_session(fp32), held)
    _, agree, cos = score(int8, held, ref.argmax(1), ref)
    assert agree >= 0.99 and cos >= 0.999, (agree, cos)
    kernels = [list(a.ints) for n in g.node if n.op_type == "Conv" for a in n.attribute if a.name == "kernel_shape"]
    assert kernels and all(len(k) == 2 for k in kernels), kernels  # cnn1d's convs run as 2-D (export/lift2d.py)
    with torch.no_grad():
        eager = net(torch.from_numpy(held)).numpy()
    assert np.abs(ref - eager).max() <= 1e-4 * np.abs(eager).max()  # the rewritten graph computes what torch does


def test_export_report_names_the_class_each_variant_loses_most_on(toy_bundle):
    """Was: one top-1 per variant, so a variant within the gate overall could lose most of one class unseen. The
    report now holds each variant's per-class top-1 on the test split and says which class it loses most on."""
    from cmcd_edge.export.bundle import class_drop_line, load_report

    rep = load_report(toy_bundle)
    pcs = rep["per_class_top1"]
    assert set(pcs) == {v["name"] for v in rep["variants"]}
    for v in rep["variants"]:  # the per-class figures add up to the variant's own top-1
        pc = pcs[v["name"]]
        assert sum(c["rows"] * c["top1"] for c in pc.values()) / sum(c["rows"] for c in pc.values()) == \
            pytest.approx(v["test_accuracy"])
    md = (toy_bundle / "report.md").read_text()
    assert class_drop_line("int8", pcs["fp32"], pcs["int8"]) in md
    fp32 = {"a": {"rows": 40, "top1": 0.9}, "b": {"rows": 10, "top1": 0.8}}  # golden values
    assert class_drop_line("int8", fp32, {"a": {"rows": 40, "top1": 0.925}, "b": {"rows": 10, "top1": 0.5}}) == \
        "Per class, int8 loses most on b: 80.0% -> 50.0% (3 of its 10 test rows)."
    assert class_drop_line("fp16", fp32, fp32) == "Per class, fp16 loses no test top-1 against FP32."


def test_export_runs_each_variant_over_the_test_rows_once(toy_run, tmp_path, monkeypatch):
    """Was: FP32 ran over the test split four times (parity, its top-1, the gate's reference, the FP16 reference) and
    every variant once more for its per-class figures: nine passes for three variants, where three give the same
    figures (the per-class ones are checked against a fresh run in test_export_report_names_...)."""
    from cmcd_edge.export import bundle
    from cmcd_edge.runtime import session

    n_test = json.loads((toy_run / "run.json").read_text())["splits"]["test"]
    passes = []
    real = session.run_batched

    def counted(sess, x, *args, **kw):
        if len(x) == n_test:
            passes.append(Path(sess._model_path).name)
        return real(sess, x, *args, **kw)

    monkeypatch.setattr(session, "run_batched", counted)
    monkeypatch.setattr(bundle, "run_batched", counted)
    res = run_export(ExportConfig(run=str(toy_run), out=str(tmp_path / "b"), fp16=True, max_accuracy_drop=5.0))
    assert [v["gate"] for v in res.manifest["variants"]] == ["passed"] * 3
    assert sorted(passes) == ["model.fp16.onnx", "model.fp32.onnx", "model.int8.onnx"]
