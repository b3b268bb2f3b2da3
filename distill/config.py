"""The distill stage's one config: frozen, validated on creation, saved as run.json next to every run."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Protocol

from cmcd_edge.datasets import Dataset, canonical_spec
from cmcd_edge.distill.engine import TeacherTraining
from cmcd_edge.distill.losses import METHODS, PROJECTORS, LossParams, methods_without, parse_recipe
from cmcd_edge.distill.rows import PRELOAD
from cmcd_edge.distill.students import ARCH_FOR_KIND, STEM_STRIDES, STUDENTS, NetSpec, default_spec
from cmcd_edge.errors import UserError
from cmcd_edge.registry import check_choice, check_keys, check_types

DEVICES = ("auto", "cpu", "cuda")
FINETUNE = ("head", "full", "none")
MAX_SEED = 2**32 - 1  # numpy's legacy seed range; torch's generators are seeded with products of it


def check_seed(seed: int, flag: str = "--seed") -> None:
    if not 0 <= seed <= MAX_SEED:
        raise UserError(f"{flag} {seed}: must be in [0, {MAX_SEED}]")


class TeacherLike(Protocol):
    """What the config's checks read of a teacher's outputs (teachers.TeacherOutputs, a layer beside this one)."""

    logits: object

    def without_logits(self) -> str: ...


@dataclass(frozen=True)
class DistillConfig:
    data: str
    source: str
    target: str
    method: str = "cmcd"
    recipe: str | None = None  # overrides the method's recipe, e.g. "1.0*cmd+0.5*cmc+1.0*ce"
    labeled_fraction: float = 0.1
    teacher: str = "train"  # "train" | PATH.pt | PATH.pt2 | PATH.onnx | pkg.module:factory
    seed: int = 0
    device: str = "auto"
    student: str = "auto"  # a registered architecture, or auto by the target view's kind
    embed_dim: int = 128
    width: int | None = None
    depth: int | None = None
    stem_stride: int | None = None  # a conv student's stem: 1 or 2 (None: 2 from 32 steps or pixels on, else 1)
    epochs: int = 60
    finetune: str = "head"
    finetune_epochs: int = 30
    teacher_epochs: int = TeacherTraining.epochs
    batch_size: int = 128
    labeled_batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    patience: int = 25
    select_window: int = 5  # model selection: val accuracy averaged over this many epochs (odd; 1 = the epoch alone)
    teacher_batch_size: int = TeacherTraining.batch_size
    teacher_lr: float = TeacherTraining.lr
    teacher_weight_decay: float = TeacherTraining.weight_decay
    teacher_patience: int = TeacherTraining.patience
    teacher_select_window: int = TeacherTraining.select_window  # 1 keeps every teacher made before the option
    max_batch_bytes: int | None = None  # refuse steps whose activations would pass this (None: half the free memory)
    preload: str = "auto"  # a view converted up front (always), read from its memory map per batch (never), or by size
    teacher_cache: str | None = None  # a folder keeping teachers' outputs across runs (teacher_cache.py)
    loss: LossParams = LossParams()

    def __post_init__(self) -> None:
        if isinstance(self.loss, dict):
            object.__setattr__(self, "loss", _loss_params(self.loss))
        check_choice("--method", self.method, METHODS)
        check_choice("loss.proj", self.loss.proj, PROJECTORS)
        if self.student != "auto":
            check_choice("--student", self.student, ["auto", *STUDENTS])
        if self.recipe:
            parse_recipe(self.recipe)
        if not 0.0 < self.labeled_fraction <= 1.0:
            raise UserError(f"--labeled-fraction {self.labeled_fraction} is outside (0, 1]")
        if self.device not in DEVICES:
            raise UserError(f"--device {self.device!r}; valid: {', '.join(DEVICES)}")
        if self.max_batch_bytes is not None and self.max_batch_bytes < 1:
            raise UserError(f"max_batch_bytes must be >= 1 (or null: half the free memory), got {self.max_batch_bytes}")
        if self.preload not in PRELOAD:
            raise UserError(f"preload {self.preload!r}; valid: {', '.join(PRELOAD)}")
        if self.finetune not in FINETUNE:
            raise UserError(f"--finetune {self.finetune!r}; valid: {', '.join(FINETUNE)}")
        for name in ("epochs", "teacher_epochs", "batch_size", "labeled_batch_size", "teacher_batch_size", "embed_dim",
                     "patience", "teacher_patience"):
            if getattr(self, name) < 1:  # named as the flag where there is one, else as the config key
                shown = f"--{name.replace('_', '-')}" if name in ("epochs", "batch_size") else name
                raise UserError(f"{shown} must be >= 1, got {getattr(self, name)}")
        for name in ("select_window", "teacher_select_window"):
            if getattr(self, name) < 1 or getattr(self, name) % 2 == 0:
                raise UserError(f"{name} must be an odd number >= 1 (a centred window of epochs), "
                                f"got {getattr(self, name)}")
        if self.stem_stride is not None and self.stem_stride not in STEM_STRIDES:  # as NetSpec, before data loads
            raise UserError(f"stem_stride must be 1 or 2 (or null: by the target's length), got {self.stem_stride}")
        if self.finetune_epochs < 0:
            raise UserError(f"finetune_epochs must be >= 0, got {self.finetune_epochs}")
        for name in ("lr", "teacher_lr"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise UserError(f"{name} must be a finite number > 0, got {getattr(self, name)}")
        for name in ("weight_decay", "teacher_weight_decay"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise UserError(f"{name} must be a finite number >= 0, got {getattr(self, name)}")
        check_seed(self.seed)
        if self.source == self.target:
            raise UserError(f"--source and --target are the same view ({self.source!r}); distill across two views")

    @property
    def terms(self) -> list[tuple[float, str]]:
        return parse_recipe(self.recipe) if self.recipe else METHODS[self.method]

    @property
    def teacher_training(self) -> TeacherTraining:
        return TeacherTraining(self.teacher_epochs, self.teacher_batch_size, self.teacher_lr, self.teacher_weight_decay,
                               self.teacher_patience, self.teacher_select_window)

    @property
    def needs_teacher_logits(self) -> bool:
        """Whether the recipe has a kd term, which matches the teacher's logits (an embedding-only teacher cannot)."""
        return any(n == "kd" for _, n in self.terms)

    @property
    def needs_teacher(self) -> bool:
        """Whether any term of the recipe reads the teacher: `supervised` (ce alone) learns from the labeled target
        rows only, so it needs none trained or run."""
        return any(n != "ce" for _, n in self.terms)

    @property
    def trains_teacher(self) -> bool:
        """Whether a run of this config trains the built-in teacher (``--teacher train`` under a recipe that reads one)."""
        return self.teacher == "train" and self.needs_teacher

    @property
    def recipe_flag(self) -> str:
        """The flag that set the recipe, as messages name it: ``--recipe TEXT``, else ``--method NAME``."""
        return f"--recipe {self.recipe}" if self.recipe else f"--method {self.method}"

    def check_teacher_logits(self, teacher: TeacherLike) -> None:
        """A teacher without logits (or with logits over other classes) under a recipe with a kd term: one line naming
        the methods that work without them."""
        if teacher.logits is None and self.needs_teacher_logits:
            raise UserError(f"{self.recipe_flag}: needs teacher logits (its kd term); --teacher {self.teacher} gives "
                            f"{teacher.without_logits()}: use a method without kd ({methods_without('kd')}) or a "
                            "--recipe without it")

    def check_against(self, ds: Dataset) -> None:
        """Checks that need the data: the views exist, the source view has labels to train a teacher."""
        for flag, view in (("--source", self.source), ("--target", self.target)):
            if view not in ds.views:
                raise UserError(f"{flag} {view!r}: no such view in {ds.spec}; valid views: {', '.join(ds.views)}")
        if (ds.labels >= 0).sum() == 0:
            raise UserError(f"{ds.spec}: has no labels; a teacher cannot be trained and nothing can be evaluated")

    def student_spec(self, ds: Dataset) -> NetSpec:
        """The student network this config builds for the target view of ``ds`` (checked by :meth:`check_against`)."""
        info = ds.views[self.target]
        arch = ARCH_FOR_KIND[info.kind] if self.student == "auto" else self.student
        return default_spec(info.kind, info.sample_shape, ds.n_classes, arch=arch, embed_dim=self.embed_dim,
                            width=self.width, depth=self.depth, stem_stride=self.stem_stride)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict, where: str = "config") -> DistillConfig:
        """``where`` names the source in errors, e.g. "--config cfg.toml"."""
        check_keys(d, [f.name for f in fields(cls)], where)
        check_types(d, cls, where)
        if "loss" in d and not isinstance(d["loss"], (dict, LossParams)):
            raise UserError(f"{where}: loss must be a table of loss settings, got {d['loss']!r}")
        if "loss" in d and isinstance(d["loss"], dict):
            check_keys(d["loss"], [f.name for f in fields(LossParams)], f"{where}: loss")
            check_types(d["loss"], LossParams, f"{where}: loss")
        return cls(**d)

    def training_key(self) -> dict:
        """What must match for --resume to continue a run: all but where and how it runs (device, preload, the
        memory guard max_batch_bytes, and teacher_cache, whose entries are keyed), which do not change what it
        trains."""
        d = self.to_json()
        for key in ("device", "preload", "max_batch_bytes", "teacher_cache"):
            d.pop(key)
        d["data"] = canonical_spec(d["data"])  # 'my-data' and /abs/my-data are one dataset
        return d


def _loss_params(d: dict) -> LossParams:
    check_keys(d, [f.name for f in fields(LossParams)], "loss config")
    return LossParams(**d)

