"""`cmcd-edge compare`: methods x seeds under one protocol. Each seed's teacher is trained once and shared by every
method; a killed compare resumes (finished runs are kept, the unfinished one continues from its checkpoint). Writes
results.json and results.md."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cmcd_edge import datasets
from cmcd_edge.distill import ddp, engine
from cmcd_edge.distill.config import MAX_SEED, DistillConfig
from cmcd_edge.distill.losses import METHODS, methods_without
from cmcd_edge.distill.pipeline import recipe_change, resume_refusal, run_distill, training_diff
from cmcd_edge.distill.teacher_cache import TeacherCache
from cmcd_edge.distill.teachers import TeacherOutputs, load_teacher, teacher_sha256, train_teacher
from cmcd_edge.errors import UserError
from cmcd_edge.fsutil import exclusive, make_dir, write_json, write_text
from cmcd_edge.registry import check_choice, check_unique
from cmcd_edge.splitting import make_splits

log = logging.getLogger(__name__)
UPPER = "supervised@100%"


def _teacher_stats(accs: list[float | None]) -> dict:
    """The teacher's test top-1 over seeds; a teacher without logits has none: nulls (was NaN, which is not JSON)."""
    scored = [a for a in accs if a is not None]
    return _stats(scored) if scored else {"mean": None, "std": None, "runs": []}


def _stats(values: list[float]) -> dict:
    arr = np.asarray(values, dtype=float)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0, "runs": list(values)}


def teacher_for_seed(cfg: DistillConfig, folder: Path, loaded: TeacherOutputs | None = None,
                     check: Callable[[TeacherOutputs], None] | None = None) -> TeacherOutputs:
    """The seed's teacher, trained (or loaded) once and cached in ``folder``. ``folder/teacher_key.json``, written
    before training starts, holds the settings that make it: a killed compare rerun with another source, seed, teacher
    or data is refused, whether the teacher had finished or left a checkpoint (was: silently reused, or a checkpoint
    of another network loaded). ``loaded``: another seed's outputs of the same ``--teacher`` file or factory, which
    do not depend on the seed: they are scored on this seed's test split instead of running the teacher again."""
    ds = datasets.load(cfg.data)
    key = {"data": ds.fingerprint(), "source": cfg.source, "seed": cfg.seed, "teacher": cfg.teacher,
           "teacher_epochs": cfg.teacher_epochs, "teacher_batch_size": cfg.teacher_batch_size}
    sha = teacher_sha256(cfg.teacher)
    if sha is not None:  # a file saved over the old one at the same path is another teacher
        key["teacher_sha256"] = sha
    key_file = folder / "teacher_key.json"
    if key_file.exists():  # absent: nothing started here, or cached by a version before keys (benchmarks reuse those)
        old = json.loads(key_file.read_text())
        if old != key:
            diff = ", ".join(f"{k}: cached {old[k] if k in old else None!r} vs now {v!r}" for k, v in key.items()
                             if k not in old or old[k] != v)
            raise UserError(f"{folder}: this cached teacher was made with other settings ({diff[:300]}); "
                            "pass --force to recompute, or use a new --out")
    cached = TeacherOutputs.load(folder)
    if cached is not None:
        return cached
    make_dir(folder)
    write_json(key_file, key)
    cfg.check_against(ds)
    datasets.validate(ds, [cfg.source])
    splits = make_splits(ds, cfg.seed, labeled_fraction=cfg.labeled_fraction)
    device = engine.pick_device(cfg.device)
    cache = TeacherCache.for_run(cfg, ds, device) if loaded is None else None
    hit = cache.get(ds, splits) if cache is not None else None
    if hit is not None:
        t = hit
        cache.copy_weights(folder)
    elif cfg.teacher == "train":
        ckpt = engine.Checkpoint(folder / "checkpoint.pt")  # a killed compare's teacher continues where it stopped
        t = train_teacher(ds, cfg.source, splits, seed=cfg.seed, epochs=cfg.teacher_epochs, device=device,
                          dist=ddp.Dist(), out=folder, resume=ckpt.load() or {}, preload=cfg.preload,
                          batch_size=cfg.teacher_batch_size, max_batch_bytes=cfg.max_batch_bytes)
    elif loaded is not None:
        log.info("seed %d: the --teacher's outputs of the seed before, scored on this seed's test split", cfg.seed)
        t = loaded.scored_on(ds, splits)
    else:
        t = load_teacher(cfg.teacher, ds, cfg.source, splits, device, cfg.preload, check=check)
    t.save(folder)
    (folder / "checkpoint.pt").unlink(missing_ok=True)  # the cached outputs supersede it
    if cache is not None and hit is None:
        cache.put(t, folder)
    return t


def _check_kd(base: DistillConfig, methods: list[str], teacher: TeacherOutputs) -> None:
    """A teacher without logits: the methods with a kd term, named at once (was: the first one's run failed, its
    message naming --method)."""
    if teacher.logits is not None:
        return
    need = [m for m in methods if dataclasses.replace(base, method=m).needs_teacher_logits]
    if need:
        raise UserError(f"--methods: {', '.join(need)} need teacher logits (a kd term); --teacher {base.teacher} gives "
                        f"{teacher.without_logits()}: use methods without kd ({methods_without('kd')})")


def check_methods(methods: list[str]) -> None:
    """--methods: known methods, each once (a repeated one used to fail after every run had trained)."""
    if not methods:
        raise UserError(f"--methods: no method given; valid: {', '.join(METHODS)}")
    for m in methods:
        try:
            check_choice("method", m, METHODS)
        except UserError as exc:
            raise UserError(f"--methods: {exc}") from None
    check_unique("--methods", methods)


def run_compare(base: DistillConfig, methods: list[str], seeds: int, out: Path, *, force: bool = False,
                upper_bound: bool = True, ranking: dict | None = None) -> dict:
    """Every method over every seed, each seed's teacher shared; results.json and results.md in ``out``.
    ``ranking``: select-teacher's, when it picked ``base.source`` (``--source auto``), kept in results.json."""
    check_methods(methods)
    if seeds < 1:
        raise UserError(f"--seeds {seeds}: must be >= 1")
    if base.seed + seeds - 1 > MAX_SEED:
        raise UserError(f"--seed {base.seed} --seeds {seeds}: the last seed, {base.seed + seeds - 1}, passes {MAX_SEED}")
    with exclusive(out):  # a second compare into this folder would train its unfinished runs beside this one's
        return _compare(base, methods, seeds, out, force, upper_bound, ranking)


def _compare(base: DistillConfig, methods: list[str], seeds: int, out: Path, force: bool, upper_bound: bool,
             ranking: dict | None) -> dict:
    if (out / "results.json").exists() and not force:
        raise UserError(f"--out {out} already holds results.json: pass --force to recompute")
    if force and out.exists():
        shutil.rmtree(out)
    seed_list = [base.seed + i for i in range(seeds)]
    extra_runs = list(methods) + ([UPPER] if upper_bound else [])
    runs: dict[str, list[dict]] = {m: [] for m in extra_runs}  # each method's metrics.json, seed by seed
    teacher_acc = []
    loaded = None  # a --teacher file's or factory's outputs: one pass over the rows serves every seed
    done, total, start = 0, len(seed_list) * len(extra_runs), time.perf_counter()
    for seed in seed_list:
        cfg_s = dataclasses.replace(base, seed=seed)
        t0 = time.perf_counter()
        teacher = teacher_for_seed(cfg_s, out / "teachers" / f"seed{seed}", loaded,
                                   check=lambda probe: _check_kd(base, methods, probe))  # before its pass
        log.info("seed %d: teacher %s test accuracy %s (%.1fs)", seed, base.source,
                 "- (no logits)" if teacher.test_accuracy is None else f"{teacher.test_accuracy:.4f}",
                 time.perf_counter() - t0)
        loaded = teacher if base.teacher != "train" else None
        teacher_acc.append(teacher.test_accuracy)
        _check_kd(base, methods, teacher)  # a teacher cached before: its probe was not run here
        for m in extra_runs:
            cfg = dataclasses.replace(cfg_s, method="supervised", labeled_fraction=1.0) if m == UPPER else \
                dataclasses.replace(cfg_s, method=m)
            # at --labeled-fraction 1 the ceiling is the supervised run itself: one folder, trained once
            same = m == UPPER and cfg == dataclasses.replace(cfg_s, method="supervised")
            run_dir = out / "runs" / f"{'supervised' if same else m.replace('@100%', '-all-labels')}-s{seed}"
            res = _finished(run_dir, cfg) or _train(run_dir, cfg, teacher)
            runs[m].append(res)
            done += 1
            log.info("  %-16s seed %d  test top-1 %.4f  (%.1fs)  [%d/%d%s]", m, seed, res["test_accuracy"],
                     res["wall_s"], done, total, engine.time_left(time.perf_counter() - start, done, total))
    results = {
        "data": base.data, "source": base.source, "target": base.target, "labeled_fraction": base.labeled_fraction,
        "seeds": seed_list, "teacher_test_accuracy": _teacher_stats(teacher_acc),
        "methods": {m: _summary(runs[m]) for m in methods},
        "paired": _paired(extra_runs, {m: [r["test_accuracy"] for r in runs[m]] for m in extra_runs}),
        "confused_pairs": _confused_pairs([r for m in methods for r in runs[m]]),
        "upper_bound": {"method": UPPER, **_summary(runs[UPPER])} if upper_bound else None,
        "config": base.to_json(),
        "source_ranking": ranking,
    }
    write_json(out / "results.json", results)
    write_text(out / "results.md", results_markdown(results))
    return results


def _summary(runs: list[dict]) -> dict:
    """One method over its seeds: mean +- std of each figure, wall time summed, and per class its test top-1 (mean,
    and seed by seed with the class's test rows: None and 0 where a seed's test split lacks the class)."""
    classes = list(dict.fromkeys(c for r in runs for c in r["test_per_class"]))
    per_class = {}
    for c in classes:
        seen = [r["test_per_class"].get(c) for r in runs]
        top1 = [None if v is None else v["top1"] for v in seen]
        per_class[c] = {"top1": float(np.mean([t for t in top1 if t is not None])), "runs": top1,
                        "rows": [0 if v is None else v["rows"] for v in seen]}
    return {**{k: _stats([r[k] for r in runs]) for k in ("test_accuracy", "test_macro_f1", "val_accuracy")},
            "test_per_class": per_class, "wall_s": round(sum(r["wall_s"] for r in runs), 2)}


def _confused_pairs(runs: list[dict], top: int = 5) -> list[dict]:
    """The class pairs most often mistaken for each other (either way), summed over ``runs``, with their share of
    all the runs' test errors: where the methods' errors (and so their differences) live."""
    pairs: dict[tuple[str, str], int] = {}
    for r in runs:
        for c in r["test_confusions"]:
            key = tuple(sorted((c["true"], c["pred"])))
            pairs[key] = pairs.get(key, 0) + c["rows"]
    errors = sum(pairs.values())
    ranked = sorted(pairs.items(), key=lambda kv: -kv[1])[:top]
    return [{"classes": list(k), "rows": n, "share": n / errors} for k, n in ranked]


# Student's t 0.975 quantiles for 1-30 degrees of freedom; beyond, the Cornish-Fisher series (within 1e-3)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t975(df: int) -> float:
    """The two-sided 95% critical value of Student's t with ``df`` degrees of freedom."""
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def _paired(methods: list[str], acc: dict[str, list[float]]) -> dict:
    """The first method (the default: cmcd) minus each other method, seed by seed. Every method of a seed shares its
    teacher and labeled rows, so the per-seed difference is the fair statistic; its sd says how much a gap between
    means is seed noise, and the t interval of its mean (95%, from two seeds on) how large a gap the seeds can rule
    out: with three seeds it is about five times the sd's standard error wide."""
    ref = methods[0]
    minus = {}
    for m in methods[1:]:
        d = _stats([a - b for a, b in zip(acc[ref], acc[m], strict=True)])
        n = len(d["runs"])
        if n > 1:
            d["se"] = d["std"] / float(np.sqrt(n))
            half = t975(n - 1) * d["se"]
            d["ci95"] = [d["mean"] - half, d["mean"] + half]
            d["verdict"] = _verdict(d["ci95"])
            d["seeds_to_decide"] = seeds_to_decide(d["mean"], d["std"])
        minus[m] = d
    return {"reference": ref, "minus": minus}


TIE = 0.01  # a paired 95% interval inside +-1 point of top-1 calls two methods a tie


def _verdict(ci: list[float]) -> str:
    """better / worse: the interval excludes 0; tie: it lies inside +-TIE (an equivalence test at that margin);
    unresolved: neither, the seeds cannot tell."""
    if ci[0] > 0:
        return "better"
    if ci[1] < 0:
        return "worse"
    return "tie" if -TIE < ci[0] and ci[1] < TIE else "unresolved"


def seeds_to_decide(mean: float, sd: float, most: int = 1000) -> int | None:
    """How many seeds a paired difference with this per-seed mean and sd needs before its 95% t interval is decided
    (excludes 0, or lies inside +-TIE): the half-width must fall to max(|mean|, TIE - |mean|). None past ``most``.
    Mean and sd come from the seeds run, so this plans a longer compare; it does not promise its outcome."""
    target = max(abs(mean), TIE - abs(mean))
    for n in range(2, most + 1):
        if t975(n - 1) * sd / float(np.sqrt(n)) < target:
            return n
    return None


def _train(run_dir: Path, cfg: DistillConfig, teacher) -> dict:
    """Train one run; the run a killed compare was in continues from its last epoch's checkpoint when it was made with
    this very config and recipe (else it starts over)."""
    if ((run_dir / "checkpoint.pt").exists() and not (run_dir / "metrics.json").exists()
            and resume_refusal(run_dir, cfg) is None):
        log.info("  %s: continuing the killed run from its checkpoint", run_dir.name)
        return run_distill(cfg, run_dir, resume=True, teacher=teacher).metrics
    return run_distill(cfg, run_dir, force=True, teacher=teacher).metrics


def _same_config(run_dir: Path, cfg: DistillConfig) -> bool:
    """Whether the run in ``run_dir`` was made with ``cfg``'s training settings and data files (where it ran, device
    and preload, and where the data lies do not matter)."""
    try:
        record = json.loads((run_dir / "run.json").read_text())
        return not training_diff(record, cfg) and not datasets.changed_since(datasets.load(cfg.data),
                                                                             record.get("data_fingerprint"))
    except (OSError, ValueError, KeyError, UserError):  # no run.json, or a config key this version does not know
        return False


def _finished(run_dir: Path, cfg: DistillConfig) -> dict | None:
    """The metrics of a run a killed compare already finished, if it was made with this very config (a run left from
    another config, e.g. before the default recipe changed, or by a version whose metrics lack a figure compare
    reports, is trained again)."""
    path = run_dir / "metrics.json"
    if not (path.exists() and (run_dir / "run.json").exists()):
        return None
    if not _same_config(run_dir, cfg):
        log.info("  %s: made with another config, trained again", run_dir.name)
        return None
    metrics = json.loads(path.read_text())
    why = recipe_change(metrics, cfg)  # --method cmcd names today's default recipe
    if why:
        log.info("  %s: %s: trained again", run_dir.name, why)
        return None
    missing = [k for k in ("val_accuracy", "test_per_class", "test_confusions") if k not in metrics]
    if missing:
        log.info("  %s: made by an older version (no %s), trained again", run_dir.name, ", ".join(missing))
        return None
    return metrics


def results_markdown(r: dict) -> str:
    sup = r["methods"].get("supervised", {}).get("test_accuracy", {}).get("mean")
    lines = [f"{r['source']} -> {r['target']} on {r['data']}, {r['labeled_fraction']:.0%} target labels, "
             f"seeds {r['seeds']}; teacher ({r['source']}) test top-1 {_teacher_cell(r['teacher_test_accuracy'])}", "",
             f"| method | test top-1 (%) | macro-F1 (%) | val top-1 (%) | vs supervised | {_paired_head(r)} | wall s |",
             "|---|---|---|---|---|---|---|"]
    rows = list(r["methods"].items())
    if r.get("upper_bound"):
        rows.append((r["upper_bound"]["method"], r["upper_bound"]))
    for m, v in rows:
        a = v["test_accuracy"]
        f = v.get("test_macro_f1")
        delta = f"{100 * (a['mean'] - sup):+.1f}" if sup is not None and m != "supervised" else ""
        wall = f"{v['wall_s']:.1f}" if v["wall_s"] < 10 else f"{v['wall_s']:.0f}"  # a quick run read "0"
        lines.append(f"| {m} | {_pm(a)} | {_pm(f) if f else ''} | {_pm(v['val_accuracy'])} | {delta} | "
                     f"{_paired_cell(r, m)} | {wall} |")
    return "\n".join(lines + _verdict_lines(r) + _ceiling_lines(r) + _per_class_lines(r)) + "\n"


def _ceiling_lines(r: dict) -> list[str]:
    """Why the 100%-labels student is in the paired comparison: a built-in teacher learned from every train label,
    and a distilled student can take those labels from it whatever its view holds (on mfeat, a teacher trained on a
    view of pure noise lifts the 10%-label zer student by 5.6 points, to the ceiling: BENCHMARKS.md)."""
    if UPPER not in r["paired"]["minus"] or r["config"]["teacher"] != "train":
        return []
    return ["", f"The teacher learned from every train label of {r['source']}; {UPPER} is the target student trained "
                f"on those labels without it. A method above {UPPER} gains from the {r['source']} view itself; below "
                f"it, the labels alone would have done as well."]


def _verdict_lines(r: dict) -> list[str]:
    """One sentence: the methods the reference beats, trails or ties (inside +-1 point) with 95% confidence over these
    seeds, and for each gap the seeds cannot decide, about how many seeds would."""
    ref, minus = r["paired"]["reference"], r["paired"]["minus"]
    if not minus:
        return []
    if any("verdict" not in d for d in minus.values()):
        return ["", f"{ref} against the other methods: one seed gives no interval; run --seeds 3 or more."]
    by = {v: [m for m, d in minus.items() if d["verdict"] == v] for v in ("better", "worse", "tie", "unresolved")}

    def need(m: str) -> str:
        n = minus[m]["seeds_to_decide"]
        return f"{m} (~{n} seeds)" if n is not None else f"{m} (over 1000 seeds)"

    parts = [f"{word} {', '.join(by[v])}" for v, word in (("better", "better than"), ("worse", "worse than"),
                                                          ("tie", f"tied within +-{100 * TIE:.0f} point with"))
             if by[v]]
    if by["unresolved"]:
        parts.append(f"not decided against {', '.join(need(m) for m in by['unresolved'])}: the seeds each gap would "
                     f"need, at this run's per-seed mean and spread")
    text = f"{ref} at 95% over seeds {r['seeds']} (paired t interval): " + "; ".join(parts)
    return ["", text + "."]


def _per_class_lines(r: dict, top: int = 10) -> list[str]:
    """The most confused pairs, and per-class top-1 of the ``top`` classes whose accuracy differs most between
    methods (all classes when there are at most ``top``)."""
    pairs = ", ".join(f"{a} <-> {b} {p['rows']} ({p['share']:.0%})" for p in r["confused_pairs"]
                      for a, b in [p["classes"]])
    methods = list(r["methods"])
    per = {m: {c: v["top1"] for c, v in r["methods"][m]["test_per_class"].items()} for m in methods}
    classes = list(per[methods[0]])
    spread = {c: max(per[m][c] for m in methods) - min(per[m][c] for m in methods) for c in classes}
    shown = classes if len(classes) <= top else sorted(classes, key=lambda c: -spread[c])[:top]
    head = "per class" if len(shown) == len(classes) else f"the {top} classes where the methods differ most"
    lines = ["", f"Most confused class pairs (test rows over every method and seed; share of their errors): {pairs or 'none'}",
             "", f"Test top-1 (%) {head}, mean over seeds:", "",
             "| class | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    lines += [f"| {c} | " + " | ".join(f"{100 * per[m][c]:.1f}" for m in methods) + " |" for c in shown]
    return lines


def _pm(stat: dict, digits: int = 1, sign: str = "") -> str:
    """A percentage over seeds: mean +- sd, or the mean alone from one seed (its sd of 0 would read as no spread)."""
    mean = f"{100 * stat['mean']:{sign}.{digits}f}"
    return mean if len(stat["runs"]) < 2 else f"{mean} +- {100 * stat['std']:.{digits}f}"


def _teacher_cell(t: dict) -> str:
    return "- (no logits)" if t["mean"] is None else _pm(t)


def _paired_head(r: dict) -> str:
    return f"{r['paired']['reference']} - method, per seed (mean +- sd [95% CI of the mean])"


def _paired_cell(r: dict, method: str) -> str:
    minus = r["paired"]["minus"]
    if method not in minus:  # the reference itself, the ceiling
        return ""
    d = minus[method]
    ci = f" [{100 * d['ci95'][0]:+.2f}, {100 * d['ci95'][1]:+.2f}]" if "ci95" in d else ""
    return f"{_pm(d, 2, '+')}{ci}"
