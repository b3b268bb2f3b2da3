"""CRD's scores as one product over a small bank against gathering the drawn rows (the code before session 26).

    python benchmarks/crd_speed.py --targets zer,fou --rounds 2 --out benchmarks/results/crd_speed.json
    python benchmarks/crd_speed.py --targets zer --rounds 2 --loss-rounds 1 \
        --methods cmcd,cmd,cmc,kd,fitnet,rkd,crd,supervised --out benchmarks/results/crd_speed_compare.json

Two parts, each interleaved (gathered, dense, gathered, dense, ...) in this one run, medians reported:
1. the loss alone: forward and backward of the CRD module at mfeat's size (1,200-row bank, 256 negatives, batch 128,
   128 dims), 50 steps a round;
2. `compare --methods crd --seeds 3 --no-upper-bound` (or the `--methods` given, which must include crd, with the
   ceiling) on builtin:mfeat fac -> each target, fresh processes, the gathered path forced by ``CRD.DENSE_BANK = 0``
   (exactly the old code). Also prints each setting's per-seed crd test top-1: the two paths sum floats in another
   order, so the trained students differ in bits, not in kind.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUN = ("import sys; from cmcd_edge.distill.losses import CRD; CRD.DENSE_BANK = int(sys.argv[1]); "
       "from cmcd_edge.cli import main; main(sys.argv[2:])")


def loss_step_ms(dense: bool, steps: int = 50) -> float:
    import torch

    from cmcd_edge.distill.losses import LOSSES, LossDims, LossParams, Pair

    torch.manual_seed(0)
    loss = LOSSES.get("crd")(LossDims(s_dim=128, t_dim=128, num_classes=10, n_train=1200), LossParams())
    loss.dense = dense
    b = Pair(s_emb=torch.randn(128, 128, requires_grad=True), s_logits=None, t_emb=torch.randn(128, 128),
             t_logits=None, idx=torch.randint(0, 1200, (128,)), lab_logits=None, lab_y=None)
    loss(b).backward()  # warm
    t0 = time.perf_counter()
    for _ in range(steps):
        loss(b).backward()
    return (time.perf_counter() - t0) / steps * 1e3


def compare(target: str, dense_bank: int, out: Path, methods: str) -> tuple[float, list[float]]:
    args = [sys.executable, "-c", RUN, str(dense_bank), "-q", "compare", "--data", "builtin:mfeat", "--source", "fac",
            "--target", target, "--methods", methods, "--seeds", "3", "--out", str(out)]
    args += [] if methods != "crd" else ["--no-upper-bound"]
    t0 = time.perf_counter()
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    r = json.loads((out / "results.json").read_text())
    return wall, [round(100 * a, 2) for a in r["methods"]["crd"]["test_accuracy"]["runs"]]


def main() -> None:
    from cmcd_edge.distill.losses import CRD

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", default="zer,fou")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--loss-rounds", type=int, default=7)
    ap.add_argument("--methods", default="crd", help="compare's --methods (the whole acceptance set: the 8 methods "
                    "and the ceiling; crd alone: no ceiling)")
    ap.add_argument("--out", required=True, type=Path)
    a = ap.parse_args()
    ms: dict[str, list[float]] = {"gathered": [], "dense": []}
    for _ in range(a.loss_rounds):
        for name in ms:
            ms[name].append(loss_step_ms(name == "dense"))
    doc = {"loss_step_ms": {k: {"runs": [round(v, 2) for v in vs], "median": round(statistics.median(vs), 2)}
                            for k, vs in ms.items()}}
    doc["loss_speedup"] = round(doc["loss_step_ms"]["gathered"]["median"] / doc["loss_step_ms"]["dense"]["median"], 2)
    print(f"CRD loss, forward + backward: gathered {doc['loss_step_ms']['gathered']['median']} ms, dense "
          f"{doc['loss_step_ms']['dense']['median']} ms ({doc['loss_speedup']}x)")
    doc["methods"], doc["compare"] = a.methods, {}
    with tempfile.TemporaryDirectory() as tmp:
        for target in a.targets.split(","):
            walls: dict[str, list[float]] = {"gathered": [], "dense": []}
            top1: dict[str, list[list[float]]] = {"gathered": [], "dense": []}
            for r in range(a.rounds):
                for name, bank in (("gathered", 0), ("dense", CRD.DENSE_BANK)):
                    wall, acc = compare(target, bank, Path(tmp) / f"{target}-{name}-{r}", a.methods)
                    walls[name].append(round(wall, 1))
                    top1[name].append(acc)
            med = {k: statistics.median(v) for k, v in walls.items()}
            doc["compare"][target] = {"wall_s": walls, "median_wall_s": med,
                                      "speedup": round(med["gathered"] / med["dense"], 2),
                                      "crd_test_top1_per_seed": {k: v[0] for k, v in top1.items()},
                                      "repeats_exactly": {k: all(x == v[0] for x in v) for k, v in top1.items()}}
            print(f"compare {a.methods} x 3 seeds, fac -> {target}: gathered {med['gathered']:.1f} s, dense {med['dense']:.1f} s "
                  f"({doc['compare'][target]['speedup']}x); top-1 per seed gathered {top1['gathered'][0]}, "
                  f"dense {top1['dense'][0]}")
    a.out.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
