"""Teachers on the source view: trained here (a larger network, all source labels of the train split), or loaded
from the user's TorchScript (.pt), ExportedProgram (.pt2), ONNX (.onnx, :mod:`~cmcd_edge.distill.onnx_teacher`) or
``pkg.module:factory``. Frozen; their embeddings (and logits) of every row are computed once and cached, so
distillation costs only the student."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import logging
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save
from torch import nn

from cmcd_edge.datasets import Dataset, norm_stats
from cmcd_edge.distill import ddp, engine, progress, students
from cmcd_edge.distill.engine import TeacherTraining
from cmcd_edge.distill.rows import ViewRows
from cmcd_edge.errors import UserError
from cmcd_edge.fsutil import write_bytes, write_csv_rows, write_text
from cmcd_edge.runtime.manifest import sha256_file
from cmcd_edge.splitting import Splits

log = logging.getLogger(__name__)
TEACHER_FILES = (".pt", ".pt2", ".onnx")  # --teacher FILE: TorchScript, ExportedProgram, ONNX
EXTERNAL_BATCH_BYTES = 64 << 20  # float32 input of one batch through a user's teacher (its activations are unknown)
EXPORT_HOWTO = ("torch.export.save(torch.export.export(model.eval(), (batch,), "
                "dynamic_shapes=({0: torch.export.Dim('batch')},)), 'teacher.pt2')")


@dataclass
class TeacherOutputs:
    """The frozen teacher, as distillation sees it: an embedding (and logits) per dataset row."""

    emb: torch.Tensor  # (N, Et)
    logits: torch.Tensor | None  # (N, K)
    test_accuracy: float | None
    info: dict

    @classmethod
    def none(cls, n_rows: int) -> TeacherOutputs:
        """No teacher, for a recipe that reads none (``supervised``): a zero placeholder that keeps the shapes."""
        return cls(torch.zeros(n_rows, 1), None, None, {"kind": "none"})

    @property
    def is_none(self) -> bool:
        return self.info["kind"] == "none"

    def save(self, folder: Path) -> None:
        tensors = {"emb": self.emb.contiguous()}
        if self.logits is not None:
            tensors["logits"] = self.logits.contiguous()
        write_bytes(folder / "teacher_outputs.safetensors", save(tensors))
        write_text(folder / "teacher_outputs.json", json.dumps({"test_accuracy": self.test_accuracy, **self.info}, indent=2))

    def without_logits(self) -> str:
        """What this teacher gives instead of logits, for a method that needs them."""
        ignored = self.info.get("ignored_logits")  # set by load_teacher, which warned then
        return "embeddings only" if ignored is None else f"logits {ignored}"

    def scored_on(self, ds: Dataset, splits: Splits) -> TeacherOutputs:
        """These outputs with the test top-1 of their logits on ``splits`` (None without logits): a loaded teacher's
        outputs do not depend on the seed, only its score does."""
        if self.logits is None:
            return dataclasses.replace(self, test_accuracy=None)
        y = torch.as_tensor(np.asarray(ds.labels))[splits.test]
        return dataclasses.replace(self, test_accuracy=float((self.logits[splits.test].argmax(1) == y).float().mean()))

    @classmethod
    def load(cls, folder: Path) -> TeacherOutputs | None:
        st, meta = folder / "teacher_outputs.safetensors", folder / "teacher_outputs.json"
        if not (st.exists() and meta.exists()):
            return None
        try:
            tensors, info = load_file(st), json.loads(meta.read_text())
            acc = info.pop("test_accuracy")
            emb = tensors["emb"]
        except Exception as exc:  # noqa: BLE001  (safetensors and json raise several types for corrupt files)
            raise UserError(f"{st}: corrupt teacher cache ({type(exc).__name__}: {str(exc)[:100]}); delete "
                            "teacher_outputs.* to recompute it, or rerun with --force") from exc
        return cls(emb, tensors["logits"] if "logits" in tensors else None, acc, info)


def teacher_spec(ds: Dataset, source: str) -> students.NetSpec:
    """The network ``--teacher train`` builds for the source view: wider and deeper than a student of its kind."""
    info = ds.views[source]
    return students.default_spec(info.kind, info.sample_shape, ds.n_classes, role="teacher")


def check_teacher_memory(ds: Dataset, source: str, batch_size: int, limit: int | None, device: torch.device) -> None:
    engine.check_batch_memory(teacher_spec(ds, source), batch_size, limit, device, f"teacher_batch_size {batch_size}",
                              "lower teacher_batch_size in --config, or pass --teacher FILE")


def train_teacher(ds: Dataset, source: str, splits: Splits, training: TeacherTraining, *, seed: int,
                  device: torch.device, dist: ddp.Dist, out: Path | None = None, resume: dict | None = None,
                  preload: str = "auto", max_batch_bytes: int | None = None) -> TeacherOutputs:
    """A larger network of the source view's kind, trained on all labeled train rows of the source view.

    With ``out``, training writes ``out/checkpoint.pt`` and ``out/teacher_history.csv`` (loss, val accuracy, val
    loss, learning rate) every epoch (phase "teacher"), and the weights to teacher.safetensors when done. ``resume``
    (a resumed run's checkpoint, ``{}`` when it has none) continues a killed teacher from that checkpoint, or takes
    the saved weights when the teacher had finished (killed before its outputs were cached): a large teacher is not
    trained again from scratch. ``preload`` (auto|always|never): whether the source view is converted up front or
    read from its memory map batch by batch (:mod:`~cmcd_edge.distill.rows`). ``training``: epochs, batch, optimiser,
    patience and model selection's window (1, the epoch alone, is the default the students' 5 is not, so that
    teachers made before the option stay the same bits; BENCHMARKS.md, "Teachers' model selection")."""
    info = ds.views[source]
    labels = torch.as_tensor(np.asarray(ds.labels))
    train = splits.train[labels[splits.train].numpy() >= 0]
    if train.size == 0:
        raise UserError(f"--source {source}: no labeled train rows to train a teacher on; pass --teacher FILE")
    spec = teacher_spec(ds, source)
    bs = training.batch_size
    check_teacher_memory(ds, source, bs, max_batch_bytes, device)
    engine.seed_everything(seed)
    net = students.train_layout(students.build(spec))
    net.set_normalization(*norm_stats(ds.view(source), splits.train, info.kind))
    net.to(device)
    wrapped = net  # under torchrun each rank takes its share of every batch and DDP averages the gradients
    if dist.world > 1:
        wrapped = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    xd = ViewRows.open(ds.view(source), device, preload, ranks=dist.world, what=f"--source {source}")
    yd = labels.to(device)
    batch = students.eval_batch(spec, device)
    tr = torch.as_tensor(train, device=device)
    val = torch.as_tensor(splits.val, device=device)

    def step(gen: torch.Generator):
        pick = tr[torch.randint(0, len(tr), (min(bs, len(tr)),), generator=gen).to(device)][dist.rank::dist.world]
        with engine.autocast(device):
            return F.cross_entropy(wrapped(xd[pick]), yd[pick]), {}

    def evaluate():
        return engine.accuracy_and_loss(engine.predict_logits(net, xd, val, batch), yd[val])

    saved = out / "teacher.safetensors" if out is not None else None
    if resume is not None and saved is not None and saved.exists() and (out / "teacher.json").exists():
        net.load_state_dict({k: v.to(device) for k, v in load_file(saved).items()})
        log.info("teacher: trained weights found in %s (not trained again)", saved)
    else:
        phase = engine.PhaseSpec("teacher", training.epochs, training.lr, training.weight_decay, training.patience,
                                 max(1, len(tr) // bs), seed, training.select_window)
        curve = None if out is None else (lambda rows: write_csv_rows(out / "teacher_history.csv", rows))
        res = engine.run_phase(phase, net, step, evaluate, engine.Checkpoint(None if out is None else out / "checkpoint.pt"),
                               dist, resume=resume, on_epoch=curve)
        net.load_state_dict(res.best_state)
        if out is not None and dist.main:
            write_bytes(saved, save({k: v.cpu().contiguous() for k, v in net.state_dict().items()}))
            write_text(out / "teacher.json", json.dumps({"kind": "trained", "view": source, **spec.to_json()}, indent=2))
    net.eval()
    return _outputs(net, xd, yd, splits, batch, dist, {"kind": "trained", "view": source, "spec": spec.to_json(),
                                          "params": sum(p.numel() for p in net.parameters())})


@torch.no_grad()
def _outputs(net: nn.Module, x: ViewRows, y: torch.Tensor | None, splits: Splits, batch: int, dist: ddp.Dist,
             info: dict) -> TeacherOutputs:
    emb, lo = embed_rows(net, x, batch, dist, with_logits=True)
    acc = None
    if y is not None:
        test = torch.as_tensor(splits.test)
        acc = float((lo[test].argmax(1) == y.cpu()[test]).float().mean())  # test rows are labeled (make_splits)
    return TeacherOutputs(emb, lo, acc, info)


@torch.no_grad()
def embed_rows(net: nn.Module, x: ViewRows, batch: int, dist: ddp.Dist,
               with_logits: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``net.forward_both`` over every row of ``x``, ``batch`` rows at a time: embeddings (N, E) and logits (N, K) on
    the CPU. Under torchrun each rank computes its share of the batches (:func:`ddp.rank_share`) and every rank
    then holds all rows: the batches are the same as in one process, so are the bits."""
    batches = engine.row_batches(x.shape[0], batch)
    share = ddp.rank_share(batches, dist)
    gather = len(share) < len(batches)
    embs, logits = [], []
    with progress.RowsProgress("teacher outputs", sum(s.stop - s.start for s in share), show=dist.main) as bar:
        for s in share:
            lo, e = net.forward_both(x[s])
            if with_logits and lo is None:
                raise UserError(f"teacher returned no logits for rows {s.start}-{s.stop - 1} after giving them for "
                                "others")
            embs.append(e.float() if gather else e.float().cpu())  # kept on the device until the ranks' shares meet
            if with_logits:
                logits.append(lo.float() if gather else lo.float().cpu())
            bar.update(s.stop - s.start)
    emb, lo = torch.cat(embs), torch.cat(logits) if with_logits else None
    if gather:
        emb, lo = ddp.all_ranks(emb).cpu(), None if lo is None else ddp.all_ranks(lo).cpu()
    return emb, lo


class _External(nn.Module):
    """Adapts a user model whose forward returns an embedding, (embedding, logits) or {"embedding", "logits"}."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward_both(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
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


def load_teacher(ref: str, ds: Dataset, source: str, splits: Splits, device: torch.device,
                 preload: str = "auto", dist: ddp.Dist = ddp.Dist(),
                 check: Callable[[TeacherOutputs], None] | None = None) -> TeacherOutputs:
    """``--teacher PATH.pt|PATH.pt2|PATH.onnx|pkg.module:factory``: run the user's model over the source view of every
    row. It gets the stored values as float32, not normalised (the built-in teacher normalises; a user's model brings
    its own preprocessing). ``check`` sees the outputs of a 2-row probe first (e.g. logits a method needs), so a
    teacher the run cannot use fails before the pass over every row."""
    model, info = _load_external(ref, device)
    net = _External(model)
    x = ViewRows.open(ds.view(source), device, preload, ranks=dist.world, what=f"--source {source}")
    try:
        with torch.no_grad():
            probe_logits, probe = net.forward_both(x[:2])
    except Exception as exc:  # noqa: BLE001  (the user's model may raise anything)
        raise UserError(f"--teacher {ref}: fails on a source batch of shape {list(x[:2].shape)}: {exc}") from exc
    if not isinstance(probe, torch.Tensor) or probe.ndim != 2 or probe.shape[0] != 2:
        shape = list(probe.shape) if isinstance(probe, torch.Tensor) else type(probe).__name__
        raise UserError(f"--teacher {ref}: a batch of 2 gave an embedding of shape {shape}; expected [2, D]")
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
    ``pkg.module:factory``'s module source file (an edited factory is another teacher; what that module reads or
    imports in turn, such as a weights file, is not covered). None for 'train', or for a file or module that is not
    there (loading it says so)."""
    path = Path(ref)
    if path.suffix == ".onnx":
        from cmcd_edge.distill.onnx_teacher import onnx_sha256

        return onnx_sha256(path) if path.is_file() else None
    if path.suffix in TEACHER_FILES:
        return sha256_file(path) if path.is_file() else None
    if ":" not in ref:
        return None
    try:
        spec = importlib.util.find_spec(ref.partition(":")[0])
    except Exception:  # noqa: BLE001  (a parent package's user code may raise anything; loading reports it)
        return None
    origin = Path(spec.origin) if spec is not None and spec.origin else None
    return sha256_file(origin) if origin is not None and origin.is_file() else None


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
        mod_name, _, fn_name = ref.partition(":")
        try:
            factory = getattr(importlib.import_module(mod_name), fn_name)
            model = factory()
        except Exception as exc:  # noqa: BLE001
            raise UserError(f"--teacher {ref}: cannot build the model ({type(exc).__name__}: {exc})") from exc
        if isinstance(model, nn.Module):
            model.to(device).eval()
        return model, {"kind": "factory", "ref": ref, "sha256": teacher_sha256(ref)}
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
