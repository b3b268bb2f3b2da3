"""A run folder's record, run.json, and what it decides: whether ``--out`` may be written, whether ``--resume`` may
continue the run there (same config, recipe, data, student and teacher networks, and teacher), and which machines
trained it."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from cmcd_edge import datasets
from cmcd_edge.distill import engine, machine, students
from cmcd_edge.distill.config import DistillConfig
from cmcd_edge.distill.losses import recipe_str
from cmcd_edge.distill.teachers import TeacherOutputs, teacher_spec
from cmcd_edge.distill.user_teacher import TEACHER_FILES, teacher_replaced
from cmcd_edge.errors import UserError
from cmcd_edge.fsutil import remove_stale_temps, write_json
from cmcd_edge.splitting import Splits

log = logging.getLogger(__name__)


def prepare_out(out: Path, cfg: DistillConfig, resume: bool, force: bool) -> None:
    """Check the run folder against the flags (rank 0): a resumable run, or an empty or --force-able folder."""
    if resume and force:
        raise UserError(f"--resume and --force together: --resume continues the run in {out}, --force replaces it; "
                        "pass one")
    if resume:
        why = resume_refusal(out, cfg)
        if why:
            raise UserError(why)
        record = json.loads((out / "run.json").read_text())
        here = machine.made_on(engine.pick_device(cfg.device))
        note = machine.other_machines(machine.run_machines(record), here, f"--resume: {out} trained")
        if note:
            log.warning("%s", note)
        for stale in remove_stale_temps(out):
            log.info("resume: removed %s, left by the killed run", stale.name)
        return
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file; name a folder for the run")
    if out.exists() and any(out.iterdir()):
        if not force:
            done = (out / "metrics.json").exists()
            hint = "pass --force to replace it" if done else "pass --resume to continue it, or --force to replace it"
            raise UserError(f"--out {out} already holds a {'finished' if done else 'partial'} run: {hint}")
        shutil.rmtree(out)


def note_resumed(out: Path, cfg: DistillConfig) -> None:
    """Add this machine to run.json's ``resumed_on`` (each machine that trained the run), once the resumed run has read
    its checkpoint and teacher outputs: a resume refused for an unreadable file trained nothing here."""
    record = json.loads((out / "run.json").read_text())
    resumed = record["resumed_on"] if "resumed_on" in record else []
    write_json(out / "run.json", {**record, "resumed_on": [*resumed, machine.made_on(engine.pick_device(cfg.device))]})


def training_diff(record: dict, cfg: DistillConfig) -> list[str]:
    """The training settings (:meth:`DistillConfig.training_key`) in which the run that wrote run.json ``record``
    differs from ``cfg``. Its data counts by its files where the record holds their fingerprint (a copy moved between
    machines is the same data; whether the files changed is for the caller to check), else by its path. Raises
    UserError for a config key this version does not know."""
    old, new = DistillConfig.from_json(record["config"]).training_key(), cfg.training_key()
    if record.get("data_fingerprint") is not None:
        old.pop("data"), new.pop("data")
    old, new = json.loads(json.dumps(old)), json.loads(json.dumps(new))  # tuples and lists alike
    return sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))


def resume_refusal(out: Path, cfg: DistillConfig) -> str | None:
    """Why ``--resume`` cannot continue the run in ``out`` with ``cfg`` (another config or recipe, or no run); None
    when it can."""
    run_json = out / "run.json"
    if not run_json.exists():
        return f"--resume: {out} holds no run to resume (no run.json)"
    record = json.loads(run_json.read_text())
    try:
        diff = training_diff(record, cfg)
    except UserError as exc:  # a config key this version does not know
        return str(exc)
    if diff:
        return (f"--resume: {out} was made with a different config ({', '.join(diff)} differ); "
                "rerun with the same flags, or use a new --out")
    started_on, recorded = record["config"]["data"], record.get("data_fingerprint")
    why = recipe_change(record, cfg)
    if why:
        return f"--resume: {out} was {why} (the method's default recipe changed): rerun with --force, or use a new --out"
    ds = datasets.load(cfg.data)
    if datasets.changed_since(ds, recorded):  # else its splits move
        if datasets.canonical_spec(cfg.data) != datasets.canonical_spec(started_on):
            return (f"--resume: --data {cfg.data} is not the data {out} was started on ({started_on}): its files "
                    "differ from run.json's data_fingerprint; name that data, or use a new --out")
        return (f"--resume: {out} was started on {cfg.data}, which changed since (its files differ from run.json's "
                "data_fingerprint): restore that data, rerun with --force, or use a new --out")
    why = network_change(record, cfg, ds)
    if why:
        return f"--resume: {out} {why}: rerun with --force, or use a new --out"
    cached = out / "teacher_outputs.json"  # the run goes on with these outputs of the teacher it started with
    if cached.exists() and teacher_replaced(json.loads(cached.read_text()).get("sha256"), cfg.teacher):
        what = "its file" if Path(cfg.teacher).suffix in TEACHER_FILES else "its factory's module or weights"
        return (f"--resume: --teacher {cfg.teacher} changed since {out} started (the sha256 of {what} differs from "
                "teacher_outputs.json's): rerun with --force to distill from the new teacher, or use a new --out")
    return None


def recipe_change(record: dict, cfg: DistillConfig) -> str | None:
    """How the recipe a run recorded (run.json or metrics.json) differs from the one ``cfg`` resolves to; None when
    they match. A method's recipe is resolved from code (``--method cmcd`` names today's default), so a config match
    alone misses a default changed between versions."""
    want = recipe_str(cfg.terms)
    if "recipe" in record and record["recipe"] == want:
        return None
    made = f"trained with {record['recipe']!r}" if "recipe" in record else "made by an older version (no recipe recorded)"
    return f"{made}; these flags give {want!r}"


def network_change(record: dict, cfg: DistillConfig, ds: datasets.Dataset) -> str | None:
    """How the networks the run that wrote run.json ``record`` trained differ from those ``cfg`` builds now on ``ds``:
    the student, then the teacher ``--teacher train`` trains; None when they match. Both specs are built by code (the
    default network of a view), so a config match alone misses a network changed between versions (cnn1d's
    short-input stem, session 35). A spec of a version before run.json kept it is read as :meth:`NetSpec.from_json`
    reads a spec of its time (this version's spec without ``stem_stride``); a finished run's teacher, from the
    ``teacher`` record it kept."""
    why = spec_change(record["student_spec"] if "student_spec" in record else None, cfg.student_spec(ds))
    if why:
        return f"trained another student network ({why}; made by an older version)"
    if not cfg.trains_teacher:
        return None
    kept = record["teacher"] if "teacher" in record else None  # a finished run's: the teacher it was given
    made = kept["spec"] if kept is not None and "spec" in kept else \
        record["teacher_spec"] if "teacher_spec" in record else None
    why = spec_change(made, teacher_spec(ds, cfg.source))
    return f"trained another teacher network ({why}; made by an older version)" if why else None


def spec_change(made: dict | None, spec: students.NetSpec) -> str | None:
    """The keys in which the spec a run recorded (``made``; None: an older version kept none) differs from ``spec``."""
    if made is None:
        made = {k: v for k, v in spec.to_json().items() if k != "stem_stride"}
    old = students.NetSpec.from_json(made).to_json()
    diff = [f"{k}: {old[k] if k in old else 'absent'} vs now {v}" for k, v in spec.to_json().items()
            if k not in old or old[k] != v]
    return ", ".join(diff) or None


def run_json(cfg: DistillConfig, ds: datasets.Dataset, splits: Splits, teacher: TeacherOutputs | None,
             status: str) -> dict:
    """run.json's record of a run: its config and recipe, the versions and machine, the data and splits, the teacher."""
    return {"config": cfg.to_json(), "recipe": recipe_str(cfg.terms), "student_spec": cfg.student_spec(ds).to_json(),
            "teacher_spec": teacher_spec(ds, cfg.source).to_json() if cfg.trains_teacher else None,
            "status": status, "versions": machine.versions(),
            "made_on": machine.made_on(engine.pick_device(cfg.device)), "data_fingerprint": ds.fingerprint(),
            "seed": cfg.seed, "splits": {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test),
                                         "labeled": len(splits.labeled)},
            "teacher": None if teacher is None else teacher.info}


def finished_record(out: Path, record: dict, ranking: dict | None) -> dict:
    """The run.json a finished run writes: ``record``, keeping what a resumed run started with (the machine, the
    resumes, and ``--source auto``'s ranking where this process has none)."""
    if (out / "run.json").exists():
        started = json.loads((out / "run.json").read_text())
        record = {**record, **{k: started[k] for k in ("made_on", "resumed_on") if k in started}}
        if ranking is None and "source_ranking" in started:
            ranking = started["source_ranking"]
    return {**record, "source_ranking": ranking}
