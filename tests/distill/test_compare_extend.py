"""compare --extend: more seeds or methods for a finished comparison, its finished runs and teachers kept."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from cmcd_edge.distill.compare import run_compare
from cmcd_edge.errors import UserError
from tests.helpers import assert_one_line_error


def _mtimes(folder):
    return {p.relative_to(folder): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_compare_extend_trains_only_the_seeds_and_methods_it_lacks(base, tmp_path, caplog):
    """The compare's own table says how many seeds a gap needs; adding them meant --force (every run trained again)
    or a second folder joined by hand. Now the finished runs and teachers are kept, and the result is the one a
    fresh compare over all the seeds gives (CPU runs are deterministic)."""
    out = tmp_path / "cmp"
    first = run_compare(base, ["kd"], 1, out, upper_bound=False)
    kept = {p: t for p, t in _mtimes(out).items() if p.parts[0] in ("runs", "teachers")}
    caplog.set_level("INFO", logger="cmcd_edge.distill.compare")
    r = run_compare(base, ["kd", "supervised"], 2, out, upper_bound=False, extend=True)
    now = _mtimes(out)
    assert {p: now[p] for p in kept} == kept  # seed 0's teacher and kd run: untouched
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["kd-s0", "kd-s1", "supervised-s0", "supervised-s1"]
    assert r["seeds"] == [0, 1] and set(r["methods"]) == {"kd", "supervised"}
    assert r["methods"]["kd"]["test_accuracy"]["runs"][0] == first["methods"]["kd"]["test_accuracy"]["runs"][0]
    assert json.loads((out / "results.json").read_text())["seeds"] == [0, 1]
    assert "seeds [0, 1]" in (out / "results.md").read_text()
    assert any("kept 1 finished run, trained 3" in m.getMessage() for m in caplog.records)
    fresh = run_compare(base, ["kd", "supervised"], 2, tmp_path / "fresh", upper_bound=False)
    for m in ("kd", "supervised"):
        assert r["methods"][m]["test_accuracy"]["runs"] == fresh["methods"][m]["test_accuracy"]["runs"]


def test_compare_without_extend_names_both_ways_on(base, tmp_path):
    out = tmp_path / "cmp"
    run_compare(base, ["supervised"], 1, out, upper_bound=False)
    with pytest.raises(UserError, match=r"already holds results.json \(seeds \[0\], methods supervised\): pass "
                                        r"--extend to add seeds or methods \(its finished runs are kept\), or --force"):
        run_compare(base, ["supervised"], 2, out, upper_bound=False)


@pytest.mark.parametrize("change,needle", [
    ({"lr": 1e-3}, "lr differ"),
    ({"labeled_fraction": 0.5}, "labeled_fraction differ"),
    ({"target": "src", "source": "tgt"}, "source, target differ"),
])
def test_compare_extend_refuses_another_config_and_leaves_the_results(base, tmp_path, change, needle):
    out = tmp_path / "cmp"
    run_compare(base, ["supervised"], 1, out, upper_bound=False)
    before = _mtimes(out)
    with pytest.raises(UserError) as err:
        run_compare(dataclasses.replace(base, **change), ["supervised"], 2, out, upper_bound=False, extend=True)
    assert f"--extend: {out} was made with another config ({needle})" in str(err.value)
    assert "use the same flags, or --force" in str(err.value)
    assert _mtimes(out) == before


def test_compare_extend_refuses_data_changed_since(base, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(base.data, data)
    cfg = dataclasses.replace(base, data=str(data))
    out = tmp_path / "cmp"
    run_compare(cfg, ["supervised"], 1, out, upper_bound=False)
    view = data / "views" / "src.npy"
    raw = bytearray(view.read_bytes())
    raw[-4] ^= 1  # the last value's lowest mantissa bit
    view.write_bytes(bytes(raw))
    with pytest.raises(UserError, match=r"--extend: .*cmp's data changed since it was made: use --force"):
        run_compare(cfg, ["supervised"], 2, out, upper_bound=False, extend=True)


def test_compare_extend_keeps_runs_whose_data_moved(base, tmp_path):
    import shutil

    shutil.copytree(base.data, tmp_path / "here")
    out = tmp_path / "cmp"
    run_compare(dataclasses.replace(base, data=str(tmp_path / "here")), ["supervised"], 1, out, upper_bound=False)
    sup = out / "runs" / "supervised-s0" / "metrics.json"
    mtime = sup.stat().st_mtime_ns
    shutil.move(tmp_path / "here", tmp_path / "there")
    run_compare(dataclasses.replace(base, data=str(tmp_path / "there")), ["supervised"], 2, out, upper_bound=False,
                extend=True)
    assert sup.stat().st_mtime_ns == mtime


def test_compare_extend_on_an_empty_folder_is_a_plain_compare(base, tmp_path):
    r = run_compare(base, ["supervised"], 1, tmp_path / "cmp", upper_bound=False, extend=True)
    assert r["seeds"] == [0]


def test_compare_cli_refuses_extend_with_force(cli, base, tmp_path):
    res = cli("compare", "--data", base.data, "--source", "src", "--target", "tgt", "--methods", "kd", "--seeds", "1",
              "--out", tmp_path / "cmp", "--extend", "--force")
    assert_one_line_error(res, 2, "--extend and --force")
    assert not (tmp_path / "cmp").exists()


def test_compare_extend_says_when_the_kept_runs_were_made_on_another_machine(base, tmp_path, caplog):
    """CPU runs repeat bit for bit on one CPU type and thread count only: a compare extended on another machine mixes
    seeds that machine would have trained otherwise. It goes on, says so, and results.json lists every machine its
    runs were made on."""
    from cmcd_edge.distill.machine import machine_name, made_on

    here = made_on(torch.device("cpu"))
    other = {"cpu": "Other CPU", "cpu_capability": "AVX2", "threads": 4, "gpu": None}
    out = tmp_path / "cmp"
    r = run_compare(base, ["supervised"], 1, out, upper_bound=False)
    assert r["made_on"] == [here]
    run_json = out / "runs" / "supervised-s0" / "run.json"
    assert json.loads(run_json.read_text())["made_on"] == here
    for path in (out / "results.json", run_json):
        doc = json.loads(path.read_text())
        doc["made_on"] = [other] if path.name == "results.json" else other
        path.write_text(json.dumps(doc))
    caplog.set_level("WARNING", logger="cmcd_edge.distill.compare")
    r = run_compare(base, ["supervised"], 2, out, upper_bound=False, extend=True)
    warned = [m.getMessage() for m in caplog.records if "Other CPU" in m.getMessage()]
    assert warned == [f"--extend: {out}'s runs were made on Other CPU (AVX2, 4 threads); this is {machine_name(here)}: "
                      "training repeats bit for bit on one CPU (or GPU) type and thread count only, so what trains "
                      "here is not what that machine would give (equally valid, not identical)"]
    assert r["made_on"] == [other, here]
    assert (out / "results.md").read_text().splitlines()[0].endswith(
        f"; trained on Other CPU (AVX2, 4 threads) and {machine_name(here)}")
    caplog.clear()
    run_compare(base, ["supervised"], 3, out, upper_bound=False, extend=True)  # its own machine among them: still said
    assert [m for m in caplog.records if "Other CPU" in m.getMessage()]


def test_compare_results_name_the_machine_a_kept_run_was_resumed_on(base, tmp_path):
    """A run that a killed compare left half-trained and another machine finished trained on both."""
    from cmcd_edge.distill.machine import made_on

    here = made_on(torch.device("cpu"))
    other = {"cpu": "Other CPU", "cpu_capability": "AVX2", "threads": 4, "gpu": None}
    out = tmp_path / "cmp"
    run_compare(base, ["supervised"], 1, out, upper_bound=False)
    run_json = out / "runs" / "supervised-s0" / "run.json"
    run_json.write_text(json.dumps({**json.loads(run_json.read_text()), "resumed_on": [other]}))
    r = run_compare(base, ["supervised"], 2, out, upper_bound=False, extend=True)
    assert r["made_on"] == [here, other]
