"""``--teacher-cache DIR``: a teacher's outputs over every row, kept across runs and commands.

A run computes its frozen teacher's embeddings (and logits) of every row once (:mod:`~cmcd_edge.distill.teachers`);
this cache keeps them beyond the run, as torchdistill caches teacher outputs, so distilling the same teacher into
another target view or with another method does not pay for the teacher again: the pass of a user's pretrained
model (a .pt/.pt2/.onnx file or a factory) over every source row, for any seed, or the training of ``--teacher train``,
whose teacher is one seed's.

An entry is named by the sha256 of its key, everything that makes the teacher: the data's files (their fingerprint),
the source view, the device type, the torch and cmcd-edge versions and the code of the teacher's modules, and either
the teacher file's (or factory module's) sha256 or, for a trained teacher, its seed, its training settings (epochs,
batch size, lr, weight decay, patience, selection window) and world size. A loaded teacher's outputs do not depend
on the seed, so one entry serves every seed and is scored on each run's own test split. Entries are written whole (a
temp folder renamed into place, as onnxruntime writes its calibration cache) and checked against their key.json when
read; a failed write warns and the run goes on, since the cache only saves time."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cmcd_edge import __version__, datasets, splitting
from cmcd_edge.datasets import Dataset
from cmcd_edge.distill import ddp, engine, machine, onnx_teacher, rows, students, teachers, user_teacher
from cmcd_edge.distill.config import DistillConfig
from cmcd_edge.distill.teachers import TeacherOutputs
from cmcd_edge.distill.user_teacher import TEACHER_FILES, teacher_sha256
from cmcd_edge.errors import CmcdError, OutputBusy, UserError
from cmcd_edge.fsutil import atomic_dir, write_bytes, write_json
from cmcd_edge.splitting import Splits

log = logging.getLogger(__name__)
FORMAT = 1
# a trained teacher's network and training curve, which a run folder also holds
WEIGHTS = ("teacher.safetensors", "teacher.json", "teacher_history.csv")


@functools.cache
def _code_sha256() -> str:
    """sha256 of the modules that build, train and run a teacher, and split and normalise its rows: an edit between
    releases (the version stays) is another teacher."""
    h = hashlib.sha256()
    for mod in (teachers, user_teacher, onnx_teacher, students, engine, rows, ddp, datasets, splitting):
        h.update(Path(mod.__file__).read_bytes())
    return h.hexdigest()[:16]


def cache_root(teacher_cache: str) -> Path:
    """The folder ``--teacher-cache`` names (~ expanded); a file there is refused."""
    root = Path(teacher_cache).expanduser()
    if root.exists() and not root.is_dir():
        raise UserError(f"--teacher-cache {teacher_cache}: is a file; name a folder for cached teachers")
    return root


@dataclass(frozen=True)
class TeacherCache:
    """One teacher's entry in a ``--teacher-cache`` folder."""

    root: Path
    key: dict
    about: dict = field(default_factory=dict, compare=False)  # for a reader of key.json, not keyed

    @classmethod
    def for_run(cls, cfg: DistillConfig, ds: Dataset, device: torch.device, world: int = 1) -> TeacherCache | None:
        """The entry ``cfg``'s teacher has in ``cfg.teacher_cache``; None without one, or for a teacher file or
        factory that is not there (loading it says so)."""
        if cfg.teacher_cache is None:
            return None
        root = cache_root(cfg.teacher_cache)
        key = {"format": FORMAT, "data": ds.fingerprint(), "source": cfg.source, "device": device.type,
               "torch": torch.__version__, "cmcd_edge": __version__, "code": _code_sha256()}
        if cfg.teacher == "train":
            key.update(teacher="train", seed=cfg.seed, teacher_epochs=cfg.teacher_epochs,
                       teacher_batch_size=cfg.teacher_batch_size, teacher_lr=cfg.teacher_lr,
                       teacher_weight_decay=cfg.teacher_weight_decay, teacher_patience=cfg.teacher_patience,
                       teacher_select_window=cfg.teacher_select_window, world=world)
        else:
            sha = teacher_sha256(cfg.teacher)
            if sha is None:
                return None
            # a file is its bytes wherever it lies; one module may hold several factories
            key.update(teacher="file" if Path(cfg.teacher).suffix in TEACHER_FILES else cfg.teacher,
                       teacher_sha256=sha)
        return cls(root, key, {"data": cfg.data, "teacher": cfg.teacher})

    @property
    def entry(self) -> Path:
        return self.root / hashlib.sha256(json.dumps(self.key, sort_keys=True).encode()).hexdigest()[:20]

    @property
    def shown(self) -> str:
        return f"--teacher-cache {self.root}"

    def get(self, ds: Dataset, splits: Splits) -> TeacherOutputs | None:
        """The cached outputs (a loaded teacher's scored on ``splits``' test rows), or None when there are none."""
        entry = self.entry
        if not (entry / "key.json").is_file():
            return None
        try:
            stored = json.loads((entry / "key.json").read_text())["key"]
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{self.shown}: {entry.name}/key.json is unreadable ({type(exc).__name__}); delete "
                            f"{entry} to recompute that teacher") from exc
        if stored != self.key:
            raise UserError(f"{self.shown}: {entry.name} holds the outputs of another teacher than its name says "
                            f"(key.json differs); delete {entry} to recompute it")
        with contextlib.suppress(OSError):  # used now, before the read: `teacher-cache prune --max-size` removes the
            os.utime(entry / "key.json")  # least recently used first (a read-only cache keeps its made time)
        try:
            t = TeacherOutputs.load(entry)
        except UserError as exc:
            if self._removed_meanwhile():
                return None
            raise UserError(f"{self.shown}: {entry.name} is corrupt ({exc}); delete {entry} to recompute it") from exc
        if t is None:
            if self._removed_meanwhile():
                return None
            raise UserError(f"{self.shown}: {entry.name} lacks teacher_outputs.*; delete {entry} to recompute it")
        if t.emb.shape[0] != ds.n_rows:  # a fingerprint match makes this a damaged entry, not other data
            raise UserError(f"{self.shown}: {entry.name} holds {t.emb.shape[0]} rows, the data {ds.n_rows}; "
                            f"delete {entry} to recompute it")
        log.info("teacher: outputs of %s from %s (no teacher %s)", self.key["source"], entry,
                 "training" if self.key["teacher"] == "train" else "pass over the rows")
        return t if self.key["teacher"] == "train" else t.scored_on(ds, splits)

    def _removed_meanwhile(self) -> bool:
        """Whether the entry was removed while this run read it (`teacher-cache prune` in another process removes
        key.json first): then it is a miss, not a damaged entry."""
        if (self.entry / "key.json").is_file():
            return False
        log.info("teacher: %s was removed while this run read it (teacher-cache prune?); computing the teacher",
                 self.entry)
        return True

    def lookup(self, ds: Dataset, splits: Splits, dist: ddp.Dist, device: torch.device) -> TeacherOutputs | None:
        """:meth:`get`, as rank 0 finds it on every rank under torchrun: an entry another process stores while the
        ranks look would otherwise have some ranks train the teacher and others not."""
        hit = self.get(ds, splits) if dist.main else None
        if dist.world > 1 and ddp.rank0_figures(dist, device, float(hit is not None))[0] and hit is None:
            hit = self.get(ds, splits)
        return hit

    def put(self, teacher: TeacherOutputs, weights_from: Path | None = None) -> None:
        """Keep ``teacher``'s outputs (and a trained teacher's network from ``weights_from``, a run or teacher
        folder). A write that fails (a full disk, another process storing the same entry) warns; the run goes on."""
        entry = self.entry
        if (entry / "key.json").is_file():  # stored meanwhile by another run of the same teacher
            return
        # recorded, not keyed: CPU runs repeat bit for bit on one CPU type only
        made_on = {**self.about, "host": platform.node(), **machine.made_on(torch.device(self.key["device"])),
                   "time": utc(time.time())}
        try:
            with atomic_dir(entry) as tmp:
                teacher.save(tmp)
                for name in WEIGHTS if weights_from is not None else ():
                    if (weights_from / name).is_file():
                        shutil.copyfile(weights_from / name, tmp / name)
                write_json(tmp / "key.json", {"key": self.key, "made_on": made_on})  # last: marks a whole entry
        except OutputBusy:  # another run of the same teacher is storing it: it will be there for the next run
            log.info("%s: another process is keeping this teacher (%s)", self.shown, entry)
            return
        except (CmcdError, OSError) as exc:
            log.warning("%s: could not keep this teacher (%s); the run goes on without it", self.shown, exc)
            return
        log.info("teacher: outputs kept in %s", entry)

    def copy_weights(self, out: Path) -> None:
        """A trained teacher's network into run or teacher folder ``out``, as if it had trained there."""
        for name in WEIGHTS:
            if (self.entry / name).is_file():
                write_bytes(out / name, (self.entry / name).read_bytes())


def utc(t: float) -> str:
    """``2026-12-03T18:11:05Z``: when an entry was made (key.json) and last used (`teacher-cache list`)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


@dataclass(frozen=True)
class Entry:
    """A folder in a ``--teacher-cache``, as ``cmcd-edge teacher-cache list`` shows it."""

    path: Path
    key: dict | None  # None: no readable key.json (damaged, or litter of a write killed before its rename)
    made_on: dict
    size: int
    last_used: float  # when a run was last served it, or it was made (key.json's mtime; the folder's without one)

    @property
    def usable(self) -> bool:
        """Whether this install can be served it: the format, versions and teacher code it was made with are this
        install's (an entry of other code is never hit again; its data, view, device or teacher may be anything)."""
        here = {"format": FORMAT, "torch": torch.__version__, "cmcd_edge": __version__, "code": _code_sha256()}
        return self.key is not None and all(k in self.key and self.key[k] == v for k, v in here.items())

    def remove(self) -> None:
        """Delete the entry: key.json first, so a run reading it meanwhile sees a miss, not a damaged entry."""
        with contextlib.suppress(FileNotFoundError):
            (self.path / "key.json").unlink()
        shutil.rmtree(self.path)

    @property
    def name(self) -> str:
        """The entry it is or belongs to (a temp folder ``.<entry>.<random>.tmp`` belongs to ``<entry>``)."""
        return self.path.name[1:].split(".")[0] if self.path.name.startswith(".") else self.path.name


def entries(root: Path) -> list[Entry]:
    """Every entry of cache folder ``root``, oldest first; temp folders of a write in progress or killed included
    (named ``.<entry>.*.tmp``), as entries without a key."""
    found = []
    for path in sorted(p for p in root.iterdir() if p.is_dir()):
        key, made_on = None, {}
        try:
            doc = json.loads((path / "key.json").read_text())
            key, made_on = doc["key"], doc["made_on"]
        except (OSError, ValueError, KeyError, TypeError):
            pass
        if not isinstance(key, dict) or not isinstance(made_on, dict):
            key, made_on = None, {}
        try:
            size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
            used = (path / "key.json") if (path / "key.json").is_file() else path
            found.append(Entry(path, key, made_on, size, used.stat().st_mtime))
        except FileNotFoundError:  # removed while listed (a prune or a write's rename in another process)
            continue
    return sorted(found, key=lambda e: str(e.made_on["time"]) if "time" in e.made_on else "")
