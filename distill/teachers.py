"""Teachers on the source view: trained here (a larger network, all source labels of the train split), or loaded
from the user's TorchScript (.pt), ExportedProgram (.pt2), ONNX (.onnx, :mod:`~cmcd_edge.distill.onnx_teacher`) or
``pkg.module:factory``. Frozen; their embeddings (and logits) of every row are computed once and cached, so
distillation costs only the student."""

from __future__ import annotations

import dataclasses
import json
import logging
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
from cmcd_edge.errors import UserError, first_line
from cmcd_edge.fsutil import write_bytes, write_csv_rows, write_text
from cmcd_edge.splitting import Splits

log = logging.getLogger(__name__)


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
    fits = _RowsThatFit()
    with progress.RowsProgress("teacher outputs", sum(s.stop - s.start for s in share), show=dist.main) as bar:
        for s in share:
            for part, (lo, e) in fits.forward(net, x, s):
                if with_logits and lo is None:
                    raise UserError(f"teacher returned no logits for rows {part.start}-{part.stop - 1} after giving "
                                    "them for others")
                embs.append(e.float() if gather else e.float().cpu())  # on the device until the ranks' shares meet
                if with_logits:
                    logits.append(lo.float() if gather else lo.float().cpu())
                bar.update(part.stop - part.start)
    emb, lo = torch.cat(embs), torch.cat(logits) if with_logits else None
    if gather:
        emb, lo = ddp.all_ranks(emb).cpu(), None if lo is None else ddp.all_ranks(lo).cpu()
    return emb, lo


class _RowsThatFit:
    """Runs a teacher over a slice of rows in parts that fit the GPU: on CUDA's out-of-memory error the part halves
    (and stays halved for the slices after), so a large user teacher on a small GPU goes on instead of failing
    after its probe; one warning says at what size. Until then each slice is one part, as it always was (the bits
    depend on the batch). Rows keep their order; a row that does not fit alone fails in one line."""

    def __init__(self) -> None:
        self.rows: int | None = None  # no limit until the GPU runs out

    def forward(self, net: nn.Module, x: ViewRows, s: slice):
        start = s.start
        while start < s.stop:
            part = slice(start, s.stop if self.rows is None else min(start + self.rows, s.stop))
            try:
                out = net.forward_both(x[part])
            except torch.OutOfMemoryError as exc:
                size = part.stop - part.start
                if size == 1:
                    raise UserError(f"teacher: out of GPU memory on a single row ({first_line(exc)}): run it on a "
                                    "larger GPU or on the CPU (--device cpu)") from exc
                self.rows = max(1, size // 2)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                log.warning("teacher: out of GPU memory at %d rows a batch: going on with %d", size, self.rows)
                continue
            yield part, out
            start = part.stop
