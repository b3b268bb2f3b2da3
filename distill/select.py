"""Teacher selection by the CCH criterion (Xie, Xu, Sanguinetti, "Information-Theoretic Criteria for Knowledge
Distillation in Multimodal Learning", arXiv 2510.13182): cross-modal KD from view m helps when
I(H_m; H_S) > I(H_S; Y).

Protocol per seed: H_S is the embedding of the supervised-baseline student on the target view (trained on the labeled
target rows only); H_m the frozen teacher embedding of candidate m; both on held-out rows (val + test). The Gaussian
estimator ranks (fast and stable); KSG and InfoNCE are reported beside it. I(H_S; Y) is the probe bound (ranking) and
the mixed KSG estimate (reported). delta = I(H_m; H_S) - I(H_S; Y) in nats.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cmcd_edge import datasets
from cmcd_edge.distill import ddp, engine, machine, mi
from cmcd_edge.distill.config import DistillConfig, check_seed
from cmcd_edge.distill.engine import TeacherTraining
from cmcd_edge.distill.evaluate import chance_bar
from cmcd_edge.distill.pipeline import run_distill
from cmcd_edge.distill.teacher_cache import TeacherCache, cache_root
from cmcd_edge.distill.teachers import TeacherOutputs, train_teacher
from cmcd_edge.distill.user_teacher import load_teacher, teacher_sha256
from cmcd_edge.errors import UserError
from cmcd_edge.fsutil import write_json
from cmcd_edge.splitting import make_splits

log = logging.getLogger(__name__)
MARGIN = 0.1  # nats: |delta| below this is "marginal"
WEAK_STUDENT = 0.1  # I(S;Y) below this share of H(Y): the label-only student learned next to nothing
MIN_HELDOUT = 50
MAX_HELDOUT = 2000  # the k-NN estimators hold D x N^2 distances (N = 2000, 16 dims: 0.5 GB); validated at n = 2000


def verdict(delta: float, margin: float = MARGIN) -> str:
    """The CCH call on a delta in nats. The ranking gives it for the mean over seeds and counts the seeds whose own
    delta (that seed's teacher against that seed's student) gets the same call: a split count says the margin is
    inside the seed spread (I(S;Y) on a few hundred held-out rows spreads by ~0.2 nats, BENCHMARKS.md)."""
    if delta > margin:
        return "distill"
    if delta >= -margin:
        return "marginal"
    return "skip: distillation unlikely to help"


def _agg(values: list[float]) -> dict:
    a = np.asarray(values, dtype=float)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0}


def rank_teachers(data: str, target: str, candidates: list[str] | None = None, seeds: int = 3, seed: int = 0,
                  labeled_fraction: float = 0.1, teacher_epochs: int = 15, student_epochs: int = 30,
                  estimators: tuple[str, ...] = ("gaussian", "ksg", "infonce"), device: str = "auto",
                  progress: Path | None = None, teacher_cache: str | None = None,
                  teachers: dict[str, str] | None = None, margin: float = MARGIN) -> dict:
    """The CCH ranking of ``candidates`` (default: every other view) for ``target``. With ``progress`` (a JSON file),
    each measured (seed, view) is kept there as it finishes, and a rerun with the same settings takes it instead of
    training that teacher again (a killed run resumes). ``teacher_cache``: a ``--teacher-cache`` folder, whose
    candidates' teachers a ranking for another target (or a distill of the same teacher settings) takes.
    ``teachers``: a view's own teacher (``--teacher VIEW=FILE``: a .pt/.pt2/.onnx file or pkg.module:factory, as
    distill takes), measured instead of a teacher trained on that view; the view joins the candidates. ``margin``
    (nats): |delta| within it reads "marginal" (``--margin``; not keyed, so a rerun with another margin takes the
    measurements a killed run kept)."""
    t0 = time.perf_counter()
    for flag, value in (("--seeds", seeds), ("--teacher-epochs", teacher_epochs), ("--student-epochs", student_epochs)):
        if value < 1:
            raise UserError(f"{flag} {value}: must be >= 1")
    check_seed(seed)
    if not (np.isfinite(margin) and margin >= 0):
        raise UserError(f"--margin {margin}: must be a finite number of nats >= 0")
    if teacher_cache is not None:
        cache_root(teacher_cache)  # a file there: refused before any training
    ds = datasets.load(data)
    if target not in ds.views:
        raise UserError(f"--target {target!r}: no such view in {data}; valid views: {', '.join(ds.views)}")
    teachers = dict(teachers or {})
    for c in [*(candidates or []), *teachers]:
        if c not in ds.views:
            flag = f"--teacher {c}={teachers[c]}" if c in teachers else "--candidates"
            raise UserError(f"{flag}: no view {c!r} in {data}; valid views: {', '.join(ds.views)}")
    if target in teachers:
        raise UserError(f"--teacher {target}={teachers[target]}: {target!r} is the target; a teacher is of a source view")
    cands = [c for c in (candidates or ds.views) if c != target]
    cands += [c for c in teachers if c not in cands]
    if not cands:
        raise UserError(f"--candidates {','.join(candidates or [])}: no candidate other than the target {target!r}")
    labels = np.asarray(ds.labels)
    if (labels >= 0).sum() == 0:
        raise UserError(f"{data}: has no labels; I(H_S; Y) and the teachers need labels")
    datasets.validate(ds, [target, *cands])
    dev = engine.pick_device(device)
    engine.settle_cpu_math()  # the MI critics train with Adam before any teacher when every teacher was measured
    key = {"data_fingerprint": ds.fingerprint(), "target": target, "labeled_fraction": labeled_fraction,
           "teacher_epochs": teacher_epochs, "student_epochs": student_epochs, "estimators": list(estimators),
           "max_heldout": MAX_HELDOUT, "label_probe": mi.LABEL_PROBE}
    if teachers:  # keyed by what they are: a file saved over at the same path is another teacher
        key["teachers"] = {c: teacher_sha256(ref) for c, ref in sorted(teachers.items())}
    here = machine.made_on(dev)
    first = make_splits(ds, seed, labeled_fraction=labeled_fraction)  # a teacher that does not load fails here
    loaded = {c: load_teacher(ref, ds, c, first, dev) for c, ref in teachers.items()}  # run once: no seed in them
    store = Progress(progress, key, here) if progress is not None else None
    per: dict[str, dict[str, list[float]]] = {c: {} for c in cands}
    timing = {"student_s": 0.0, "teachers_s": 0.0, "estimators_s": 0.0}
    heldout_rows, h_y, test_y = [], [], []
    for s in range(seed, seed + seeds):
        splits = make_splits(ds, s, labeled_fraction=labeled_fraction)
        held = np.sort(np.concatenate([splits.val, splits.test]))  # labeled rows only (make_splits)
        if len(held) > MAX_HELDOUT:  # a seeded subsample: the estimators' cost and memory grow as N^2
            held = np.sort(np.random.default_rng(s).choice(held, MAX_HELDOUT, replace=False))
        heldout_rows.append(len(held))
        test_y.append(labels[splits.test][labels[splits.test] >= 0])  # the rows each teacher's test top-1 is measured on
        h_y.append(mi.label_entropy(labels[held], ds.n_classes))
        if len(held) < MIN_HELDOUT:
            raise UserError(f"{data}: {len(held)} labeled held-out rows (val + test); the estimators need at least "
                            f"{MIN_HELDOUT}")
        saved = store.measured(s) if store is not None else {}
        if any(c not in saved for c in cands):
            cfg = DistillConfig(data=data, source=cands[0], target=target, method="supervised", seed=s,
                                labeled_fraction=labeled_fraction, epochs=student_epochs, finetune="none",
                                teacher_epochs=1, device=device)
            t0_s = time.perf_counter()
            h_s = _student_embedding(cfg, ds, held)
            timing["student_s"] += time.perf_counter() - t0_s
            y = labels[held]
            i_sy = {"i_sy": mi.label_mi_probe(h_s, y, ds.n_classes, seed=s)}
            ksg = _safe(lambda h=h_s, yy=y: mi.ksg_mixed_label_mi(h, yy))
            if ksg is not None:
                i_sy["i_sy_ksg"] = ksg
        for c in cands:
            if c in saved:
                values = saved[c]
                log.info("seed %d  %-6s measured by an earlier run (%s)", s, c, progress)
            else:
                t0_t = time.perf_counter()
                if c in loaded:
                    t = loaded[c].scored_on(ds, splits)
                else:
                    t = _candidate_teacher(ds, c, target, splits, s, teacher_epochs, dev, teacher_cache)
                t0_e = time.perf_counter()
                timing["teachers_s"] += t0_e - t0_t
                h_t = t.emb.numpy()[held]
                values = {**i_sy, "teacher_acc": t.test_accuracy}  # None: a teacher without logits
                for est in estimators:
                    fn = {"gaussian": mi.gaussian_mi, "ksg": mi.ksg_mi, "infonce": mi.infonce_mi}[est]
                    values[est] = fn(h_t, h_s)
                timing["estimators_s"] += time.perf_counter() - t0_e
                log.info("seed %d  %-6s I(T;S) gaussian %.3f  I(S;Y) %.3f", s, c, values["gaussian"], values["i_sy"])
                if store is not None:
                    store.save(s, c, values)
            for k, v in values.items():
                per[c].setdefault(k, []).append(v)
    ranking = [{**rank_row(c, row, estimators, margin), "teacher": teachers[c] if c in teachers else "trained"}
               for c, row in per.items()]
    ranking.sort(key=lambda r: -r["delta"])
    h_y_mean = float(np.mean(h_y))
    return {"data": data, "target": target, "seeds": list(range(seed, seed + seeds)), "units": "nats",
            "primary_estimator": "gaussian", "margin_nats": margin, "heldout_rows": heldout_rows,
            "teacher_epochs": teacher_epochs, "student_epochs": student_epochs, "device": str(dev), "ranking": ranking,
            "made_on": here if store is None else store.doc["made_on"], "label_entropy_nats": h_y_mean,
            **({"resumed_on": store.doc["resumed_on"]} if store is not None and store.doc["resumed_on"] else {}),
            "warnings": (disagreements(ranking) + weak_student(data, target, ranking, h_y_mean)
                         + chance_teachers(ranking, np.concatenate(test_y), teacher_epochs)),
            "wall_s": round(time.perf_counter() - t0, 1), "timing": {k: round(v, 1) for k, v in timing.items()}}


def _candidate_teacher(ds: datasets.Dataset, view: str, target: str, splits, seed: int, epochs: int,
                       dev: torch.device, teacher_cache: str | None) -> TeacherOutputs:
    """Candidate ``view``'s teacher: from ``teacher_cache`` when it holds it, else trained (and kept there with its
    network, as a distill's entry is). A candidate's teacher does not depend on the target, so ranking sources for
    a second target trains no teacher again."""
    cache = None
    if teacher_cache is not None:
        cfg = DistillConfig(data=ds.spec, source=view, target=target, seed=seed, teacher_epochs=epochs,
                            device=dev.type, teacher_cache=teacher_cache)
        cache = TeacherCache.for_run(cfg, ds, dev)
        hit = cache.get(ds, splits)
        if hit is not None:
            return hit
    if cache is None:
        return train_teacher(ds, view, splits, TeacherTraining(epochs), seed=seed, device=dev, dist=ddp.Dist())
    with tempfile.TemporaryDirectory() as tmp:  # train_teacher writes the network into a folder
        t = train_teacher(ds, view, splits, TeacherTraining(epochs), seed=seed, device=dev, dist=ddp.Dist(),
                          out=Path(tmp))
        cache.put(t, Path(tmp))
    return t


def rank_row(view: str, row: dict[str, list[float]], estimators: tuple[str, ...], margin: float = MARGIN) -> dict:
    """One candidate's ranking entry from its per-seed measurements (lists in seed order)."""
    i_ts, i_sy = _agg(row["gaussian"]), _agg(row["i_sy"])
    delta = i_ts["mean"] - i_sy["mean"]
    per_seed = [a - b for a, b in zip(row["gaussian"], row["i_sy"], strict=True)]  # paired: one student per seed
    return {"view": view, "mi_teacher_student": i_ts, "mi_student_label": i_sy, "delta": delta,
            "verdict": verdict(delta, margin), "delta_per_seed": per_seed,
            "seeds_agreeing": sum(verdict(d, margin) == verdict(delta, margin) for d in per_seed),
            "teacher_test_accuracy": None if None in row["teacher_acc"] else _agg(row["teacher_acc"]),
            "estimators": {"mi_teacher_student": {e: _agg(row[e]) for e in estimators},
                           "mi_student_label": {"probe": i_sy, **({"ksg_mixed": _agg(row["i_sy_ksg"])}
                                                                  if "i_sy_ksg" in row else {})}}}


class Progress:
    """The (seed, view) measurements of a select-teacher run, in a JSON file rewritten atomically after each one and
    keyed by the settings that make them: a file left by other settings is refused, never mixed in."""

    def __init__(self, path: Path, key: dict, here: dict) -> None:
        """``here``: this machine (:func:`machine.made_on`); the file keeps the one it was started on, and the one
        of each resume, as run.json does."""
        self.path, self.doc = path, {"key": key, "made_on": here, "resumed_on": [], "measured": {}}
        if not path.exists():
            return
        try:
            doc = json.loads(path.read_text())
            saved_key, measured = doc["key"], doc["measured"]
            if not (isinstance(saved_key, dict) and isinstance(measured, dict)):
                raise TypeError("key and measured must be objects")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{path}: not a select-teacher progress file ({exc}); delete it to start over") from None
        diff = next((k for k in key if saved_key.get(k) != key[k]), None)
        if diff is not None:
            raise UserError(f"{path}: a killed select-teacher left this with other settings ({diff}: saved "
                            f"{_short(saved_key.get(diff))} vs now {_short(key[diff])}); delete it to start over, "
                            "or pass another --out")
        self.doc["measured"] = measured
        if "made_on" in doc:  # (a file of an older version: where it was measured is not known)
            note = machine.other_machines(machine.run_machines(doc), here, f"{path}: its measurements were made")
            if note:
                log.warning("%s", note)
            self.doc["made_on"], self.doc["resumed_on"] = doc["made_on"], [*machine.run_machines(doc)[1:], here]
        log.info("%s: resuming; %d teacher(s) measured", path, sum(len(v) for v in measured.values()))

    def measured(self, seed: int) -> dict[str, dict[str, float]]:
        return self.doc["measured"][str(seed)] if str(seed) in self.doc["measured"] else {}

    def save(self, seed: int, view: str, values: dict[str, float]) -> None:
        self.doc["measured"].setdefault(str(seed), {})[view] = values
        write_json(self.path, self.doc)


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 20 else text[:17] + "..."


def disagreements(ranking: list[dict]) -> list[str]:
    """Views whose Gaussian I(T;S) is more than twice what the non-parametric estimators read: the embeddings are far
    from jointly Gaussian (class clusters make the closed form overcount: BENCHMARKS.md), so delta's scale and the
    verdict are not to be trusted, only the order, if that."""
    out = []
    for r in ranking:
        est = r["estimators"]["mi_teacher_student"]
        others = {k: v["mean"] for k, v in est.items() if k != "gaussian"}
        if "gaussian" in est and others and est["gaussian"]["mean"] > 2 * max(others.values()):
            out.append(f"{r['view']}: gaussian I(T;S) {est['gaussian']['mean']:.2f} nats is more than twice "
                       + ", ".join(f"{k} {v:.2f}" for k, v in others.items())
                       + ": the embeddings are far from Gaussian; trust the order, not delta's scale or the verdict")
    return out


def weak_student(data: str, target: str, ranking: list[dict], h_y: float) -> list[str]:
    """A warning when the label-only student's embedding holds under WEAK_STUDENT of H(Y). I(T;S) is measured through
    that embedding, so it is small for every candidate too and the verdicts lean to "marginal", whatever the source
    could teach: on a 3,000-row synthetic activity set (BENCHMARKS.md) the ranking read +0.026 nats, marginal, for a
    source whose cmcd student scored 96% where the label-only one scored 24%."""
    i_sy = ranking[0]["mi_student_label"]["mean"]  # one student per seed, shared by every candidate
    if h_y <= 0 or i_sy >= WEAK_STUDENT * h_y:
        return []
    return [f"{target}: the label-only student's embedding holds {i_sy:.2f} of the labels' {h_y:.2f} nats "
            f"({100 * i_sy / h_y:.0f}%) on held-out rows: it learned little from these few labels, so I(T;S), measured "
            "through it, is small for every candidate and the verdict leans to marginal; measure the gain itself: "
            f"cmcd-edge compare --data {data} --source {ranking[0]['view']} --target {target} --methods cmcd,supervised"]


def chance_teachers(ranking: list[dict], test_y: np.ndarray, teacher_epochs: int) -> list[str]:
    """A warning for each candidate whose teacher's test top-1 is not above chance (the commonest class's share of the
    test rows) by two binomial standard errors: it learned nothing it could teach, so its I(T;S) says nothing of what
    the view could (a view without signal, or too few epochs)."""
    if len(test_y) == 0:
        return []
    chance, bar = chance_bar(test_y)
    return [f"{r['view']}: its teacher scored {r['teacher_test_accuracy']['mean']:.1%} test top-1, near chance "
            f"({chance:.1%}, the commonest class, over {len(test_y)} test rows): it learned nothing to teach, so its I(T;S) and "
            f"verdict say nothing of the view; raise --teacher-epochs (now {teacher_epochs}), or check the view"
            for r in ranking if r["teacher_test_accuracy"] is not None and r["teacher_test_accuracy"]["mean"] < bar]


def _safe(fn):
    try:
        return fn()
    except ValueError as exc:
        log.warning("mixed KSG skipped: %s", exc)
        return None


def _student_embedding(cfg: DistillConfig, ds, rows: np.ndarray) -> np.ndarray:
    """The supervised baseline's encoder, trained on the labeled target rows; its embedding of ``rows``."""
    captured = {}
    res = run_distill(dataclasses.replace(cfg), None, capture=captured)  # supervised: no teacher trained
    del res
    net = captured["student"].cpu().eval()
    with torch.no_grad():
        return net.embed(torch.from_numpy(datasets.read_rows(ds.view(cfg.target), rows))).numpy()


def table(result: dict) -> str:
    n = len(result["seeds"])
    over = f"mean +- std over seeds {result['seeds']}" if n > 1 else f"seed {result['seeds'][0]}"
    lines = [f"CCH ranking for target {result['target']} on {result['data']} (nats, {over}; gaussian estimator ranks)",
             "", f"{'view':<8}{'I(T;S)':>16}{'I(S;Y)':>16}{'delta':>9}{'teacher top-1':>15}  verdict"]

    def mi(d: dict) -> str:  # one seed has no spread: its std of 0 would read as a certain figure
        return f"{d['mean']:>9.3f} +-{d['std']:.3f}" if n > 1 else f"{d['mean']:>16.3f}"

    for r in result["ranking"]:
        agree = f" ({r['seeds_agreeing']}/{n} seeds)" if n > 1 else ""
        acc = r["teacher_test_accuracy"]
        top1 = f"{100 * acc['mean']:>14.1f}%" if acc is not None else f"{'-':>15}"
        own = f"  ({r['teacher']})" if "teacher" in r and r["teacher"] != "trained" else ""
        lines.append(f"{r['view']:<8}{mi(r['mi_teacher_student'])}{mi(r['mi_student_label'])}"
                     f"{r['delta']:>+9.3f}{top1}  {r['verdict']}{agree}{own}")
    split = [r["view"] for r in result["ranking"] if r["seeds_agreeing"] < n]
    if split:
        lines.append(f"note: the seeds' own deltas disagree with the mean's verdict for {', '.join(split)}: that "
                     "verdict is not settled; more --seeds or held-out rows would settle it")
    lines += [f"warning: {w}" for w in result.get("warnings", [])]
    return "\n".join(lines)


def best_source(data: str, target: str, seed: int = 0, device: str = "auto",
                teacher_cache: str | None = None) -> tuple[str, dict]:
    res = rank_teachers(data, target, seeds=1, seed=seed, device=device, teacher_cache=teacher_cache)
    best = res["ranking"][0]
    if best["verdict"].startswith("skip"):
        log.warning("the best candidate %s has delta %.3f nats: distillation is unlikely to help", best["view"],
                    best["delta"])
    for w in weak_student(data, target, res["ranking"], res["label_entropy_nats"]):  # the pick stands on little
        log.warning("%s", w)
    return best["view"], res
