"""Which checkpoint-selection rule generalises best? A validation-only study (the test split is never read).

Every run trains the distill phase for all its epochs (no early stop, no fine-tune) and keeps each epoch's val logits.
The val split (400 rows on mfeat) is then cut at random into halves A and B, many times: each rule picks an epoch from
A's figures alone, and scores that epoch's accuracy on B. The rule with the best mean B accuracy over methods, targets,
seeds and cuts is the one that picks epochs that hold up on rows it did not look at. (Selecting on 200 rows is noisier
than on 400, so differences between rules come out somewhat larger here than they are in the pipeline.)

Reuses the teachers cached by `compare` in benchmarks/results/compare-<target>/teachers.

    .venv/bin/python benchmarks/selection_study.py --out benchmarks/results/selection_study.json
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

import numpy as np
import torch

from cmcd_edge.distill import engine
from cmcd_edge.distill.compare import teacher_for_seed
from cmcd_edge.distill.config import DistillConfig
from cmcd_edge.distill.pipeline import run_distill

PATIENCE = DistillConfig.patience
ERA_RECIPES = {"cmcd": "1.0*cmd+1.0*cmc+1.0*kd+1.0*ce"}  # the study (session 5) predates the FitNet term (session 6)
EVERY_EPOCH = 10**9  # patience that never stops a run


def pipeline_pick(score: np.ndarray, loss: np.ndarray, window: int, patience: int) -> int:
    """The epoch (0-based) that the pipeline's own selector, engine.BestOnVal, keeps for this val trace: epochs fed in
    order until ``patience`` scored epochs pass without a new best (as engine.run_phase stops), ties to lower ``loss``."""
    sel = engine.BestOnVal(window)
    for s, loss_e in zip(score, loss, strict=True):
        if sel.bad >= patience:
            break
        sel.add(float(s), float(loss_e), {})
    sel.finish()
    return sel.best_epoch


def rule_acc(acc: np.ndarray, loss: np.ndarray) -> int:
    """The rule before session 5: best (val accuracy, -val loss), early stop after PATIENCE epochs without a new best."""
    return pipeline_pick(acc, loss, 1, PATIENCE)


def rule_loss(acc: np.ndarray, loss: np.ndarray) -> int:
    """Lowest val cross-entropy (a proper score, smooth in the weights), same patience."""
    return pipeline_pick(-loss, np.zeros_like(loss), 1, PATIENCE)


def rule_last(acc: np.ndarray, loss: np.ndarray) -> int:
    """The last epoch (the cosine schedule has annealed the learning rate to zero)."""
    return len(acc) - 1


def rule_acc_smooth(acc: np.ndarray, loss: np.ndarray) -> int:
    """Best val accuracy averaged over a centred window of 5 epochs (one lucky epoch cannot win alone), same patience."""
    return pipeline_pick(acc, loss, 5, PATIENCE)


def rule_acc_smooth_full(acc: np.ndarray, loss: np.ndarray) -> int:
    """The smoothed rule over every epoch (no early stop: the cosine schedule's low-rate end always runs)."""
    return pipeline_pick(acc, loss, 5, EVERY_EPOCH)


def rule_acc_full(acc: np.ndarray, loss: np.ndarray) -> int:
    """The window-1 rule over every epoch (no early stop)."""
    return pipeline_pick(acc, loss, 1, EVERY_EPOCH)


# the first four were the study's first round; the "no early stop" pair was added in a second round (session 5) after
# the val curves showed patience stopping runs whose val accuracy peaked early, before the schedule's low-rate end
RULES = {"acc (window 1)": rule_acc, "loss": rule_loss, "last": rule_last, "acc smoothed (5 ep)": rule_acc_smooth,
         "acc, no early stop": rule_acc_full, "acc smoothed, no early stop": rule_acc_smooth_full}


def val_trace(cfg: DistillConfig, teacher, tmp: Path) -> tuple[np.ndarray, np.ndarray]:
    """Per-epoch val logits (E, N_val, K) of a full-length distill phase, and the val labels (N_val,)."""
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    real = engine.accuracy_and_loss

    def spy(logits, y):
        seen.append((logits.detach().cpu().clone(), y.detach().cpu().clone()))
        return real(logits, y)

    engine.accuracy_and_loss = spy
    try:
        run_distill(cfg, tmp / f"{cfg.method}-{cfg.target}-{cfg.seed}", force=True, teacher=teacher)
    finally:
        engine.accuracy_and_loss = real
    return torch.stack([s[0] for s in seen]).numpy(), seen[0][1].numpy()


def correct_and_nll(logits: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per epoch and row: prediction right? and its cross-entropy. Both (E, N)."""
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return logits.argmax(-1) == y[None], -np.take_along_axis(logp, y[None, :, None], axis=-1)[..., 0]


def score_rules(logits: np.ndarray, y: np.ndarray, cuts: int, rng: np.random.Generator,
                rules=RULES) -> dict[str, list[float]]:
    """Each rule's accuracy on half B at the epoch it picks from half A's figures, over ``cuts`` random cuts (both
    ways round). ``rules``: name -> f(val accuracy per epoch, val loss per epoch) -> 0-based epoch."""
    correct, nll = correct_and_nll(logits, y)
    out: dict[str, list[float]] = {r: [] for r in rules}
    n = len(y)
    for _ in range(cuts):
        perm = rng.permutation(n)
        for a, b in ((perm[: n // 2], perm[n // 2:]), (perm[n // 2:], perm[: n // 2])):
            for name, rule in rules.items():
                e = rule(correct[:, a].mean(1), nll[:, a].mean(1))
                out[name].append(float(correct[e, b].mean()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--targets", default="zer,fou,mor")
    ap.add_argument("--methods", default="cmcd,cmd,cmc,kd,fitnet,rkd,crd,supervised")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--cuts", type=int, default=50)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for target in args.targets.split(","):
            for seed in range(args.seeds):
                for method in args.methods.split(","):
                    cfg = DistillConfig(data="builtin:mfeat", source="fac", target=target, method=method, seed=seed,
                                        finetune="none", patience=10**6, recipe=ERA_RECIPES.get(method))
                    teacher = teacher_for_seed(cfg, Path(f"benchmarks/results/compare-{target}/teachers/seed{seed}"))
                    logits, y = val_trace(cfg, teacher, Path(tmp))
                    scores = score_rules(logits, y, args.cuts, rng)
                    correct, nll = correct_and_nll(logits, y)
                    picks = {r: RULES[r](correct.mean(1), nll.mean(1)) + 1 for r in RULES}
                    rows.append({"target": target, "seed": seed, "method": method,
                                 "held_out": {r: float(np.mean(v)) for r, v in scores.items()},
                                 "epoch_on_full_val_acc": picks})
                    print(target, seed, f"{method:<10}", "  ".join(f"{r} {100 * np.mean(v):.2f}"
                                                                 for r, v in scores.items()), flush=True)
    base = "acc (window 1)"
    summary = {}
    for r in RULES:
        diff = np.array([row["held_out"][r] - row["held_out"][base] for row in rows])
        summary[r] = {"mean_held_out": float(np.mean([row["held_out"][r] for row in rows])),
                      "minus_window1": float(diff.mean()), "se": float(diff.std(ddof=1) / np.sqrt(len(diff))),
                      "runs_better": int((diff > 0).sum()), "runs_worse": int((diff < 0).sum())}
        for t in args.targets.split(","):
            summary[r][t] = float(np.mean([row["held_out"][r] for row in rows if row["target"] == t]))
    print(f"\n{'rule':<28} {'held-out val':>12} {'minus window 1':>12}  (se)   better/worse runs")
    for r, s in summary.items():
        print(f"{r:<28} {100 * s['mean_held_out']:>12.2f} {100 * s['minus_window1']:>+12.2f}  ({100 * s['se']:.2f})"
              f"  {s['runs_better']}/{s['runs_worse']}   " + "  ".join(f"{t} {100 * s[t]:.2f}"
                                                                     for t in args.targets.split(",")))
    Path(args.out).write_text(json.dumps({"runs": rows, "summary": summary, "cuts": args.cuts}, indent=2))


if __name__ == "__main__":
    main()
