"""Latency benchmark: variants interleaved in short rounds (so ratios hold on a noisy machine), warm-up, then timed
calls (perf_counter_ns) until a duration and a minimum count; p50/p90/p95/p99, mean, std, throughput; accuracy beside
latency when data is given; the Predictor's overhead over a raw session.run; achieved GMAC/s; the environment."""

from __future__ import annotations

import os
import platform
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from cmcd_edge.runtime import cpu, jetson


@dataclass
class Case:
    """One thing to time: ``fn(x)`` on a fixed input batch."""

    variant: str
    backend: str
    batch: int
    threads: int | None
    fn: Callable[[np.ndarray], object]
    x: np.ndarray
    macs_per_sample: int | None = None
    times_ns: list[int] = field(default_factory=list)
    stamps_ns: list[int] = field(default_factory=list)  # when each timed call started (perf_counter_ns)
    test_accuracy: float | None = None
    bundle: str | None = None  # which bundle, when one run times several


def stats(times_ns: list[int], batch: int, macs: int | None) -> dict:
    t = np.asarray(times_ns, dtype=np.float64) / 1e6
    p50 = float(np.percentile(t, 50))
    out = {"n": len(t), "p50_ms": p50, "p90_ms": float(np.percentile(t, 90)), "p95_ms": float(np.percentile(t, 95)),
           "p99_ms": float(np.percentile(t, 99)), "mean_ms": float(t.mean()), "std_ms": float(t.std()),
           "throughput_per_s": batch / (p50 / 1e3)}
    if macs:
        out["gmac_per_s"] = macs * batch / (p50 / 1e3) / 1e9
    return out


def run_interleaved(cases: list[Case], duration_s: float = 3.0, warmup_s: float = 0.5, min_count: int = 50,
                    round_calls: int = 10, seed: int = 0) -> None:
    """Round-robin over ``cases`` in shuffled order, ``round_calls`` calls each per round, until every case has run
    ``duration_s`` seconds (and ``min_count`` calls). Warm-up calls are not recorded."""
    rng = random.Random(seed)
    end_warm = time.perf_counter() + warmup_s
    while time.perf_counter() < end_warm:
        for c in cases:
            c.fn(c.x)
    spent = {id(c): 0 for c in cases}
    budget = int(duration_s * 1e9)
    while any(spent[id(c)] < budget or len(c.times_ns) < min_count for c in cases):
        order = cases[:]
        rng.shuffle(order)
        for c in order:
            if spent[id(c)] >= budget and len(c.times_ns) >= min_count:
                continue
            for _ in range(round_calls):
                t0 = time.perf_counter_ns()
                c.fn(c.x)
                dt = time.perf_counter_ns() - t0
                c.times_ns.append(dt)
                c.stamps_ns.append(t0)
                spent[id(c)] += dt


def speed_blocks(cases: list[Case], block_s: float = 0.5, min_calls: int = 20) -> dict | None:
    """How the machine's speed moved during a run: each call's time over its case's median, pooled over every case
    and cut into ``block_s`` blocks by when the call ran; ``spread`` is the slowest block's median over the fastest's.
    Interleaved cases share the blocks, so their ratios hold whatever it reads; absolute latencies do not (a cloud VM
    here switches between two speeds 1.55x apart every few seconds). None with fewer than two blocks."""
    stamps, rel = [], []
    for c in cases:
        if len(c.times_ns) >= 2 and len(c.stamps_ns) == len(c.times_ns):
            t = np.asarray(c.times_ns, dtype=np.float64)
            stamps.append(np.asarray(c.stamps_ns, dtype=np.int64))
            rel.append(t / np.median(t))
    if not stamps:
        return None
    at, r = np.concatenate(stamps), np.concatenate(rel)
    block = (at - at.min()) // int(block_s * 1e9)
    meds = [float(np.median(r[block == b])) for b in np.unique(block) if (block == b).sum() >= min_calls]
    if len(meds) < 2:
        return None
    return {"block_s": block_s, "blocks": len(meds), "spread": max(meds) / min(meds)}


def environment() -> dict:
    import onnxruntime as ort

    name, have = cpu.read_cpuinfo()
    model = platform.processor() or platform.machine()
    if name and model in ("", platform.machine()):
        model = name
    flags = sorted(have & {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "fma", "asimd", "asimddp", "i8mm",
                           "sve"})
    return {"cpu": model, "machine": platform.machine(), "cores": os.cpu_count(), "isa_flags": flags,
            "onnxruntime": ort.__version__, "providers": ort.get_available_providers(),
            "python": platform.python_version(), **{"jetson": jetson.detect()}}


def table(results: list[dict], by_bundle: bool = False) -> str:
    """The results as a text table; ``by_bundle`` adds a first column naming each row's bundle."""
    width = max([len(r.get("bundle") or "") for r in results] + [6]) + 2 if by_bundle else 0
    head = f"{'bundle':<{width}}" if by_bundle else ""
    head += f"{'variant':<14}{'backend':<10}{'batch':>6}{'thr':>5}{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}" \
            f"{'items/s':>11}{'top-1 %':>9}"
    lines = [head, "-" * len(head)]
    for r in results:
        acc = "" if r.get("test_accuracy") is None else f"{100 * r['test_accuracy']:.2f}"
        lead = f"{r.get('bundle') or '':<{width}}" if by_bundle else ""
        lines.append(f"{lead}{r['variant']:<14}{r['backend']:<10}{r['batch']:>6}{str(r['threads'] or '-'):>5}"
                     f"{r['p50_ms']:>10.4f}{r['p90_ms']:>10.4f}{r['p99_ms']:>10.4f}{r['throughput_per_s']:>11.1f}{acc:>9}")
    return "\n".join(lines)


def results_of(cases: list[Case]) -> list[dict]:
    return [{**({"bundle": c.bundle} if c.bundle is not None else {}),
             "variant": c.variant, "backend": c.backend, "batch": c.batch, "threads": c.threads,
             **stats(c.times_ns, c.batch, c.macs_per_sample),
             **({"test_accuracy": c.test_accuracy} if c.test_accuracy is not None else {})} for c in cases]


def ratio(results: list[dict], a: str, b: str, batch: int = 1, key: str = "p50_ms") -> float | None:
    """results[b][key] / results[a][key] at ``batch``: how many times faster ``a`` is than ``b``."""
    ra = [r for r in results if r["variant"] == a and r["batch"] == batch]
    rb = [r for r in results if r["variant"] == b and r["batch"] == batch]
    return rb[0][key] / ra[0][key] if ra and rb else None
