"""What a launcher tells this process through its environment: torchrun sets WORLD_SIZE, RANK, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT in every worker (https://pytorch.org/docs/stable/elastic/run.html); torch.distributed's
env:// rendezvous reads the same names. One place reads and checks them, without torch.

WORLD_SIZE left over in a shell or a job script, without the rest, used to reach torch.distributed and end in
"internal error: ValueError: Error initializing torch.distributed using env:// rendezvous: environment variable RANK
expected, but not set"; a WORLD_SIZE that is not a number ended in a traceback from the error handler itself."""

from __future__ import annotations

import os
from dataclasses import dataclass

from cmcd_edge.errors import UserError

RENDEZVOUS = ("RANK", "MASTER_ADDR", "MASTER_PORT")  # what env:// needs beside WORLD_SIZE


@dataclass(frozen=True)
class Launch:
    rank: int = 0
    local_rank: int = 0
    world: int = 1

    @property
    def distributed(self) -> bool:
        return self.world > 1


def launch() -> Launch:
    """This process's place among the launched ones; ``Launch()`` (one process) without WORLD_SIZE or with 1. A set
    but unusable environment is a UserError that says which variable and how to launch instead."""
    world = _int("WORLD_SIZE", 1)
    if world < 1:
        raise UserError(f"WORLD_SIZE={world}: must be >= 1; unset it to train in one process")
    if world == 1:
        return Launch(local_rank=_int("LOCAL_RANK", 0))
    missing = [name for name in RENDEZVOUS if not os.environ.get(name)]
    if missing:
        raise UserError(f"WORLD_SIZE={world} but {', '.join(missing)} not set: launch the command with "
                        f"`torchrun --nproc_per_node {world} -m cmcd_edge ...`, which sets them all, "
                        "or unset WORLD_SIZE to train in one process")
    rank = _int("RANK", 0)
    if not 0 <= rank < world:
        raise UserError(f"RANK={rank}: must be in 0..{world - 1} for WORLD_SIZE={world}")
    return Launch(rank=rank, local_rank=_int("LOCAL_RANK", 0), world=world)


def launched_as() -> Launch | None:
    """``launch()``, or None where the environment is unusable: for an error handler, which must not raise."""
    try:
        return launch()
    except UserError:
        return None


def _int(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise UserError(f"{name}={text!r}: not a whole number; torchrun sets it, or unset it to train in one "
                        "process") from None
