"""cmcd-edge bench: interleaved latency cases with top-1 beside them, the rows that top-1 is measured on (the test
split, or every labeled row of new --data), and what it refuses."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from cmcd_edge.runtime import Predictor
from cmcd_edge.runtime.errors import UserError
from tests.helpers import assert_one_line_error, edited_bundle, permute_rows, run_on_copied_data, synthetic_paired


def test_bench_cli_json(toy_bundle, cli, tmp_path):
    res = cli("bench", toy_bundle, "--duration", "0.2", "--warmup", "0.05", "--batch", "1,4", "--out", tmp_path / "b.json")
    assert res.returncode == 0, res.stderr
    assert "jetson: no" in res.stdout
    doc = json.loads((tmp_path / "b.json").read_text())
    keys = {"variant", "backend", "batch", "threads", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "throughput_per_s"}
    assert doc["results"] and all(keys <= set(r) for r in doc["results"])
    assert all(r["test_accuracy"] is not None for r in doc["results"])
    assert doc["predictor_overhead"] and "environment" in doc
    auto = Predictor.load(toy_bundle, backend="cpu").variant.name  # what a device app gets, said beside the timings
    assert doc["auto_variant_cpu"] == auto and f"Predictor.load(variant='auto') on cpu here: {auto}" in res.stdout


def test_bench_warns_when_the_bundles_data_changed_since_distill(toy_run, toy_bundle, cli, tmp_path):
    """Was: bench scored the test split of the bundle's data as it is now, without a word, though rows reordered after
    distill put rows the student trained on in it (top-1 read high)."""
    _, data = run_on_copied_data(toy_run, tmp_path, permute_rows)
    bundle = edited_bundle(toy_bundle, tmp_path / "b", lambda m: m["source_run"].update(data=str(data)))
    args = ("bench", bundle, "--duration", "0.05", "--warmup", "0.01", "--batch", "1", "--variants", "fp32")
    res = cli(*args)
    assert res.returncode == 0, res.stderr
    assert f"{data} changed since the run trained on it" in res.stderr, res.stderr
    shutil.rmtree(data)  # the run's own data, moved: no warning
    shutil.copytree(json.loads((toy_run / "run.json").read_text())["config"]["data"], data)
    res = cli(*args)
    assert res.returncode == 0 and "changed since" not in res.stderr, res.stderr


@pytest.mark.parametrize("kw,needle", [
    ({"variants": "int8,fp32,int8"}, "--variants: 'int8' appears twice"),  # was: the same case benchmarked twice
    ({"duration": math.nan}, "--duration nan: must be a finite number > 0"),  # was: internal error: ValueError
    ({"duration": math.inf}, "--duration inf: must be a finite number > 0"),
    ({"warmup": math.nan}, "--warmup nan: must be a finite number >= 0"),
])
def test_bench_refuses_repeated_variants_and_nonfinite_seconds(toy_bundle, tmp_path, kw, needle):
    from cmcd_edge.benchcli import run_bench

    args = {"threads": [1], "batches": [1], "variants": "all", "backend": "cpu", "duration": 0.1, "warmup": 0.0,
            "data": None, "no_accuracy": True, "torch_run": None, "out": str(tmp_path / "b.json"), "plot": None}
    with pytest.raises(UserError, match=re.escape(needle)):
        run_bench(str(toy_bundle), **{**args, **kw})
    assert not (tmp_path / "b.json").exists()


@pytest.mark.parametrize("kw,needle", [
    ({"target_kind": "sequence"}, "view 'tgt' holds samples of shape [3, 64]; the bundle takes [8]"),
    ({"classes": 5}, "class 'c4' not among the bundle's (c0, c1, c2, c3); top-1 scores classes by name"),
])
def test_bench_data_of_another_shape_or_classes_is_refused_naming_it(toy_bundle, tmp_path, kw, needle):
    """Was: the Predictor's 'input shape [8, 3, 64] does not match', naming neither --data nor the view; other classes
    gave an accuracy over labels the bundle does not mean."""
    from cmcd_edge.benchcli import run_bench

    other = synthetic_paired(tmp_path / "other", n=120, **kw).root
    args = {"threads": [1], "batches": [1], "variants": "all", "backend": "cpu", "duration": 0.1, "warmup": 0.0,
            "data": str(other), "no_accuracy": False, "torch_run": None, "out": None, "plot": None}
    with pytest.raises(UserError, match=re.escape(f"--data {other}: {needle}")):
        run_bench(str(toy_bundle), **args)


def test_bench_config_file_with_a_bad_value_names_the_file_and_the_key(toy_bundle, cli, tmp_path):
    (tmp_path / "b.json").write_text('{"duration": -1, "batch": "1,x"}')
    res = cli("bench", toy_bundle, "--config", tmp_path / "b.json")
    assert_one_line_error(res, 2, f"Error: --config {tmp_path / 'b.json'}: batch '1,x': expected comma-separated")
    (tmp_path / "b.json").write_text('{"duration": -1}')
    res = cli("bench", toy_bundle, "--config", tmp_path / "b.json")
    assert_one_line_error(res, 2, f"Error: --config {tmp_path / 'b.json'}: duration -1.0: must be a finite number > 0")


def test_bench_cli_refuses_a_repeated_batch_in_one_line(toy_bundle, cli, tmp_path):
    res = cli("bench", toy_bundle, "--duration", "0.1", "--batch", "1,4,1", "--out", tmp_path / "b.json")
    assert_one_line_error(res, 2, "--batch: 1 appears twice")  # was: the same case benchmarked twice, two rows
    assert not (tmp_path / "b.json").exists()


def test_bench_refuses_data_with_no_accuracy(toy_bundle, cli, tmp_path):
    res = cli("bench", toy_bundle, "--no-accuracy", "--data", tmp_path / "d", "--out", tmp_path / "b.json")
    assert_one_line_error(res, 2, f"--data {tmp_path / 'd'}: says what the accuracy run scores, which --no-accuracy "
                          "skips")  # was: --data ignored without a word
    res = cli("bench", toy_bundle, "--no-accuracy", "--rows", "all", "--out", tmp_path / "b.json")
    assert_one_line_error(res, 2, "--rows all: says what the accuracy run scores, which --no-accuracy skips")
    assert not (tmp_path / "b.json").exists()


def test_bench_rows_all_scores_every_labeled_row_of_new_data(toy_bundle, cli, tmp_path):
    """Was: bench --data scored only the test split (the run's seed) of any data, so a field set of 120 rows (79
    labeled) gave a top-1 over 16 of them; --rows all scores each labeled row of data the run never saw, and says which."""
    from cmcd_edge import datasets

    field = synthetic_paired(tmp_path / "field", n=120, seed=5, unlabeled=0.25).root
    args = ("bench", toy_bundle, "--duration", "0.05", "--warmup", "0.01", "--batch", "1", "--variants", "fp32",
            "--data", field)
    res = cli(*args, "--rows", "all", "--out", tmp_path / "all.json")
    assert res.returncode == 0, res.stderr
    labels = np.asarray(datasets.load(str(field)).labels)
    rows = np.flatnonzero(labels >= 0)
    assert len(rows) == 79 and f"top-1 on every labeled row of {field}: {len(rows)} rows" in res.stdout
    doc = json.loads((tmp_path / "all.json").read_text())
    assert doc["accuracy_on"] == {"data": str(field), "rows": "all", "scored": len(rows)}
    x = np.load(field / "views" / "tgt.npy")[rows]
    top1 = float((Predictor.load(toy_bundle, variant="fp32").predict(x).argmax(1) == labels[rows]).mean())
    assert doc["results"][0]["test_accuracy"] == pytest.approx(top1)
    res = cli(*args, "--out", tmp_path / "test.json")  # the default: its test split, with a pointer to --rows all
    assert res.returncode == 0 and "--rows all scores every labeled row" in res.stderr, res.stderr
    assert json.loads((tmp_path / "test.json").read_text())["accuracy_on"]["scored"] < len(rows) // 2


def test_bench_rows_all_scores_field_data_of_some_classes_by_name(toy_bundle, cli, tmp_path):
    """Field data often holds a few of the classes, listed in its own order. Was: refused unless its class list was
    the bundle's; now its labels are matched to the bundle's classes by name."""
    from cmcd_edge import datasets
    from cmcd_edge.datasets import ViewSpec

    full = datasets.load(str(synthetic_paired(tmp_path / "full", n=120, seed=5).root))
    y = np.asarray(full.labels)
    keep = np.flatnonzero((y == 1) | (y == 3))
    x = np.asarray(full.view("tgt")[keep])
    field = tmp_path / "field"  # its class 0 is the bundle's c3, its class 1 the bundle's c1
    datasets.write_dataset(field, {"tgt": ViewSpec(x, "vector")}, np.where(y[keep] == 3, 0, 1), ["c3", "c1"])
    res = cli("bench", toy_bundle, "--duration", "0.05", "--warmup", "0", "--batch", "1", "--variants", "fp32",
              "--data", field, "--rows", "all", "--out", tmp_path / "b.json")
    assert res.returncode == 0, res.stderr
    doc = json.loads((tmp_path / "b.json").read_text())
    pred = Predictor.load(toy_bundle, variant="fp32").predict(x).argmax(1)
    assert doc["results"][0]["test_accuracy"] == pytest.approx(float((pred == y[keep]).mean()))
    assert set(doc["bundles"][0]["scores"]["fp32"]["per_class"]) == {"c1", "c3"}


def test_bench_rows_all_refuses_the_runs_own_data(toy_run, toy_bundle, cli, tmp_path):
    """All rows of the data the student trained on would score its train rows: refused, as is --rows all without
    --data (the bundle's own data is that data)."""
    data = json.loads((toy_run / "run.json").read_text())["config"]["data"]
    args = ("bench", toy_bundle, "--duration", "0.05", "--batch", "1", "--rows", "all", "--out", tmp_path / "b.json")
    res = cli(*args, "--data", data)
    assert_one_line_error(res, 2, f"--rows all: --data {data} is the data the run trained on", "use --rows test")
    res = cli(*args)
    assert_one_line_error(res, 2, "--rows all: needs --data, the new labeled data to score")
    assert not (tmp_path / "b.json").exists()


def test_bench_plot_without_matplotlib_fails_before_benchmarking(toy_bundle, tmp_path):
    code = ("import sys; sys.modules['matplotlib'] = None; "
            "from cmcd_edge.cli import main; sys.argv = ['cmcd-edge'] + sys.argv[1:]; main()")
    res = subprocess.run([sys.executable, "-c", code, "bench", str(toy_bundle), "--duration", "30", "--batch", "1",
                          "--plot", str(tmp_path / "b.png"), "--out", str(tmp_path / "b.json")],
                         capture_output=True, text=True, timeout=120)
    assert_one_line_error(res, 2, "--plot needs matplotlib")
    assert "benchmarking" not in res.stderr and not (tmp_path / "b.json").exists()  # refused before any of the work


def test_bench_warns_when_threads_exceed_the_cores_it_may_use(toy_bundle, cli, tmp_path):
    """Was: --threads 64 on a 2-core box timed 64 threads on 2 cores without a word, a figure no device app sees."""
    import os

    cores = len(os.sched_getaffinity(0))
    args = ("bench", toy_bundle, "--duration", "0.05", "--warmup", "0", "--batch", "1", "--variants", "fp32",
            "--no-accuracy")
    res = cli(*args, "--threads", f"1,{cores + 1}")
    assert res.returncode == 0, res.stderr
    assert f"--threads {cores + 1}: this process may use {cores} cores, so those cases oversubscribe them" in res.stderr
    res = cli(*args, "--threads", str(cores))
    assert res.returncode == 0 and "oversubscribe" not in res.stderr, res.stderr


def test_bench_several_bundles_are_timed_interleaved_in_one_table(toy_bundle, trt_bundle, cli, tmp_path):
    """Was: one BUNDLE a run, so two students (cmcd against supervised, or two widths) were timed in two runs on a
    noisy machine, and their latency ratio mixed the machine's drift between the runs with the models' difference."""
    res = cli("bench", toy_bundle, trt_bundle, "--variants", "fp32", "--duration", "0.1", "--warmup", "0.01",
              "--batch", "1", "--out", tmp_path / "b.json")
    assert res.returncode == 0, res.stderr
    doc = json.loads((tmp_path / "b.json").read_text())
    labels = [b["label"] for b in doc["bundles"]]  # both folders are named "bundle": their parents tell them apart
    assert labels == [f"{toy_bundle.parent.name}/bundle", f"{trt_bundle.parent.name}/bundle"]
    assert [b["path"] for b in doc["bundles"]] == [str(toy_bundle), str(trt_bundle)]
    assert sorted(r["bundle"] for r in doc["results"]) == sorted(labels)
    assert all(label in res.stdout for label in labels)
    top1 = {r["bundle"]: r["test_accuracy"] for r in doc["results"]}  # the same fp32 network on the same test rows
    assert top1[labels[0]] == top1[labels[1]] and doc["bundles"][0]["accuracy_on"] == doc["bundles"][1]["accuracy_on"]
    assert "different rows" not in res.stderr
    assert {o["bundle"] for o in doc["predictor_overhead"]} == set(labels)


def test_bench_several_bundles_says_when_their_top1_is_on_different_rows(toy_bundle, cli, tmp_path):
    other = edited_bundle(toy_bundle, tmp_path / "seed1", lambda m: m["source_run"].update(seed=1))
    res = cli("bench", toy_bundle, other, "--variants", "fp32", "--duration", "0.05", "--warmup", "0.01",
              "--batch", "1", "--out", tmp_path / "b.json")
    assert res.returncode == 0, res.stderr
    assert "top-1 of bundle and seed1 is measured on different rows" in res.stderr, res.stderr


@pytest.mark.parametrize("extra,needle", [
    ((), "BUNDLE {a}: given twice"),
    (("--compare-torch", "run"), "--compare-torch: times one run beside its own bundle; give one BUNDLE, not 2"),
])
def test_bench_several_bundles_refuses_a_repeat_or_compare_torch(toy_bundle, cli, tmp_path, extra, needle):
    second = toy_bundle if not extra else edited_bundle(toy_bundle, tmp_path / "b2", lambda m: None)
    res = cli("bench", toy_bundle, second, *extra, "--duration", "0.05", "--out", tmp_path / "b.json")
    assert_one_line_error(res, 2, needle.format(a=toy_bundle))
    assert not (tmp_path / "b.json").exists()


def test_bench_several_bundles_names_the_one_without_a_variant(toy_bundle, trt_bundle, cli, tmp_path):
    res = cli("bench", trt_bundle, toy_bundle, "--variants", "fp16", "--duration", "0.05", "--out", tmp_path / "b.json")
    assert_one_line_error(res, 2, f"{toy_bundle}: no variant 'fp16'")
    assert not (tmp_path / "b.json").exists()


def test_bench_quiet_writes_nothing_to_stderr(toy_bundle, cli, tmp_path):
    """Was: `-q bench` (only warnings and errors) still wrote its 'benchmarking N cases ...' line to stderr."""
    res = cli("-q", "bench", toy_bundle, "--variants", "fp32", "--batch", "1", "--duration", "0.05", "--warmup", "0",
              "--out", tmp_path / "b.json")
    assert res.returncode == 0 and res.stderr == "", res.stderr
    res = cli("bench", toy_bundle, "--variants", "fp32", "--batch", "1", "--duration", "0.05", "--warmup", "0")
    assert res.returncode == 0 and "benchmarking 2 cases, 0.05s each, interleaved" in res.stderr, res.stderr


def _timed(level_of_second, calls_per_s=200, base_ns=10_000):
    """A case whose calls ran at ``level_of_second(s)`` times ``base_ns``, ``calls_per_s`` a second for 4 s."""
    from cmcd_edge.runtime.bench import Case

    c = Case("fp32", "cpu", 1, 1, lambda x: x, np.zeros(1))
    for i in range(4 * calls_per_s):
        at = int(i * 1e9 / calls_per_s)
        c.stamps_ns.append(at)
        c.times_ns.append(int(base_ns * level_of_second(at / 1e9)))
    return c


def test_speed_blocks_reads_the_machines_speed_moving_during_a_run():
    """Golden values: two cases whose calls ran 1.5x slower in the third second, alike (as interleaved cases are),
    read a spread of 1.5 over 8 half-second blocks; a steady machine reads 1.0 and no warning."""
    from cmcd_edge.benchcli import speed_note
    from cmcd_edge.runtime.bench import speed_blocks

    def slow_third(t):
        return 1.5 if 2 <= t < 3 else 1.0

    moved = speed_blocks([_timed(slow_third), _timed(slow_third, base_ns=40_000)])
    assert moved == {"block_s": 0.5, "blocks": 8, "spread": pytest.approx(1.5)}
    assert speed_note(moved).startswith("the machine's speed moved during this run: some 0.5 s blocks ran 1.50x slower")
    steady = speed_blocks([_timed(lambda t: 1.0)])
    assert steady["spread"] == pytest.approx(1.0) and speed_note(steady) is None
    assert speed_blocks([_timed(lambda t: 1.0, calls_per_s=10)]) is None  # under 20 calls a block: nothing to read


def test_bench_json_records_the_speed_blocks(toy_bundle, cli, tmp_path):
    res = cli("bench", toy_bundle, "--variants", "fp32", "--batch", "1", "--duration", "1.0", "--warmup", "0",
              "--no-accuracy", "--out", tmp_path / "b.json")
    assert res.returncode == 0, res.stderr
    speed = json.loads((tmp_path / "b.json").read_text())["speed_blocks"]
    assert speed["block_s"] == 0.5 and speed["blocks"] >= 2 and speed["spread"] >= 1.0
    assert ("the machine's speed moved" in res.stderr) == (speed["spread"] > 1.25)


def test_bench_scores_each_variant_by_class_beside_top1(toy_bundle, cli, tmp_path):
    """Was: one top-1 per variant, so an INT8 variant that lost a whole class on the device data hid behind an overall
    figure within the gate; bench now gives macro-F1 and per-class top-1 (the weakest three printed)."""
    from cmcd_edge.benchcli import _scored_rows
    from cmcd_edge.runtime.manifest import load_manifest
    from cmcd_edge.runtime.scores import macro_f1, per_class

    res = cli("bench", toy_bundle, "--batch", "1", "--duration", "0.05", "--warmup", "0", "--out", tmp_path / "b.json")
    assert res.returncode == 0, res.stderr
    doc = json.loads((tmp_path / "b.json").read_text())
    rows, labels, _ = _scored_rows(load_manifest(toy_bundle), None)
    for variant, sc in doc["bundles"][0]["scores"].items():
        pred = Predictor.load(toy_bundle, variant=variant).predict(rows[0:len(rows)]).argmax(1)
        assert sc["macro_f1"] == pytest.approx(macro_f1(pred, labels, 4))
        assert sc["per_class"] == per_class(pred, labels, ("c0", "c1", "c2", "c3"))  # the same rows, the same counts
        assert sc["top1"] == next(r["test_accuracy"] for r in doc["results"] if r["variant"] == variant)
        low = min(sc["per_class"].items(), key=lambda kv: (kv[1]["top1"], kv[0]))
        assert f"{variant}: macro-F1 {100 * sc['macro_f1']:.2f}%; lowest per-class top-1: {low[0]} " in res.stdout


def test_bench_scores_each_variant_once_whatever_the_thread_counts(toy_bundle, monkeypatch, tmp_path):
    """Was: every variant ran over the whole scored split again at each --threads (three passes for --threads 1,2,4
    over a device-recorded set of `--rows all`), for the same top-1."""
    from cmcd_edge import benchcli

    scored = []
    real = benchcli._score
    monkeypatch.setattr(benchcli, "_score", lambda p, x, y: scored.append(p.variant.name) or real(p, x, y))
    doc = benchcli.run_bench(str(toy_bundle), threads=[1, 2], batches=[1], variants="fp32,int8", backend="cpu",
                             duration=0.05, warmup=0.0, data=None, no_accuracy=False, torch_run=None, out=None,
                             plot=None)
    assert sorted(scored) == ["fp32", "int8"]
    acc = {(r["variant"], r["threads"]): r["test_accuracy"] for r in doc["results"] if ":" not in r["variant"]}
    assert set(acc) == {(v, t) for v in ("fp32", "int8") for t in (1, 2)}
    assert acc["int8", 2] == acc["int8", 1] == doc["bundles"][0]["scores"]["int8"]["top1"] is not None
