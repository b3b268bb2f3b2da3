"""What keying a ``--teacher pkg.module:factory`` by its weights costs: sha256 of a 100.7M-parameter state_dict
(six 4096x4096 Linear layers, float32, 384 MiB), median of 5 timings.

    python benchmarks/factory_key_cost.py
"""

from __future__ import annotations

import statistics
import time

import torch

from cmcd_edge.distill.user_teacher import weights_sha256


def main() -> None:
    model = torch.nn.Sequential(*[torch.nn.Linear(4096, 4096) for _ in range(6)])
    n = sum(p.numel() for p in model.parameters())
    times = []
    for _ in range(5):
        t = time.perf_counter()
        weights_sha256(model)
        times.append(time.perf_counter() - t)
    print(f"{n / 1e6:.1f}M parameters, {n * 4 / 2**20:.0f} MiB: median {statistics.median(times):.2f} s "
          f"(min {min(times):.2f}, max {max(times):.2f})")


if __name__ == "__main__":
    main()
