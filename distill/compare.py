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
from concurrent.futures import Future
from pathlib import Path

from cmcd_edge import datasets
from cmcd_edge.distill import ddp, engine, machine, progress
from cmcd_edge.distill.compare_jobs import Jobs, continues, train_run
from cmcd_edge.distill.compare_results import UPPER, confused_pairs, paired, results_markdown, summary, teacher_stats
from cmcd_edge.distill.config import MAX_SEED, DistillConfig
from cmcd_edge.distill.losses import METHODS, methods_without
from cmcd_edge.distill.run_record import network_change, recipe_change, spec_change, training_diff
from cmcd_edge.distill.teacher_cache import TeacherCache
from cmcd_edge.distill.teachers import TeacherOutputs, teacher_spec, train_teacher
from cmcd_edge.distill.user_teacher import factory_module_sha256, load_teacher, teacher_sha256
from cmcd_edge.errors import UserError
from cmcd_edge.fsutil import exclusive, make_dir, write_json, write_text
from cmcd_edge.registry import check_choice, check_unique
from cmcd_edge.splitting import make_splits

log = logging.getLogger(__name__)
# keys a teacher_key.json leaves out when at their default, so that a compare made before each option extends
_UNKEYED_DEFAULTS = {k: getattr(DistillConfig, k) for k in ("teacher_lr", "teacher_weight_decay", "teacher_patience",
                                                             "teacher_select_window")}


def _key_diff(old: dict, now: dict) -> str:
    """The settings that differ between a cached teacher's key and this run's, as ``name: cached A vs now B``. A key
    one side leaves out reads as its default (the select window's 1), or else as absent."""
    old, now = {**_UNKEYED_DEFAULTS, **old}, {**_UNKEYED_DEFAULTS, **now}

    def shown(d: dict, k: str) -> str:
        return repr(d[k]) if k in d else "absent"

    keys = [*now, *(k for k in old if k not in now)]
    return ", ".join(f"{k}: cached {shown(old, k)} vs now {shown(now, k)}" for k in keys if shown(old, k) != shown(now, k))


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
    for name, default in _UNKEYED_DEFAULTS.items():  # keyed when set, so a compare made before the option extends
        if getattr(cfg, name) != default:
            key[name] = getattr(cfg, name)
    spec = teacher_spec(ds, cfg.source) if cfg.teacher == "train" else None
    key_file = folder / "teacher_key.json"
    made = None  # the network the folder's teacher is (or was being trained as), where recorded
    if key_file.exists():  # absent: nothing started here, or cached by a version before keys (benchmarks reuse those)
        old = json.loads(key_file.read_text())
        made = old.pop("teacher_spec") if "teacher_spec" in old else None  # not a setting: the code builds it
        if "teacher_sha256" in old and old["teacher_sha256"] == factory_module_sha256(cfg.teacher):
            old["teacher_sha256"] = sha  # a factory keyed by its module alone (earlier versions): the same teacher
        if old != key:
            diff = _key_diff(old, key)
            raise UserError(f"{folder}: this cached teacher was made with other settings ({diff[:300]}); "
                            "pass --force to recompute, or use a new --out")
    cached = TeacherOutputs.load(folder)
    if made is None and cached is not None and "spec" in cached.info:
        made = cached.info["spec"]
    why = None if spec is None or not (key_file.exists() or cached is not None) else spec_change(made, spec)
    if why:  # the runs distilled from it are trained again too (run_record.network_change)
        log.info("seed %d: the teacher in %s is another network (%s; made by an older version): trained again",
                 cfg.seed, folder, why)
        shutil.rmtree(folder)
        cached = None
    if spec is not None:  # a version that builds another network trains the teacher again (session 35's cnn1d stem)
        key["teacher_spec"] = spec.to_json()
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
        t = train_teacher(ds, cfg.source, splits, cfg.teacher_training, seed=cfg.seed, device=device,
                          dist=ddp.Dist(), out=folder, resume=ckpt.load() or {}, preload=cfg.preload,
                          max_batch_bytes=cfg.max_batch_bytes)
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


def check_request(methods: list[str], seed: int, seeds: int, *, force: bool = False, extend: bool = False,
                  jobs: int = 1) -> None:
    """The methods, seeds and flags of a compare, checked before anything runs (``--source auto``'s ranking included)."""
    if jobs < 1:
        raise UserError(f"--jobs {jobs}: must be >= 1")
    if extend and force:
        raise UserError("--extend and --force: --extend keeps the finished runs in --out, --force deletes them; "
                        "pass one")
    check_methods(methods)
    if seeds < 1:
        raise UserError(f"--seeds {seeds}: must be >= 1")
    if seed + seeds - 1 > MAX_SEED:
        raise UserError(f"--seed {seed} --seeds {seeds}: the last seed, {seed + seeds - 1}, passes {MAX_SEED}")


def run_compare(base: DistillConfig, methods: list[str], seeds: int, out: Path, *, force: bool = False,
                extend: bool = False, upper_bound: bool = True, ranking: dict | None = None, jobs: int = 1) -> dict:
    """Every method over every seed, each seed's teacher shared; results.json and results.md in ``out``.
    ``extend``: ``out`` may hold a finished compare made with the same config (seeds and methods aside): its finished
    runs and teachers are kept, the seeds and methods it lacks are trained, and the results cover ``methods`` over
    ``seeds``. ``ranking``: select-teacher's, when it picked ``base.source`` (``--source auto``), kept in
    results.json. ``jobs``: every seed's teacher first, then the runs that many at a time, each on 1/``jobs`` of the
    cores (compare_jobs.py)."""
    check_request(methods, base.seed, seeds, force=force, extend=extend, jobs=jobs)
    with exclusive(out):  # a second compare into this folder would train its unfinished runs beside this one's
        if (out / "results.json").exists() and not force:
            _check_extends(out, base, extend)
        if force and out.exists():
            shutil.rmtree(out)
        pool = Jobs(jobs, gpus=base.device != "cpu") if jobs > 1 else None
        finished = False
        try:
            res = _compare(base, methods, seeds, out, upper_bound, ranking, pool)
            finished = True
            return res
        finally:
            if pool is not None:
                pool.close(finished)


def _check_extends(out: Path, base: DistillConfig, extend: bool) -> None:
    """A finished compare in ``out`` is refused unless ``extend`` and it was made with ``base``'s training settings
    (seed and method aside) on the same data files: its runs would otherwise be trained again, or its teachers refused,
    one by one (a compare moved with its data to another folder or machine extends)."""
    try:
        old = json.loads((out / "results.json").read_text())
        made = f"seeds {old['seeds']}, methods {', '.join(old['methods'])}"
        diff = [k for k in training_diff(old, base) if k not in ("seed", "method")]
    except (OSError, ValueError, KeyError, TypeError, UserError) as exc:
        raise UserError(f"--out {out}: results.json cannot be read ({exc}): pass --force to recompute") from None
    if not extend:
        raise UserError(f"--out {out} already holds results.json ({made}): pass --extend to add seeds or methods "
                        "(its finished runs are kept), or --force to recompute")
    if diff:
        raise UserError(f"--extend: {out} was made with another config ({', '.join(diff)} differ): use the same flags, "
                        "or --force to recompute, or a new --out")
    if datasets.changed_since(datasets.load(base.data), old.get("data_fingerprint")):
        raise UserError(f"--extend: {out}'s data changed since it was made: use --force to recompute, or a new --out")
    note = machine.other_machines(old["made_on"] if "made_on" in old else [],
                                 machine.made_on(engine.pick_device(base.device)), f"--extend: {out}'s runs were made")
    if note:
        log.warning("%s", note)


def kept_ranking(out: Path) -> tuple[str, dict] | None:
    """``--source auto --extend``: the pick and ranking the finished compare in ``out`` made, to be taken again rather
    than ranking every view anew (deterministic on a CPU, and minutes on large data); None without one. Whether the
    compare's target, data and settings match is :func:`_check_extends`' to say."""
    try:
        r = json.loads((out / "results.json").read_text())
        return (r["source"], r["source_ranking"]) if r["source_ranking"] else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _done(value: dict) -> Future:
    fut: Future = Future()
    fut.set_result(value)
    return fut


def _compare(base: DistillConfig, methods: list[str], seeds: int, out: Path, upper_bound: bool,
             ranking: dict | None, jobs: Jobs | None) -> dict:
    seed_list = [base.seed + i for i in range(seeds)]
    extra_runs = list(methods) + ([UPPER] if upper_bound else [])
    runs: dict[str, list[dict]] = {m: [] for m in extra_runs}  # each method's metrics.json, seed by seed
    teacher_acc = []
    teacher_shas: list[str] = []  # a --teacher file's or factory's sha256, as each seed's cached outputs record it
    made: list[dict] = []  # the machines of each run (run.json's made_on and resumed_on; none from older versions)
    loaded = None  # a --teacher file's or factory's outputs: one pass over the rows serves every seed
    done, trained, total, start = 0, 0, len(seed_list) * len(extra_runs), time.perf_counter()
    reported_trained = 0  # runs trained (not kept) and reported: the pace of the rest

    def report(m: str, seed: int, run_dir: Path, res: dict, was_trained: bool) -> None:
        nonlocal done, reported_trained
        runs[m].append(res)
        made.extend(_made_on(run_dir))
        done += 1
        reported_trained += was_trained
        left = progress.time_left(time.perf_counter() - start, reported_trained, reported_trained + total - done)
        log.info("  %-16s seed %d  test top-1 %.4f  (%.1fs)  [%d/%d%s]", m, seed, res["test_accuracy"],
                 res["wall_s"], done, total, left)

    def seed_teacher(seed: int):
        nonlocal loaded
        t0 = time.perf_counter()
        teacher = teacher_for_seed(dataclasses.replace(base, seed=seed), out / "teachers" / f"seed{seed}", loaded,
                                   check=lambda probe: _check_kd(base, methods, probe))  # before its pass
        log.info("seed %d: teacher %s test accuracy %s (%.1fs)", seed, base.source,
                 "- (no logits)" if teacher.test_accuracy is None else f"{teacher.test_accuracy:.4f}",
                 time.perf_counter() - t0)
        loaded = teacher if base.teacher != "train" else None
        teacher_acc.append(teacher.test_accuracy)
        if "sha256" in teacher.info and teacher.info["sha256"] not in teacher_shas:
            teacher_shas.append(teacher.info["sha256"])
        _check_kd(base, methods, teacher)  # a teacher cached before: its probe was not run here
        return teacher

    pending: list[tuple[str, int, Path, Future, bool]] = []  # --jobs: runs in the workers, in the order to report
    if jobs is not None:  # every seed's teacher first, on all the cores; then the workers have them to themselves
        for seed in seed_list:
            seed_teacher(seed)
    for seed in seed_list:
        teacher = seed_teacher(seed) if jobs is None else None  # the workers load it from its folder
        for m in extra_runs:
            cfg_s = dataclasses.replace(base, seed=seed)
            cfg = dataclasses.replace(cfg_s, method="supervised", labeled_fraction=1.0) if m == UPPER else \
                dataclasses.replace(cfg_s, method=m)
            # at --labeled-fraction 1 the ceiling is the supervised run itself: one folder, trained once
            same = m == UPPER and cfg == dataclasses.replace(cfg_s, method="supervised")
            run_dir = out / "runs" / f"{'supervised' if same else m.replace('@100%', '-all-labels')}-s{seed}"
            res = _finished(run_dir, cfg)
            if res is None:
                trained += 1
                resume = continues(run_dir, cfg)
                if resume:
                    log.info("  %s: continuing the killed run from its checkpoint", run_dir.name)
                if jobs is not None:
                    teacher_dir = out / "teachers" / f"seed{seed}"
                    pending.append((m, seed, run_dir, jobs.submit(run_dir, cfg, teacher_dir, resume), True))
                    continue
            was_trained = res is None
            if was_trained:
                res = train_run(run_dir, cfg, teacher, resume)
            if pending:  # a kept run after a submitted one: its turn comes in the order
                pending.append((m, seed, run_dir, _done(res), False))
            else:
                report(m, seed, run_dir, res, was_trained)
    for m, seed, run_dir, fut, was_trained in pending:  # each as it finishes
        report(m, seed, run_dir, jobs.result(fut, run_dir) if jobs is not None else fut.result(), was_trained)
    if trained < total:
        log.info("kept %d finished run%s, trained %d", total - trained, "" if total - trained == 1 else "s", trained)
    results = {
        "data": base.data, "source": base.source, "target": base.target, "labeled_fraction": base.labeled_fraction,
        "seeds": seed_list, "teacher_test_accuracy": teacher_stats(teacher_acc),
        "teacher": {"ref": base.teacher, "sha256": teacher_shas},  # which model a file or factory was, seed by seed
        "methods": {m: summary(runs[m]) for m in methods},
        "paired": paired(extra_runs, {m: [r["test_accuracy"] for r in runs[m]] for m in extra_runs}),
        "confused_pairs": confused_pairs([r for m in methods for r in runs[m]]),
        "upper_bound": {"method": UPPER, **summary(runs[UPPER])} if upper_bound else None,
        "config": base.to_json(),
        "data_fingerprint": datasets.load(base.data).fingerprint(),  # --extend adds runs on these files only
        "made_on": [m for i, m in enumerate(made) if m not in made[:i]],  # CPUs differ in bits
        "source_ranking": ranking,
    }
    write_json(out / "results.json", results)
    write_text(out / "results.md", results_markdown(results))
    return results


def _made_on(run_dir: Path) -> list[dict]:
    return machine.run_machines(json.loads((run_dir / "run.json").read_text()))


def _same_config(record: dict, ds: datasets.Dataset, cfg: DistillConfig) -> bool:
    """Whether the run that wrote run.json ``record`` was made with ``cfg``'s training settings and data files ``ds``
    (where it ran, device and preload, and where the data lies do not matter)."""
    try:
        return not training_diff(record, cfg) and not datasets.changed_since(ds, record.get("data_fingerprint"))
    except (ValueError, KeyError, UserError):  # a config key this version does not know
        return False


def _finished(run_dir: Path, cfg: DistillConfig) -> dict | None:
    """The metrics of a run a killed compare already finished, if it was made with this very config (a run left from
    another config, e.g. before the default recipe changed, or by a version whose metrics lack a figure compare
    reports, is trained again)."""
    path = run_dir / "metrics.json"
    if not (path.exists() and (run_dir / "run.json").exists()):
        return None
    try:
        record = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError):  # unreadable: as a run of another config
        record = None
    ds = datasets.load(cfg.data)
    if record is None or not _same_config(record, ds, cfg):
        log.info("  %s: made with another config, trained again", run_dir.name)
        return None
    metrics = json.loads(path.read_text())
    why = recipe_change(metrics, cfg)  # --method cmcd names today's default recipe
    if why:
        log.info("  %s: %s: trained again", run_dir.name, why)
        return None
    why = network_change(record, cfg, ds)
    if why:  # the same config built another student or teacher then (cnn1d's short-input stem, session 35)
        log.info("  %s: %s: trained again", run_dir.name, why)
        return None
    missing = [k for k in ("val_accuracy", "test_per_class", "test_confusions") if k not in metrics]
    if missing:
        log.info("  %s: made by an older version (no %s), trained again", run_dir.name, ", ".join(missing))
        return None
    return metrics
