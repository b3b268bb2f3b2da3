"""An untrained, frozen teacher for a 32-d vector source (embedding and 4-class logits), for
``--teacher random_teacher:factory`` with ``PYTHONPATH=benchmarks``: distilling from it shows what a teacher adds
when it has learned nothing, neither from its view nor from the train labels (BENCHMARKS.md, session 19)."""

from __future__ import annotations

import torch
from torch import nn


class RandomTeacher(nn.Module):
    def __init__(self, dims: int = 32, embed: int = 64, classes: int = 4) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(dims, embed), nn.ReLU(), nn.Linear(embed, embed))
        self.head = nn.Linear(embed, classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e = self.body(x)  # (B, embed)
        return e, self.head(e)  # (B, embed), (B, classes)


def factory() -> nn.Module:
    return RandomTeacher()
