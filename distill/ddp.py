"""Training under torchrun: which rank this is, and the few collectives that keep the ranks in step (one process
group, gloo on CPU, nccl on CUDA). Outside torchrun every function here is a no-op or the identity.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from cmcd_edge.launch import launch


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: torch.device) -> Dist:
    """Under torchrun (WORLD_SIZE > 1): init the process group, gloo on CPU, nccl on CUDA."""
    if not launch().distributed:  # raises, naming the variable, on a half-set torchrun environment
        return Dist()
    import torch.distributed as tdist

    if not tdist.is_initialized():
        if device.type == "cuda":  # each rank bound to its own GPU before NCCL starts (else barriers guess GPU 0)
            torch.cuda.set_device(device)
            tdist.init_process_group("nccl", device_id=device)
        else:
            tdist.init_process_group("gloo")
    return Dist(tdist.get_rank(), tdist.get_world_size())


def barrier(dist: Dist) -> None:
    """Wait for every rank (a no-op outside torchrun)."""
    if dist.world > 1:
        import torch.distributed as tdist

        tdist.barrier()


def rank0_prepares(dist: Dist, prepare: Callable[[], None]) -> None:
    """Run ``prepare`` (the check and set-up of the run folder) on rank 0 while the other ranks wait for it.

    When it fails, rank 0 raises as usual (one line, its exit code) and every other rank ends quietly with the same
    code. They used to go on and die in the next collective, each adding "internal error: RuntimeError: ... Connection
    closed by peer" below rank 0's line."""
    if dist.world == 1:
        prepare()
        return
    import torch.distributed as tdist

    code: list[int | None] = [None]
    try:
        if dist.main:
            prepare()
    except BaseException as exc:
        code = [getattr(exc, "exit_code", 1)]
        raise
    finally:
        tdist.broadcast_object_list(code, 0)
    if code[0] is not None:
        raise SystemExit(code[0])


def agree_before_eval(model: nn.Module, dist: Dist) -> None:
    """Give every rank rank 0's buffers before an evaluation. DDP broadcasts them only at the start of a forward, so
    after an epoch each rank's BatchNorm statistics come from its own shard of the last step: the ranks then scored
    different models, picked different epochs and stopped early at different epochs (one rank left, the other's next
    step failed: "Connection closed by peer")."""
    if dist.world > 1:
        import torch.distributed as tdist

        for b in model.buffers():
            tdist.broadcast(b, 0)


def rank0_figures(dist: Dist, device: torch.device, *values: float) -> tuple[float, ...]:
    """Rank 0's figures on every rank, so every rank takes the same model-selection and early-stopping decisions even
    where a GPU's kernels are not bit-reproducible across ranks."""
    if dist.world == 1:
        return values
    import torch.distributed as tdist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    tdist.broadcast(t, 0)
    return tuple(t.tolist())


def all_ranks(x: torch.Tensor) -> torch.Tensor:
    """``x`` of every rank, concatenated in rank order (``x`` itself outside torchrun): a memory bank or queue takes a
    whole step's rows. Under DDP a rank sees only its share of the batch, and DDP's buffer broadcast (rank 0's, at
    every forward) dropped the updates the other ranks made."""
    import torch.distributed as tdist

    if not tdist.is_available() or not tdist.is_initialized() or tdist.get_world_size() == 1:
        return x
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.empty_like(n) for _ in range(tdist.get_world_size())]
    tdist.all_gather(sizes, n)
    rows = [int(r) for r in sizes]
    pad = x.new_zeros((max(rows), *x.shape[1:]))
    pad[: x.shape[0]] = x
    parts = [torch.empty_like(pad) for _ in rows]
    tdist.all_gather(parts, pad.contiguous())
    return torch.cat([part[:r] for part, r in zip(parts, rows, strict=True)])


def rank_share(batches: list[slice], dist: Dist) -> list[slice]:
    """This rank's contiguous share of ``batches`` (every batch where fewer batches than ranks): rank r takes the r-th
    of ``world`` near-equal runs, so concatenating the ranks' results in rank order gives the rows in order."""
    if dist.world == 1 or len(batches) < dist.world:
        return batches
    q, r = divmod(len(batches), dist.world)
    start = dist.rank * q + min(dist.rank, r)
    return batches[start: start + q + (dist.rank < r)]
