"""The training loop shared by teachers, distillation and fine-tuning: AdamW + cosine schedule, seeded batches,
early stopping on val, a checkpoint after every epoch (resume continues bit-for-bit), AMP on CUDA, DDP under torchrun.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cmcd_edge.distill import progress, students
from cmcd_edge.distill.ddp import Dist, agree_before_eval, rank0_figures
from cmcd_edge.distill.rows import available_bytes
from cmcd_edge.errors import EnvironmentFailure, UserError
from cmcd_edge.fsutil import write_bytes
from cmcd_edge.launch import launch

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- device


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise EnvironmentFailure("--device cuda: no CUDA GPU is visible to torch (use --device cpu or auto)")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        return torch.device("cuda", launch().local_rank)
    return torch.device("cpu")


# The elementwise ops ATen hands to MKL's vector math library (VML) on x86 builds with MKL (aten/src/ATen/cpu/vml.h),
# and a few neighbours; calling one that is not routed there costs a microsecond and does no harm.
_VML_OPS = ("sqrt", "rsqrt", "exp", "expm1", "log", "log1p", "log2", "log10", "sin", "cos", "tan", "asin", "acos",
            "atan", "tanh", "sigmoid", "erf", "erfc", "erfinv", "lgamma", "trunc", "abs")


@functools.cache
def settle_cpu_math() -> None:
    """Call every VML-backed op once on a tiny tensor, on this thread, before any training.

    On an Intel Xeon host (Sapphire Rapids, 2 cores, torch 2.13.0's MKL) the first multi-threaded VML call of a
    process now and then runs the worker thread's half with a low-accuracy kernel: the first ``torch.sqrt`` of 8,192
    floats came back with ~4,100 of them thousands of ulps off in 14 of 40 fresh processes (later calls are within
    1 ulp; on the AMD hosts same-seed runs always repeated byte for byte). AdamW's first ``sqrt`` then nudges the
    whole run, so two runs with one seed, or a run and its ``--resume``, ended with different weights. When any VML
    op (even ``abs``) has run once first, no op showed it, so this is MKL's one-time set-up racing with the second
    thread; a call below ATen's parallel grain runs on this thread alone. With it: 0 of 40 processes, and 12 of 12
    toy distill runs wrote one teacher file (without it, 2 distinct). ``benchmarks/determinism.py`` measures both."""
    tiny = torch.full((8,), 0.5)
    for dtype in (torch.float32, torch.float64):
        x = tiny.to(dtype)
        for name in _VML_OPS:
            getattr(torch, name)(x)


def seed_everything(seed: int) -> None:
    settle_cpu_math()
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    torch.use_deterministic_algorithms(True, warn_only=True)


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype: bf16 on CUDA, fp16 where bf16 is missing (Volta, Turing, Jetson Xavier), None on CPU so CPU
    runs stay deterministic."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device):
    dtype = amp_dtype(device)
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def grad_scaler(device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling where autocast runs in fp16, whose small gradients underflow to zero without it (bf16 has fp32's
    exponent range and needs none); a pass-through elsewhere."""
    return torch.amp.GradScaler(device.type, enabled=amp_dtype(device) == torch.float16)


# ----------------------------------------------------------------------------------------------- evaluation


def row_batches(n: int, batch: int) -> list[slice]:
    """Slices of ``batch`` rows over ``n`` rows; a last one under :data:`students.MIN_EVAL_ROWS` rows joins the one
    before, so no row is computed in a batch small enough to take other kernels (its bits would depend on ``batch``)."""
    starts = list(range(0, n, batch))
    if len(starts) > 1 and n - starts[-1] < students.MIN_EVAL_ROWS:
        starts.pop()
    ends = [*starts[1:], n] if starts else []
    return [slice(a, b) for a, b in zip(starts, ends, strict=True)]


@torch.no_grad()
def predict_logits(net: nn.Module, x, rows: torch.Tensor | None = None, batch: int = 1024) -> torch.Tensor:
    """Logits of ``x[rows]`` (all of ``x`` without ``rows``), ``batch`` rows at a time (:func:`row_batches`): ``x``
    is a tensor or a :class:`~cmcd_edge.distill.rows.ViewRows`, which then reads one batch at a time, never the whole
    split."""
    was = net.training
    net.eval()
    if rows is None:
        out = torch.cat([net(x[s]).float() for s in row_batches(x.shape[0], batch)])
    else:
        out = torch.cat([net(x[rows[s]]).float() for s in row_batches(len(rows), batch)])
    net.train(was)
    return out


def accuracy_and_loss(logits: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    return float((logits.argmax(1) == y).float().mean()), float(F.cross_entropy(logits, y))


# ----------------------------------------------------------------------------------------------- checkpoints


class Checkpoint:
    """``checkpoint.pt`` in the run folder: written atomically every epoch, read with weights_only=True."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def load(self) -> dict | None:
        if self.path is None or not self.path.exists():
            return None
        try:
            return torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001  (any unreadable checkpoint gets the same advice)
            raise UserError(f"{self.path}: unreadable checkpoint ({exc}); delete it or rerun with --force") from exc

    def save(self, state: dict) -> None:
        if self.path is None:
            return
        buf = io.BytesIO()
        torch.save(state, buf)
        write_bytes(self.path, buf.getvalue())


# ----------------------------------------------------------------------------------------------- one phase


@dataclass
class PhaseResult:
    best_state: dict
    history: list[dict] = field(default_factory=list)
    steps: int = 0  # optimizer steps this process ran (a resumed phase: since the resume)
    train_s: float = 0.0  # their wall time: forward, backward and optimizer step, no evaluation or checkpoint


@dataclass(frozen=True)
class TeacherTraining:
    """How ``--teacher train`` trains the source view's network: AdamW with a cosine schedule for up to ``epochs``
    epochs of ``batch_size`` rows, early stop after ``patience`` epochs without a better val score, model selection
    over ``select_window`` epochs (:class:`BestOnVal`). DistillConfig's ``teacher_*`` keys default to these;
    select-teacher's candidates take the defaults but for ``epochs``."""

    epochs: int = 80
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    patience: int = 20
    select_window: int = 1  # 1 (the epoch alone) keeps every teacher made before the option


@dataclass(frozen=True)
class PhaseSpec:
    name: str
    epochs: int
    lr: float
    weight_decay: float
    patience: int
    steps_per_epoch: int
    seed: int
    select_window: int = 1  # epochs of val accuracy averaged for model selection (odd; 1: the epoch alone)


class BestOnVal:
    """Model selection on val: keeps the state whose val accuracy, averaged over a centred window of ``window`` epochs
    (ends padded with the first/last epoch's value), is best; ties go to the lower val loss of the epoch itself, then
    to the earlier epoch. ``window`` 1 is plain best val accuracy. A wider window stops one lucky epoch on a small val
    split from winning alone (benchmarks/selection_study.py: window 5 picks epochs that score 0.26 point higher on val
    rows it did not see). An epoch's score is known ``window // 2`` epochs after it, so the unscored states are held
    until then; ``bad`` counts scored epochs since the last new best (patience). At val accuracy 1.0 the loss keeps
    falling, so a teacher there trains on until ``epochs`` or patience: kept, since stopping at its first 1.0 cut
    wall time 34% but cost the students 1.5 points over 3 seeds (benchmarks/teacher_patience.py)."""

    def __init__(self, window: int) -> None:
        self.half = window // 2
        self.accs: list[float] = []
        self.losses: list[float] = []
        self.pending: list[dict] = []  # states of the epochs not scored yet (at most half + 1)
        self.bad, self.best_epoch = 0, 0
        self.best_key: tuple[float, float] = (-float("inf"), -float("inf"))
        self.best_state: dict | None = None

    @property
    def scored(self) -> int:
        """Epochs scored so far: every epoch added, less those still pending."""
        return len(self.accs) - len(self.pending)

    def add(self, acc: float, loss: float, state: dict) -> None:
        self.accs.append(acc)
        self.losses.append(loss)
        self.pending.append(state)
        while len(self.pending) > self.half:  # the oldest pending epoch's window is complete
            self._score()

    def finish(self) -> None:
        while self.pending:
            self._score()

    def _score(self) -> None:
        i, last = self.scored, len(self.accs) - 1
        window = [self.accs[min(max(j, 0), last)] for j in range(i - self.half, i + self.half + 1)]
        key = (sum(window) / len(window), -self.losses[i])
        state = self.pending.pop(0)
        if key > self.best_key:
            self.best_key, self.best_state, self.best_epoch, self.bad = key, state, i, 0
        else:
            self.bad += 1

    def state_dict(self) -> dict:
        return {"accs": self.accs, "losses": self.losses, "pending": self.pending, "bad": self.bad,
                "best_epoch": self.best_epoch, "best_key": list(self.best_key), "best_state": self.best_state}

    def load_state_dict(self, d: dict) -> None:
        self.accs, self.losses, self.pending = list(d["accs"]), list(d["losses"]), list(d["pending"])
        self.bad, self.best_epoch = d["bad"], d["best_epoch"]
        self.best_key, self.best_state = tuple(d["best_key"]), d["best_state"]


def run_phase(spec: PhaseSpec, model: nn.Module, step: Callable[[torch.Generator], tuple[torch.Tensor, dict]],
              evaluate: Callable[[], tuple[float, float]], ckpt: Checkpoint, dist: Dist,
              params: list[nn.Parameter] | None = None, resume: dict | None = None,
              start_state: dict | None = None, prior: list[dict] | None = None,
              on_epoch: Callable[[list[dict]], None] | None = None) -> PhaseResult:
    """Train ``model`` for up to ``spec.epochs`` epochs of ``steps_per_epoch`` calls to ``step``; keep the state that
    ``BestOnVal`` selects; stop after ``patience`` scored epochs without a new best. ``start_state`` (a state dict)
    competes as epoch 0, so a phase never ends with a worse (windowed) val score than it began. ``prior`` (earlier
    phases' history rows) is kept in the checkpoint, so a run resumed in this phase still has them; ``on_epoch``
    receives the whole history (prior + this phase) after every epoch, on the main rank."""
    prior = list(prior or [])
    params = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, spec.epochs * spec.steps_per_epoch))
    scaler = grad_scaler(params[0].device)
    history: list[dict] = []
    select, start, offset = BestOnVal(spec.select_window), 0, 0
    device = params[0].device

    def scored() -> tuple[float, float]:
        agree_before_eval(model, dist)
        return rank0_figures(dist, device, *evaluate())

    if start_state is not None:
        select.add(*scored(), start_state)
        offset = 1
    if resume is not None and resume.get("phase") == spec.name:
        if "select" not in resume:
            raise UserError("--resume: the checkpoint was written by an older cmcd-edge (no model-selection state); "
                            "rerun with --force")
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["opt"])
        sched.load_state_dict(resume["sched"])
        if "scaler" in resume:  # absent from checkpoints written before loss scaling
            scaler.load_state_dict(resume["scaler"])
        select.load_state_dict(resume["select"])
        start = resume["epoch"]
        history = [r for r in resume["history"] if r["phase"] == spec.name]
        log.info("resuming %s at epoch %d", spec.name, start + 1)
        if dist.main and on_epoch is not None:  # the checkpoint's rows (a kill may have come before their write)
            on_epoch([*prior, *history])
    bar = progress.EpochProgress(spec.name, spec.epochs, start) if dist.main else None
    steps, train_s = 0, 0.0
    for epoch in range(start, spec.epochs):
        if select.bad >= spec.patience:
            break
        torch.manual_seed(spec.seed * 100003 + epoch)  # dropout etc.: same stream on resume
        gen = torch.Generator().manual_seed(spec.seed * 7919 + epoch)
        model.train()
        sums: dict[str, float] = {}
        t0 = time.perf_counter()
        for _ in range(spec.steps_per_epoch):
            loss, parts = step(gen)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            for k, v in {"loss": float(loss.detach()), **parts}.items():  # float(): waits for the GPU
                sums[k] = sums.get(k, 0.0) + v
        train_s += time.perf_counter() - t0
        steps += spec.steps_per_epoch
        acc, vloss = scored()
        row = {"phase": spec.name, "epoch": epoch + 1, **{k: round(v / spec.steps_per_epoch, 5) for k, v in sums.items()},
               "val_acc": round(acc, 5), "val_loss": round(vloss, 5), "lr": opt.param_groups[0]["lr"]}
        history.append(row)
        select.add(acc, vloss, {k: v.detach().clone() for k, v in model.state_dict().items()})
        if dist.main:
            ckpt.save({"phase": spec.name, "epoch": epoch + 1, "model": model.state_dict(), "opt": opt.state_dict(),
                       "sched": sched.state_dict(), "scaler": scaler.state_dict(), "select": select.state_dict(),
                       "history": [*prior, *history]})
            if on_epoch is not None:
                on_epoch([*prior, *history])
        if bar is not None:
            bar.update(epoch + 1, row["loss"], acc)
    if bar is not None:
        bar.close()
    select.finish()
    if select.best_state is None:  # no epoch ran (epochs 0)
        return PhaseResult({k: v.detach().clone() for k, v in model.state_dict().items()}, history, steps, train_s)
    window = f" averaged over a {spec.select_window}-epoch window" if spec.select_window > 1 else ""
    log.info("%s: epoch %d selected (val accuracy %.4f%s)", spec.name, select.best_epoch + 1 - offset,
             select.best_key[0], window)
    return PhaseResult(select.best_state, history, steps, train_s)


def check_batch_memory(spec: students.NetSpec, batch: int, limit: int | None, device: torch.device, what: str, advice: str) -> None:
    """Refuse a training step whose activations (measured per row on ``spec``, :func:`students.train_bytes`) would
    not fit ``limit`` bytes (None: half the memory available on ``device``): one line with advice, not an OOM."""
    est = students.train_bytes(spec, batch)
    cap = limit if limit is not None else available_bytes(device) // 2
    if est > cap:
        where = "max_batch_bytes" if limit is not None else f"half the memory available on {device.type}"
        raise UserError(f"{what}: about {est / 2**30:.1f} GiB of activations per step "
                        f"({students.train_bytes(spec, 1) / 2**20:.1f} MB a row), over the {cap / 2**30:.1f} GiB "
                        f"limit ({where}); {advice} (or set max_batch_bytes in --config)")
