"""The teacher a user brings (``--teacher``): a TorchScript (.pt), ExportedProgram (.pt2) or ONNX (.onnx,
:mod:`~cmcd_edge.distill.onnx_teacher`) file, or a ``pkg.module:factory``, run once over the source view of every
row; and its identity (:func:`teacher_sha256`), which --resume, compare's teacher key and --teacher-cache compare."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cmcd_edge.datasets import Dataset
from cmcd_edge.distill import ddp
from cmcd_edge.distill.rows import ViewRows
from cmcd_edge.distill.teachers import TeacherOutputs, embed_rows
from cmcd_edge.errors import UserError
from cmcd_edge.runtime.manifest import sha256_file
from cmcd_edge.splitting import Splits

log = logging.getLogger(__name__)
TEACHER_FILES = (".pt", ".pt2", ".onnx")  # --teacher FILE: TorchScript, ExportedProgram, ONNX
EXTERNAL_BATCH_BYTES = 64 << 20  # float32 input of one batch through a user's teacher (its activations are unknown)
EXPORT_HOWTO = ("torch.export.save(torch.export.export(model.eval(), (batch,), "
                "dynamic_shapes=({0: torch.export.Dim('batch')},)), 'teacher.pt2')")


class _External(nn.Module):
    """Adapts a user model whose forward returns an embedding, (embedding, logits) or {"embedding", "logits"}."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model
        self.dtype = weights_dtype(model)  # a half or bfloat16 teacher gets its batches in its own dtype

    def forward_both(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        if self.dtype is not None and x.is_floating_point() and x.dtype != self.dtype:
            x = x.to(self.dtype)
        out = self.model(x)
        if isinstance(out, dict):
            if "embedding" not in out:
                raise ValueError(f"it returned a dict with keys {sorted(out)}; expected 'embedding' (and 'logits')")
            return (out["logits"] if "logits" in out else None), out["embedding"]
        if isinstance(out, (tuple, list)):
            if not 1 <= len(out) <= 2:
                raise ValueError(f"it returned {len(out)} outputs; expected embedding or (embedding, logits)")
            return (out[1] if len(out) > 1 else None), out[0]
        return None, out


def weights_dtype(model) -> torch.dtype | None:
    """The floating dtype of a torch teacher's first floating parameter (or buffer) when it is not float32: a model
    loaded in float16 or bfloat16 to fit a GPU, whose first layer would refuse float32 batches. None otherwise (a
    float32 model, a plain callable, an ONNX session, which casts to its input's dtype itself)."""
    if not isinstance(model, nn.Module):
        return None
    for t in (*model.parameters(), *model.buffers()):
        if t.is_floating_point():
            return t.dtype if t.dtype != torch.float32 else None
    return None


def load_teacher(ref: str, ds: Dataset, source: str, splits: Splits, device: torch.device,
                 preload: str = "auto", dist: ddp.Dist = ddp.Dist(),
                 check: Callable[[TeacherOutputs], None] | None = None) -> TeacherOutputs:
    """``--teacher PATH.pt|PATH.pt2|PATH.onnx|pkg.module:factory``: run the user's model over the source view of every
    row. It gets the stored values as float32, not normalised (the built-in teacher normalises; a user's model brings
    its own preprocessing). ``check`` sees the outputs of a 2-row probe first (e.g. logits a method needs), so a
    teacher the run cannot use fails before the pass over every row."""
    model, info = _load_external(ref, device)
    net = _External(model)
    if net.dtype is not None:
        name = str(net.dtype).removeprefix("torch.")
        log.info("teacher: %s weights: the source batches are cast to %s, its outputs read as float32", name, name)
        info = {**info, "input_dtype": name}
    x = ViewRows.open(ds.view(source), device, preload, ranks=dist.world, what=f"--source {source}")
    try:
        with torch.no_grad():
            probe_logits, probe = net.forward_both(x[:2])
    except Exception as exc:  # noqa: BLE001  (the user's model may raise anything)
        raise UserError(f"--teacher {ref}: fails on a source batch of shape {list(x[:2].shape)}: {exc}") from exc
    if not isinstance(probe, torch.Tensor) or probe.ndim != 2 or probe.shape[0] != 2:
        shape = list(probe.shape) if isinstance(probe, torch.Tensor) else type(probe).__name__
        pool = (": a feature map or a token sequence; pool it to [B, D] inside the model (a CNN's map: "
                "torch.nn.Sequential(backbone, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()); a transformer's "
                "tokens: their mean or the first one)") if isinstance(probe, torch.Tensor) and probe.ndim > 2 and \
            probe.shape[0] == 2 else ""
        raise UserError(f"--teacher {ref}: a batch of 2 gave an embedding of shape {shape}; expected [2, D]{pool}")
    if probe_logits is not None and (probe_logits.ndim != 2 or probe_logits.shape[1] != ds.n_classes):
        k = probe_logits.shape[-1] if probe_logits.ndim else 0
        log.warning("teacher logits have %d classes, the data %d: logits ignored", k, ds.n_classes)
        info = {**info, "ignored_logits": f"over {k} classes, not the data's {ds.n_classes}"}
        probe_logits = None
    if check is not None:
        check(TeacherOutputs(probe, probe_logits, None, {**info, "view": source}))
    batch = max(1, min(512, EXTERNAL_BATCH_BYTES // (4 * int(np.prod(x.shape[1:])))))
    emb, lo = embed_rows(net, x, batch, dist, with_logits=probe_logits is not None)
    return TeacherOutputs(emb, lo, None, {**info, "view": source}).scored_on(ds, splits)


def teacher_sha256(ref: str) -> str | None:
    """sha256 of what a ``--teacher`` names, which a cache of its outputs is keyed by: a .pt/.pt2/.onnx file (a file
    saved over the old one is another teacher; an ONNX file's external data files count too), or a
    ``pkg.module:factory``: its module's source file and, when it returns an ``nn.Module``, that module's weights (the
    factory is called to read them), so an edited factory, or a checkpoint it loads saved over, is another teacher
    (a factory returning a plain callable is keyed by its module alone). None for 'train', or for a file or module
    that is not there, or a factory that fails (loading it says so)."""
    path = Path(ref)
    if path.suffix == ".onnx":
        from cmcd_edge.distill.onnx_teacher import onnx_sha256

        return onnx_sha256(path) if path.is_file() else None
    if path.suffix in TEACHER_FILES:
        return sha256_file(path) if path.is_file() else None
    source = factory_module_sha256(ref)
    if source is None:
        return None
    try:
        model = _build_factory(ref)
    except UserError:
        return None
    return _factory_sha256(source, model)


def teacher_replaced(recorded: str | None, ref: str) -> bool:
    """Whether the teacher ``ref`` names differs now from the one whose sha256 a run or a compare recorded (None
    recorded: nothing to compare). A factory recorded by its module source alone, as earlier versions keyed it, is the
    same teacher while that module is unchanged (its weights were never recorded)."""
    return recorded is not None and recorded != factory_module_sha256(ref) and recorded != teacher_sha256(ref)


def factory_module_sha256(ref: str) -> str | None:
    """sha256 of a ``pkg.module:factory``'s module source file (all that earlier versions keyed a factory by); None
    when ``ref`` names no factory, or its module is not there."""
    if ":" not in ref:
        return None
    try:
        spec = importlib.util.find_spec(ref.partition(":")[0])
    except Exception:  # noqa: BLE001  (a parent package's user code may raise anything; loading reports it)
        return None
    origin = Path(spec.origin) if spec is not None and spec.origin else None
    return sha256_file(origin) if origin is not None and origin.is_file() else None


def weights_sha256(model: nn.Module) -> str:
    """sha256 of a module's state_dict in name order: each tensor's dtype, shape and bytes (a meta tensor, which holds
    no values, by its dtype and shape; a quantized one by its integers and quantization parameters); what else a
    state_dict may hold (a quantized Linear's packed (weight, bias) tuple, a module's extra state) entry by entry,
    and plain values by their repr (an object whose repr is its address, by its type)."""
    h = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        h.update(f"{name}\n".encode())
        _digest(h, value)
    return h.hexdigest()


def _digest(h, value) -> None:
    if isinstance(value, torch.Tensor):
        h.update(f"tensor|{value.dtype}|{list(value.shape)}\n".encode())
        if value.is_meta or not value.numel():
            return
        t = value.detach().cpu()
        if t.is_quantized:
            scales = (t.q_per_channel_scales(), t.q_per_channel_zero_points()) if t.qscheme() in (
                torch.per_channel_affine, torch.per_channel_symmetric) else (t.q_scale(), t.q_zero_point())
            _digest(h, scales)
            t = t.int_repr()
        elif t.layout != torch.strided:
            t = t.to_dense()
        h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy())
    elif isinstance(value, (tuple, list)):
        h.update(f"{type(value).__name__}|{len(value)}\n".encode())
        for v in value:
            _digest(h, v)
    elif isinstance(value, dict):
        h.update(f"dict|{len(value)}\n".encode())
        for k in sorted(value, key=repr):
            h.update(f"{k!r}\n".encode())
            _digest(h, value[k])
    else:  # an object whose repr is its address would make every build another teacher: its type alone
        shown = repr(value)
        h.update(f"{type(value).__qualname__}|{'' if ' at 0x' in shown else shown}\n".encode())


def _factory_sha256(source: str, model) -> str:
    """A factory's key: its module source alone for a plain callable (weights unseen), else with its weights."""
    if not isinstance(model, nn.Module):
        return source
    return hashlib.sha256(f"{source}|weights:{weights_sha256(model)}".encode()).hexdigest()


def _build_factory(ref: str):
    mod_name, _, fn_name = ref.partition(":")
    try:
        return getattr(importlib.import_module(mod_name), fn_name)()
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"--teacher {ref}: cannot build the model ({type(exc).__name__}: {exc})") from exc


def _load_external(ref: str, device: torch.device = torch.device("cpu")):
    """The user's teacher, on ``device`` (the batches are read there): a file is loaded onto it, a factory's
    ``nn.Module`` moved to it; a factory returning a plain callable gets device batches and must handle them."""
    path = Path(ref)
    if path.suffix in TEACHER_FILES and not path.is_file():
        raise UserError(f"--teacher {ref}: no such file")
    if path.suffix == ".onnx":
        from cmcd_edge.distill.onnx_teacher import OnnxTeacher

        return OnnxTeacher(path, device), {"kind": "file", "path": str(path.resolve()), "sha256": teacher_sha256(ref)}
    if path.suffix in (".pt", ".pt2"):
        sha = teacher_sha256(ref)
        try:
            model = _load_torchscript(path, device) if path.suffix == ".pt" else _load_exported(path, device)
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001
            if _is_torch_save(path):
                raise UserError(f"--teacher {ref}: a torch.save() file (a pickled model or state_dict), which "
                                f"cmcd-edge does not unpickle: save the model as an ExportedProgram: {EXPORT_HOWTO}"
                                ) from exc
            kind = "TorchScript" if path.suffix == ".pt" else "ExportedProgram"
            raise UserError(f"--teacher {ref}: not a loadable {kind} file ({type(exc).__name__})") from exc
        return model, {"kind": "file", "path": str(path.resolve()), "sha256": sha}
    if ":" in ref:
        source = factory_module_sha256(ref)
        model = _build_factory(ref)
        sha = _factory_sha256(source, model) if source is not None else None  # its weights, before they move
        if isinstance(model, nn.Module):
            model.to(device).eval()
        return model, {"kind": "factory", "ref": ref, "sha256": sha}
    raise UserError(f"--teacher {ref!r}: expected 'train', a .pt/.pt2/.onnx file or pkg.module:factory")


def _is_torch_save(path: Path) -> bool:
    """Whether ``path`` is what ``torch.save`` writes (a zip of one pickle and its tensors): the usual teacher file a
    user has at hand. TorchScript archives add ``code/`` and ``constants.pkl``; ExportedPrograms have no data.pkl."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    parts = [n.split("/", 1)[-1] for n in names]
    return "data.pkl" in parts and "constants.pkl" not in parts and not any(p.startswith("code/") for p in parts)


def _load_exported(path: Path, device: torch.device) -> nn.Module:
    """An ExportedProgram runs only at the shapes it was exported for; the teacher is fed batches of every size, so
    a batch dimension fixed at export time is refused up front, with the export call that frees it."""
    program = torch.export.load(str(path))
    user = set(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        val = node.meta.get("val") if node.op == "placeholder" and node.name in user else None
        if isinstance(val, torch.Tensor) and val.ndim and isinstance(val.shape[0], int):
            raise UserError(f"--teacher {path}: the ExportedProgram takes a fixed batch of {val.shape[0]} rows; export "
                            f"it with a dynamic batch: {EXPORT_HOWTO}")
    in_training = sorted({str(n.target) for n in program.graph.nodes if _training_op(n)})
    if in_training:  # an exported module cannot be switched to eval(): its ops keep the mode they were traced in
        log.warning("--teacher %s: exported in training mode (%s): BatchNorm uses each batch's statistics and dropout "
                    "is random, so embeddings depend on the batch; export model.eval(): %s",
                    path, ", ".join(in_training), EXPORT_HOWTO)
    if device.type != "cpu":  # an exported module cannot be .to()'d: its weights and device constants move by a pass
        from torch.export.passes import move_to_device_pass

        program = move_to_device_pass(program, device)
    return program.module()


def _training_op(node) -> bool:
    """A call whose schema has a ``training``/``train`` flag set (batch_norm, dropout, ... traced in train mode)."""
    schema = getattr(node.target, "_schema", None) if node.op == "call_function" else None
    if schema is None:
        return False
    names = [a.name for a in schema.arguments]
    for flag in ("training", "train"):
        if flag in names:
            i = names.index(flag)
            value = node.kwargs[flag] if flag in node.kwargs else (node.args[i] if i < len(node.args) else None)
            if value is True:
                return True
    return False


def _load_torchscript(path: Path, device: torch.device) -> nn.Module:
    """TorchScript still loads, but torch deprecates it (torch.jit.load warns from 2.13): say so once, in our words and
    with the way out, instead of torch's DeprecationWarning that Python hides by default."""
    log.warning("--teacher %s: TorchScript is deprecated by PyTorch %s; save the teacher as an ExportedProgram and "
                "pass the .pt2: %s", path, torch.__version__.split("+")[0], EXPORT_HOWTO)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(str(path), map_location=device).eval()  # a script saved in train mode: BatchNorm, dropout
