"""The InfoNCE critic's fits (select-teacher's slowest estimator) on one thread with a foreach AdamW, against the code
before session 30 (torch's threads, the per-tensor AdamW loop).

    python benchmarks/infonce_speed.py --rounds 5 --out benchmarks/results/infonce_speed.json

The embeddings are select-teacher's own: a one-seed ranking of fac for target zer on builtin:mfeat runs first and the
(teacher, student) held-out embeddings its InfoNCE call receives are kept. Then ``mi.infonce_mi`` runs on them in four
settings, interleaved round by round in this one process; medians and ratios to the old code are printed, and each
setting's estimate (the same bits are expected: the settings change the order of work, not its sums).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import statistics
import tempfile
import time
from pathlib import Path


def captured_embeddings() -> tuple:
    from cmcd_edge.cli import main
    from cmcd_edge.distill import mi

    kept, real = [], mi.infonce_mi

    def keep(x, y, *a, **k):
        kept.append((x, y))
        return real(x, y, *a, **k)

    mi.infonce_mi = keep
    try:
        with tempfile.TemporaryDirectory() as tmp:
            main(["-q", "select-teacher", "--data", "builtin:mfeat", "--target", "zer", "--candidates", "fac",
                  "--seeds", "1", "--device", "cpu", "--out", str(Path(tmp) / "rank.json")], standalone_mode=False)
    finally:
        mi.infonce_mi = real
    return kept[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    import torch

    from cmcd_edge.distill import mi

    x, y = captured_embeddings()
    adamw, one_thread = torch.optim.AdamW, mi._one_thread
    settings = {  # (AdamW's foreach, the critic on one thread)
        "old": (False, False), "foreach": (True, False), "one thread": (False, True), "new (both)": (True, True)}
    times = {name: [] for name in settings}
    values = {name: set() for name in settings}
    for _ in range(args.rounds):
        for name, (foreach, single) in settings.items():
            torch.optim.AdamW = functools.partial(adamw, foreach=foreach)
            mi._one_thread = one_thread if single else contextlib.nullcontext
            try:
                t0 = time.perf_counter()
                values[name].add(mi.infonce_mi(x, y, seed=0))
                times[name].append(time.perf_counter() - t0)
            finally:
                torch.optim.AdamW, mi._one_thread = adamw, one_thread
    old = statistics.median(times["old"])
    rows = {name: {"median_s": round(statistics.median(t), 3), "speedup": round(old / statistics.median(t), 2),
                   "estimates": sorted(values[name]), "times_s": [round(v, 3) for v in t]} for name, t in times.items()}
    print(f"infonce_mi on select-teacher's fac -> zer embeddings {list(x.shape)} / {list(y.shape)}, "
          f"{args.rounds} interleaved rounds, torch threads {torch.get_num_threads()}")
    for name, r in rows.items():
        print(f"  {name:12s} {r['median_s']:.3f} s  {r['speedup']:.2f}x  estimate {r['estimates']}")
    if args.out:
        args.out.write_text(json.dumps({"rows": rows, "shape_x": list(x.shape), "shape_y": list(y.shape),
                                        "threads": torch.get_num_threads()}, indent=1) + "\n")


if __name__ == "__main__":
    main()
