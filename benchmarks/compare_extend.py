"""`compare --extend`: a finished 3-seed compare grown to 4 seeds, against a fresh 4-seed compare.

    python benchmarks/compare_extend.py --base benchmarks/results/compare-zer-runs --out benchmarks/results/compare_extend.json

--base is a finished `compare --seeds 3` folder with its runs (run_all.sh's compare-zer, or any); it is copied, so
it stays as it was. Times both commands as fresh processes, one after the other, and checks that every method's
per-seed test top-1 (and the paired statistics) of the two are equal: CPU runs are deterministic, so --extend must
give what training every run would.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CMD = [sys.executable, "-m", "cmcd_edge", "-q", "compare", "--data", "builtin:mfeat", "--source", "fac"]


def timed(args: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, type=Path, help="a finished 3-seed compare folder (with runs/)")
    ap.add_argument("--target", default="zer")
    ap.add_argument("--out", required=True, type=Path)
    a = ap.parse_args()
    base = json.loads((a.base / "results.json").read_text())
    with tempfile.TemporaryDirectory(dir=a.out.parent) as tmp:
        ext, fresh = Path(tmp) / "extended", Path(tmp) / "fresh"
        shutil.copytree(a.base, ext)
        cmd = [*CMD, "--target", a.target, "--seeds", str(len(base["seeds"]) + 1)]
        t_ext = timed([*cmd, "--out", str(ext), "--extend"])
        t_fresh = timed([*cmd, "--out", str(fresh)])
        r_ext, r_fresh = (json.loads((p / "results.json").read_text()) for p in (ext, fresh))
    runs = {m: r_ext["methods"][m]["test_accuracy"]["runs"] for m in r_ext["methods"]}
    same = all(runs[m] == r_fresh["methods"][m]["test_accuracy"]["runs"] for m in runs) and \
        r_ext["paired"] == r_fresh["paired"] and r_ext["upper_bound"] == {**r_fresh["upper_bound"],
                                                                          "wall_s": r_ext["upper_bound"]["wall_s"]}
    kept_equal = all(runs[m][:len(base["seeds"])] == base["methods"][m]["test_accuracy"]["runs"] for m in runs)
    res = {"target": a.target, "seeds_before": base["seeds"], "seeds_after": r_ext["seeds"],
           "extend_s": round(t_ext, 1), "fresh_s": round(t_fresh, 1), "ratio": round(t_fresh / t_ext, 2),
           "extended_equals_fresh": same, "kept_seeds_equal_base": kept_equal,
           "new_seed_test_top1": {m: v[-1] for m, v in runs.items()}}
    a.out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"{a.target}: {base['seeds']} -> {r_ext['seeds']}: --extend {t_ext:.1f} s, fresh {t_fresh:.1f} s "
          f"({t_fresh / t_ext:.1f}x); extended == fresh: {same}; kept seeds == base: {kept_equal}")


if __name__ == "__main__":
    main()
