"""A view's rows as float32 batches on the training device.

A view that fits the preload budget is converted once and kept on the device (the fast path, and all that small data
ever needs). A larger one (a camera source view of many GB) stays memory-mapped on disk and each batch is gathered
from the map and converted on its own: memory then holds a batch, not the view. Both paths give the same float32
values, so a run's weights do not depend on which one it took.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch

from cmcd_edge.datasets import read_rows
from cmcd_edge.errors import UserError

log = logging.getLogger(__name__)

PRELOAD = ("auto", "always", "never")
BUDGET_SHARE = 0.4  # of the memory available when the view is opened (RAM on CPU, free GPU memory on CUDA)


def available_bytes(device: torch.device) -> int:
    """Memory free for a preloaded view: free GPU memory on CUDA, else MemAvailable (Linux) or physical pages."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def should_preload(nbytes: int, device: torch.device, mode: str, *, ranks: int = 1, what: str = "view") -> bool:
    """``mode`` "always" / "never" decide; "auto" preloads when ``nbytes`` (the view as float32) fits this rank's
    share of :data:`BUDGET_SHARE` of the available memory."""
    if mode not in PRELOAD:
        raise UserError(f"preload {mode!r}; valid: {', '.join(PRELOAD)}")
    if mode != "auto":
        return mode == "always"
    budget = int(BUDGET_SHARE * available_bytes(device)) // max(1, ranks)
    if nbytes <= budget:
        return True
    log.info("%s: %.2f GiB as float32, over the %.2f GiB preload budget on %s: batches are read from the memory map",
             what, nbytes / 2**30, budget / 2**30, device.type)
    return False


class ViewRows:
    """Rows of one view, indexed like a (N, *sample) float32 tensor on ``device``: ``rows[idx]`` for a 1-D index
    tensor (repeats allowed) or a slice. ``preload`` decides whether the view is converted once up front."""

    def __init__(self, arr: np.ndarray, device: torch.device, preload: bool) -> None:
        self.shape = tuple(arr.shape)
        self.device = device
        self._arr = arr
        self._full = torch.from_numpy(np.array(arr, dtype=np.float32)).to(device) if preload else None

    @classmethod
    def open(cls, arr: np.ndarray, device: torch.device, mode: str = "auto", *, ranks: int = 1,
             what: str = "view") -> ViewRows:
        nbytes = int(np.prod(arr.shape, dtype=np.int64)) * 4
        return cls(arr, device, should_preload(nbytes, device, mode, ranks=ranks, what=what))

    @property
    def preloaded(self) -> bool:
        return self._full is not None

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx: torch.Tensor | slice) -> torch.Tensor:
        if self._full is not None:
            return self._full[idx]
        block = np.array(self._arr[idx], dtype=np.float32) if isinstance(idx, slice) else \
            read_rows(self._arr, idx.cpu().numpy())  # a fresh, writable float32 array either way
        return torch.from_numpy(block).to(self.device)
