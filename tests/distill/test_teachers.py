from __future__ import annotations

import dataclasses
import logging
import re
import warnings

import pytest
import torch

from cmcd_edge.distill import teachers
from cmcd_edge.distill.engine import TeacherTraining
from tests.helpers import save_exported, save_torchscript


class _BNTeacher(torch.nn.Module):
    """BatchNorm makes the mode visible: in train mode a row's embedding depends on the rest of its batch."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(16, 8)
        self.bn = torch.nn.BatchNorm1d(8)

    def forward(self, x):
        return self.bn(self.lin(x))


def _batch_dependent(model, x: torch.Tensor) -> bool:
    with torch.no_grad():
        return not torch.allclose(model(x)[:2], model(x[:2]), atol=1e-6)


def test_load_external_torchscript_saved_in_train_mode_runs_in_eval(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "t.pt"
    save_torchscript(_BNTeacher().train(), path)
    x = torch.randn(32, 16) * 3 + 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        assert _batch_dependent(torch.jit.load(str(path)), x)  # as saved: train mode
    model, info = teachers._load_external(str(path))
    assert not _batch_dependent(model, x) and info["kind"] == "file"


def test_load_external_exported_in_train_mode_warns(tmp_path, caplog):
    torch.manual_seed(0)
    x = torch.randn(32, 16) * 3 + 1
    for mode, warns in (("train", True), ("eval", False)):
        path = tmp_path / f"{mode}.pt2"
        save_exported(_BNTeacher().train(mode == "train"), path)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=teachers.__name__):
            model, _ = teachers._load_external(str(path))
        said = [r.getMessage() for r in caplog.records if "exported in training mode" in r.getMessage()]
        assert bool(said) == warns, (mode, said)
        assert _batch_dependent(model, x) == warns  # the warning says what the module really does
        if warns:
            assert "aten.batch_norm" in said[0] and "model.eval()" in said[0]


@pytest.mark.parametrize("output,says", [({"emb": 0}, "dict with keys ['emb']"), ((1, 2, 3), "returned 3 outputs")])
def test_external_teacher_with_unexpected_outputs_says_what_it_returned(output, says):
    x = torch.zeros(2, 16)
    with pytest.raises(ValueError, match=re.escape(says)):
        teachers._External(lambda _: output).forward_both(x)
    emb = torch.ones(2, 8)
    assert teachers._External(lambda _: {"embedding": emb}).forward_both(x) == (None, emb)


@pytest.mark.parametrize("kind", ["pt", "pt2", "factory"])
def test_load_external_puts_the_teacher_on_the_run_device(kind, tmp_path, monkeypatch):
    """The batches are read onto --device, so the teacher must be there too. CUDA is not here; the meta device is a
    real non-CPU device on which a CPU-weighted module fails the same way."""
    torch.manual_seed(0)
    net = _BNTeacher().eval()
    if kind == "pt":
        ref = tmp_path / "t.pt"
        save_torchscript(net, ref)
    elif kind == "pt2":
        ref = tmp_path / "t.pt2"
        save_exported(net, ref)
    else:
        (tmp_path / "meta_teacher.py").write_text("import torch\ndef make():\n    torch.manual_seed(0)\n"
                                                  "    return torch.nn.Sequential(torch.nn.Linear(16, 8))\n")
        monkeypatch.syspath_prepend(str(tmp_path))
        ref = "meta_teacher:make"
    meta = torch.device("meta")
    model, _ = teachers._load_external(str(ref), meta)
    with torch.no_grad():
        assert model(torch.zeros(3, 16, device=meta)).device == meta


def test_teacher_sha256_of_files_and_factory_modules(tmp_path, monkeypatch):
    """What compare's teacher key and --resume compare: a .pt/.pt2 file's bytes, a factory's module source. A module
    that cannot be found, or whose package raises on import, gives None: loading it then names the problem in one
    line (a package's RuntimeError used to escape compare's key as an internal error)."""
    import hashlib

    (tmp_path / "fine_teacher.py").write_text("def make():\n    return None\n")
    (tmp_path / "raising_pkg").mkdir()
    (tmp_path / "raising_pkg" / "__init__.py").write_text("raise RuntimeError('boom')\n")
    (tmp_path / "raising_pkg" / "mod.py").write_text("def make():\n    return None\n")
    (tmp_path / "t.pt2").write_bytes(b"not checked here")
    monkeypatch.syspath_prepend(str(tmp_path))
    digest = hashlib.sha256(b"def make():\n    return None\n").hexdigest()
    assert teachers.teacher_sha256("fine_teacher:make") == digest
    assert teachers.teacher_sha256(str(tmp_path / "t.pt2")) == hashlib.sha256(b"not checked here").hexdigest()
    for ref in ("raising_pkg.mod:make", "no_such_module_here:make", str(tmp_path / "missing.pt"), "train"):
        assert teachers.teacher_sha256(ref) is None, ref


def test_a_loaded_teacher_gets_the_stored_values_unnormalised(tmp_path, monkeypatch):
    """The contract the README states: uint8 pixels arrive as float32 0-255 in [B, C, H, W] (the built-in teacher
    normalises; a user's pretrained model brings its own scaling)."""
    import numpy as np

    from cmcd_edge import datasets
    from cmcd_edge.datasets import ViewSpec
    from cmcd_edge.splitting import make_splits

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(60, 3, 4, 5), dtype=np.uint8)
    ds = datasets.write_dataset(tmp_path / "d", {"cam": ViewSpec(img, "image"),
                                                 "vec": ViewSpec(rng.normal(size=(60, 3)).astype(np.float32), "vector")},
                                np.arange(60) % 3, ["a", "b", "c"])
    (tmp_path / "identity_teacher.py").write_text("def make():\n    return lambda x: x.flatten(1)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    out = teachers.load_teacher("identity_teacher:make", ds, "cam", make_splits(ds, 0), torch.device("cpu"))
    assert out.emb.dtype == torch.float32 and torch.equal(out.emb, torch.from_numpy(img.reshape(60, -1).astype("float32")))


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
