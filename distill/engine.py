"""The training loop shared by teachers, distillation and fine-tuning: AdamW + cosine schedule, seeded batches,
early stopping on val, a checkpoint after every epoch (resume continues bit-for-bit), AMP on CUDA, DDP under torchrun.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cmcd_edge.errors import EnvironmentFailure, UserError
from cmcd_edge.fsutil import write_bytes

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- device, DDP


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: torch.device) -> Dist:
    """Under torchrun (WORLD_SIZE > 1): init the process group, gloo on CPU, nccl on CUDA."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as tdist

    if not tdist.is_initialized():
        tdist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(tdist.get_rank(), tdist.get_world_size())


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise EnvironmentFailure("--device cuda: no CUDA GPU is visible to torch (use --device cpu or auto)")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    torch.use_deterministic_algorithms(True, warn_only=True)


def autocast(device: torch.device):
    """bf16 autocast on CUDA (fp16 where bf16 is missing); nothing on CPU, so CPU runs stay deterministic."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


# ----------------------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def predict_logits(net: nn.Module, x: torch.Tensor, batch: int = 1024) -> torch.Tensor:
    was = net.training
    net.eval()
    out = torch.cat([net(x[i:i + batch]).float() for i in range(0, x.shape[0], batch)])
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
    best_val_acc: float
    history: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class PhaseSpec:
    name: str
    epochs: int
    lr: float
    weight_decay: float
    patience: int
    steps_per_epoch: int
    seed: int


def run_phase(spec: PhaseSpec, model: nn.Module, step: Callable[[torch.Generator], tuple[torch.Tensor, dict]],
              evaluate: Callable[[], tuple[float, float]], ckpt: Checkpoint, dist: Dist,
              params: list[nn.Parameter] | None = None, resume: dict | None = None,
              start_state: dict | None = None, prior: list[dict] | None = None,
              on_epoch: Callable[[list[dict]], None] | None = None) -> PhaseResult:
    """Train ``model`` for up to ``spec.epochs`` epochs of ``steps_per_epoch`` calls to ``step``; keep the state with
    the best (val accuracy, -val loss); stop after ``patience`` epochs without improvement. ``start_state`` (a state
    dict) competes as epoch 0, so a phase never ends worse on val than it began. ``prior`` (earlier phases' history
    rows) is kept in the checkpoint, so a run resumed in this phase still has them; ``on_epoch`` receives the whole
    history (prior + this phase) after every epoch, on the main rank."""
    prior = list(prior or [])
    params = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, spec.epochs * spec.steps_per_epoch))
    history: list[dict] = []
    best_state, best_key, bad, start = None, (-1.0, -float("inf")), 0, 0
    if start_state is not None:
        acc, loss = evaluate()
        best_state, best_key = start_state, (acc, -loss)
    if resume is not None and resume.get("phase") == spec.name:
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["opt"])
        sched.load_state_dict(resume["sched"])
        best_state, best_key = resume["best_model"], (resume["best_acc"], resume["best_negloss"])
        bad, start = resume["bad"], resume["epoch"]
        history = [r for r in resume["history"] if r["phase"] == spec.name]
        log.info("resuming %s at epoch %d", spec.name, start + 1)
    bar = _progress(spec, start, dist)
    for epoch in range(start, spec.epochs):
        if bad >= spec.patience:
            break
        torch.manual_seed(spec.seed * 100003 + epoch)  # dropout etc.: same stream on resume
        gen = torch.Generator().manual_seed(spec.seed * 7919 + epoch)
        model.train()
        sums: dict[str, float] = {}
        for _ in range(spec.steps_per_epoch):
            loss, parts = step(gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            for k, v in {"loss": float(loss.detach()), **parts}.items():
                sums[k] = sums.get(k, 0.0) + v
        acc, vloss = evaluate()
        row = {"phase": spec.name, "epoch": epoch + 1, **{k: round(v / spec.steps_per_epoch, 5) for k, v in sums.items()},
               "val_acc": round(acc, 5), "val_loss": round(vloss, 5), "lr": opt.param_groups[0]["lr"]}
        history.append(row)
        if (acc, -vloss) > best_key:
            best_key, bad = (acc, -vloss), 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            bad += 1
        if dist.main:
            ckpt.save({"phase": spec.name, "epoch": epoch + 1, "model": model.state_dict(), "opt": opt.state_dict(),
                       "sched": sched.state_dict(), "best_model": best_state, "best_acc": best_key[0],
                       "best_negloss": best_key[1], "bad": bad, "history": [*prior, *history]})
            if on_epoch is not None:
                on_epoch([*prior, *history])
        if bar is not None:
            bar.set_postfix(loss=f"{row['loss']:.3f}", val_acc=f"{acc:.3f}")
            bar.update(1)
    if bar is not None:
        bar.close()
    if best_state is None:
        best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return PhaseResult(best_state, best_key[0], history)


def _progress(spec: PhaseSpec, start: int, dist: Dist):
    if not dist.main:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=spec.epochs, initial=start, desc=spec.name, unit="ep", leave=False, disable=None)


def check_batch_memory(batch_size: int, sample_numel: int, width: int, limit: int) -> None:
    """Rough activation bytes of one batch: refuse sizes that would exhaust memory, with advice, instead of an OOM."""
    est = batch_size * max(sample_numel, 1) * max(width, 1) * 4 * 6
    if est > limit:
        raise UserError(f"--batch-size {batch_size}: about {est / 2**30:.1f} GiB of activations per step, over the "
                        f"{limit / 2**30:.1f} GiB limit; lower --batch-size (or raise max_batch_bytes in --config)")
