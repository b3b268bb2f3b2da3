"""Progress of long steps off a terminal: log lines with rates and the time left."""

from __future__ import annotations

import torch

from cmcd_edge.distill import progress


def test_progress_off_a_terminal_logs_the_epoch_at_most_every_interval(caplog):
    """pytest's stderr is no terminal, so tqdm is off: a log line stands in for it (was: silence for a whole phase)."""
    caplog.set_level("INFO", logger="cmcd_edge.distill.progress")
    every = progress.EpochProgress("teacher", 80, 0, every_s=0.0)
    every.update(1, 0.5, 0.25)
    every.update(2, 0.4, 0.5)
    every.close()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and lines[1].startswith("teacher: epoch 2/80  loss 0.4000  val accuracy 0.5000  (")
    caplog.clear()
    rare = progress.EpochProgress("teacher", 80, 0, every_s=3600.0)
    rare.update(1, 0.5, 0.25)
    assert not caplog.records


def test_rows_progress_off_a_terminal_logs_rows_rate_and_time_left(caplog):
    """The frozen teacher's pass over every row had no progress at all: with a large pretrained teacher on a CPU,
    minutes to hours of silence between the teacher's load and the first distill epoch."""
    caplog.set_level("INFO", logger="cmcd_edge.distill.progress")
    with progress.RowsProgress("teacher outputs", 3000, every_s=0.0) as p:
        p.update(1000)
        p.update(1000)
        p.update(1000)  # done: no line (the next stage's says so)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and lines[0].startswith("teacher outputs: 1,000 of 3,000 rows (33%), "), lines
    assert "rows/s, about " in lines[1] and lines[1].endswith("s left")
    caplog.clear()
    with progress.RowsProgress("teacher outputs", 3000, every_s=0.0, show=False) as quiet:  # another torchrun rank
        quiet.update(1000)
    assert not caplog.records


def test_teacher_pass_reports_its_progress(tmp_path, caplog, monkeypatch):
    import functools

    from cmcd_edge import datasets
    from cmcd_edge.distill import user_teacher
    from cmcd_edge.splitting import make_splits
    from tests.helpers import synthetic_paired, teacher_of_kind

    ds = datasets.load(synthetic_paired(tmp_path / "toy", n=300).root)
    ref = teacher_of_kind("factory", tmp_path, 0, monkeypatch)
    monkeypatch.setattr(progress, "RowsProgress", functools.partial(progress.RowsProgress, every_s=0.0))
    monkeypatch.setattr(user_teacher, "EXTERNAL_BATCH_BYTES", 100 * 16 * 4)  # 100 rows of 16 float32 a batch
    caplog.set_level("INFO", logger="cmcd_edge.distill.progress")
    user_teacher.load_teacher(ref, ds, "src", make_splits(ds, 0), torch.device("cpu"))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("teacher outputs:")]
    assert [ln.split(" rows")[0] for ln in lines] == ["teacher outputs: 100 of 300", "teacher outputs: 200 of 300"]


def test_time_left_at_the_pace_so_far():
    time_left = progress.time_left
    assert time_left(10.0, 2, 4) == ", about 10s left"
    assert time_left(60.0, 1, 3) == ", about 2 min left"  # 120 s: minutes from 90 s on
    assert time_left(5.0, 3, 3) == "" and time_left(0.0, 0, 3) == ""
