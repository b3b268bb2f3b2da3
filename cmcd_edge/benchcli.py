"""`cmcd-edge bench` orchestration: builds the cases (variants x batches x threads, the raw session beside the
Predictor, torch eager when asked), runs them interleaved, and reports. Device side: torch only for --compare-torch."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import click
import numpy as np

from cmcd_edge.cli_base import csv_items
from cmcd_edge.errors import EngineMismatch, UserError
from cmcd_edge.fsutil import write_json
from cmcd_edge.runtime import bench as rb
from cmcd_edge.runtime.manifest import load_manifest
from cmcd_edge.runtime.predictor import Predictor, auto_variant

log = logging.getLogger(__name__)


def _scored_rows(manifest, data: str | None, rows: str = "test"):
    """The rows top-1 is measured on: the test split of the bundle's data (the run's seed) or of ``--data``; with
    ``rows="all"``, every labeled row of ``--data``, new data the run never saw (refused for the run's own data, whose
    other rows the student trained on). Returns (rows, labels, what) or None when accuracy is skipped."""
    from cmcd_edge import datasets
    from cmcd_edge.splitting import make_splits

    src = manifest.raw.get("source_run") or {}
    if rows == "all" and not data:
        raise UserError("--rows all: needs --data, the new labeled data to score (the bundle's own data holds the "
                        "rows its student trained on)")
    spec = data or src.get("data")
    if not spec:
        return None
    try:
        ds = datasets.load(spec)
    except UserError as exc:
        if data:
            raise
        log.warning("accuracy skipped: the bundle's data %s is not here (%s); pass --data", spec, exc)
        return None
    view = manifest.raw["input"].get("view")
    if view not in ds.views:
        raise UserError(f"--data {spec}: has no view {view!r} (the bundle's input view)")
    shape = list(ds.views[view].shape[1:])
    if shape != list(manifest.sample_shape):
        raise UserError(f"--data {spec}: view {view!r} holds samples of shape {shape}; the bundle takes "
                        f"{list(manifest.sample_shape)}")
    if tuple(ds.classes) != tuple(manifest.classes):  # else top-1 would score labels the bundle does not mean
        raise UserError(f"--data {spec}: classes {', '.join(ds.classes)} are not the bundle's "
                        f"{', '.join(manifest.classes)}")
    datasets.validate(ds, [view])
    changed = datasets.changed_since(ds, src.get("data_fingerprint"))
    labels = np.asarray(ds.labels)
    if rows == "all":
        if not changed and src.get("data_fingerprint"):
            raise UserError(f"--rows all: --data {spec} is the data the run trained on (its files match the bundle's "
                            "data_fingerprint), so all of it would score rows the student trained on; use --rows test")
        picked = np.flatnonzero(labels >= 0)
        if not len(picked):
            raise UserError(f"--data {spec}: no labeled rows to score")
    else:
        if changed and not data:
            log.warning("accuracy: %s changed since the run trained on it (its files differ from the bundle's "
                        "data_fingerprint), so its test split may hold rows the student trained on: top-1 may read "
                        "high", spec)
        elif changed:
            log.info("accuracy: the test split of --data %s (the run's seed); if it is new data the run never saw, "
                     "--rows all scores every labeled row", spec)
        picked = make_splits(ds, int(src.get("seed", 0)),
                             labeled_fraction=float(src.get("labeled_fraction", 1.0))).test
    what = {"data": spec, "rows": rows, "scored": int(len(picked))}
    return datasets.SplitRows(ds.view(view), picked), labels[picked], what


def _torch_fn(run: str, threads: int):
    import torch

    from cmcd_edge.export.onnx_export import load_run

    net = load_run(run).net.eval()

    def fn(x, net=net):
        torch.set_num_threads(threads)
        with torch.inference_mode():
            return net(torch.from_numpy(x))

    return fn


def run_bench(bundle: str, *, threads: list[int], batches: list[int], variants: str, backend: str, duration: float,
              warmup: float, data: str | None, no_accuracy: bool, torch_run: str | None, out: str | None,
              plot: str | None, rows: str = "test") -> dict:
    manifest = load_manifest(bundle)
    names = [v.name for v in manifest.variants] if variants == "all" else csv_items(variants, "--variants")
    for n in names:
        manifest.variant(n)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    for t in (t for t in threads if t > cores):
        log.warning("--threads %d: this process may use %d cores, so those cases oversubscribe them", t, cores)
    if not (math.isfinite(duration) and duration > 0):
        raise UserError(f"--duration {duration}: must be a finite number > 0 (seconds per case)")
    if not (math.isfinite(warmup) and warmup >= 0):
        raise UserError(f"--warmup {warmup}: must be a finite number >= 0 (seconds)")
    if plot:
        _pyplot()  # before the benchmark runs, not after minutes of it
    scored = None if no_accuracy else _scored_rows(manifest, data, rows)
    test, accuracy_on = (None, None) if scored is None else (scored[:2], scored[2])
    rng = np.random.default_rng(0)
    macs = (manifest.raw.get("student") or {}).get("macs")
    cases: list[rb.Case] = []
    overhead_pairs = []
    for t in threads:
        for name in names:
            try:
                p = Predictor.load(bundle, variant=name, backend=backend, threads=t)
            except EngineMismatch as exc:
                if variants != "all":
                    raise
                log.warning("variant %s skipped on %s: %s", name, backend, exc)
                continue
            acc = None
            if test is not None:
                x = test[0]  # 256 rows a call: a large test split never sits in memory whole
                pred = np.concatenate([p.predict(x[i:i + 256]).argmax(1) for i in range(0, len(x), 256)])
                acc = float((pred == test[1]).mean())
            for b in batches:
                x = test[0][:b] if test is not None and len(test[0]) >= b else \
                    rng.normal(size=(b, *p.input_shape)).astype(np.float32)
                cases.append(rb.Case(name, p.backend, b, t, p.predict, x, macs, test_accuracy=acc))
                if b == batches[0]:
                    sess, inp = p.session, p.manifest.input_name
                    raw = rb.Case(f"{name}:raw", p.backend, b, t, lambda x, s=sess, i=inp: s.run(["logits"], {i: x}), x)
                    cases.append(raw)
                    overhead_pairs.append((cases[-2], raw))
        if torch_run:
            fn = _torch_fn(torch_run, t)
            for b in batches:
                x = cases[0].x if cases[0].batch == b else rng.normal(size=(b, *manifest.sample_shape)).astype(np.float32)
                cases.append(rb.Case("torch-eager", "torch", b, t, fn, x, macs))
    if not cases:
        raise UserError(f"{bundle}: no variant could be loaded on backend {backend!r}")
    env = rb.environment()
    sampler = rb.jetson.TegrastatsSampler().start() if env["jetson"]["jetson"] else None
    click.echo(f"benchmarking {len(cases)} cases, {duration:.1f}s each, interleaved ...", err=True)
    rb.run_interleaved(cases, duration_s=duration, warmup_s=warmup)
    results = rb.results_of(cases)
    overhead = []
    for pc, raw in overhead_pairs:
        a, r = rb.stats(pc.times_ns, pc.batch, None), rb.stats(raw.times_ns, raw.batch, None)
        overhead.append({"variant": pc.variant, "threads": pc.threads, "batch": pc.batch,
                         "predictor_p50_ms": a["p50_ms"], "raw_p50_ms": r["p50_ms"],
                         "overhead_us": 1e3 * (a["p50_ms"] - r["p50_ms"]),
                         "overhead_pct": 100 * (a["p50_ms"] - r["p50_ms"]) / r["p50_ms"]})
    doc = {"bundle": str(bundle), "environment": env, "results": [r for r in results if not r["variant"].endswith(":raw")],
           "predictor_overhead": overhead, "accuracy_on": accuracy_on}
    if sampler is not None:
        samples = sampler.stop()
        power = [rb.jetson.total_power_mw(s) for s in samples if rb.jetson.total_power_mw(s)]
        doc["tegrastats"] = {"samples": len(samples), "mean_power_mw": float(np.mean(power)) if power else None}
        if not env["jetson"].get("clocks_locked"):
            log.warning("jetson clocks are not locked: run sudo jetson_clocks for stable latency")
    click.echo(rb.table(doc["results"]))
    if accuracy_on is not None:
        split = "the test split" if rows == "test" else "every labeled row"
        click.echo(f"top-1 on {split} of {accuracy_on['data']}: {accuracy_on['scored']} rows")
    for o in overhead:
        click.echo(f"Predictor overhead over raw session.run ({o['variant']}, batch {o['batch']}, {o['threads']} thr): "
                   f"{o['overhead_us']:+.1f} us ({o['overhead_pct']:+.1f}%)")
    if any(c.backend == "cpu" for c in cases):
        doc["auto_variant_cpu"] = auto_variant(manifest, "cpu")
        click.echo(f"Predictor.load(variant='auto') on cpu here: {doc['auto_variant_cpu']}")
    click.echo(f"jetson: {'yes (' + str(env['jetson'].get('model')) + ')' if env['jetson']['jetson'] else 'no'}  "
               f"cpu: {env['cpu']}  isa: {' '.join(env['isa_flags'])}  onnxruntime {env['onnxruntime']}")
    if out:
        write_json(out, doc)
    if plot:
        _plot(doc, cases, Path(plot))
    return doc


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise UserError("--plot needs matplotlib: pip install 'cmcd-edge[plot]'") from exc
    return plt


def _plot(doc: dict, cases: list[rb.Case], path: Path) -> None:
    plt = _pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    shown = [c for c in cases if not c.variant.endswith(":raw")]
    a.boxplot([np.asarray(c.times_ns) / 1e6 for c in shown], showfliers=False)
    a.set_xticks(range(1, len(shown) + 1), [f"{c.variant}\nb{c.batch} t{c.threads}" for c in shown], fontsize=7)
    a.set_ylabel("latency (ms)")
    for r in doc["results"]:
        if r.get("test_accuracy") is not None:
            b.scatter(r["p50_ms"], 100 * r["test_accuracy"])
            b.annotate(f"{r['variant']} b{r['batch']}", (r["p50_ms"], 100 * r["test_accuracy"]), fontsize=7)
    b.set_xlabel("p50 latency (ms)")
    b.set_ylabel("test top-1 (%)")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)
