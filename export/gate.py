"""The accuracy gate: a variant may lose at most ``max_drop`` points of top-1 against FP32 on the test split (and,
with ``max_class_drop``, at most that many of any one class's), measured through the runtime's own session code.
INT8 over budget: nodes are ranked by sensitivity (one-at-a-time exclusion, scored on the val split) and the worst
stay float, in that order, until the variant is within budget; only nodes whose exclusion gains accuracy on val are
kept float (a node that gains nothing would only cost speed). Where no single node is enough, each layer is tried
float together with the path of its output to the next layers (an outlier channel in a layer's output breaks the
per-tensor scale of the next layer's input, which keeping the layer alone float does not mend), ranked the same way."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cmcd_edge.runtime.scores import per_class
from cmcd_edge.runtime.session import make_session, top1

log = logging.getLogger(__name__)
RERANK = 8  # groups a round after the first ranks again: the previous round's best


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


@dataclass(frozen=True)
class FloatLimit:
    """How much of the graph the search may leave float: ``nodes`` at most, and at most half the weighted ``layers``
    (:data:`~cmcd_edge.export.quantize.LAYER_OPS`; none given: no such bound). An INT8 variant most of whose layers
    run float is no INT8 variant: it fails the gate instead."""

    layers: frozenset[str] = frozenset()
    nodes: int = 8

    @property
    def max_layers(self) -> int:
        return max(1, len(self.layers) // 2)

    def allows(self, excluded: list[str]) -> bool:
        return len(excluded) <= self.nodes and sum(n in self.layers for n in excluded) <= self.max_layers

    def __str__(self) -> str:
        return f"at most {self.nodes} nodes and {self.max_layers} of the {len(self.layers)} weighted layers float"


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
    limit: FloatLimit = FloatLimit()  # how much the search could leave float
    all_int8_accuracy: float | None = None  # test top-1 with every node INT8: what the float nodes were kept against

    def failure(self) -> str:
        """Why the variant fails, for the error: the budget it misses after the search."""
        return (f"{'; '.join(self.misses)}, even with the nodes that win accuracy back on val left float "
                f"({self.limit})")


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
             limit: FloatLimit = FloatLimit(), ref: np.ndarray | None = None,
             units: list[list[str]] | None = None) -> GateResult:
    """``quantize(exclude, path)`` writes an INT8 model with ``exclude`` left float. ``ref``: FP32's logits on the
    test rows, when the caller has them (else measured here). ``units``: groups of nodes to try float together when
    no single node is enough (:func:`~cmcd_edge.export.quantize.float_units`: a layer with the path of its output to
    the next layers, which quantize that tensor at their inputs)."""
    fp32_acc, ref = top1(make_session(fp32), *test) if ref is None else (float((ref.argmax(1) == test[1]).mean()), ref)
    ref_pred = ref.argmax(1)
    quantize([], out)
    acc, agree, cos, logits = scored(out, *test, ref)
    res = GateResult(acc, fp32_acc, 100 * (fp32_acc - acc), False, agreement=agree, cosine=cos,
                     predicted=logits.argmax(1), misses=budget.misses(test[1], ref_pred, logits.argmax(1)), limit=limit,
                     all_int8_accuracy=acc)
    res.passed = not res.misses
    if res.passed or not candidates:
        return res
    log.info("INT8 fails the gate (%s): ranking %d nodes by sensitivity", "; ".join(res.misses), len(candidates))
    trial = out.with_suffix(".trial.onnx")
    val_ref = top1(make_session(fp32), *val)[1]  # ties in val top-1 go to the group closer to FP32's logits
    memo: dict[frozenset, tuple[float, float]] = {}  # val (top-1, cosine) of each float set scored: not quantized twice

    def val_score(excluded: list[str]) -> tuple[float, float]:
        key = frozenset(excluded)
        if key not in memo:
            quantize(excluded, trial)
            acc, _, cos = score(trial, *val, val_ref)
            memo[key] = (acc, cos)
        return memo[key]

    try:
        _search(res, [[n] for n in candidates], quantize, out, val_score, test, budget, ref, limit)
        groups = [u for u in units or [] if len(u) > 1]
        if not res.passed and groups:
            log.info("  trying %d layers float together with their outputs, beside single nodes", len(groups))
            _search(res, [[n] for n in candidates] + groups, quantize, out, val_score, test, budget, ref, limit)
    finally:
        trial.unlink(missing_ok=True)
    if not res.excluded:
        log.info("  no node wins accuracy back on val when kept float: the loss is spread over the graph "
                 "(per-channel weights or --calib-method entropy may help)")
    return res


def _search(res: GateResult, groups: list[list[str]], quantize: Callable[[list[str], Path], None], out: Path,
            val_score: Callable[[list[str]], tuple[float, float]], test: tuple[np.ndarray, np.ndarray],
            budget: Budget, ref: np.ndarray, limit: FloatLimit) -> None:
    """Greedy forward selection over ``groups``: each round ranks the groups by the val top-1 that leaving each float
    beside ``res.excluded`` wins back (``val_score``: val top-1 and the cosine to FP32's logits, which breaks ties, of
    a float set), and keeps the best float, until the test split is within budget. A group that wins nothing back is
    not kept (it would only cost speed), nor one that takes the float part past ``limit``. Rounds after the first
    rank again only the previous round's :data:`RERANK` best, so a search costs about ``len(groups) + 8 * RERANK``
    trials, not ``8 * len(groups)``; a float set scored before (the second pass's single nodes) is not quantized
    again. The first round's ranking is the sensitivity the report keeps. Updates ``res``."""
    for round_ in range(len(groups)):
        base = val_score(res.excluded)
        ranked = []
        for group in groups:
            wanted = [*res.excluded, *(n for n in group if n not in res.excluded)]
            if len(wanted) == len(res.excluded) or not limit.allows(wanted):
                continue
            acc, cos = val_score(wanted)
            ranked.append((100 * (acc - base[0]), cos - base[1], group))
        ranked.sort(key=lambda g: (-g[0], -g[1]))  # stable: graph order among equals
        if round_ == 0:  # each group once: a second pass re-ranks the single nodes beside the layers' units
            seen = {(s["node"], *(s["with"] if "with" in s else ())) for s in res.sensitivity}
            res.sensitivity += [{"node": group[0], **({"with": group[1:]} if len(group) > 1 else {}),
                                 "val_gain_points": round(gain, 3), "val_cosine_gain": round(cos, 4)}
                                for gain, cos, group in ranked if tuple(group) not in seen]
        if not ranked or ranked[0][0] <= 0:
            return
        res.excluded += [n for n in ranked[0][2] if n not in res.excluded]
        groups = [g for _, _, g in ranked[1:RERANK + 1]]
        quantize(res.excluded, out)
        res.accuracy, res.agreement, res.cosine, logits = scored(out, *test, ref)
        res.predicted = logits.argmax(1)
        res.drop_points = 100 * (res.fp32_accuracy - res.accuracy)
        res.misses = budget.misses(test[1], ref.argmax(1), res.predicted)
        log.info("  float: %s -> drop %.2f points", ", ".join(res.excluded), res.drop_points)
        if not res.misses:
            res.passed = True
            return
