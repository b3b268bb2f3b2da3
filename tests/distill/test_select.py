"""select-teacher: the CCH ranking, its verdicts and warnings, resuming a killed run, --source auto, and a view's
own teacher (the estimators themselves: test_mi.py)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time

import numpy as np
import pytest
import torch

from cmcd_edge.distill import mi
from cmcd_edge.distill.select import verdict
from cmcd_edge.errors import UserError
from tests.conftest import CLI
from tests.helpers import assert_one_line_error, synthetic_paired


def test_verdicts():
    assert verdict(0.5) == "distill" and verdict(0.0) == "marginal" and verdict(-1).startswith("skip")
    assert verdict(0.5, margin=1.0) == "marginal" and verdict(0.05, margin=0.0) == "distill"


def test_verdict_counts_the_seeds_whose_own_delta_agrees_and_the_table_says_so():
    """Each seed pairs its teacher with its own student: deltas +0.30, +0.05, +0.20 (mean +0.183, distill) hold one
    seed inside the margin, so the call is 2/3; the unanimous view reads 3/3 and gets no note."""
    from cmcd_edge.distill.select import rank_row, table

    def row(i_ts, i_sy):
        return {"gaussian": i_ts, "i_sy": i_sy, "teacher_acc": [0.9] * 3}

    split = rank_row("a", row([0.5, 0.5, 0.5], [0.2, 0.45, 0.3]), ("gaussian",))
    settled = rank_row("b", row([1.0, 1.2, 1.1], [0.2, 0.45, 0.3]), ("gaussian",))
    assert split["delta_per_seed"] == pytest.approx([0.30, 0.05, 0.20])
    assert (split["verdict"], split["seeds_agreeing"]) == ("distill", 2)
    assert (settled["verdict"], settled["seeds_agreeing"]) == ("distill", 3)
    text = table({"target": "t", "data": "d", "seeds": [0, 1, 2], "ranking": [settled, split], "warnings": []})
    assert "distill (3/3 seeds)" in text and "distill (2/3 seeds)" in text
    assert "note: the seeds' own deltas disagree with the mean's verdict for a:" in text
    one = table({"target": "t", "data": "d", "seeds": [0], "warnings": [],
                 "ranking": [rank_row("a", {k: v[:1] for k, v in row([0.5] * 3, [0.45] * 3).items()}, ("gaussian",))]})
    assert one.splitlines()[-1].endswith("marginal")  # one seed: no count to show
    assert "(nats, seed 0;" in one and "+-" not in one.splitlines()[-1]  # was '0.500 +-0.000', no spread to show


def test_select_teacher_bad_input(cli, tmp_path):
    ds = synthetic_paired(tmp_path / "d", n=200)
    assert_one_line_error(cli("select-teacher", "--data", ds.root, "--target", "tgt", "--candidates", "tgt"), 2,
                          "no candidate other than the target")
    assert_one_line_error(cli("select-teacher", "--data", ds.root, "--target", "tgt", "--candidates", "src,src"), 2,
                          "--candidates: 'src' appears twice")
    nolab = synthetic_paired(tmp_path / "n", n=200, labels=False)
    assert_one_line_error(cli("select-teacher", "--data", nolab.root, "--target", "tgt"), 2, "no labels")
    for flag in ("--seeds", "--teacher-epochs", "--student-epochs"):
        assert_one_line_error(cli("select-teacher", "--data", ds.root, "--target", "tgt", flag, "0"), 2,
                              f"{flag} 0: must be >= 1")
    assert_one_line_error(cli("select-teacher", "--data", ds.root, "--target", "tgt", "--teacher-cache", "/dev/null"),
                          2, "--teacher-cache /dev/null: is a file; name a folder")
    small = synthetic_paired(tmp_path / "s", n=60)
    assert_one_line_error(cli("select-teacher", "--data", small.root, "--target", "tgt", "--seeds", "1"), 2,
                          "held-out rows")


def test_select_ranks_on_a_capped_seeded_subsample_of_the_heldout_rows(tmp_path, monkeypatch):
    from cmcd_edge.distill import select

    ds = synthetic_paired(tmp_path / "d", n=300)  # 120 labeled val + test rows
    monkeypatch.setattr(select, "MAX_HELDOUT", 80)
    res = select.rank_teachers(str(ds.root), "tgt", ["src"], seeds=1)
    assert res["heldout_rows"] == [80] and [r["view"] for r in res["ranking"]] == ["src"]
    est = res["ranking"][0]["estimators"]["mi_teacher_student"]
    assert set(est) == {"gaussian", "ksg", "infonce"} and est["ksg"]["mean"] > 0.1  # the source carries the class
    top = res["ranking"][0]
    assert top["delta"] == pytest.approx(top["mi_teacher_student"]["mean"] - top["mi_student_label"]["mean"])
    assert top["delta_per_seed"] == pytest.approx([top["delta"]]) and top["seeds_agreeing"] == 1
    assert not any("label-only student" in w for w in res["warnings"])  # this target's student learns its classes


def test_select_warns_when_the_label_only_student_learned_next_to_nothing(tmp_path):
    """Was: a target whose label-only student learns nothing from few labels made I(T;S), measured through it, small
    for every candidate, and the ranking said "marginal" without a word; on a synthetic activity set the source so
    called gave a 96% cmcd student against 24% label-only (BENCHMARKS.md)."""
    from cmcd_edge import datasets
    from cmcd_edge.distill import select

    rng = np.random.default_rng(0)
    y = np.arange(300) % 3
    src = (np.eye(3)[y] * 3 + rng.normal(size=(300, 3))).astype(np.float32)
    noise = rng.normal(size=(300, 6)).astype(np.float32)  # no class signal at all
    ds = datasets.write_dataset(tmp_path / "d", {"src": datasets.ViewSpec(src, "vector"),
                                                 "tgt": datasets.ViewSpec(noise, "vector")}, y, ["a", "b", "c"])
    res = select.rank_teachers(str(ds.root), "tgt", ["src"], seeds=1, teacher_epochs=3, student_epochs=3,
                               estimators=("gaussian",))
    assert res["label_entropy_nats"] == pytest.approx(np.log(3), abs=0.01)
    warned = [w for w in res["warnings"] if "label-only student" in w]
    assert len(warned) == 1 and warned[0].startswith("tgt: the label-only student's embedding holds 0.0")
    assert f"cmcd-edge compare --data {ds.root} --source src --target tgt --methods cmcd,supervised" in warned[0]
    assert f"warning: {warned[0]}" in select.table(res)


def test_disagreement_warning_names_the_view():
    from cmcd_edge.distill.select import disagreements

    def row(view, g, k, n):
        return {"view": view, "estimators": {"mi_teacher_student": {"gaussian": {"mean": g}, "ksg": {"mean": k},
                                                                    "infonce": {"mean": n}}}}

    warned = disagreements([row("fac", 4.3, 1.9, 1.6), row("pix", 2.0, 1.5, 1.2)])
    assert len(warned) == 1 and warned[0].startswith("fac: gaussian I(T;S) 4.30") and "ksg 1.90" in warned[0]


def test_select_teacher_cli_seed_epochs_and_device_reach_the_ranking(cli, tmp_path):
    ds = synthetic_paired(tmp_path / "d", n=300)
    out = tmp_path / "rank.json"
    res = cli("select-teacher", "--data", ds.root, "--target", "tgt", "--seeds", "1", "--seed", "7",
              "--teacher-epochs", "2", "--student-epochs", "3", "--device", "cpu", "--out", out)
    assert res.returncode == 0, res.stderr
    doc = json.loads(out.read_text())
    assert doc["seeds"] == [7] and doc["teacher_epochs"] == 2 and doc["student_epochs"] == 3 and doc["device"] == "cpu"
    from cmcd_edge.distill.machine import made_on  # the ranking trains networks: CPU types differ in its bits too

    assert doc["made_on"] == made_on(torch.device("cpu"))
    picked = {m[0]: int(m[1]) for m in re.findall(r"(teacher|distill): epoch (\d+) selected", res.stderr)}
    assert 1 <= picked["teacher"] <= 2 and 1 <= picked["distill"] <= 3  # the epochs each phase was given


def _select_args(ds, out, *extra):
    return [*CLI, "select-teacher", "--data", str(ds.root), "--target", "tgt", "--seeds", "2", "--teacher-epochs", "2",
            "--student-epochs", "2", "--device", "cpu", "--out", str(out), *extra]


def test_killed_select_teacher_resumes_from_its_measured_teachers(tmp_path):
    """A killed select-teacher started over: 11 minutes per candidate and seed on a 3x32x32 camera source here
    (BENCHMARKS.md). With --out, each measured (seed, view) is kept in OUT.partial.json and a rerun takes it."""
    ds = synthetic_paired(tmp_path / "d", n=300)
    ref = subprocess.run(_select_args(ds, tmp_path / "ref.json"), capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "rank.json"
    partial = tmp_path / "rank.partial.json"
    proc = subprocess.Popen(_select_args(ds, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 120
    while not (partial.exists() and '"0"' in partial.read_text()) and time.time() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists(), "select-teacher finished before it could be killed"
    changed = subprocess.run(_select_args(ds, out, "--teacher-epochs", "3"), capture_output=True, text=True, timeout=300)
    assert_one_line_error(changed, 2, f"{partial}: ", "teacher_epochs: saved 2 vs now 3", "delete it")
    res = subprocess.run(_select_args(ds, out), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "seed 0  src    measured by an earlier run" in res.stderr and "seed 1  src    I(T;S)" in res.stderr
    assert not partial.exists()
    got, want = json.loads(out.read_text()), json.loads((tmp_path / "ref.json").read_text())
    assert got["ranking"] == want["ranking"]  # CPU runs are deterministic: the kept seed reads as if just measured


def test_select_progress_file_that_is_not_one_is_refused_with_the_fix(tmp_path):
    from cmcd_edge.distill.select import Progress
    from cmcd_edge.errors import UserError

    path = tmp_path / "rank.partial.json"
    for text in ("{half a file", '{"key": [], "measured": {}}', "[]"):
        path.write_text(text)
        with pytest.raises(UserError, match=r"rank.partial.json: not a select-teacher progress file .* delete it"):
            Progress(path, {"target": "tgt"}, {})
    path.write_text(json.dumps({"key": {"target": "tgt"}, "measured": {"0": {"src": {"i_sy": 0.0}}}}))
    with pytest.raises(UserError, match=r"other settings \(label_probe: saved null vs now \"crossfit-cv-l2\"\)"):
        Progress(path, {"target": "tgt", "label_probe": mi.LABEL_PROBE}, {})  # left by a select-teacher before session 19
    Progress(tmp_path / "new.partial.json", {"target": "tgt"}, {}).save(3, "src", {"gaussian": 0.5})
    assert Progress(tmp_path / "new.partial.json", {"target": "tgt"}, {}).measured(3) == {"src": {"gaussian": 0.5}}


def test_source_auto_takes_the_top_of_the_ranking_in_distill_and_compare(tmp_path, cli, monkeypatch):
    """`--source auto` ran select-teacher and distilled from its pick, but had no test; compare's help offered it
    too, and compare ended in `--source 'auto': no such view`."""
    from cmcd_edge import datasets
    from cmcd_edge.datasets import ViewSpec

    toy = synthetic_paired(tmp_path / "toy", n=400)
    rng = np.random.default_rng(1)
    views = {name: ViewSpec(np.asarray(toy.view(name)), toy.views[name].kind) for name in ("src", "tgt")}
    views["noise"] = ViewSpec(rng.normal(size=(400, 16)).astype(np.float32), "vector")  # says nothing of the class
    data = datasets.write_dataset(tmp_path / "three", views, np.asarray(toy.labels), list(toy.classes)).root
    (tmp_path / "short.json").write_text(json.dumps({"teacher_epochs": 5, "finetune_epochs": 2}))  # speed only
    common = ("--data", data, "--source", "auto", "--target", "tgt", "--epochs", "2", "--config", tmp_path / "short.json")
    res = cli("distill", *common, "--out", tmp_path / "run")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "--source auto: src (top of the CCH ranking)" in res.stdout
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["config"]["source"] == "src" and [r["view"] for r in run["source_ranking"]["ranking"]][0] == "src"
    res = cli("compare", *common, "--methods", "cmcd,supervised", "--seeds", "1", "--no-upper-bound",
              "--out", tmp_path / "cmp")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "--source auto: src (top of the CCH ranking)" in res.stdout
    results = json.loads((tmp_path / "cmp" / "results.json").read_text())
    assert results["source"] == "src" and results["source_ranking"]["ranking"][0]["view"] == "src"
    # --extend takes the ranking the compare kept (was: every view ranked again, minutes on large data)
    monkeypatch.setattr("cmcd_edge.distill.select.rank_teachers", lambda *a, **k: pytest.fail("ranked again"))
    res = cli("compare", *common, "--methods", "cmcd,supervised", "--seeds", "2", "--no-upper-bound",
              "--out", tmp_path / "cmp", "--extend")
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"--source auto: src (the ranking kept in {tmp_path / 'cmp' / 'results.json'})" in res.stdout
    extended = json.loads((tmp_path / "cmp" / "results.json").read_text())
    assert extended["seeds"] == [0, 1] and extended["source_ranking"] == results["source_ranking"]


def test_select_teacher_config_file_with_a_bad_value_names_the_file_and_the_key(cli, tmp_path):
    data = synthetic_paired(tmp_path / "d", n=200).root
    (tmp_path / "s.json").write_text('{"seeds": 0}')
    res = cli("select-teacher", "--data", data, "--target", "tgt", "--config", tmp_path / "s.json")
    assert_one_line_error(res, 2, f"Error: --config {tmp_path / 's.json'}: seeds 0: must be >= 1")  # was: '--seeds 0'


def test_source_auto_passes_on_the_weak_student_warning(monkeypatch, caplog):
    """`distill --source auto` printed only its pick; when the ranking's label-only student learned next to nothing,
    the pick stands on little, and the warning with the compare command to check it is now said there too."""
    from cmcd_edge.distill import select

    def row(view, i_ts, i_sy):
        return {"view": view, "delta": i_ts - i_sy, "verdict": verdict(i_ts - i_sy),
                "mi_student_label": {"mean": i_sy, "std": 0.0}}

    def ranked(i_sy):
        return lambda *a, **k: {"ranking": [row("acc", 0.10, i_sy)], "label_entropy_nats": 1.79}

    monkeypatch.setattr(select, "rank_teachers", ranked(0.07))
    with caplog.at_level("WARNING"):
        assert select.best_source("d", "gyro")[0] == "acc"
    assert "gyro: the label-only student's embedding holds 0.07 of the labels' 1.79 nats (4%)" in caplog.text
    caplog.clear()
    monkeypatch.setattr(select, "rank_teachers", ranked(1.0))
    with caplog.at_level("WARNING"):
        select.best_source("d", "gyro")
    assert "label-only student" not in caplog.text


def test_select_teacher_resumed_on_another_machine_says_so_and_records_both(tmp_path, caplog):
    """Was: the ranking's made_on named the machine that finished it, though a killed run's teachers were measured on
    the one it started on (a preempted cloud box replaced by another kind), and nothing warned."""
    from cmcd_edge.distill.machine import machine_name, made_on
    from cmcd_edge.distill.select import rank_teachers

    ds = synthetic_paired(tmp_path / "d", n=300)
    here = made_on(torch.device("cpu"))
    other = {"cpu": "Other CPU", "cpu_capability": "AVX2", "threads": 4, "gpu": None}
    partial = tmp_path / "rank.partial.json"
    kw = {"seeds": 1, "teacher_epochs": 2, "student_epochs": 2, "estimators": ("gaussian",), "device": "cpu",
          "progress": partial}
    first = rank_teachers(str(ds.root), "tgt", **kw)  # the library leaves the progress file (the CLI removes it)
    assert first["made_on"] == here and "resumed_on" not in first
    doc = json.loads(partial.read_text())
    assert doc["made_on"] == here
    partial.write_text(json.dumps({**doc, "made_on": other}))  # as if measured there, then killed
    caplog.set_level("WARNING", logger="cmcd_edge.distill.select")
    again = rank_teachers(str(ds.root), "tgt", **kw)  # every teacher taken from the file
    assert again["ranking"] == first["ranking"]
    assert again["made_on"] == other and again["resumed_on"] == [here]
    assert [m.getMessage().split(";")[0] for m in caplog.records if m.levelname == "WARNING"] == [
        f"{partial}: its measurements were made on {machine_name(other)}"]  # (the first ranking logged INFO lines before set_level)


def test_select_teacher_warns_of_a_teacher_that_learned_nothing(tmp_path):
    """Was: a candidate whose teacher stayed at chance (a view without signal, or too few --teacher-epochs) got a
    verdict like any other, though its I(T;S) says nothing of what the view could teach."""
    from cmcd_edge.distill.select import rank_teachers
    from tests.helpers import with_noise_view

    r = rank_teachers(str(with_noise_view(tmp_path / "d").root), "tgt", seeds=1, teacher_epochs=3, student_epochs=3,
                      estimators=("gaussian",), device="cpu")
    acc = {row["view"]: row["teacher_test_accuracy"]["mean"] for row in r["ranking"]}
    assert acc["src"] > 0.9 and acc["noise"] < 0.32, acc
    chance = [w for w in r["warnings"] if "near chance" in w]
    assert len(chance) == 1 and chance[0].startswith("noise: its teacher scored"), r["warnings"]
    assert "--teacher-epochs (now 3)" in chance[0]


def test_select_teacher_measures_a_views_own_teacher_file(cli, tmp_path):
    """--teacher VIEW=FILE: that view's pretrained teacher is measured instead of one trained on it (was: only
    teachers trained here could be ranked). An ONNX teacher that copies the source rows: its I(T;S) is that of the
    view's raw values, the same on every seed, and without logits it has no test top-1 (shown as '-'). A trained
    teacher ranks beside it; the progress key holds the file's sha256, so a file saved over is not mixed in."""
    from cmcd_edge.distill import select
    from cmcd_edge.distill.user_teacher import teacher_sha256
    from tests.helpers import save_onnx_linear

    ds = synthetic_paired(tmp_path / "d", n=300)
    ident = save_onnx_linear(np.eye(16, dtype=np.float32), np.zeros(16, np.float32), tmp_path / "ident.onnx")
    out = tmp_path / "rank.json"
    res = cli("select-teacher", "--data", ds.root, "--target", "tgt", "--seeds", "2", "--teacher-epochs", "2",
              "--student-epochs", "3", "--device", "cpu", "--teacher", f"src={ident}", "--out", out)
    assert res.returncode == 0, res.stderr
    (row,) = json.loads(out.read_text())["ranking"]
    assert row["view"] == "src" and row["teacher"] == str(ident) and row["teacher_test_accuracy"] is None
    assert "teacher: epoch" not in res.stderr  # no teacher trained
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("src "))
    assert f"-  {row['verdict']}" in line and line.endswith(f"({ident})")
    kwargs = {"seeds": 1, "teacher_epochs": 2, "student_epochs": 3, "teachers": {"src": str(ident)},
              "progress": tmp_path / "p.json"}
    select.rank_teachers(str(ds.root), "tgt", **kwargs)
    key = json.loads((tmp_path / "p.json").read_text())["key"]
    assert key["teachers"] == {"src": teacher_sha256(str(ident))}
    save_onnx_linear(2 * np.eye(16, dtype=np.float32), np.zeros(16, np.float32), ident)  # saved over
    with pytest.raises(UserError, match=r"p\.json: a killed select-teacher left this with other settings \(teachers: "):
        select.rank_teachers(str(ds.root), "tgt", **kwargs)


def test_select_teacher_refuses_a_bad_teacher_flag_in_one_line(cli, tmp_path):
    ds = synthetic_paired(tmp_path / "d", n=300)
    base = ("select-teacher", "--data", ds.root, "--target", "tgt", "--seeds", "1")
    assert_one_line_error(cli(*base, "--teacher", "src"), 2, "--teacher src: expected VIEW=FILE (e.g. cam=camera.onnx)")
    assert_one_line_error(cli(*base, "--teacher", "cam=x.onnx"), 2, "--teacher cam=x.onnx: no view 'cam' in")
    assert_one_line_error(cli(*base, "--teacher", "tgt=x.onnx"), 2, "--teacher tgt=x.onnx: 'tgt' is the target")
    assert_one_line_error(cli(*base, "--teacher", f"src={tmp_path / 'no.onnx'}"), 2, "no.onnx: no such file")
    assert_one_line_error(cli(*base, "--teacher", "src=a.onnx", "--teacher", "src=b.onnx"), 2,
                          "--teacher src=b.onnx: view 'src' given twice")


@pytest.mark.parametrize("value", ["LIST", "ONE"])
def test_select_teacher_takes_its_teachers_from_a_config_file_as_a_list_or_one_string(value, cli, tmp_path):
    """A repeatable flag in --config: a list, or one string for one item (was: click's 'Value must be an iterable')."""
    from tests.helpers import save_onnx_linear

    ds = synthetic_paired(tmp_path / "d", n=300)
    ident = save_onnx_linear(np.eye(16, dtype=np.float32), np.zeros(16, np.float32), tmp_path / "ident.onnx")
    item = f"src={ident}"
    (tmp_path / "c.json").write_text(json.dumps({"teacher": [item] if value == "LIST" else item, "seeds": 1,
                                                 "student_epochs": 2}))
    res = cli("select-teacher", "--data", ds.root, "--target", "tgt", "--config", tmp_path / "c.json")
    assert res.returncode == 0, res.stderr[-2000:]
    assert next(ln for ln in res.stdout.splitlines() if ln.startswith("src ")).endswith(f"({ident})")


def test_select_teacher_margin_moves_the_verdict_not_the_measurements(tmp_path, caplog, cli):
    """--margin (was fixed at 0.1 nat): a wide margin reads the same deltas as 'marginal'; it is not part of the
    progress key, so a rerun with another margin takes the measurements kept by the first."""
    from cmcd_edge.distill import select

    ds = synthetic_paired(tmp_path / "d", n=300)
    kwargs = {"seeds": 1, "teacher_epochs": 2, "student_epochs": 2, "progress": tmp_path / "p.json"}
    first = select.rank_teachers(str(ds.root), "tgt", **kwargs)
    caplog.set_level("INFO")
    wide = select.rank_teachers(str(ds.root), "tgt", margin=100.0, **kwargs)
    assert "seed 0  src    measured by an earlier run" in caplog.text
    assert wide["ranking"][0]["delta"] == first["ranking"][0]["delta"] and wide["margin_nats"] == 100.0
    assert first["ranking"][0]["verdict"] == "distill" and wide["ranking"][0]["verdict"] == "marginal"
    for bad in ("-0.5", "nan"):
        assert_one_line_error(cli("select-teacher", "--data", ds.root, "--target", "tgt", "--margin", bad), 2,
                              f"--margin {bad}: must be a finite number of nats >= 0")
