"""Load and soak: one Predictor shared by 8 threads for 10,000 calls each (mixed batch sizes) gives the sequential
results with flat memory; a 60 s bench loop shows no latency drift (slow)."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

from cmcd_edge.runtime import Predictor


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS line")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="RSS is read from /proc (Linux)")
def test_8_threads_x_10000_mixed_batches_match_sequential_with_flat_rss(toy_bundle):
    p = Predictor.load(toy_bundle, threads=1)
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(b, *p.input_shape)).astype(np.float32) for b in (1, 2, 3, 5, 8, 13, 1, 32)]
    expected = [p.predict(x) for x in xs]
    for i in range(2000):  # warm-up: onnxruntime's arena and the allocator settle for every batch size
        p.predict(xs[i % len(xs)])
    before = _rss_mb()
    mismatches, errors, calls = [], [], []

    def worker(k: int) -> None:
        n = 0
        try:
            for i in range(10_000):
                j = (i * 7 + k) % len(xs)
                if not np.array_equal(p.predict(xs[j]), expected[j]):
                    mismatches.append((k, i))
                n += 1
        except Exception as exc:  # noqa: BLE001  (any error in a worker fails the test)
            errors.append(repr(exc))
        calls.append(n)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    growth = _rss_mb() - before
    print(f"\n8 x 10,000 calls in {wall:.1f}s; RSS growth {growth:+.2f} MB")
    assert not errors and calls == [10_000] * 8
    assert not mismatches, mismatches[:5]
    assert growth < 10, f"RSS grew {growth:.1f} MB"


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="RSS is read from /proc (Linux)")
def test_soak_60s_bench_loop_has_no_latency_drift_or_memory_growth(toy_bundle):
    """A leak shows as memory that keeps growing, or as calls that keep getting slower. Latency is compared by its
    floor (the fastest one-second median in the first and the last 10 s): background load on a shared machine only
    adds time, so the floor moves only if the calls themselves got slower (a plain p50/p99 ratio flaked in CI)."""
    p = Predictor.load(toy_bundle, threads=1)
    x = np.random.default_rng(0).normal(size=(1, *p.input_shape)).astype(np.float32)
    for _ in range(2000):
        p.predict(x)
    cap = 10_000_000  # the records are written in place, so they do not count as growth (~60,000 calls/s here)
    stamps, lat = np.full(cap, -1.0), np.full(cap, -1.0)
    before = _rss_mb()
    n, end = 0, time.perf_counter() + 60
    while (now := time.perf_counter()) < end and n < cap:
        p.predict(x)
        lat[n] = time.perf_counter() - now
        stamps[n] = now
        n += 1
    growth = _rss_mb() - before
    stamps, lat = stamps[:n] - stamps[0], lat[:n] * 1e6
    second = stamps.astype(int)
    medians = np.array([np.median(lat[second == s]) for s in range(int(second.max()) + 1)])  # (60,)
    first, last = medians[:10].min(), medians[-10:].min()
    print(f"\nsoak: {len(lat)} calls; floor of 1-s medians first 10 s {first:.1f} us, last 10 s {last:.1f} us "
          f"(x{last / first:.2f}); p99 first/last 10 s {np.percentile(lat[stamps < 10], 99):.1f} / "
          f"{np.percentile(lat[stamps > stamps[-1] - 10], 99):.1f} us; RSS growth {growth:+.2f} MB")
    assert last / first < 1.5, f"latency floor drifted x{last / first:.2f}"
    assert growth < 10, f"RSS grew {growth:.1f} MB"
