"""What a compare reports: each method's figures over seeds, the first method minus each other one seed by seed (with
its 95% t interval and verdict), the most confused class pairs; and results.md, the same as a table and sentences."""

from __future__ import annotations

import numpy as np

from cmcd_edge.distill.machine import machine_name

UPPER = "supervised@100%"


def teacher_stats(accs: list[float | None]) -> dict:
    """The teacher's test top-1 over seeds; a teacher without logits has none: nulls (was NaN, which is not JSON)."""
    scored = [a for a in accs if a is not None]
    return _stats(scored) if scored else {"mean": None, "std": None, "runs": []}


def _stats(values: list[float]) -> dict:
    arr = np.asarray(values, dtype=float)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0, "runs": list(values)}


def summary(runs: list[dict]) -> dict:
    """One method over its seeds: mean +- std of each figure, wall time summed, and per class its test top-1 (mean,
    and seed by seed with the class's test rows: None and 0 where a seed's test split lacks the class)."""
    classes = list(dict.fromkeys(c for r in runs for c in r["test_per_class"]))
    per_class = {}
    for c in classes:
        seen = [r["test_per_class"].get(c) for r in runs]
        top1 = [None if v is None else v["top1"] for v in seen]
        per_class[c] = {"top1": float(np.mean([t for t in top1 if t is not None])), "runs": top1,
                        "rows": [0 if v is None else v["rows"] for v in seen]}
    return {**{k: _stats([r[k] for r in runs]) for k in ("test_accuracy", "test_macro_f1", "val_accuracy")},
            "test_per_class": per_class, "wall_s": round(sum(r["wall_s"] for r in runs), 2)}


def confused_pairs(runs: list[dict], top: int = 5) -> list[dict]:
    """The class pairs most often mistaken for each other (either way), summed over ``runs``, with their share of
    all the runs' test errors: where the methods' errors (and so their differences) live."""
    pairs: dict[tuple[str, str], int] = {}
    for r in runs:
        for c in r["test_confusions"]:
            key = tuple(sorted((c["true"], c["pred"])))
            pairs[key] = pairs.get(key, 0) + c["rows"]
    errors = sum(pairs.values())
    ranked = sorted(pairs.items(), key=lambda kv: -kv[1])[:top]
    return [{"classes": list(k), "rows": n, "share": n / errors} for k, n in ranked]


# Student's t 0.975 quantiles for 1-30 degrees of freedom; beyond, the Cornish-Fisher series (within 1e-3)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t975(df: int) -> float:
    """The two-sided 95% critical value of Student's t with ``df`` degrees of freedom."""
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def paired(methods: list[str], acc: dict[str, list[float]]) -> dict:
    """The first method (the default: cmcd) minus each other method, seed by seed. Every method of a seed shares its
    teacher and labeled rows, so the per-seed difference is the fair statistic; its sd says how much a gap between
    means is seed noise, and the t interval of its mean (95%, from two seeds on) how large a gap the seeds can rule
    out: with three seeds it is about five times the sd's standard error wide."""
    ref = methods[0]
    minus = {}
    for m in methods[1:]:
        d = _stats([a - b for a, b in zip(acc[ref], acc[m], strict=True)])
        n = len(d["runs"])
        if n > 1:
            d["se"] = d["std"] / float(np.sqrt(n))
            half = t975(n - 1) * d["se"]
            d["ci95"] = [d["mean"] - half, d["mean"] + half]
            d["verdict"] = _verdict(d["ci95"])
            d["seeds_to_decide"] = seeds_to_decide(d["mean"], d["std"])
        minus[m] = d
    return {"reference": ref, "minus": minus}


TIE = 0.01  # a paired 95% interval inside +-1 point of top-1 calls two methods a tie


def _verdict(ci: list[float]) -> str:
    """better / worse: the interval excludes 0; tie: it lies inside +-TIE (an equivalence test at that margin);
    unresolved: neither, the seeds cannot tell."""
    if ci[0] > 0:
        return "better"
    if ci[1] < 0:
        return "worse"
    return "tie" if -TIE < ci[0] and ci[1] < TIE else "unresolved"


def seeds_to_decide(mean: float, sd: float, most: int = 1000) -> int | None:
    """How many seeds a paired difference with this per-seed mean and sd needs before its 95% t interval is decided
    (excludes 0, or lies inside +-TIE): the half-width must fall to max(|mean|, TIE - |mean|). None past ``most``.
    Mean and sd come from the seeds run, so this plans a longer compare; it does not promise its outcome."""
    target = max(abs(mean), TIE - abs(mean))
    for n in range(2, most + 1):
        if t975(n - 1) * sd / float(np.sqrt(n)) < target:
            return n
    return None


def results_markdown(r: dict) -> str:
    sup = r["methods"].get("supervised", {}).get("test_accuracy", {}).get("mean")
    lines = [f"{r['source']} -> {r['target']} on {r['data']}, {r['labeled_fraction']:.0%} target labels, "
             f"seeds {r['seeds']}; {_teacher_name(r)} test top-1 {_teacher_cell(r['teacher_test_accuracy'])}"
             + _made_on(r), "",
             f"| method | test top-1 (%) | macro-F1 (%) | val top-1 (%) | vs supervised | {_paired_head(r)} | wall s |",
             "|---|---|---|---|---|---|---|"]
    rows = list(r["methods"].items())
    if r.get("upper_bound"):
        rows.append((r["upper_bound"]["method"], r["upper_bound"]))
    for m, v in rows:
        a = v["test_accuracy"]
        f = v.get("test_macro_f1")
        delta = f"{100 * (a['mean'] - sup):+.1f}" if sup is not None and m != "supervised" else ""
        wall = f"{v['wall_s']:.1f}" if v["wall_s"] < 10 else f"{v['wall_s']:.0f}"  # a quick run read "0"
        lines.append(f"| {m} | {_pm(a)} | {_pm(f) if f else ''} | {_pm(v['val_accuracy'])} | {delta} | "
                     f"{_paired_cell(r, m)} | {wall} |")
    return "\n".join(lines + _verdict_lines(r) + _ceiling_lines(r) + _per_class_lines(r)) + "\n"


def _teacher_name(r: dict) -> str:
    """"teacher (fac)" for the built-in one; "teacher t.pt2 on fac (sha256 0123456789ab)" for a file or factory, so
    two compares of two teachers saved at one path say which model each was (results.json of earlier versions holds
    no record: read as the built-in's line)."""
    rec = r["teacher"] if "teacher" in r else {"ref": "train", "sha256": []}
    if rec["ref"] == "train":
        return f"teacher ({r['source']})"
    return f"teacher {rec['ref']} on {r['source']} (sha256 {', '.join(s[:12] for s in rec['sha256']) or '-'})"


def _made_on(r: dict) -> str:
    """"; trained on AMD EPYC (AVX512, 2 threads)": CPU runs repeat bit for bit on one CPU type and thread count
    only."""
    made = r["made_on"] if "made_on" in r else []
    return f"; trained on {' and '.join(machine_name(m) for m in made)}" if made else ""


def _ceiling_lines(r: dict) -> list[str]:
    """Why the 100%-labels student is in the paired comparison: a built-in teacher learned from every train label,
    and a distilled student can take those labels from it whatever its view holds (on mfeat, a teacher trained on a
    view of pure noise lifts the 10%-label zer student by 5.6 points, to the ceiling: BENCHMARKS.md)."""
    if UPPER not in r["paired"]["minus"] or r["config"]["teacher"] != "train":
        return []
    return ["", f"The teacher learned from every train label of {r['source']}; {UPPER} is the target student trained "
                f"on those labels without it. A method above {UPPER} gains from the {r['source']} view itself; below "
                f"it, the labels alone would have done as well."]


def _verdict_lines(r: dict) -> list[str]:
    """One sentence: the methods the reference beats, trails or ties (inside +-1 point) with 95% confidence over these
    seeds, and for each gap the seeds cannot decide, about how many seeds would."""
    ref, minus = r["paired"]["reference"], r["paired"]["minus"]
    if not minus:
        return []
    if any("verdict" not in d for d in minus.values()):
        return ["", f"{ref} against the other methods: one seed gives no interval; run --seeds 3 or more."]
    by = {v: [m for m, d in minus.items() if d["verdict"] == v] for v in ("better", "worse", "tie", "unresolved")}

    def need(m: str) -> str:
        n = minus[m]["seeds_to_decide"]
        return f"{m} (~{n} seeds)" if n is not None else f"{m} (over 1000 seeds)"

    parts = [f"{word} {', '.join(by[v])}" for v, word in (("better", "better than"), ("worse", "worse than"),
                                                          ("tie", f"tied within +-{100 * TIE:.0f} point with"))
             if by[v]]
    if by["unresolved"]:
        parts.append(f"not decided against {', '.join(need(m) for m in by['unresolved'])}: the seeds each gap would "
                     f"need, at this run's per-seed mean and spread")
    text = f"{ref} at 95% over seeds {r['seeds']} (paired t interval): " + "; ".join(parts)
    more = ["", "To add seeds, rerun the same command with `--seeds N --extend`: its finished runs are kept."]
    return ["", text + "."] + (more if by["unresolved"] else [])


def _per_class_lines(r: dict, top: int = 10) -> list[str]:
    """The most confused pairs, and per-class top-1 of the ``top`` classes whose accuracy differs most between
    methods (all classes when there are at most ``top``)."""
    pairs = ", ".join(f"{a} <-> {b} {p['rows']} ({p['share']:.0%})" for p in r["confused_pairs"]
                      for a, b in [p["classes"]])
    methods = list(r["methods"])
    per = {m: {c: v["top1"] for c, v in r["methods"][m]["test_per_class"].items()} for m in methods}
    classes = list(per[methods[0]])
    spread = {c: max(per[m][c] for m in methods) - min(per[m][c] for m in methods) for c in classes}
    shown = classes if len(classes) <= top else sorted(classes, key=lambda c: -spread[c])[:top]
    head = "per class" if len(shown) == len(classes) else f"the {top} classes where the methods differ most"
    lines = ["", f"Most confused class pairs (test rows over every method and seed; share of their errors): {pairs or 'none'}",
             "", f"Test top-1 (%) {head}, mean over seeds:", "",
             "| class | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    lines += [f"| {c} | " + " | ".join(f"{100 * per[m][c]:.1f}" for m in methods) + " |" for c in shown]
    return lines


def _pm(stat: dict, digits: int = 1, sign: str = "") -> str:
    """A percentage over seeds: mean +- sd, or the mean alone from one seed (its sd of 0 would read as no spread)."""
    mean = f"{100 * stat['mean']:{sign}.{digits}f}"
    return mean if len(stat["runs"]) < 2 else f"{mean} +- {100 * stat['std']:.{digits}f}"


def _teacher_cell(t: dict) -> str:
    return "- (no logits)" if t["mean"] is None else _pm(t)


def _paired_head(r: dict) -> str:
    return f"{r['paired']['reference']} - method, per seed (mean +- sd [95% CI of the mean])"


def _paired_cell(r: dict, method: str) -> str:
    minus = r["paired"]["minus"]
    if method not in minus:  # the reference itself, the ceiling
        return ""
    d = minus[method]
    ci = f" [{100 * d['ci95'][0]:+.2f}, {100 * d['ci95'][1]:+.2f}]" if "ci95" in d else ""
    return f"{_pm(d, 2, '+')}{ci}"
