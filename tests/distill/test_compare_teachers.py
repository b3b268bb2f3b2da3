"""compare with a --teacher file or factory: one pass over the rows serves every seed, a teacher without logits is
refused for the methods that need them on its probe, and a teacher replaced since is not reused."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import torch

from cmcd_edge.distill.compare import run_compare
from cmcd_edge.distill.user_teacher import teacher_sha256
from cmcd_edge.errors import UserError
from tests.helpers import counted_teacher, teacher_of_kind


def test_compare_runs_a_loaded_teacher_once_and_scores_it_on_each_seed(base, tmp_path, monkeypatch):
    """A --teacher file's or factory's outputs do not depend on the seed. Was: compare built the teacher and ran it
    over every row once per seed (3 passes for --seeds 3), where only its test top-1 differs from seed to seed."""
    from cmcd_edge import datasets
    from cmcd_edge.distill.teachers import TeacherOutputs
    from cmcd_edge.distill.user_teacher import load_teacher
    from cmcd_edge.splitting import make_splits

    ref, passes = counted_teacher(tmp_path, "counted_teacher", monkeypatch)
    cfg = dataclasses.replace(base, teacher=ref)
    out = tmp_path / "cmp"
    r = run_compare(cfg, ["supervised"], 3, out, upper_bound=False)
    assert passes.read_text() == "x"  # run once, not once per seed
    ds = datasets.load(cfg.data)
    for i, seed in enumerate(r["seeds"]):  # each seed's cache is what a fresh pass of the teacher gives
        splits = make_splits(ds, seed, labeled_fraction=cfg.labeled_fraction)
        fresh = load_teacher(cfg.teacher, ds, "src", splits, torch.device("cpu"))
        cached = TeacherOutputs.load(out / "teachers" / f"seed{seed}")
        assert torch.equal(cached.emb, fresh.emb) and torch.equal(cached.logits, fresh.logits)
        assert cached.test_accuracy == fresh.test_accuracy == r["teacher_test_accuracy"]["runs"][i]
    assert len(set(r["teacher_test_accuracy"]["runs"])) > 1  # scored on each seed's own test split


def test_compare_names_every_method_a_teacher_without_logits_cannot_serve(base, tmp_path, monkeypatch):
    """Was: the first such method's run failed after its folder was made, the message naming --method; and the
    methods that run wrote the teacher's test top-1 as NaN in results.json (not JSON) and 'nan +- 0.0'."""
    cfg = dataclasses.replace(base, teacher=teacher_of_kind("pt2", tmp_path, 0, monkeypatch))  # embeddings only
    with pytest.raises(UserError, match=re.escape(
            f"--methods: kd, cmcd need teacher logits (a kd term); --teacher {cfg.teacher} gives embeddings only: "
            "use methods without kd (cmd, cmc, fitnet, rkd, crd, supervised)")):
        run_compare(cfg, ["cmd", "kd", "cmcd"], 1, tmp_path / "cmp")
    assert not (tmp_path / "cmp" / "runs").exists()
    (tmp_path / "rows_teacher.py").write_text(  # a costly teacher: how many rows it was run on, noted
        "import pathlib\n"
        f"LOG = pathlib.Path({str(tmp_path / 'rows.txt')!r})\n"
        "def make():\n"
        "    def run(x):\n"
        "        LOG.write_text(str(int(LOG.read_text() if LOG.exists() else 0) + len(x)))\n"
        "        return x[:, :8]\n"
        "    return run\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UserError, match=r"--methods: cmcd need teacher logits"):
        run_compare(dataclasses.replace(base, teacher="rows_teacher:make"), ["cmcd"], 1, tmp_path / "cmp2")
    assert (tmp_path / "rows.txt").read_text() == "2"  # the probe's 2 rows, not a pass over all 300 first
    run_compare(cfg, ["cmd"], 1, tmp_path / "cmp", upper_bound=False)  # it has no test top-1: null, not NaN

    def strict(const):
        raise ValueError(f"results.json holds {const}, which JSON does not allow")

    r = json.loads((tmp_path / "cmp" / "results.json").read_text(), parse_constant=strict)
    assert r["teacher_test_accuracy"] == {"mean": None, "std": None, "runs": []}
    md = (tmp_path / "cmp" / "results.md").read_text()
    sha = teacher_sha256(cfg.teacher)  # the file is named, and which model it was: results.md of earlier
    assert r["teacher"] == {"ref": cfg.teacher, "sha256": [sha]}  # versions read 'teacher (src)' for any teacher
    assert f"teacher {cfg.teacher} on src (sha256 {sha[:12]}) test top-1 - (no logits)" in md
    row = next(ln for ln in md.splitlines() if ln.startswith("| cmd |")).split(" | ")
    acc, wall = r["methods"]["cmd"]["test_accuracy"]["mean"], r["methods"]["cmd"]["wall_s"]
    assert row[1] == f"{100 * acc:.1f}"  # was '... +- 0.0': one seed has no spread to show
    assert row[-1] == (f"{wall:.1f} |" if wall < 10 else f"{wall:.0f} |")  # was '0' for a run under half a second


@pytest.mark.parametrize("kind", ["pt2", "onnx", "factory", "weights"])
def test_compare_resume_refuses_a_teacher_replaced_since(kind, base, tmp_path, monkeypatch):
    """Was: the key named the --teacher by its path or factory name, so a killed compare rerun after the file was
    replaced (a retrained teacher saved over the old one), or the factory's module edited, went on with the old
    model's cached outputs without a word."""
    cfg = dataclasses.replace(base, teacher=teacher_of_kind(kind, tmp_path, 0, monkeypatch))
    out = tmp_path / "cmp"
    run_compare(cfg, ["cmd"], 1, out, upper_bound=False)
    (out / "results.json").unlink()
    run_compare(cfg, ["cmd"], 1, out, upper_bound=False)  # the same teacher: its cached outputs are reused
    teacher_of_kind(kind, tmp_path, 1, monkeypatch)
    (out / "results.json").unlink()
    with pytest.raises(UserError, match=r"seed0: this cached teacher was made with other settings \(teacher_sha256: "
                                        r"cached '[0-9a-f]{64}' vs now '[0-9a-f]{64}'\); pass --force"):
        run_compare(cfg, ["cmd"], 1, out, upper_bound=False)


def test_compare_rerun_takes_a_factory_key_of_an_earlier_version(base, tmp_path, monkeypatch):
    """Earlier versions keyed a factory by its module source alone: their teacher_key.json, with the module unchanged,
    is the same teacher (was it refused, every compare made before weights were keyed would start over)."""
    from cmcd_edge.distill.user_teacher import factory_module_sha256

    cfg = dataclasses.replace(base, teacher=teacher_of_kind("weights", tmp_path, 0, monkeypatch))
    out = tmp_path / "cmp"
    first = run_compare(cfg, ["cmd"], 1, out, upper_bound=False)
    key_file = out / "teachers" / "seed0" / "teacher_key.json"
    key = json.loads(key_file.read_text())
    key_file.write_text(json.dumps({**key, "teacher_sha256": factory_module_sha256(cfg.teacher)}))
    (out / "results.json").unlink()
    again = run_compare(cfg, ["cmd"], 1, out, upper_bound=False)
    assert again["methods"]["cmd"] == first["methods"]["cmd"]
