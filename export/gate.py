"""The accuracy gate: a variant may lose at most ``max_drop`` points of top-1 against FP32 on the test split (and,
with ``max_class_drop``, at most that many of any one class's), measured through the runtime's own session code.
INT8 over budget: nodes are ranked by sensitivity (one-at-a-time exclusion, scored on the val split) and the worst
stay float, in that order, until the variant is within budget; only nodes whose exclusion gains accuracy on val are
kept float (a node that gains nothing would only cost speed)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cmcd_edge.runtime.scores import per_class
from cmcd_edge.runtime.session import make_session, top1

log = logging.getLogger(__name__)


def worst_class(fp32: dict, variant: dict) -> tuple[str, float, str]:
    """The class a variant loses most test top-1 on against FP32 (per-class dicts of :func:`per_class`): its name,
    the drop in points, and the drop in words (``80.0% -> 50.0% (3 of its 10 test rows)``)."""
    c = max(fp32, key=lambda k: (fp32[k]["top1"] - variant[k]["top1"], k))
    drop = 100 * (fp32[c]["top1"] - variant[c]["top1"])
    lost = round(drop * fp32[c]["rows"] / 100)
    return c, drop, (f"{100 * fp32[c]['top1']:.1f}% -> {100 * variant[c]['top1']:.1f}% ({lost} of its "
                     f"{fp32[c]['rows']} test rows)")


@dataclass(frozen=True)
class Budget:
    """What a variant may lose against FP32 on the test split: ``max_drop`` points of top-1, and with
    ``max_class_drop`` (``--max-class-drop``) that many of any one class's."""

    max_drop: float
    max_class_drop: float | None = None
    classes: tuple[str, ...] = ()  # class names by index, for the messages (needed with max_class_drop)

    def misses(self, y: np.ndarray, ref_pred: np.ndarray, pred: np.ndarray) -> list[str]:
        """Why predictions ``pred`` fail the budget against FP32's ``ref_pred`` on labels ``y`` (empty: they pass)."""
        why = []
        drop = 100 * (float((ref_pred == y).mean()) - float((pred == y).mean()))
        if drop > self.max_drop + 1e-9:
            why.append(f"more than {self.max_drop} points below FP32")
        if self.max_class_drop is not None:
            c, lost, words = worst_class(per_class(ref_pred, y, self.classes), per_class(pred, y, self.classes))
            if lost > self.max_class_drop + 1e-9:
                why.append(f"class {c!r} loses {lost:.1f} points, {words}, more than --max-class-drop "
                           f"{self.max_class_drop:g}")
        return why


@dataclass
class GateResult:
    accuracy: float
    fp32_accuracy: float
    drop_points: float
    passed: bool
    excluded: list[str] = field(default_factory=list)
    sensitivity: list[dict] = field(default_factory=list)
    agreement: float = 1.0
    cosine: float = 1.0
    predicted: np.ndarray | None = None  # the final INT8 model's test top-1 classes (for per-class figures)
    misses: list[str] = field(default_factory=list)  # why it fails the budget (Budget.misses); empty when passed


def score(path: Path, x: np.ndarray, y: np.ndarray, ref_logits: np.ndarray | None = None) -> tuple[float, float, float]:
    """(top-1, agreement with the reference's top-1, mean cosine of logits to the reference)."""
    return scored(path, x, y, ref_logits)[:3]


def scored(path: Path, x: np.ndarray, y: np.ndarray,
           ref_logits: np.ndarray | None = None) -> tuple[float, float, float, np.ndarray]:
    """:func:`score`, and the logits it measured."""
    acc, logits = top1(make_session(path), x, y)
    if ref_logits is None:
        return acc, 1.0, 1.0, logits
    agree = float((logits.argmax(1) == ref_logits.argmax(1)).mean())
    cos = np.sum(logits * ref_logits, 1) / (np.linalg.norm(logits, axis=1) * np.linalg.norm(ref_logits, axis=1) + 1e-12)
    return acc, agree, float(cos.mean()), logits


def run_gate(quantize: Callable[[list[str], Path], None], candidates: list[str], out: Path, fp32: Path,
             test: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray], budget: Budget,
             max_excluded: int = 8, ref: np.ndarray | None = None) -> GateResult:
    """``quantize(exclude, path)`` writes an INT8 model with ``exclude`` left float. ``ref``: FP32's logits on the
    test rows, when the caller has them (else measured here)."""
    fp32_acc, ref = top1(make_session(fp32), *test) if ref is None else (float((ref.argmax(1) == test[1]).mean()), ref)
    ref_pred = ref.argmax(1)
    quantize([], out)
    acc, agree, cos, logits = scored(out, *test, ref)
    res = GateResult(acc, fp32_acc, 100 * (fp32_acc - acc), False, agreement=agree, cosine=cos,
                     predicted=logits.argmax(1), misses=budget.misses(test[1], ref_pred, logits.argmax(1)))
    res.passed = not res.misses
    if res.passed or not candidates:
        return res
    log.info("INT8 fails the gate (%s): ranking %d nodes by sensitivity", "; ".join(res.misses), len(candidates))
    val_base, _, _ = score(out, *val)
    trial = out.with_suffix(".trial.onnx")
    for node in candidates:
        quantize([node], trial)
        gain = score(trial, *val)[0] - val_base
        res.sensitivity.append({"node": node, "val_gain_points": round(100 * gain, 3)})
    trial.unlink(missing_ok=True)
    res.sensitivity.sort(key=lambda s: -s["val_gain_points"])
    for s in res.sensitivity[:max_excluded]:
        if s["val_gain_points"] <= 0:  # keeping it float wins nothing back: no reason to pay its speed
            log.info("  no other node wins accuracy back on val when kept float: the loss is spread over the graph "
                     "(per-channel weights or --calib-method entropy may help)")
            break
        res.excluded.append(s["node"])
        quantize(res.excluded, out)
        res.accuracy, res.agreement, res.cosine, logits = scored(out, *test, ref)
        res.predicted = logits.argmax(1)
        res.drop_points = 100 * (fp32_acc - res.accuracy)
        res.misses = budget.misses(test[1], ref_pred, res.predicted)
        log.info("  float: %s -> drop %.2f points", ", ".join(res.excluded), res.drop_points)
        if not res.misses:
            res.passed = True
            break
    return res
