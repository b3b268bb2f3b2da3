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
def test_soak_60s_bench_loop_has_no_latency_drift(toy_bundle):
    p = Predictor.load(toy_bundle, threads=1)
    x = np.random.default_rng(0).normal(size=(1, *p.input_shape)).astype(np.float32)
    stamps, lat = [], []
    end = time.perf_counter() + 60
    while (now := time.perf_counter()) < end:
        p.predict(x)
        lat.append(time.perf_counter() - now)
        stamps.append(now)
    stamps, lat = np.asarray(stamps), np.asarray(lat) * 1e6
    first, last = lat[stamps < stamps[0] + 10], lat[stamps > stamps[-1] - 10]
    p50 = np.median(last) / np.median(first)
    p99 = np.percentile(last, 99) / np.percentile(first, 99)
    print(f"\nsoak: {len(lat)} calls; first 10 s p50 {np.median(first):.1f} us p99 {np.percentile(first, 99):.1f} us; "
          f"last 10 s p50 {np.median(last):.1f} us p99 {np.percentile(last, 99):.1f} us (x{p50:.2f}, x{p99:.2f})")
    assert p50 < 1.25, f"p50 drifted x{p50:.2f}"
    assert p99 < 2.0, f"p99 drifted x{p99:.2f}"
