"""The supervised baseline's BatchNorm rows: as shipped, a training step feeds every method's student the paired batch
(128 train rows, mostly unlabeled) and the labeled batch (64 rows) in one pass, so `supervised` too normalises with
statistics of unlabeled rows (their inputs, never their labels), as the distilling methods do; the other arm feeds
`supervised` the labeled batch alone. Same labeled batches, seeds, epochs and model selection in both arms.

builtin:mfeat, source fac (unused by supervised), targets zer and fou, 10% labels, seeds 3-12 (not the acceptance's
0-2). Prints and stores val and test top-1 per seed and their means (BENCHMARKS.md, "The supervised baseline's
BatchNorm rows").

    .venv/bin/python benchmarks/supervised_rows.py --out benchmarks/results/supervised_rows.json   # 36 s on 2 cores
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch


def labeled_only(self, x_pair, t_emb, t_logits, idx, x_lab, y_lab):
    """DistillModel.forward with the paired batch left out of the student's pass (the ce term reads the labeled one)."""
    from cmcd_edge.distill.losses import Pair

    logits, emb = self.student.forward_both(x_lab)
    return self.recipe(Pair(emb[:0], logits[:0], t_emb[:0], None, idx[:0], logits, y_lab))


def main() -> None:
    from cmcd_edge.distill import pipeline
    from cmcd_edge.distill.config import DistillConfig

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    shipped = pipeline.DistillModel.forward
    res = {}
    for target in ("zer", "fou"):
        for arm, forward in (("paired+labeled (shipped)", shipped), ("labeled only", labeled_only)):
            pipeline.DistillModel.forward = forward
            runs = []
            for seed in range(3, 13):
                cfg = DistillConfig(data="builtin:mfeat", source="fac", target=target, method="supervised", seed=seed,
                                    device="cpu")
                m = pipeline.run_distill(cfg, None).metrics
                runs.append({"seed": seed, "val": m["val_accuracy"], "test": m["test_accuracy"]})
            res[f"{target}: {arm}"] = runs
            val, test = (statistics.mean(r[k] for r in runs) for k in ("val", "test"))
            print(f"{target} {arm}: val {100 * val:.2f}, test {100 * test:.2f} (means of 10 seeds)", flush=True)
    pipeline.DistillModel.forward = shipped
    a.out.write_text(json.dumps({"torch_threads": torch.get_num_threads(), "arms": res}, indent=2) + "\n")


if __name__ == "__main__":
    main()
