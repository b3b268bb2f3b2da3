"""The teacher a user brings (distill/user_teacher.py): loading each kind, its outputs, and its sha256 identity."""

from __future__ import annotations

import logging
import re
import warnings

import pytest
import torch

from cmcd_edge.distill import user_teacher
from tests.helpers import save_exported, save_torchscript, teacher_of_kind


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
    model, info = user_teacher._load_external(str(path))
    assert not _batch_dependent(model, x) and info["kind"] == "file"


def test_load_external_exported_in_train_mode_warns(tmp_path, caplog):
    torch.manual_seed(0)
    x = torch.randn(32, 16) * 3 + 1
    for mode, warns in (("train", True), ("eval", False)):
        path = tmp_path / f"{mode}.pt2"
        save_exported(_BNTeacher().train(mode == "train"), path)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=user_teacher.__name__):
            model, _ = user_teacher._load_external(str(path))
        said = [r.getMessage() for r in caplog.records if "exported in training mode" in r.getMessage()]
        assert bool(said) == warns, (mode, said)
        assert _batch_dependent(model, x) == warns  # the warning says what the module really does
        if warns:
            assert "aten.batch_norm" in said[0] and "model.eval()" in said[0]


@pytest.mark.parametrize("output,says", [({"emb": 0}, "dict with keys ['emb']"), ((1, 2, 3), "returned 3 outputs")])
def test_external_teacher_with_unexpected_outputs_says_what_it_returned(output, says):
    x = torch.zeros(2, 16)
    with pytest.raises(ValueError, match=re.escape(says)):
        user_teacher._External(lambda _: output).forward_both(x)
    emb = torch.ones(2, 8)
    assert user_teacher._External(lambda _: {"embedding": emb}).forward_both(x) == (None, emb)


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
    model, _ = user_teacher._load_external(str(ref), meta)
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
    assert user_teacher.teacher_sha256("fine_teacher:make") == digest
    assert user_teacher.teacher_sha256(str(tmp_path / "t.pt2")) == hashlib.sha256(b"not checked here").hexdigest()
    for ref in ("raising_pkg.mod:make", "no_such_module_here:make", str(tmp_path / "missing.pt"), "train"):
        assert user_teacher.teacher_sha256(ref) is None, ref


def test_weights_sha256_reads_names_dtypes_shapes_and_values():
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)
    same = torch.nn.Linear(4, 3)
    same.load_state_dict(net.state_dict())
    assert user_teacher.weights_sha256(net) == user_teacher.weights_sha256(same)
    with torch.no_grad():
        same.bias[1] += 1e-6
    assert user_teacher.weights_sha256(same) != user_teacher.weights_sha256(net)
    assert user_teacher.weights_sha256(torch.nn.Linear(4, 3).to(torch.bfloat16)) != user_teacher.weights_sha256(net)
    assert user_teacher.weights_sha256(torch.nn.Sequential(net)) != user_teacher.weights_sha256(net)  # '0.weight'
    meta = torch.nn.Linear(4, 3, device="meta")  # no values to read: keyed by names, dtypes and shapes
    assert user_teacher.weights_sha256(meta) == user_teacher.weights_sha256(torch.nn.Linear(4, 3, device="meta"))


def test_weights_sha256_reads_a_state_dict_beyond_tensors():
    """Was: an AttributeError (a traceback) for a factory returning a dynamically quantized model, whose state_dict
    holds a (weight, bias) tuple and a torch.dtype, or a module with extra state."""

    def quantized(seed: int):
        torch.manual_seed(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch deprecates its quantized tensors
            return torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(torch.nn.Linear(8, 4)),
                                                          {torch.nn.Linear}, dtype=torch.qint8)

    assert user_teacher.weights_sha256(quantized(0)) == user_teacher.weights_sha256(quantized(0))
    assert user_teacher.weights_sha256(quantized(0)) != user_teacher.weights_sha256(quantized(1))

    class Extra(torch.nn.Module):
        def __init__(self, state) -> None:
            super().__init__()
            self.state = state

        def get_extra_state(self):
            return self.state

        def set_extra_state(self, state) -> None:
            self.state = state

    assert user_teacher.weights_sha256(Extra({"vocab": ["a"]})) == user_teacher.weights_sha256(Extra({"vocab": ["a"]}))
    assert user_teacher.weights_sha256(Extra({"vocab": ["a"]})) != user_teacher.weights_sha256(Extra({"vocab": ["b"]}))
    assert user_teacher.weights_sha256(Extra(object())) == user_teacher.weights_sha256(Extra(object()))  # not its address


def test_teacher_replaced_sees_new_weights_and_takes_a_module_only_record(tmp_path, monkeypatch):
    """A factory's key covers the checkpoint it loads (was: its module source alone, so a retrained checkpoint saved
    over the old one served the old teacher's cached outputs). A record of an earlier version, keyed by the module
    alone, is the same teacher while the module is unchanged."""
    ref = teacher_of_kind("weights", tmp_path, 0, monkeypatch)
    first, module = user_teacher.teacher_sha256(ref), user_teacher.factory_module_sha256(ref)
    assert first not in (None, module)
    assert not user_teacher.teacher_replaced(first, ref) and not user_teacher.teacher_replaced(None, ref)
    teacher_of_kind("weights", tmp_path, 1, monkeypatch)
    assert user_teacher.factory_module_sha256(ref) == module
    assert user_teacher.teacher_sha256(ref) != first and user_teacher.teacher_replaced(first, ref)
    assert not user_teacher.teacher_replaced(module, ref)
    assert user_teacher._load_external(ref)[1]["sha256"] == user_teacher.teacher_sha256(ref)


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
    out = user_teacher.load_teacher("identity_teacher:make", ds, "cam", make_splits(ds, 0), torch.device("cpu"))
    assert out.emb.dtype == torch.float32 and torch.equal(out.emb, torch.from_numpy(img.reshape(60, -1).astype("float32")))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_teacher_gets_batches_in_its_dtype(dtype, tmp_path, monkeypatch, caplog):
    """A pretrained teacher loaded in bfloat16 or float16 (to fit a GPU) is fed its own dtype, and its outputs are
    kept as float32. Was: '--teacher ...: fails on a source batch of shape [2, 16]: mat1 and mat2 must have the same
    dtype, but got Float and BFloat16'."""
    import numpy as np

    from cmcd_edge import datasets
    from cmcd_edge.datasets import ViewSpec
    from cmcd_edge.splitting import make_splits

    rng = np.random.default_rng(0)
    src = rng.normal(size=(60, 16)).astype(np.float32)
    ds = datasets.write_dataset(tmp_path / "d", {"src": ViewSpec(src, "vector"), "tgt": ViewSpec(src[:, :3], "vector")},
                                np.arange(60) % 3, ["a", "b", "c"])
    name = f"half_teacher_{str(dtype).removeprefix('torch.')}"
    (tmp_path / f"{name}.py").write_text(f"import torch\ndef make():\n    torch.manual_seed(0)\n"
                                         f"    return torch.nn.Linear(16, 8).to({dtype})\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    caplog.set_level("INFO", logger="cmcd_edge.distill.user_teacher")
    out = user_teacher.load_teacher(f"{name}:make", ds, "src", make_splits(ds, 0), torch.device("cpu"))
    torch.manual_seed(0)
    want = torch.nn.Linear(16, 8).to(dtype)(torch.from_numpy(src).to(dtype)).float()
    assert out.emb.dtype == torch.float32 and torch.equal(out.emb, want.detach())
    assert out.info["input_dtype"] == str(dtype).removeprefix("torch.")
    assert any("source batches are cast to" in r.getMessage() for r in caplog.records)
    assert user_teacher.weights_dtype(torch.nn.Linear(2, 2)) is None and user_teacher.weights_dtype(lambda x: x) is None


def test_a_teacher_giving_a_feature_map_is_told_to_pool_it(tmp_path):
    """A backbone's [B, C, H, W] map (or a transformer's [B, T, D] tokens) is refused with the pooling to add."""
    import numpy as np

    from cmcd_edge import datasets
    from cmcd_edge.datasets import ViewSpec
    from cmcd_edge.errors import UserError
    from cmcd_edge.splitting import make_splits

    rng = np.random.default_rng(0)
    src = rng.normal(size=(30, 16)).astype(np.float32)
    ds = datasets.write_dataset(tmp_path / "d", {"src": ViewSpec(src, "vector"), "tgt": ViewSpec(src[:, :3], "vector")},
                                np.arange(30) % 3, ["a", "b", "c"])
    save_exported(torch.nn.Unflatten(1, (4, 2, 2)).eval(), tmp_path / "map.pt2")  # (B, 16) -> (B, 4, 2, 2)
    with pytest.raises(UserError, match=re.escape("gave an embedding of shape [2, 4, 2, 2]; expected [2, D]: a feature "
                                                  "map or a token sequence; pool it to [B, D] inside the model")):
        user_teacher.load_teacher(str(tmp_path / "map.pt2"), ds, "src", make_splits(ds, 0), torch.device("cpu"))
