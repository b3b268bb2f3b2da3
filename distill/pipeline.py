"""One distill run: teacher -> distill (recipe on all paired train rows + CE on the labeled ones) -> fine-tune on the
labeled rows -> test evaluation -> run directory (run.json, student/teacher safetensors + JSON, metrics, history)."""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cmcd_edge import datasets
from cmcd_edge.distill import ddp, engine, students
from cmcd_edge.distill.config import DistillConfig
from cmcd_edge.distill.evaluate import chance_bar, modality_gap
from cmcd_edge.distill.losses import LossDims, Pair, Recipe, recipe_str
from cmcd_edge.distill.rows import ViewRows
from cmcd_edge.distill.run_record import finished_record, note_resumed, prepare_out, run_json
from cmcd_edge.distill.teacher_cache import TeacherCache
from cmcd_edge.distill.teachers import TeacherOutputs, check_teacher_memory, train_teacher
from cmcd_edge.distill.user_teacher import load_teacher
from cmcd_edge.errors import UserError
from cmcd_edge.fsutil import exclusive, make_dir, write_bytes, write_csv_rows, write_json
from cmcd_edge.runtime.scores import confusions, macro_f1, per_class
from cmcd_edge.splitting import classes_raised_to_one, make_splits

log = logging.getLogger(__name__)


class DistillModel(nn.Module):
    """Student + recipe (whose losses own projectors, queues, memory banks): one module, so DDP wraps it whole."""

    def __init__(self, student: students.Net, recipe: Recipe) -> None:
        super().__init__()
        self.student, self.recipe = student, recipe

    def forward(self, x_pair, t_emb, t_logits, idx, x_lab, y_lab):
        n_pair = x_pair.shape[0]
        logits, emb = self.student.forward_both(torch.cat([x_pair, x_lab]))  # one pass: BN sees both batches
        pair = Pair(emb[:n_pair], logits[:n_pair], t_emb, t_logits, idx, logits[n_pair:], y_lab)
        return self.recipe(pair)


@dataclass
class RunResult:
    metrics: dict
    out: Path | None


@functools.cache  # once per dataset and fraction, not once per run of a compare
def _warn_fraction_of_few_labels(spec: str, unlabeled: int, fraction: float) -> None:
    log.warning("%s: %d rows are unlabeled, and --labeled-fraction %g keeps only that share of the labeled train rows "
                "(the benchmark protocol's few labels); pass --labeled-fraction 1 to train on every label you have",
                spec, unlabeled, fraction)


@functools.cache  # once per teacher, not once per run (or seed) of a compare
def _warn_teacher_at_chance(data: str, source: str, teacher: str, chance: float, rows: int) -> None:
    fix = "raise teacher_epochs (--config), or check" if teacher == "train" else "check --teacher and"
    log.warning("teacher: its test top-1 on %s is not above chance (%.1f%%, the commonest class, over %d test rows) "
                "by two standard errors: it has little to teach; %s the source view", source, 100 * chance, rows, fix)


@functools.cache  # once per dataset and fraction, not once per run of a compare
def _warn_labels_raised(spec: str, fraction: float, raised: int, classes: int, picked: int, train: int) -> None:
    log.warning("%s: --labeled-fraction %g rounds to no labeled row in %d of %d classes of the train split; each takes "
                "one, so %d rows are labeled: %.2f%% of %d, not %g%%", spec, fraction, raised, classes, picked,
                100 * picked / train, train, 100 * fraction)


def run_distill(cfg: DistillConfig, out: Path | None, *, resume: bool = False, force: bool = False,
                teacher: TeacherOutputs | None = None, ranking: dict | None = None,
                capture: dict | None = None) -> RunResult:
    """One run. ``capture``, when given, receives the trained student (for in-process callers like select). Rank 0
    holds ``out`` (:func:`~cmcd_edge.fsutil.exclusive`) from the check of the folder to the last write."""
    with contextlib.ExitStack() as hold:
        return _run(cfg, out, resume, force, teacher, ranking, capture, hold)


def _run(cfg, out, resume, force, teacher, ranking, capture, hold: contextlib.ExitStack) -> RunResult:
    t0 = time.perf_counter()
    cfg = replace(cfg, data=datasets.canonical_spec(cfg.data))  # run.json holds a path valid anywhere
    ds = datasets.load(cfg.data)
    cfg.check_against(ds)
    if teacher is None and not cfg.needs_teacher:  # supervised: the labeled target rows alone (was: trained one)
        if cfg.teacher != "train":
            log.warning("%s reads no teacher: --teacher %s is not used", cfg.recipe_flag, cfg.teacher)
        teacher = TeacherOutputs.none(ds.n_rows)
    datasets.validate(ds, [cfg.source, cfg.target] if teacher is None else [cfg.target])
    splits = make_splits(ds, cfg.seed, labeled_fraction=cfg.labeled_fraction)  # bad splits: before any write
    labels = np.asarray(ds.labels)
    unlabeled = int((labels < 0).sum())
    if unlabeled and cfg.labeled_fraction < 1.0:
        _warn_fraction_of_few_labels(ds.spec, unlabeled, cfg.labeled_fraction)
    raised = classes_raised_to_one(splits.train, labels, cfg.labeled_fraction)
    if raised:
        y_train = labels[splits.train]
        _warn_labels_raised(ds.spec, cfg.labeled_fraction, raised, len(np.unique(y_train[y_train >= 0])),
                            len(splits.labeled), int((y_train >= 0).sum()))
    try:  # a student that cannot take the view fails here, not after the teacher trained
        spec = cfg.student_spec(ds)
        students.check_buildable(spec)
    except UserError as exc:
        raise UserError(f"--student {cfg.student} for --target {cfg.target}: {exc}") from exc
    device = engine.pick_device(cfg.device)
    engine.check_batch_memory(spec, cfg.batch_size + cfg.labeled_batch_size, cfg.max_batch_bytes, device,
                              f"--batch-size {cfg.batch_size} (+ {cfg.labeled_batch_size} labeled rows a step)",
                              "lower --batch-size")
    if teacher is None and cfg.teacher == "train":  # before any folder is made or a teacher trained
        check_teacher_memory(ds, cfg.source, cfg.teacher_batch_size, cfg.max_batch_bytes, device)
    dist = ddp.setup_distributed(device)
    cache = TeacherCache.for_run(cfg, ds, device, dist.world) if teacher is None else None
    early = cache.lookup(ds, splits, dist, device) if cache is not None and not resume else None
    cached = early is not None
    if cached:  # checked as a loaded teacher's probe is: before any folder is made
        cfg.check_teacher_logits(early)
    elif teacher is None and cfg.teacher != "train" and not resume:  # a failed load leaves no folder
        early = load_teacher(cfg.teacher, ds, cfg.source, splits, device, cfg.preload, dist,
                             check=cfg.check_teacher_logits)  # before the pass over every row
    def prepare() -> None:
        if out is not None:
            hold.enter_context(exclusive(out))
            prepare_out(out, cfg, resume, force)
            make_dir(out)
            if not resume:
                write_json(out / "run.json", {**run_json(cfg, ds, splits, None, "running"), "source_ranking": ranking})

    ddp.rank0_prepares(dist, prepare)  # rank 0 has checked and prepared --out before another rank reads it
    ckpt_state = None
    if out is not None and resume:  # every rank continues from the same epoch (was: rank 0 alone)
        ckpt_state = engine.Checkpoint(out / "checkpoint.pt").load() or {}
        ddp.barrier(dist)  # all have read the checkpoint before rank 0 writes the next one

    computed = early is not None and not cached  # by this process: kept in the cache below
    if early is not None:
        teacher = early
        if out is not None and dist.main:
            teacher.save(out)
            if cached:
                cache.copy_weights(out)
    if teacher is None and out is not None:
        teacher = TeacherOutputs.load(out)
    if out is not None and resume and dist.main:
        note_resumed(out, cfg)
    if teacher is None:
        computed = True
        if cfg.teacher == "train":
            teacher = train_teacher(ds, cfg.source, splits, cfg.teacher_training, seed=cfg.seed, device=device,
                                    dist=dist, out=out, resume=ckpt_state, preload=cfg.preload,
                                    max_batch_bytes=cfg.max_batch_bytes)
        else:
            teacher = load_teacher(cfg.teacher, ds, cfg.source, splits, device, cfg.preload, dist)
        if out is not None and dist.main:
            teacher.save(out)
    if computed and cache is not None and dist.main:
        cache.put(teacher, out)
    if teacher.emb.shape[0] != ds.n_rows:
        raise UserError(f"teacher gives {teacher.emb.shape[0]} rows, the data has {ds.n_rows}")
    if teacher.test_accuracy is not None and len(splits.test) and dist.main:
        chance, bar = chance_bar(labels[splits.test])
        if teacher.test_accuracy < bar:
            _warn_teacher_at_chance(cfg.data, cfg.source, cfg.teacher, chance, len(splits.test))

    recipe_terms = cfg.terms
    cfg.check_teacher_logits(teacher)
    engine.seed_everything(cfg.seed)
    student = students.train_layout(students.build(spec))
    student.set_normalization(*datasets.norm_stats(ds.view(cfg.target), splits.train, ds.views[cfg.target].kind))
    recipe = Recipe(recipe_terms, LossDims(spec.embed_dim, teacher.emb.shape[1], ds.n_classes, ds.n_rows),
                    cfg.loss)
    model = DistillModel(student, recipe).to(device)
    log.info("%s  (%s -> %s, %s)", recipe, cfg.source, cfg.target, spec.arch)

    x = ViewRows.open(ds.view(cfg.target), device, cfg.preload, ranks=dist.world, what=f"--target {cfg.target}")
    y = torch.as_tensor(labels).to(device)
    t_emb, t_logits = teacher.emb.to(device), None if teacher.logits is None else teacher.logits.to(device)
    train, lab = torch.as_tensor(splits.train, device=device), torch.as_tensor(splits.labeled, device=device)
    val = torch.as_tensor(splits.val, device=device)
    wrapped = model
    if dist.world > 1:
        wrapped = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    eval_rows = students.eval_batch(spec, device)

    def evaluate():
        return engine.accuracy_and_loss(engine.predict_logits(student, x, val, eval_rows), y[val])

    def shard(t: torch.Tensor) -> torch.Tensor:
        return t[dist.rank::dist.world]

    def distill_step(gen: torch.Generator):
        pick = shard(train[torch.randperm(len(train), generator=gen)[: cfg.batch_size].to(device)])
        lpick = shard(lab[torch.randint(0, len(lab), (cfg.labeled_batch_size,), generator=gen).to(device)])
        with engine.autocast(device):
            return wrapped(x[pick], t_emb[pick], None if t_logits is None else t_logits[pick], pick, x[lpick], y[lpick])

    ckpt = engine.Checkpoint(out / "checkpoint.pt" if out is not None else None)
    resume_state = ckpt_state or None
    history: list[dict] = []
    steps = max(1, len(train) // cfg.batch_size)
    if not (resume_state and resume_state.get("phase") == "finetune"):
        phase = engine.PhaseSpec("distill", cfg.epochs, cfg.lr, cfg.weight_decay, cfg.patience, steps, cfg.seed,
                                 cfg.select_window)
        res = engine.run_phase(phase, model, distill_step, evaluate, ckpt, dist, resume=resume_state,
                               on_epoch=_history_writer(out))
        model.load_state_dict(res.best_state)
        history += res.history
        speed = res.steps * cfg.batch_size / res.train_s if res.steps else None
    else:
        history += [r for r in resume_state["history"] if r["phase"] == "distill"]
        speed = None  # the distill phase ran in the killed process
    if cfg.finetune != "none" and cfg.finetune_epochs > 0:
        history += _finetune(cfg, student, x, y, lab, evaluate, ckpt, dist, resume_state, device, history,
                             _history_writer(out))

    if capture is not None:
        capture["student"] = student
    wall = time.perf_counter() - t0
    amp = engine.amp_dtype(device)
    metrics = {**_final_metrics(cfg, ds, splits, student, x, y, teacher, spec, wall, evaluate),
               "distill_samples_per_s": None if speed is None else round(speed, 1), "train_device": str(device),
               "train_autocast": None if amp is None else str(amp).removeprefix("torch.")}
    if out is not None and dist.main:
        _write_run(out, cfg, ds, splits, student, spec, teacher, metrics, history, ranking)
    return RunResult(metrics, out)


def _finetune(cfg, student, x, y, lab, evaluate, ckpt, dist, resume_state, device, prior, on_epoch) -> list[dict]:
    """Fine-tune the head (or the whole student) on the labeled rows; the distilled state competes as epoch 0."""
    head_only = cfg.finetune == "head"
    params = list(student.head.parameters()) if head_only else list(student.parameters())

    def step(gen: torch.Generator):
        if head_only:
            student.norm.eval()
            student.encoder.eval()
        pick = lab[torch.randint(0, len(lab), (min(cfg.labeled_batch_size, len(lab)),), generator=gen).to(device)]
        with engine.autocast(device):
            return torch.nn.functional.cross_entropy(student(x[pick]), y[pick]), {}

    lr = 1e-3 if head_only else cfg.lr / 3
    start = {k: v.detach().clone() for k, v in student.state_dict().items()}
    phase = engine.PhaseSpec("finetune", cfg.finetune_epochs, lr, cfg.weight_decay, cfg.patience,
                             max(1, len(lab) // cfg.labeled_batch_size), cfg.seed + 1, cfg.select_window)

    class _Wrap(nn.Module):  # checkpoint the distill model's student under the same key layout
        def __init__(self):
            super().__init__()
            self.student = student

    wrap = _Wrap()
    start_state = {f"student.{k}": v for k, v in start.items()}
    res = engine.run_phase(phase, wrap, step, evaluate, ckpt, dist, params=params, resume=resume_state,
                           start_state=start_state, prior=prior, on_epoch=on_epoch)
    wrap.load_state_dict(res.best_state)
    return res.history


@torch.no_grad()
def _final_metrics(cfg, ds, splits, student, x, y, teacher, spec, wall, evaluate) -> dict:
    test = torch.as_tensor(splits.test, device=x.device)
    b = students.eval_batch(spec, x.device)
    logits = engine.predict_logits(student, x, test, b).cpu()
    yt = y[test].cpu()
    pred = logits.argmax(1).numpy()
    val_acc, _ = evaluate()  # the kept model on val, as model selection scored it
    student.eval()
    s_emb = torch.cat([student.embed(x[s]).float().cpu() for s in engine.row_batches(x.shape[0], b)]).numpy()
    gap = None if teacher.is_none else modality_gap(s_emb, teacher.emb.numpy(), splits.train, splits.val, splits.test,
                                                     seed=cfg.seed)
    size = students.measure(student.cpu(), spec.in_shape)
    student.to(x.device)
    return {"method": cfg.method, "recipe": recipe_str(cfg.terms), "source": cfg.source,
            "target": cfg.target, "seed": cfg.seed, "labeled_fraction": cfg.labeled_fraction,
            "labeled_rows": int(len(splits.labeled)), "val_accuracy": float(val_acc),
            "test_accuracy": float((pred == yt.numpy()).mean()),
            "test_macro_f1": macro_f1(pred, yt.numpy(), ds.n_classes),
            "test_per_class": per_class(pred, yt.numpy(), ds.classes),
            "test_confusions": confusions(pred, yt.numpy(), ds.classes),
            "teacher_test_accuracy": teacher.test_accuracy, "teacher_kind": teacher.info["kind"],
            "params": size.params, "macs": size.macs,
            "wall_s": round(wall, 2), "modality_gap": gap, "student": spec.arch}


def _history_writer(out: Path | None):
    """history.csv rewritten after every epoch (atomically), so a long run can be watched with tail -f."""
    return None if out is None else (lambda rows: write_csv_rows(out / "history.csv", rows))


def _write_run(out, cfg, ds, splits, student, spec, teacher, metrics, history, ranking) -> None:
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in student.state_dict().items()}
    write_bytes(out / "student.safetensors", save(state))
    write_json(out / "student.json", {**spec.to_json(), "view": cfg.target, "view_kind": ds.views[cfg.target].kind,
                                      "classes": list(ds.classes)})
    if history:
        write_csv_rows(out / "history.csv", history)
    write_json(out / "run.json", finished_record(out, run_json(cfg, ds, splits, teacher, "done"), ranking))
    write_json(out / "metrics.json", metrics)  # last: its presence marks a finished run
