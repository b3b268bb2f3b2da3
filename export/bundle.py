"""`cmcd-edge export`: a distill run -> a self-contained deploy bundle, written to a temp folder and renamed.

    BUNDLE/ manifest.json · model.fp32.onnx · model.int8.onnx · [model.fp16.onnx] · calibration.json
            report.json · report.md · export.json (this stage's config)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cmcd_edge import __version__, datasets
from cmcd_edge.calib import ranges as calib_ranges
from cmcd_edge.calib.select import METHODS as SELECT_METHODS
from cmcd_edge.calib.select import check_size, select_rows
from cmcd_edge.errors import AccuracyGateError, UserError
from cmcd_edge.export import gate, onnx_export, quantize, speed
from cmcd_edge.fsutil import atomic_dir, write_json, write_text
from cmcd_edge.registry import check_choice
from cmcd_edge.runtime.cpu import cpu_isa, read_cpuinfo
from cmcd_edge.runtime.manifest import SCHEMA_VERSION, sha256_file
from cmcd_edge.runtime.predictor import RUNS_TARGET
from cmcd_edge.runtime.scores import per_class
from cmcd_edge.runtime.session import make_session, run_batched
from cmcd_edge.splitting import make_splits

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportConfig:
    run: str
    out: str
    data: str | None = None  # the run's dataset where it is now (None: where run.json says); the same files either way
    int8: bool = True
    fp16: bool = False
    calib_size: int | None = None  # None: min(512, train rows)
    calib_method: str = "minmax"
    calib_select: str = "random"
    max_accuracy_drop: float = 1.0
    max_class_drop: float | None = None  # top-1 points one class may lose against FP32 (None: reported, not gated)
    allow_accuracy_drop: bool = False
    target: str = "auto"
    per_channel: bool = True
    stem: str = "auto"  # auto: keep the first conv float when that measures faster here; int8 | float: fixed
    force: bool = False
    recalibrate: bool = False  # with --force: ignore the replaced bundle's calibration.json instead of reusing it
    seed: int = 0

    def __post_init__(self) -> None:
        check_choice("--calib-method", self.calib_method, calib_ranges.METHODS)
        check_choice("--calib-select", self.calib_select, SELECT_METHODS)
        check_choice("--target", self.target, quantize.TARGETS)
        check_choice("--stem", self.stem, ("auto", "int8", "float"))
        if self.calib_size is not None and self.calib_size < 1:
            raise UserError(f"--calib-size {self.calib_size}: must be >= 1")
        if not self.max_accuracy_drop >= 0:  # NaN too
            raise UserError(f"--max-accuracy-drop {self.max_accuracy_drop}: must be >= 0")
        if self.max_class_drop is not None and not self.max_class_drop >= 0:
            raise UserError(f"--max-class-drop {self.max_class_drop}: must be >= 0")


@dataclass
class ExportResult:
    manifest: dict
    report: dict
    gate_failed: bool


def run_export(cfg: ExportConfig) -> ExportResult:
    t0 = time.perf_counter()
    run = onnx_export.load_run(cfg.run)
    dcfg = run.run_json["config"]
    view = run.student_json["view"]
    ds = _run_data(cfg, run.run_json, view)
    splits = make_splits(ds, int(dcfg["seed"]), labeled_fraction=float(dcfg["labeled_fraction"]))
    x_all = ds.view(view)
    labels = np.asarray(ds.labels)
    test = (datasets.SplitRows(x_all, splits.test), labels[splits.test])  # read a batch at a time
    val = (datasets.SplitRows(x_all, splits.val), labels[splits.val])
    calib_size = check_size(min(512, len(splits.train)) if cfg.calib_size is None else cfg.calib_size, len(splits.train))
    target = "cpu" if cfg.target == "auto" else cfg.target
    preset = dataclasses.replace(quantize.preset_for(target), per_channel=cfg.per_channel)
    here = cpu_isa()
    if cfg.int8 and preset.name == "cpu" and preset.isa != here:  # the gate scores the INT8 file on this CPU
        log.info("INT8 preset for %s (--target %s); this CPU is %s, so the gate measures it on %s kernels",
                 preset.isa, target, here, here)
    out = Path(cfg.out)
    if Path(cfg.run).resolve() == out.resolve():
        raise UserError(f"--out {out}: must differ from the run folder")
    if cfg.int8 and not cfg.recalibrate and (out / "calibration.json").exists():  # the flags' part of the cache key
        # is checked before the export, not minutes into it; the model's part needs the exported graph
        calib_ranges.load_cache(out / "calibration.json", _calib_key(cfg, ds, calib_size, preset, model_sha256=""),
                                ignore=("model_sha256",))
    variants = []
    with atomic_dir(out, force=cfg.force) as tmp:
        fp32 = tmp / "model.fp32.onnx"
        onnx_export.export_fp32(run.net, run.spec.in_shape, fp32, example=test[0])
        ref = run_batched(make_session(fp32), test[0], output="logits")  # FP32 over the test rows: once
        par = onnx_export.parity(run.net, ref, test[0])
        if par["max_abs_rel"] > 1e-4 or par["top1_agreement"] < 1.0:
            raise UserError(f"ONNX parity failed vs torch: {par}; please report this student spec")
        predicted = {"fp32": ref.argmax(1)}  # each variant's test classes, for the per-class figures
        fp32_acc = float((predicted["fp32"] == test[1]).mean())
        macs = run.metrics.get("macs")
        variants.append(_variant(tmp, "fp32", "fp32", fp32, fp32_acc, "passed", "any",
                                 {"agreement_with_fp32": 1.0, "macs": macs, "parity": par}))
        calibration = None
        budget = gate.Budget(cfg.max_accuracy_drop, cfg.max_class_drop, tuple(ds.classes))
        if cfg.int8:
            calibration, g, speed_float, probe = _int8(cfg, calib_size, run, ds, splits, x_all, labels, tmp, fp32,
                                                       preset, test, val, ref, budget)
            predicted["int8"] = g.predicted
            variants.append(_variant(tmp, "int8", "int8", tmp / "model.int8.onnx", g.accuracy,
                                     "passed" if g.passed else "failed", preset.name,
                                     {"agreement_with_fp32": g.agreement, "cosine_with_fp32": g.cosine,
                                      "drop_points": round(g.drop_points, 3), "float_nodes": g.excluded,
                                      "all_int8_test_accuracy": g.all_int8_accuracy,
                                      "speed_float_nodes": speed_float, "stem_probe": probe,
                                      "sensitivity": g.sensitivity[:20], "preset": preset.to_json(), "macs": macs}))
        if cfg.fp16:
            quantize.to_fp16(fp32, tmp / "model.fp16.onnx")
            acc16, agree16, cos16, logits16 = gate.scored(tmp / "model.fp16.onnx", *test, ref)
            predicted["fp16"] = logits16.argmax(1)
            misses16 = budget.misses(test[1], predicted["fp32"], predicted["fp16"])
            variants.append(_variant(tmp, "fp16", "fp16", tmp / "model.fp16.onnx", acc16,
                                     "failed" if misses16 else "passed", "cuda",
                                     {"agreement_with_fp32": agree16, "cosine_with_fp32": cos16, "macs": macs}))
        per_class_top1 = {name: per_class(p, test[1], tuple(ds.classes)) for name, p in predicted.items()}
        failures = {}  # variant -> why it fails the budget
        if cfg.int8 and not g.passed:
            failures["int8"] = g.failure()
        if cfg.fp16 and misses16:
            failures["fp16"] = "; ".join(misses16)
        gate_failed = bool(failures)
        manifest = _manifest(run, ds, view, variants, calibration, cfg)
        cpu_variants = [v for v in variants if v["target"] in RUNS_TARGET["cpu"]]
        if len(cpu_variants) > 1:  # which CPU variant is faster here: Predictor's auto pick reads it on a CPU of this kind
            p50 = speed.cpu_latency({v["name"]: tmp / v["file"] for v in cpu_variants}, test[0])
            for v in cpu_variants:  # the manifest's and the report's variant entries
                v["cpu_p50_us"] = round(p50[v["name"]], 2)
            manifest["cpu_timed_on"] = {"isa": here, "cpu": read_cpuinfo()[0] or platform.machine(), "batch": 1,
                                        "threads": 1}
            log.info("CPU latency at batch 1, 1 thread: %s", ", ".join(f"{k} {v:.1f} us" for k, v in p50.items()))
        report = {"variants": variants, "fp32_parity": par, "wall_s": round(time.perf_counter() - t0, 2),
                  "source_run": str(Path(cfg.run).resolve()), "max_accuracy_drop_points": cfg.max_accuracy_drop,
                  "max_class_drop_points": cfg.max_class_drop, "per_class_top1": per_class_top1}
        write_json(tmp / "manifest.json", manifest)
        write_json(tmp / "report.json", report)
        write_text(tmp / "report.md", report_markdown(manifest) + report_details(manifest, report))
        write_json(tmp / "export.json", asdict(cfg))
        if gate_failed and not cfg.allow_accuracy_drop:
            flags = "--max-accuracy-drop" + (" or --max-class-drop" if cfg.max_class_drop is not None else "")
            raise AccuracyGateError(f"accuracy gate failed for {'; '.join(f'{k} ({v})' for k, v in failures.items())}; "
                                    f"nothing was written: raise {flags}, try --calib-method entropy, or pass "
                                    "--allow-accuracy-drop to write the bundle with the variant marked failed")
    return ExportResult(manifest, report, gate_failed)


def _run_data(cfg: ExportConfig, run_json: dict, view: str) -> datasets.Dataset:
    """The dataset the run trained on: at ``--data``, or where run.json says. Its files must be the ones the run
    recorded (data_fingerprint), or the split by the run's seed would put rows the student trained on in the test and
    calibration rows."""
    recorded = run_json["config"]["data"]
    if cfg.data is None and not recorded.startswith("builtin:") and not Path(recorded).is_dir():
        raise UserError(f"{cfg.run}: its data {recorded} is not there (a run moved from another machine?): pass --data "
                        "with where that dataset is now")
    ds = datasets.load(cfg.data or recorded)
    datasets.validate(ds, [view])
    if not datasets.changed_since(ds, run_json.get("data_fingerprint")):
        return ds
    why = "so its test split may hold rows the student trained on"
    if cfg.data is None:
        raise UserError(f"{cfg.run}: its data {recorded} changed since distill (its files differ from run.json's "
                        f"data_fingerprint), {why}: restore that data, or distill again")
    raise UserError(f"--data {cfg.data}: its files differ from those {cfg.run} trained on (run.json's data_fingerprint), "
                    f"{why}: name that run's own data")


def _calib_key(cfg: ExportConfig, ds, calib_size: int, preset, model_sha256: str) -> calib_ranges.CalibKey:
    """What calibration ranges depend on: the graph, the data and the calibration flags."""
    return calib_ranges.CalibKey(model_sha256, ds.fingerprint(), cfg.calib_method, cfg.calib_select, calib_size,
                                 preset.symmetric, cfg.seed)


def _int8(cfg, calib_size, run, ds, splits, x_all, labels, tmp, fp32, preset, test, val, ref, budget):
    pre = tmp / ".model.pre.onnx"
    quantize.preprocess(fp32, pre)
    train = splits.train
    emb = None
    if cfg.calib_select == "coverage":
        emb = run_batched(make_session(fp32), datasets.SplitRows(x_all, train), output="embedding")
    rows = select_rows(train, calib_size, cfg.calib_select, labels=labels[train], embeddings=emb, seed=cfg.seed)
    key = _calib_key(cfg, ds, calib_size, preset, model_sha256=sha256_file(pre))
    # the cache is the calibration.json of the bundle that --force replaces (atomic_dir refuses an existing --out
    # without it): a re-export with other gate, fp16 or weight-granularity flags reuses its ranges
    cached = None if cfg.recalibrate else calib_ranges.load_cache(Path(cfg.out) / "calibration.json", key)
    t = time.perf_counter()
    rng = cached or calib_ranges.compute_ranges(pre, onnx_export.INPUT, np.asarray(x_all[rows], np.float32),
                                                cfg.calib_method, symmetric=preset.symmetric)
    log.info("calibration (%s, %d rows): %s in %.1fs", cfg.calib_method, len(rows), "cached" if cached else "computed",
             time.perf_counter() - t)
    calib_ranges.save_cache(tmp / "calibration.json", key, rng, rows)

    def q_raw(exclude, path):
        quantize.quantize(pre, path, preset, rng, cfg.calib_method, exclude)

    keep_float, probe = [], {}
    if cfg.stem == "float":
        keep_float = [n for n in [speed.first_conv(pre)] if n]
    elif cfg.stem == "auto" and preset.name == "cpu":  # TensorRT picks its own kernels on the device
        keep_float, probe = speed.float_stem_if_faster(pre, q_raw, test[0], tmp)

    def q(exclude, path):
        q_raw([*keep_float, *exclude], path)

    candidates = [n for n in quantize.quantizable_nodes(pre) if n not in keep_float]
    limit = gate.FloatLimit(frozenset(quantize.quantizable_nodes(pre, quantize.LAYER_OPS)))
    g = gate.run_gate(q, candidates, tmp / "model.int8.onnx", fp32, test, val, budget, limit, ref=ref,
                      units=quantize.float_units(pre, candidates))
    pre.unlink()
    calibration = {"method": cfg.calib_method, "select": cfg.calib_select, "size": len(rows),
                   "data_fingerprint": ds.fingerprint(), "file": "calibration.json", "preset": preset.to_json()}
    return calibration, g, keep_float, probe


def _variant(root: Path, name: str, precision: str, path: Path, acc: float, gate_state: str, target: str,
             extra: dict) -> dict:
    return {"name": name, "precision": precision, "file": path.name, "sha256": sha256_file(path),
            "size_bytes": path.stat().st_size, "test_accuracy": acc, "gate": gate_state, "target": target, **extra}


def _manifest(run, ds, view, variants, calibration, cfg) -> dict:
    import onnx
    import onnxruntime
    import torch

    info = ds.views[view]
    return {
        "schema_version": SCHEMA_VERSION,
        "input": {"name": onnx_export.INPUT, "shape": ["batch", *run.spec.in_shape], "dtype": "float32",
                  "layout": {"vector": "ND", "sequence": "NCT", "image": "NCHW"}[info.kind], "view": view,
                  "view_kind": info.kind, "normalization": "inside the graph (train-split mean/std): feed raw samples"},
        "outputs": [{"name": "logits", "kind": "logits", "shape": ["batch", len(ds.classes)]},
                    {"name": "embedding", "kind": "embedding", "shape": ["batch", run.spec.embed_dim]}],
        "classes": list(ds.classes),
        "variants": variants,
        "calibration": calibration,
        "student": {**run.spec.to_json(), "params": run.metrics.get("params"), "macs": run.metrics.get("macs")},
        "source_run": {"path": str(Path(cfg.run).resolve()), "method": run.metrics.get("method"),
                       "test_accuracy": run.metrics.get("test_accuracy"), "data": datasets.canonical_spec(ds.spec),
                       "data_fingerprint": run.run_json.get("data_fingerprint"),
                       "seed": run.run_json["config"]["seed"],
                       "labeled_fraction": run.run_json["config"]["labeled_fraction"]},
        "versions": {"cmcd_edge": __version__, "onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__,
                     "torch": torch.__version__, "python": platform.python_version()},
    }


def report_markdown(manifest: dict) -> str:
    lines = ["| variant | precision | target | size (KB) | test top-1 (%) | agreement with FP32 (%) | gate |",
             "|---|---|---|---|---|---|---|"]
    for v in manifest["variants"]:
        acc = "" if v["test_accuracy"] is None else f"{100 * v['test_accuracy']:.2f}"
        agree = v.get("agreement_with_fp32")
        lines.append(f"| {v['name']} | {v['precision']} | {v['target']} | {v['size_bytes'] / 1024:.1f} | {acc} | "
                     f"{'' if agree is None else f'{100 * agree:.2f}'} | {v['gate']} |")
    for v in manifest["variants"]:
        if v.get("float_nodes"):  # what they bought: the variant's top-1 with every node INT8
            was = v.get("all_int8_test_accuracy")
            lines.append(f"\nNodes kept in float by the accuracy gate: {', '.join(v['float_nodes'])}"
                         + ("" if was is None else f" (every node INT8: {100 * was:.2f}% test top-1)"))
    return "\n".join(lines) + "\n"


def report_details(manifest: dict, report: dict) -> str:
    """What report.md says under the table, so a bundle folder explains itself: where it came from, how INT8 was
    calibrated and gated, and what the CPU timing found (the CLI prints the table alone)."""
    src, st, cal = manifest["source_run"], manifest["student"], manifest.get("calibration")
    par = report["fp32_parity"]
    lines = ["", f"Source run: {src['path']} ({src['method']}, seed {src['seed']}, {src['labeled_fraction']:.0%} of "
                 f"the train labels) on {src['data']}; test top-1 there {100 * src['test_accuracy']:.2f}%. Test top-1 "
                 "above is on that data's test split.",
             f"Student: {st['arch']}, {st['params']:,} parameters, {st['macs']:,} MACs, input "
             f"[{', '.join(map(str, manifest['input']['shape']))}].",
             f"FP32 ONNX against the PyTorch student: max relative difference {par['max_abs_rel']:.1e}, top-1 "
             f"agreement {100 * par['top1_agreement']:.2f}%."]
    if cal:
        pre = cal["preset"]
        lines.append(f"INT8: static QDQ, {cal['method']} calibration on {cal['size']} {cal['select']} train rows; "
                     f"preset {pre['name']} ({pre['isa']}: {pre['activation']} activations, {pre['weight']} weights, "
                     f"{'per-channel' if pre['per_channel'] else 'per-tensor'}, reduce_range "
                     f"{'on' if pre['reduce_range'] else 'off'}).")
    budget, per_class_budget = report["max_accuracy_drop_points"], report.get("max_class_drop_points")
    lines.append(f"Accuracy gate: a variant may lose at most {budget:g} point{'' if budget == 1 else 's'} of test "
                 "top-1 against FP32" + ("." if per_class_budget is None else
                                         f", and at most {per_class_budget:g} of any one class's."))
    lines += [class_drop_line(name, report["per_class_top1"]["fp32"], pc)
              for name, pc in report.get("per_class_top1", {}).items() if name != "fp32"]
    timed = manifest.get("cpu_timed_on")
    if timed:
        p50 = ", ".join(f"{v['name']} {v['cpu_p50_us']:.1f} us" for v in manifest["variants"] if "cpu_p50_us" in v)
        lines.append(f"CPU latency (p50) at batch {timed['batch']}, {timed['threads']} thread, on {timed['cpu']} "
                     f"({timed['isa']}): {p50}.")
    return "\n".join(lines) + "\n"


def class_drop_line(name: str, fp32: dict, variant: dict) -> str:
    """The class a variant loses most top-1 on against FP32: an overall drop within the gate can hide one class's."""
    c, drop, words = gate.worst_class(fp32, variant)
    return f"Per class, {name} loses most on {c}: {words}." if drop > 0 else \
        f"Per class, {name} loses no test top-1 against FP32."


def load_report(bundle: Path) -> dict:
    return json.loads((bundle / "report.json").read_text())
