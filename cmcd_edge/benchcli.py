"""`cmcd-edge bench` orchestration: builds the cases (variants x batches x threads, the raw session beside the
Predictor, torch eager when asked), runs them interleaved, and reports. Device side: torch only for --compare-torch."""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np

from cmcd_edge.cli_base import csv_items
from cmcd_edge.errors import EngineMismatch, UserError
from cmcd_edge.fsutil import write_json
from cmcd_edge.runtime import bench as rb
from cmcd_edge.runtime import scores
from cmcd_edge.runtime.manifest import Manifest, load_manifest
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
    datasets.validate(ds, [view])
    changed = datasets.changed_since(ds, src.get("data_fingerprint"))
    labels = _bundle_ids(np.asarray(ds.labels), ds.classes, manifest.classes, spec)
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


def _bundle_ids(labels: np.ndarray, classes: tuple[str, ...], bundle: tuple[str, ...], spec: str) -> np.ndarray:
    """``labels`` (ids into the data's ``classes``) as ids into the bundle's classes, matched by name: field data
    often holds some of the classes, or lists them in another order. Was: any list but the bundle's own refused. A
    class the bundle does not know is refused (its top-1 would score labels the bundle does not mean)."""
    if tuple(classes) == tuple(bundle):
        return labels
    unknown = [c for c in classes if c not in bundle]
    if unknown:
        more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
        raise UserError(f"--data {spec}: class{'es' if len(unknown) > 1 else ''} "
                        f"{', '.join(repr(c) for c in unknown[:3])}{more} not among the bundle's "
                        f"({', '.join(bundle)}); top-1 scores classes by name")
    lut = np.array([bundle.index(c) for c in classes] + [-1], np.int64)  # lut[-1]: unlabeled stays -1
    return lut[labels]


def _torch_fn(run: str, threads: int):
    import torch

    from cmcd_edge.export.onnx_export import load_run

    net = load_run(run).net.eval()

    def fn(x, net=net):
        torch.set_num_threads(threads)
        with torch.inference_mode():
            return net(torch.from_numpy(x))

    return fn


def labels_of(bundles: list[str]) -> list[str]:
    """Short names that tell ``bundles`` apart: each folder's name, with as many parent folders as it takes to make
    them distinct (``a/bundle`` and ``b/bundle``)."""
    parts = [Path(b).resolve().parts for b in bundles]
    for n in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-n:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return [str(b) for b in bundles]


@dataclass
class _Bundle:
    """One BUNDLE of the command line: its manifest, the variants timed, and the rows its top-1 is measured on."""

    path: str
    label: str
    manifest: Manifest
    names: list[str]
    test: tuple | None = None  # (rows, labels)
    accuracy_on: dict | None = None
    scored_key: tuple | None = None  # (data, rows, the picked row ids): equal keys, top-1 on the same rows
    scores: dict = field(default_factory=dict)  # variant -> top1, macro_f1, per_class

    def doc(self) -> dict:
        return {"path": self.path, "label": self.label, "accuracy_on": self.accuracy_on,
                **({"scores": self.scores} if self.scores else {})}


def _open_bundles(bundles: list[str], variants: str, data: str | None, rows: str, no_accuracy: bool) -> list[_Bundle]:
    seen: set[Path] = set()
    for b in bundles:
        if Path(b).resolve() in seen:
            raise UserError(f"BUNDLE {b}: given twice")
        seen.add(Path(b).resolve())
    asked = None if variants == "all" else csv_items(variants, "--variants")
    out = []
    for path, label in zip(bundles, labels_of(bundles), strict=True):
        manifest = load_manifest(path)
        names = [v.name for v in manifest.variants] if asked is None else asked
        for n in names:
            manifest.variant(n)
        out.append(_Bundle(path, label, manifest, names))
    for b in out if not no_accuracy else ():
        scored = _scored_rows(b.manifest, data, rows)
        if scored is not None:
            b.test, b.accuracy_on = scored[:2], scored[2]
            b.scored_key = (b.accuracy_on["data"], rows, scored[0].rows.tobytes())
    keyed = [b for b in out if b.scored_key is not None]
    for b in keyed[1:]:
        if b.scored_key != keyed[0].scored_key:
            log.warning("top-1 of %s and %s is measured on different rows (other data, seed or labeled fraction): "
                        "compare their top-1 with care, or pass --data DIR --rows all to score both on one set",
                        keyed[0].label, b.label)
    return out


def _score(p: Predictor, x, y: np.ndarray) -> dict:
    """A variant's top-1, macro-F1 and per-class top-1 on rows ``x`` (256 a call: a large split never sits in memory
    whole)."""
    pred = np.concatenate([p.predict(x[i:i + 256]).argmax(1) for i in range(0, len(x), 256)])
    return {"top1": float((pred == y).mean()), "macro_f1": scores.macro_f1(pred, y, len(p.classes)),
            "per_class": scores.per_class(pred, y, p.classes)}


def _cases(b: _Bundle, t: int, batches: list[int], backend: str, every_variant: bool, rng) -> tuple[list, list]:
    """The timed cases of bundle ``b`` at ``t`` threads, and (Predictor, raw session.run) pairs for the overhead."""
    macs = (b.manifest.raw.get("student") or {}).get("macs")
    cases: list[rb.Case] = []
    pairs = []
    for name in b.names:
        try:
            p = Predictor.load(b.path, variant=name, backend=backend, threads=t)
        except EngineMismatch as exc:
            if not every_variant:
                raise
            log.warning("%s: variant %s skipped on %s: %s", b.label, name, backend, exc)
            continue
        if b.test is not None and name not in b.scores:  # once per variant, not again at each --threads
            b.scores[name] = _score(p, *b.test)
        acc = b.scores[name]["top1"] if name in b.scores else None
        for batch in batches:
            x = b.test[0][:batch] if b.test is not None and len(b.test[0]) >= batch else \
                rng.normal(size=(batch, *p.input_shape)).astype(np.float32)
            cases.append(rb.Case(name, p.backend, batch, t, p.predict, x, macs, test_accuracy=acc, bundle=b.label))
            if batch == batches[0]:
                sess, inp = p.session, p.manifest.input_name
                raw = rb.Case(f"{name}:raw", p.backend, batch, t, lambda x, s=sess, i=inp: s.run(["logits"], {i: x}),
                              x, bundle=b.label)
                cases.append(raw)
                pairs.append((cases[-2], raw))
    return cases, pairs


def run_bench(bundles: str | list[str], *, threads: list[int], batches: list[int], variants: str, backend: str,
              duration: float, warmup: float, data: str | None, no_accuracy: bool, torch_run: str | None,
              out: str | None, plot: str | None, rows: str = "test") -> dict:
    """Time every variant of each of ``bundles`` (several: one interleaved run, so their ratios hold on a noisy
    machine), with top-1 beside each."""
    bundles = [bundles] if isinstance(bundles, str) else list(bundles)
    if torch_run and len(bundles) > 1:
        raise UserError(f"--compare-torch: times one run beside its own bundle; give one BUNDLE, not {len(bundles)}")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    for t in (t for t in threads if t > cores):
        log.warning("--threads %d: this process may use %d cores, so those cases oversubscribe them", t, cores)
    if not (math.isfinite(duration) and duration > 0):
        raise UserError(f"--duration {duration}: must be a finite number > 0 (seconds per case)")
    if not (math.isfinite(warmup) and warmup >= 0):
        raise UserError(f"--warmup {warmup}: must be a finite number >= 0 (seconds)")
    if plot:
        _pyplot()  # before the benchmark runs, not after minutes of it
    opened = _open_bundles(bundles, variants, data, rows, no_accuracy)
    rng = np.random.default_rng(0)
    cases: list[rb.Case] = []
    overhead_pairs = []
    for t in threads:
        for b in opened:
            c, pairs = _cases(b, t, batches, backend, variants == "all", rng)
            cases += c
            overhead_pairs += pairs
        if torch_run:
            manifest = opened[0].manifest
            fn = _torch_fn(torch_run, t)
            macs = (manifest.raw.get("student") or {}).get("macs")
            for batch in batches:
                x = cases[0].x if cases and cases[0].batch == batch else \
                    rng.normal(size=(batch, *manifest.sample_shape)).astype(np.float32)
                cases.append(rb.Case("torch-eager", "torch", batch, t, fn, x, macs, bundle=opened[0].label))
    if not cases:
        raise UserError(f"{', '.join(bundles)}: no variant could be loaded on backend {backend!r}")
    env = rb.environment()
    sampler = rb.jetson.TegrastatsSampler().start() if env["jetson"]["jetson"] else None
    log.info("benchmarking %d cases, %gs each, interleaved ...", len(cases), duration)
    rb.run_interleaved(cases, duration_s=duration, warmup_s=warmup)
    results = rb.results_of(cases)
    speed = rb.speed_blocks(cases)
    note = speed_note(speed)
    if note:
        log.warning("%s", note)
    overhead = []
    for pc, raw in overhead_pairs:
        a, r = rb.stats(pc.times_ns, pc.batch, None), rb.stats(raw.times_ns, raw.batch, None)
        overhead.append({"bundle": pc.bundle, "variant": pc.variant, "threads": pc.threads, "batch": pc.batch,
                         "predictor_p50_ms": a["p50_ms"], "raw_p50_ms": r["p50_ms"],
                         "overhead_us": 1e3 * (a["p50_ms"] - r["p50_ms"]),
                         "overhead_pct": 100 * (a["p50_ms"] - r["p50_ms"]) / r["p50_ms"]})
    several = len(opened) > 1
    doc = {"bundles": [b.doc() for b in opened], "environment": env,
           "results": [r for r in results if not r["variant"].endswith(":raw")], "predictor_overhead": overhead,
           "speed_blocks": speed}
    if sampler is not None:
        samples = sampler.stop()
        power = [rb.jetson.total_power_mw(s) for s in samples if rb.jetson.total_power_mw(s)]
        doc["tegrastats"] = {"samples": len(samples), "mean_power_mw": float(np.mean(power)) if power else None}
        if not env["jetson"].get("clocks_locked"):
            log.warning("jetson clocks are not locked: run sudo jetson_clocks for stable latency")
    click.echo(rb.table(doc["results"], by_bundle=several))
    split = "the test split" if rows == "test" else "every labeled row"
    same_rows = len({b.scored_key for b in opened}) == 1  # then one line says it for all
    for b in opened[:1] if same_rows else opened:
        if b.accuracy_on is not None:
            click.echo(f"{b.label + ': ' if several and not same_rows else ''}top-1 on {split} of "
                       f"{b.accuracy_on['data']}: {b.accuracy_on['scored']} rows")
    for b in opened:
        for name, sc in b.scores.items():
            low = sorted(sc["per_class"].items(), key=lambda kv: (kv[1]["top1"], kv[0]))[:3]
            click.echo(f"{b.label + ': ' if several else ''}{name}: macro-F1 {100 * sc['macro_f1']:.2f}%; lowest "
                       "per-class top-1: " + ", ".join(f"{c} {100 * v['top1']:.1f}% of {v['rows']}" for c, v in low))
    for o in overhead:
        click.echo(f"{o['bundle'] + ': ' if several else ''}Predictor overhead over raw session.run ({o['variant']}, "
                   f"batch {o['batch']}, {o['threads']} thr): {o['overhead_us']:+.1f} us ({o['overhead_pct']:+.1f}%)")
    if any(c.backend == "cpu" for c in cases):
        for b, entry in zip(opened, doc["bundles"], strict=True):
            entry["auto_variant_cpu"] = auto_variant(b.manifest, "cpu")
            click.echo(f"{b.label + ': ' if several else ''}Predictor.load(variant='auto') on cpu here: "
                       f"{entry['auto_variant_cpu']}")
    click.echo(f"jetson: {'yes (' + str(env['jetson'].get('model')) + ')' if env['jetson']['jetson'] else 'no'}  "
               f"cpu: {env['cpu']}  isa: {' '.join(env['isa_flags'])}  onnxruntime {env['onnxruntime']}")
    if not several:  # the one-bundle document's keys, as before several bundles were taken
        doc = {"bundle": bundles[0], **doc, **{k: doc["bundles"][0].get(k) for k in ("accuracy_on", "auto_variant_cpu")
                                               if k in doc["bundles"][0]}}
    if out:
        write_json(out, doc)
    if plot:
        _plot(doc, cases, Path(plot))
    return doc


SPEED_SPREAD = 1.25  # 0.5 s blocks further apart than this: the machine's speed moved during the run


def speed_note(speed: dict | None) -> str | None:
    """The warning for a run during which the machine's speed moved (:func:`runtime.bench.speed_blocks`), or None."""
    if speed is None or speed["spread"] <= SPEED_SPREAD:
        return None
    return (f"the machine's speed moved during this run: some {speed['block_s']:g} s blocks ran {speed['spread']:.2f}x "
            "slower than others, every case alike (they are interleaved). Ratios within this run hold; absolute "
            "latencies may differ in another run (a shared or cloud machine, or clocks not fixed)")


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
    several = len({c.bundle for c in shown}) > 1
    name = (lambda c: f"{c.bundle}\n{c.variant}") if several else (lambda c: c.variant)
    a.set_xticks(range(1, len(shown) + 1), [f"{name(c)}\nb{c.batch} t{c.threads}" for c in shown], fontsize=7)
    a.set_ylabel("latency (ms)")
    for r in doc["results"]:
        if r.get("test_accuracy") is not None:
            b.scatter(r["p50_ms"], 100 * r["test_accuracy"])
            tag = f"{r['bundle']} " if several else ""
            b.annotate(f"{tag}{r['variant']} b{r['batch']}", (r["p50_ms"], 100 * r["test_accuracy"]), fontsize=7)
    b.set_xlabel("p50 latency (ms)")
    b.set_ylabel("test top-1 (%)")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)
