"""distill --method supervised: the labeled target rows alone, as the protocol defines the baseline; no teacher is
trained or run for it (was: a teacher trained, or a --teacher file run over every row, that the recipe never read)."""

from __future__ import annotations

import dataclasses
import json

from cmcd_edge.distill import compare, pipeline
from cmcd_edge.distill.pipeline import run_distill


def test_supervised_trains_no_teacher_and_gives_the_student_compare_gives_beside_a_teacher(base, tmp_path,
                                                                                           monkeypatch):
    calls = []
    real = pipeline.train_teacher
    monkeypatch.setattr(pipeline, "train_teacher", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    res = run_distill(dataclasses.replace(base, method="supervised"), tmp_path / "sup")
    assert calls == [] and not (tmp_path / "sup" / "teacher_outputs.safetensors").exists()
    m = res.metrics
    assert m["teacher_kind"] == "none" and m["teacher_test_accuracy"] is None and m["modality_gap"] is None
    assert json.loads((tmp_path / "sup" / "run.json").read_text())["teacher"] == {"kind": "none"}
    compare.run_compare(base, ["supervised"], 1, tmp_path / "cmp", upper_bound=False)  # its runs share a teacher
    beside = tmp_path / "cmp" / "runs" / "supervised-s0"
    assert (beside / "student.safetensors").read_bytes() == (tmp_path / "sup" / "student.safetensors").read_bytes()
    assert json.loads((beside / "metrics.json").read_text())["modality_gap"] is not None  # a teacher to measure it by


def test_supervised_says_a_teacher_file_is_not_used(cli, base, tmp_path):
    res = cli("distill", "--data", base.data, "--source", "src", "--target", "tgt", "--method", "supervised",
              "--teacher", tmp_path / "absent.pt2", "--epochs", "2", "--out", tmp_path / "run")
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"--method supervised reads no teacher: --teacher {tmp_path / 'absent.pt2'} is not used" in res.stderr
    assert "teacher - (none: the recipe reads no teacher)" in res.stdout
