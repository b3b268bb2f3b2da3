"""The accuracy gate: an INT8 variant may lose at most ``max_drop`` points of top-1 against FP32 on the test split,
measured through the runtime's own session code. Over budget, nodes are ranked by sensitivity (one-at-a-time
exclusion, scored on the val split) and the worst stay float, in that order, until the test drop is within budget;
only nodes whose exclusion gains accuracy on val are kept float (a node that gains nothing would only cost speed)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cmcd_edge.runtime.session import make_session, top1

log = logging.getLogger(__name__)


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
             test: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray], max_drop: float,
             max_excluded: int = 8, ref: np.ndarray | None = None) -> GateResult:
    """``quantize(exclude, path)`` writes an INT8 model with ``exclude`` left float. ``ref``: FP32's logits on the
    test rows, when the caller has them (else measured here)."""
    fp32_acc, ref = top1(make_session(fp32), *test) if ref is None else (float((ref.argmax(1) == test[1]).mean()), ref)
    quantize([], out)
    acc, agree, cos, logits = scored(out, *test, ref)
    res = GateResult(acc, fp32_acc, 100 * (fp32_acc - acc), 100 * (fp32_acc - acc) <= max_drop + 1e-9,
                     agreement=agree, cosine=cos, predicted=logits.argmax(1))
    if res.passed or not candidates:
        return res
    log.info("INT8 loses %.2f points (> %.2f): ranking %d nodes by sensitivity", res.drop_points, max_drop, len(candidates))
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
        log.info("  float: %s -> drop %.2f points", ", ".join(res.excluded), res.drop_points)
        if res.drop_points <= max_drop + 1e-9:
            res.passed = True
            break
    return res
