"""compare: one teacher per seed shared by every method, results.json/results.md, a killed compare resumes."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import time

import pytest

from cmcd_edge.distill.compare import run_compare
from cmcd_edge.distill.compare_results import _ceiling_lines, _verdict_lines, paired, seeds_to_decide, t975
from cmcd_edge.errors import UserError
from tests.conftest import CLI
from tests.helpers import INTERRUPTED, assert_one_line_error


def test_compare_writes_results_for_every_method_and_the_ceiling(base, tmp_path, caplog):
    caplog.set_level("INFO", logger="cmcd_edge.distill.compare")
    r = run_compare(base, ["cmcd", "supervised"], 2, tmp_path / "cmp")
    # each run's line says how far the compare is and about how long the rest takes (was: neither)
    done = [m.getMessage() for m in caplog.records if "test top-1" in m.getMessage()]
    assert [ln.rsplit("[", 1)[1].split(",")[0].rstrip("]") for ln in done] == [f"{k}/6" for k in range(1, 7)]
    assert all(", about " in ln and ln.endswith(" left]") for ln in done[:-1]) and done[-1].endswith("[6/6]")
    assert set(r["methods"]) == {"cmcd", "supervised"} and r["seeds"] == [0, 1]
    for m in r["methods"].values():
        assert 0.0 <= m["test_accuracy"]["mean"] <= 1.0 and m["wall_s"] > 0
        assert len(m["val_accuracy"]["runs"]) == 2 and 0.0 <= m["val_accuracy"]["mean"] <= 1.0
    assert r["upper_bound"]["method"] == "supervised@100%"
    assert sorted(p.name for p in (tmp_path / "cmp" / "teachers").iterdir()) == ["seed0", "seed1"]
    md = (tmp_path / "cmp" / "results.md").read_text()
    assert "cmcd" in md and "supervised" in md
    val = r["methods"]["cmcd"]["val_accuracy"]
    assert "| val top-1 (%) |" in md and f"| {100 * val['mean']:.1f} +- {100 * val['std']:.1f} |" in md
    # the ceiling is paired too: the built-in teacher learned every train label, so a distilled student that does not
    # beat the student trained on those labels gained nothing from the source view (a noise-view teacher on mfeat
    # lifts the 10%-label zer student by 5.6 points, to the ceiling)
    ceil = r["paired"]["minus"]["supervised@100%"]
    want = [a - b for a, b in zip(r["methods"]["cmcd"]["test_accuracy"]["runs"],
                                  r["upper_bound"]["test_accuracy"]["runs"], strict=True)]
    assert ceil["runs"] == pytest.approx(want) and "ci95" in ceil
    assert f"| supervised@100% | {100 * r['upper_bound']['test_accuracy']['mean']:.1f}" in md
    assert f"{100 * ceil['mean']:+.2f} +- {100 * ceil['std']:.2f}" in md
    assert "The teacher learned from every train label of src; supervised@100% is the target student" in md
    with pytest.raises(UserError, match="--force"):
        run_compare(base, ["cmcd"], 1, tmp_path / "cmp")


def test_compare_at_all_labels_trains_the_ceiling_once_as_the_supervised_run(base, tmp_path):
    """At --labeled-fraction 1 supervised@100% is the supervised run: it was trained a second time into its own
    folder (same config, same figures, twice the time)."""
    r = run_compare(dataclasses.replace(base, labeled_fraction=1.0), ["supervised"], 1, tmp_path / "cmp")
    assert sorted(p.name for p in (tmp_path / "cmp" / "runs").iterdir()) == ["supervised-s0"]
    assert r["upper_bound"]["test_accuracy"] == r["methods"]["supervised"]["test_accuracy"]


@pytest.mark.parametrize("methods,seed,seeds,needle", [
    (["cmcd", "fitnett"], 0, 1, "--methods: unknown method 'fitnett' (did you mean 'fitnet'?); valid: cmcd, cmd"),
    (["cmcd", "kd", "cmcd"], 0, 1, "--methods: 'cmcd' appears twice"),  # was: internal error after every run trained
    ([], 0, 1, "--methods: no method given; valid: cmcd, cmd"),
    (["kd"], 2**32 - 1, 2, "--seed 4294967295 --seeds 2: the last seed, 4294967296, passes 4294967295"),
    (["kd"], 0, 0, "--seeds 0: must be >= 1"),  # as select-teacher words it (was: '--seeds must be >= 1, got 0')
])
def test_compare_bad_input_is_refused_before_anything_is_made(base, tmp_path, methods, seed, seeds, needle):
    with pytest.raises(UserError) as err:
        run_compare(dataclasses.replace(base, seed=seed), methods, seeds, tmp_path / "cmp")
    assert needle in str(err.value)
    assert not (tmp_path / "cmp").exists()


def test_compare_cli_refuses_a_repeated_method_in_one_line(cli, base, tmp_path):
    res = cli("compare", "--data", base.data, "--source", "src", "--target", "tgt", "--methods", "cmcd, kd,cmcd",
              "--seeds", "1", "--out", tmp_path / "cmp")
    assert_one_line_error(res, 2, "--methods: 'cmcd' appears twice")
    assert not (tmp_path / "cmp").exists()


def test_compare_reports_per_class_accuracy_and_the_most_confused_pairs(base, tmp_path):
    r = run_compare(base, ["kd", "supervised"], 2, tmp_path / "cmp", upper_bound=False)
    runs = {m: [json.loads((tmp_path / "cmp" / "runs" / f"{m}-s{s}" / "metrics.json").read_text()) for s in (0, 1)]
            for m in ("kd", "supervised")}
    for m, ms in runs.items():
        for c in ("c0", "c1", "c2", "c3"):
            got, seeds = r["methods"][m]["test_per_class"][c], [x["test_per_class"][c] for x in ms]
            assert got["runs"] == [v["top1"] for v in seeds] and got["rows"] == [v["rows"] for v in seeds] == [15, 15]
            assert got["top1"] == pytest.approx(sum(got["runs"]) / 2)
    pairs: dict = {}
    for x in runs["kd"] + runs["supervised"]:
        for c in x["test_confusions"]:
            key = tuple(sorted((c["true"], c["pred"])))
            pairs[key] = pairs.get(key, 0) + c["rows"]
    errors = sum(round((1 - x["test_accuracy"]) * 60) for x in runs["kd"] + runs["supervised"])  # 60 test rows
    top = max(pairs.items(), key=lambda kv: kv[1])
    assert r["confused_pairs"][0]["rows"] == top[1] and r["confused_pairs"][0]["share"] == pytest.approx(top[1] / errors)
    assert [p["rows"] for p in r["confused_pairs"]] == sorted((p["rows"] for p in r["confused_pairs"]), reverse=True)
    md = (tmp_path / "cmp" / "results.md").read_text()
    a, b = r["confused_pairs"][0]["classes"]
    assert f"{a} <-> {b} {top[1]} (" in md and "| class | kd | supervised |" in md
    assert f"| c0 | {100 * r['methods']['kd']['test_per_class']['c0']['top1']:.1f} |" in md


def test_compare_reports_the_first_method_minus_each_other_seed_by_seed(base, tmp_path):
    r = run_compare(base, ["cmcd", "kd", "supervised"], 2, tmp_path / "cmp", upper_bound=False)
    assert r["paired"]["reference"] == "cmcd" and set(r["paired"]["minus"]) == {"kd", "supervised"}
    for m in ("kd", "supervised"):
        want = [a - b for a, b in zip(r["methods"]["cmcd"]["test_accuracy"]["runs"],
                                      r["methods"][m]["test_accuracy"]["runs"], strict=True)]
        assert r["paired"]["minus"][m]["runs"] == pytest.approx(want)
    d = r["paired"]["minus"]["kd"]
    half = 12.706 * d["std"] / 2 ** 0.5  # two seeds: t with 1 degree of freedom
    assert d["ci95"] == pytest.approx([d["mean"] - half, d["mean"] + half])
    cell = f"| {100 * d['mean']:+.2f} +- {100 * d['std']:.2f} [{100 * d['ci95'][0]:+.2f}, {100 * d['ci95'][1]:+.2f}] |"
    md = (tmp_path / "cmp" / "results.md").read_text()
    assert cell in md and _verdict_lines(r)[-1] in md
    assert d["verdict"] in ("better", "worse", "tie", "unresolved") and "seeds_to_decide" in d


@pytest.mark.parametrize("runs,verdict", [
    ([0.02, 0.03, 0.025], "better"),  # mean +2.5, half-width 4.303 * 0.005 / sqrt(3) = 1.2: excludes 0
    ([-0.02, -0.03, -0.025], "worse"),
    ([0.001, -0.001, 0.0], "tie"),  # half-width 0.25 point: inside +-1
    ([0.03, -0.03, 0.0], "unresolved"),  # half-width 7.5 points
])
def test_paired_verdict_from_the_t_interval(runs, verdict):
    acc = {"a": [0.8 + d for d in runs], "b": [0.8, 0.8, 0.8]}
    assert paired(["a", "b"], acc)["minus"]["b"]["verdict"] == verdict


def test_seeds_to_decide_golden_values():
    # mean 0, sd 1 point: the half-width t(n-1) * 0.01 / sqrt(n) must fall below 1 point: t(6) / sqrt(7) = 0.925 at
    # n = 7, t(5) / sqrt(6) = 1.05 at n = 6
    assert seeds_to_decide(0.0, 0.01) == 7
    # mean -1.92, sd 1.66 points (fou, cmcd - fitnet, seeds 0-2): below 1.92: t(5) 2.571 * 1.66 / sqrt(6) = 1.74
    assert seeds_to_decide(-0.0192, 0.0166) == 6
    assert seeds_to_decide(0.05, 0.0) == 2  # no spread: two seeds decide
    assert seeds_to_decide(0.005, 0.1) is None  # half a point apart, 10-point spread: over 1000 seeds


def test_verdict_sentence_names_each_group_and_the_seeds_undecided_gaps_need():
    acc = {"cmcd": [0.85, 0.84, 0.86], "kd": [0.849, 0.841, 0.859], "sup": [0.75, 0.76, 0.74],
           "fitnet": [0.88, 0.84, 0.83]}
    r = {"seeds": [0, 1, 2], "paired": paired(list(acc), acc)}
    *_, line, _, more = _verdict_lines(r)
    assert more == "To add seeds, rerun the same command with `--seeds N --extend`: its finished runs are kept."
    n = r["paired"]["minus"]["fitnet"]["seeds_to_decide"]
    assert line == (f"cmcd at 95% over seeds [0, 1, 2] (paired t interval): better than sup; tied within +-1 point "
                    f"with kd; not decided against fitnet (~{n} seeds): the seeds each gap would need, at this run's "
                    f"per-seed mean and spread.")
    one = {"seeds": [0], "paired": paired(["cmcd", "kd"], {"cmcd": [0.8], "kd": [0.7]})}
    assert "one seed gives no interval" in _verdict_lines(one)[-1]
    decided = {k: acc[k] for k in ("cmcd", "kd", "sup")}
    assert "--extend" not in "".join(_verdict_lines({"seeds": [0, 1, 2], "paired": paired(list(decided), decided)}))


@pytest.mark.parametrize("teacher,upper,says", [
    ("train", True, True),
    ("teachers/fac.pt2", True, False),  # a teacher of the user's: it need not have seen these labels
    ("train", False, False),  # --no-upper-bound
])
def test_ceiling_line_only_for_a_built_in_teacher_beside_the_ceiling(teacher, upper, says):
    acc = {"cmcd": [0.85, 0.84], "supervised": [0.75, 0.76], **({"supervised@100%": [0.83, 0.84]} if upper else {})}
    r = {"source": "fac", "config": {"teacher": teacher}, "paired": paired(list(acc), acc)}
    assert bool(_ceiling_lines(r)) == says


@pytest.mark.parametrize("df,want", [(1, 12.706), (2, 4.303), (30, 2.042), (40, 2.021), (60, 2.000), (120, 1.980)])
def test_t975_matches_the_t_table(df, want):
    assert t975(df) == pytest.approx(want, abs=1.5e-3)


def test_compare_resume_reuses_only_runs_made_with_the_same_config(base, tmp_path):
    out = tmp_path / "cmp"
    run_compare(base, ["kd", "supervised"], 1, out, upper_bound=False)
    (out / "results.json").unlink()  # as if killed before the end
    kd, sup = out / "runs" / "kd-s0", out / "runs" / "supervised-s0"
    stale = json.loads((kd / "run.json").read_text())
    stale["config"]["loss"]["kd_t"] = 2.0  # a run left over from another config
    (kd / "run.json").write_text(json.dumps(stale))
    mtime_sup, mtime_kd = (sup / "metrics.json").stat().st_mtime_ns, (kd / "metrics.json").stat().st_mtime_ns
    r = run_compare(dataclasses.replace(base), ["kd", "supervised"], 1, out, upper_bound=False)
    assert (sup / "metrics.json").stat().st_mtime_ns == mtime_sup  # finished with this config: kept
    assert (kd / "metrics.json").stat().st_mtime_ns != mtime_kd  # another config: trained again
    assert json.loads((kd / "run.json").read_text())["config"]["loss"]["kd_t"] == base.loss.kd_t
    assert set(r["methods"]) == {"kd", "supervised"}


def test_compare_resume_retrains_a_run_whose_method_recipe_changed(base, tmp_path):
    out = tmp_path / "cmp"
    run_compare(base, ["kd"], 1, out, upper_bound=False)
    (out / "results.json").unlink()
    kd = out / "runs" / "kd-s0"
    metrics = json.loads((kd / "metrics.json").read_text())
    metrics["recipe"] = "Loss = 2.0 * kd + 1.0 * ce"  # same config, but `--method kd` meant another recipe then
    (kd / "metrics.json").write_text(json.dumps(metrics))
    run_compare(base, ["kd"], 1, out, upper_bound=False)
    assert json.loads((kd / "metrics.json").read_text())["recipe"] == "Loss = 1.0 * kd + 1.0 * ce"


def test_compare_resume_retrains_a_run_whose_student_network_changed(base, tmp_path, caplog):
    """A finished short-sequence cnn1d run of a version before run.json kept ``student_spec`` trained a stem of
    stride 2: a rerun or --extend trains it again in today's network (was: kept beside runs of the other network)."""
    from tests.helpers import synthetic_paired

    ds = synthetic_paired(tmp_path / "seq", "sequence", n=200, target_shape=(3, 16))
    cfg = dataclasses.replace(base, data=str(ds.root))
    out = tmp_path / "cmp"
    run_compare(cfg, ["supervised"], 1, out, upper_bound=False)
    run_json = out / "runs" / "supervised-s0" / "run.json"
    record = json.loads(run_json.read_text())
    del record["student_spec"]
    run_json.write_text(json.dumps(record))
    caplog.set_level("INFO")
    run_compare(cfg, ["supervised"], 1, out, upper_bound=False, extend=True)
    assert "supervised-s0: trained another student network (stem_stride: 2 vs now 1" in caplog.text
    assert json.loads(run_json.read_text())["student_spec"]["stem_stride"] == 1


def test_compare_resume_retrains_a_teacher_whose_network_changed_and_its_runs(base, tmp_path, caplog):
    """A compare distilling from a short-sequence source of a version before teacher_key.json kept the network
    (session 35 gave cnn1d's stem stride 1 under 32 steps): a rerun trains the seed's teacher again and the runs
    distilled from it (was: kept the old network's outputs, and a killed teacher's checkpoint went on in the new
    network). A vector source's teacher cached by that version is kept."""
    from tests.helpers import synthetic_paired

    ds = synthetic_paired(tmp_path / "seq", "sequence", n=200, target_shape=(3, 16))
    cfg = dataclasses.replace(base, data=str(ds.root), source="tgt", target="src")
    out = tmp_path / "cmp"
    run_compare(cfg, ["kd"], 1, out, upper_bound=False)
    teacher = out / "teachers" / "seed0"
    key, run_json = teacher / "teacher_key.json", out / "runs" / "kd-s0" / "run.json"
    assert json.loads(key.read_text())["teacher_spec"]["stem_stride"] == 1
    caplog.set_level("INFO")
    for keyed in (True, False):  # a key of that version (no teacher_spec), or none (a folder before keys)
        if keyed:
            doc = json.loads(key.read_text())
            del doc["teacher_spec"]
            key.write_text(json.dumps(doc))
        else:
            key.unlink()
        for path, spec in [(teacher / "teacher_outputs.json", lambda d: d["spec"]),
                           (run_json, lambda d: d["teacher"]["spec"])]:
            doc = json.loads(path.read_text())
            del spec(doc)["stem_stride"]  # as an older version wrote them
            path.write_text(json.dumps(doc))
        caplog.clear()
        run_compare(cfg, ["kd"], 1, out, upper_bound=False, extend=True)
        assert "seed 0: the teacher in " in caplog.text and "is another network (stem_stride: 2 vs now 1" in caplog.text
        assert "kd-s0: trained another teacher network (stem_stride: 2 vs now 1" in caplog.text
        assert json.loads(key.read_text())["teacher_spec"]["stem_stride"] == 1
        assert json.loads(run_json.read_text())["teacher"]["spec"]["stem_stride"] == 1
        caplog.clear()
        run_compare(cfg, ["kd"], 1, out, upper_bound=False, extend=True)  # then kept: not trained on every rerun
        assert "trained again" not in caplog.text

    out = tmp_path / "vec"
    run_compare(base, ["kd"], 1, out, upper_bound=False)
    key, outputs = out / "teachers" / "seed0" / "teacher_key.json", out / "teachers" / "seed0" / "teacher_outputs.json"
    doc = json.loads(key.read_text())
    del doc["teacher_spec"]
    key.write_text(json.dumps(doc))
    mtime = outputs.stat().st_mtime_ns
    run_compare(base, ["kd"], 1, out, upper_bound=False, extend=True)
    assert outputs.stat().st_mtime_ns == mtime


def test_compare_resume_retrains_a_run_from_a_version_without_per_class_figures(base, tmp_path):
    out = tmp_path / "cmp"
    run_compare(base, ["kd"], 1, out, upper_bound=False)
    (out / "results.json").unlink()
    path = out / "runs" / "kd-s0" / "metrics.json"
    metrics = json.loads(path.read_text())
    del metrics["test_per_class"], metrics["test_confusions"]
    path.write_text(json.dumps(metrics))
    r = run_compare(base, ["kd"], 1, out, upper_bound=False)
    assert "test_per_class" in json.loads(path.read_text()) and r["methods"]["kd"]["test_per_class"]


def test_summary_aligns_per_class_figures_with_seeds_when_a_class_misses_a_seed():
    from cmcd_edge.distill.compare_results import summary

    def run(acc, per_class):
        return {"test_accuracy": acc, "test_macro_f1": acc, "val_accuracy": acc, "wall_s": 1.0,
                "test_per_class": {c: {"rows": n, "top1": t} for c, (n, t) in per_class.items()}}

    s = summary([run(0.5, {"a": (2, 0.5), "b": (2, 0.5)}), run(1.0, {"b": (3, 1.0)})])
    assert s["test_per_class"] == {"a": {"top1": 0.5, "runs": [0.5, None], "rows": [2, 0]},
                                   "b": {"top1": 0.75, "runs": [0.5, 1.0], "rows": [2, 3]}}
    assert s["test_accuracy"]["mean"] == 0.75 and s["wall_s"] == 2.0


def test_compare_resume_refuses_a_cached_teacher_made_with_other_settings(base, tmp_path):
    out = tmp_path / "cmp"
    run_compare(base, ["supervised"], 1, out, upper_bound=False)
    (out / "results.json").unlink()
    with pytest.raises(UserError, match=r"seed0: this cached teacher was made with other settings \(teacher_epochs: "
                                        r"cached 2 vs now 3\); pass --force"):
        run_compare(dataclasses.replace(base, teacher_epochs=3), ["supervised"], 1, out, upper_bound=False)
    for f in (out / "teachers" / "seed0").glob("teacher_outputs.*"):  # as if killed while the teacher trained
        f.unlink()
    with pytest.raises(UserError, match=r"seed0: this cached teacher was made with other settings \(teacher_epochs: "):
        run_compare(dataclasses.replace(base, teacher_epochs=3), ["supervised"], 1, out, upper_bound=False)
    with pytest.raises(UserError, match=r"other settings \(teacher_select_window: cached 1 vs now 3\)"):
        run_compare(dataclasses.replace(base, teacher_select_window=3), ["supervised"], 1, out, upper_bound=False)
    with pytest.raises(UserError, match=r"other settings \(teacher_lr: cached 0.002 vs now 0.001, teacher_patience: "
                                        r"cached 20 vs now 5\)"):
        run_compare(dataclasses.replace(base, teacher_lr=1e-3, teacher_patience=5), ["supervised"], 1, out,
                    upper_bound=False)
    run_compare(base, ["supervised"], 1, out, upper_bound=False)  # the default window is keyed as before: continues
    key = json.loads((out / "teachers" / "seed0" / "teacher_key.json").read_text())
    assert not {"teacher_lr", "teacher_weight_decay", "teacher_patience", "teacher_select_window"} & set(key)


def test_teacher_key_diff_reads_a_left_out_window_as_its_default_both_ways():
    from cmcd_edge.distill.compare import _key_diff

    assert _key_diff({"seed": 0}, {"seed": 0, "teacher_select_window": 3}) == "teacher_select_window: cached 1 vs now 3"
    assert _key_diff({"seed": 0, "teacher_select_window": 3}, {"seed": 0}) == "teacher_select_window: cached 3 vs now 1"
    assert _key_diff({"seed": 0}, {"seed": 1, "teacher_sha256": "ab"}) == ("seed: cached 0 vs now 1, "
                                                                          "teacher_sha256: cached absent vs now 'ab'")
    assert _key_diff({"seed": 0}, {"seed": 0}) == ""


def test_compare_resume_keeps_runs_from_another_preload_and_teachers_cached_before_keys(base, tmp_path):
    out = tmp_path / "cmp"
    run_compare(base, ["supervised"], 1, out, upper_bound=False)
    (out / "results.json").unlink()
    key = out / "teachers" / "seed0" / "teacher_key.json"
    assert json.loads(key.read_text())["teacher_epochs"] == 2 and len(json.loads(key.read_text())["data"]) == 64
    key.unlink()  # as cached by an older version
    sup = out / "runs" / "supervised-s0" / "metrics.json"
    mtime = sup.stat().st_mtime_ns
    run_compare(dataclasses.replace(base, preload="never"), ["supervised"], 1, out, upper_bound=False)
    assert sup.stat().st_mtime_ns == mtime  # where a run reads its rows from is not part of what it trained


def test_compare_resume_keeps_runs_whose_data_moved(base, tmp_path):
    """A killed compare rerun with --data at the data's new place keeps its finished runs, as --resume keeps a run
    (was: each was trained again, 'made with another config', its data path being part of the key)."""
    import shutil

    shutil.copytree(base.data, tmp_path / "here")
    out = tmp_path / "cmp"
    run_compare(dataclasses.replace(base, data=str(tmp_path / "here")), ["supervised"], 1, out, upper_bound=False)
    (out / "results.json").unlink()
    sup = out / "runs" / "supervised-s0" / "metrics.json"
    mtime = sup.stat().st_mtime_ns
    shutil.move(tmp_path / "here", tmp_path / "there")
    run_compare(dataclasses.replace(base, data=str(tmp_path / "there")), ["supervised"], 1, out, upper_bound=False)
    assert sup.stat().st_mtime_ns == mtime


def test_ctrl_c_during_compare_says_finished_runs_are_kept(base, tmp_path):
    """Ctrl-C used to end in click's bare "Aborted!": nothing told the user that rerunning continues the comparison."""
    out = tmp_path / "cmp"
    args = [*CLI, "compare", "--data", base.data, "--source", "src", "--target", "tgt", "--methods", "supervised,kd",
            "--seeds", "2", "--epochs", "2", "--device", "cpu", "--out", str(out)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 120
    while not (out / "runs" / "supervised-s0" / "metrics.json").exists() and time.time() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert not (out / "results.json").exists(), "the comparison finished before it could be interrupted"
    assert_one_line_error(subprocess.CompletedProcess(args, proc.returncode, "", err), INTERRUPTED,
                          f"interrupted: {out} keeps its finished runs", "rerun the same command")


def _cmp_args(base, out):
    return [*CLI, "compare", "--data", base.data, "--source", "src", "--target", "tgt", "--methods", "kd", "--seeds",
            "1", "--epochs", "40", "--device", "cpu", "--no-upper-bound", "--config", _json_cfg(out.parent), "--out",
            str(out)]


def _json_cfg(folder):
    path = folder / "cmp.json"
    path.write_text(json.dumps({"teacher_epochs": 2, "finetune_epochs": 2, "patience": 100}))
    return str(path)


def test_killed_compare_continues_its_unfinished_run_from_the_checkpoint(base, tmp_path):
    """A killed compare kept only finished runs: the run it was in started over. Now that run continues from its last
    epoch and ends as an uninterrupted compare's (CPU runs are deterministic)."""
    (tmp_path / "ref").mkdir()
    ref = subprocess.run(_cmp_args(base, tmp_path / "ref" / "cmp"), capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr
    (tmp_path / "k").mkdir()
    out = tmp_path / "k" / "cmp"
    proc = subprocess.Popen(_cmp_args(base, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    ckpt = out / "runs" / "kd-s0" / "checkpoint.pt"
    deadline = time.time() + 120
    while not (ckpt.exists() and (out / "runs" / "kd-s0" / "history.csv").exists()) and time.time() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "runs" / "kd-s0" / "metrics.json").exists(), "the run finished before it could be killed"
    res = subprocess.run(_cmp_args(base, out), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "kd-s0: continuing the killed run from its checkpoint" in res.stderr, res.stderr
    got = (out / "runs" / "kd-s0" / "student.safetensors").read_bytes()
    assert got == (tmp_path / "ref" / "cmp" / "runs" / "kd-s0" / "student.safetensors").read_bytes()
