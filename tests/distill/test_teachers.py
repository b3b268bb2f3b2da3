from __future__ import annotations

import dataclasses

import pytest
import torch

from cmcd_edge.distill import teachers
from cmcd_edge.distill.engine import TeacherTraining


def test_distill_warns_once_of_a_teacher_at_chance_and_not_of_a_good_one(tmp_path, caplog):
    """Was: a teacher that learned nothing (a view without signal, or too few teacher epochs) was distilled from
    without a word; the run's one hint was 'teacher 24.4%' at the end of its summary line."""
    from cmcd_edge.distill.config import DistillConfig
    from cmcd_edge.distill.pipeline import run_distill
    from tests.helpers import with_noise_view

    data = str(with_noise_view(tmp_path / "d").root)
    cfg = DistillConfig(data=data, source="noise", target="tgt", method="cmd", epochs=2, teacher_epochs=3,
                        finetune_epochs=1, device="cpu")
    caplog.set_level("WARNING", logger="cmcd_edge.distill.pipeline")
    for seed in (0, 1):  # a compare's runs: one warning
        run_distill(dataclasses.replace(cfg, seed=seed), tmp_path / f"noise{seed}")
    warned = [r.getMessage() for r in caplog.records if "chance" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("teacher: its test top-1 on noise is "), warned
    assert "it has little to teach" in warned[0] and "teacher_epochs" in warned[0]
    caplog.clear()
    run_distill(dataclasses.replace(cfg, source="src"), tmp_path / "src")
    assert not [r for r in caplog.records if "chance" in r.getMessage()]


@pytest.mark.parametrize("window", [1, 3])
def test_train_teacher_selects_over_the_window_it_is_given(window, toy, tmp_path, caplog):
    """The built-in teacher's model selection takes ``select_window`` (the config's ``teacher_select_window``): the
    epoch it keeps is the one engine.BestOnVal picks over that window from the teacher's own val curve."""
    import csv

    from cmcd_edge import datasets
    from cmcd_edge.distill import ddp
    from cmcd_edge.distill.engine import BestOnVal
    from cmcd_edge.splitting import make_splits

    ds = datasets.load(str(toy))
    caplog.set_level("INFO", logger="cmcd_edge.distill.engine")
    teachers.train_teacher(ds, "src", make_splits(ds, 0), TeacherTraining(epochs=8, select_window=window), seed=0,
                           device=torch.device("cpu"), dist=ddp.Dist(), out=tmp_path)
    curve = list(csv.DictReader(open(tmp_path / "teacher_history.csv")))
    replay = BestOnVal(window)
    for row in curve:
        replay.add(float(row["val_acc"]), float(row["val_loss"]), {})
    replay.finish()
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("teacher: epoch")]
    assert line.startswith(f"teacher: epoch {replay.best_epoch + 1} selected"), (line, curve)
    assert (f"averaged over a {window}-epoch window" in line) == (window > 1)


def test_train_teacher_takes_its_optimiser_and_patience_from_the_config(toy, tmp_path):
    """teacher_lr, teacher_weight_decay and teacher_patience (were fixed at 2e-3, 1e-4 and 20): the history's first
    learning rate is the one given (a cosine schedule from it), and patience 1 stops at the first epoch without a
    better val score. A teacher on the toy's noisy view, whose val score does not rise every epoch."""
    import csv

    from cmcd_edge import datasets
    from cmcd_edge.distill import ddp
    from cmcd_edge.splitting import make_splits

    ds = datasets.load(str(toy))
    runs = {}
    for name, training in [("default", TeacherTraining(epochs=12)),
                           ("set", TeacherTraining(epochs=12, lr=5e-4, weight_decay=0.0, patience=1))]:
        teachers.train_teacher(ds, "tgt", make_splits(ds, 0), training, seed=0, device=torch.device("cpu"),
                               dist=ddp.Dist(), out=tmp_path / name)
        runs[name] = list(csv.DictReader(open(tmp_path / name / "teacher_history.csv")))
    assert float(runs["default"][0]["lr"]) == pytest.approx(2e-3, rel=0.05)
    assert float(runs["set"][0]["lr"]) == pytest.approx(5e-4, rel=0.05)
    assert len(runs["set"]) < len(runs["default"]) == 12  # patience 1 stopped early; 20 ran all 12 epochs


def test_teacher_pass_halves_its_batch_on_gpu_out_of_memory(tmp_path, monkeypatch, caplog):
    """A user teacher too large for the GPU at the batch it is given (its activations are unknown beforehand) goes on
    at half the rows, then half again, with one warning each time; the outputs are those of a pass that fitted. A
    teacher that cannot take one row fails in one line. (CUDA's error is raised by the teacher here: no GPU in CI.)"""
    import numpy as np

    from cmcd_edge import datasets
    from cmcd_edge.datasets import ViewSpec
    from cmcd_edge.distill import user_teacher
    from cmcd_edge.errors import UserError
    from cmcd_edge.splitting import make_splits

    rng = np.random.default_rng(0)
    src = rng.normal(size=(60, 16)).astype(np.float32)
    ds = datasets.write_dataset(tmp_path / "d", {"src": ViewSpec(src, "vector"), "tgt": ViewSpec(src[:, :3], "vector")},
                                np.arange(60) % 3, ["a", "b", "c"])
    (tmp_path / "big_teacher.py").write_text(
        "import torch\nFITS = [lambda n: n <= 7]\ndef make():\n    def run(x):\n        if not FITS[0](len(x)):\n"
        "            raise torch.OutOfMemoryError('CUDA out of memory. Tried to allocate 2.00 GiB')\n"
        "        return x * 2.0\n    return run\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(user_teacher, "EXTERNAL_BATCH_BYTES", 30 * 16 * 4)  # 30 rows a batch
    caplog.set_level("WARNING", logger="cmcd_edge.distill.teachers")
    out = user_teacher.load_teacher("big_teacher:make", ds, "src", make_splits(ds, 0), torch.device("cpu"))
    assert torch.equal(out.emb, torch.from_numpy(src) * 2.0)
    said = [r.getMessage() for r in caplog.records]
    assert said == ["teacher: out of GPU memory at 30 rows a batch: going on with 15",
                    "teacher: out of GPU memory at 15 rows a batch: going on with 7"], said
    import big_teacher

    big_teacher.FITS[0] = lambda n: n == 2  # the probe's rows pass, no part of the pass fits
    with pytest.raises(UserError, match=r"out of GPU memory on a single row \(CUDA out of memory\. Tried"):
        user_teacher.load_teacher("big_teacher:make", ds, "src", make_splits(ds, 0), torch.device("cpu"))
