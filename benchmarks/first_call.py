"""A device app's first request: its latency after ``Predictor.load`` without a warm-up (``warmup=()``) and with the
default one (a batch of 1), each in a fresh process (as an app starts), the two interleaved, ``--reps`` rounds,
medians. Also the load time and what the warm-up itself costs.

    python benchmarks/first_call.py /tmp/sat/zer-avx2 /tmp/sat/pix-avx2 /tmp/sat/seq-avx2 \
        --out benchmarks/results/first_call.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CHILD = """
import json, sys, time
import numpy as np
from cmcd_edge.runtime import Predictor
bundle, warm = sys.argv[1], sys.argv[2] == "warm"
t0 = time.perf_counter()
p = Predictor.load(bundle, backend="cpu", threads=1, **({} if warm else {"warmup": ()}))
t1 = time.perf_counter()
x = np.random.default_rng(0).normal(size=p.input_shape).astype(np.float32)
calls = []
for _ in range(3):
    t = time.perf_counter()
    p.predict(x)
    calls.append(time.perf_counter() - t)
print(json.dumps({"load_ms": 1e3 * (t1 - t0), "warmup_ms": 1e3 * p.warmup_s, "first_us": 1e6 * calls[0],
                  "third_us": 1e6 * calls[2], "variant": p.variant.name}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bundles", nargs="+")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    runs: dict[str, dict[str, list[dict]]] = {b: {"cold": [], "warm": []} for b in args.bundles}
    for _ in range(args.reps):
        for b in args.bundles:
            for mode in ("cold", "warm"):
                out = subprocess.run([sys.executable, "-c", CHILD, b, mode], capture_output=True, text=True, check=True)
                runs[b][mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
    med = {b: {m: {k: statistics.median(r[k] for r in rs) for k in ("load_ms", "warmup_ms", "first_us", "third_us")}
               for m, rs in modes.items()} for b, modes in runs.items()}
    print(f"first request after Predictor.load (cpu, 1 thread), fresh process each, medians of {args.reps}")
    print("| bundle | variant | load ms | first call, no warm-up (us) | warm-up at load (ms) | first call, warmed (us) "
          "| third call (us) |")
    print("|---|---|---|---|---|---|---|")
    for b, m in med.items():
        print(f"| {b} | {runs[b]['warm'][0]['variant']} | {m['warm']['load_ms']:.1f} | {m['cold']['first_us']:.0f} | "
              f"{m['warm']['warmup_ms']:.2f} | {m['warm']['first_us']:.0f} | {m['warm']['third_us']:.0f} |")
    with open(args.out, "w") as f:
        json.dump({"reps": args.reps, "medians": med, "runs": runs}, f, indent=1)


if __name__ == "__main__":
    main()
