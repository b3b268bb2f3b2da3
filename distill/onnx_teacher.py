"""``--teacher FILE.onnx``: a teacher from any framework that writes ONNX (TensorFlow through tf2onnx, JAX through
jax2onnx, torch.onnx), run with onnxruntime over the source view. Its one input takes the batch; its outputs are
named ``embedding`` (and ``logits``), or one of two is named ``logits``, or else they are read in order: the
embedding, then the logits."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import torch

from cmcd_edge.errors import CmcdError, UserError, first_line
from cmcd_edge.runtime.manifest import sha256_file

log = logging.getLogger(__name__)
_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
           "tensor(uint8)": np.uint8, "tensor(int8)": np.int8, "tensor(int16)": np.int16, "tensor(int32)": np.int32,
           "tensor(int64)": np.int64}


def onnx_sha256(path: Path) -> str:
    """sha256 of an ONNX teacher: its file, and each external data file it names (weights saved beside a graph that
    stayed the same are another teacher), by name in sorted order. A graph that does not parse: its file alone
    (loading it says what is wrong)."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001  (protobuf raises several types for a file that is not a model)
        return sha256_file(path)
    names = sorted({ExternalDataInfo(t).location for t in _tensors(model.graph) if uses_external_data(t)})
    if not names:
        return sha256_file(path)
    h = hashlib.sha256(sha256_file(path).encode())
    for name in names:
        data = path.parent / name
        h.update(f"{name}:{sha256_file(data) if data.is_file() else 'missing'}".encode())
    return h.hexdigest()


def _tensors(graph):
    """Every tensor a graph holds: its initializers and its nodes' tensor attributes, through subgraphs."""
    yield from graph.initializer
    for node in graph.node:
        for a in node.attribute:
            if a.HasField("t"):
                yield a.t
            yield from a.tensors
            for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                yield from _tensors(g)


_OUT_OF_MEMORY = ("failed to allocate memory", "out of memory")  # onnxruntime's arena; CUDA's error 2


class OnnxTeacher:
    """Callable on a batch of source rows (a torch tensor, float32): the embedding, or (embedding, logits), as torch
    tensors on the batch's device. A batch size fixed in the graph (a model exported for one row) is fed in chunks of
    that size, the last one padded, so any batch runs."""

    def __init__(self, path: Path, device: torch.device) -> None:
        from cmcd_edge.runtime.session import available_backends, make_session

        backend = "cuda" if device.type == "cuda" and "cuda" in available_backends() else "cpu"
        if device.type == "cuda" and backend == "cpu":
            log.warning("--teacher %s: this onnxruntime has no CUDA provider (onnxruntime-gpu has); the teacher runs on "
                        "the CPU", path)
        try:  # torch's share of the cores (torchrun gives each rank one thread; onnxruntime would take them all)
            self.session = make_session(path, backend, threads=torch.get_num_threads())
        except CmcdError as exc:  # "PATH: onnxruntime cannot load it (its first line)"
            raise UserError(f"--teacher {exc}") from exc
        inputs, outputs = self.session.get_inputs(), [o.name for o in self.session.get_outputs()]
        if len(inputs) != 1:
            raise UserError(f"--teacher {path}: the graph takes {len(inputs)} inputs "
                            f"({', '.join(i.name for i in inputs)}); a teacher takes one, the source batch")
        self.input = inputs[0]
        if self.input.type not in _DTYPES:
            raise UserError(f"--teacher {path}: its input {self.input.name!r} is {self.input.type}; "
                            f"valid: {', '.join(_DTYPES)}")
        self.dtype = _DTYPES[self.input.type]
        if "embedding" in outputs:
            self.outputs = ["embedding", *(["logits"] if "logits" in outputs else [])]
        elif len(outputs) == 2 and "logits" in outputs:  # the other one is the embedding, in either order
            self.outputs = [next(o for o in outputs if o != "logits"), "logits"]
        elif len(outputs) <= 2:
            self.outputs = outputs
        else:
            raise UserError(f"--teacher {path}: the graph has {len(outputs)} outputs ({', '.join(outputs)}); name "
                            "them 'embedding' (and 'logits'), or give one or two: embedding, then logits")
        first = self.input.shape[0] if self.input.shape else None
        self.fixed = first if isinstance(first, int) and first > 0 else None
        if self.fixed is not None:
            log.info("--teacher %s: the graph takes a fixed batch of %d rows; fed in chunks of that size", path,
                     self.fixed)

    def _check_shape(self, shape: tuple[int, ...]) -> None:
        want = list(self.input.shape[1:])
        fixed = all(isinstance(d, int) and d > 0 for d in want)
        if len(want) != len(shape) or (fixed and tuple(want) != shape):
            hint = " (a channels-last graph: tf2onnx --inputs-as-nchw transposes it)" if len(want) == 3 else ""
            raise ValueError(f"its input {self.input.name!r} takes rows of shape {want}, the source rows are "
                             f"{list(shape)}{hint}")

    def _run(self, chunk: np.ndarray) -> list[np.ndarray]:
        try:
            return self.session.run(self.outputs, {self.input.name: chunk})
        except Exception as exc:  # noqa: BLE001  (onnxruntime raises its own RuntimeException)
            if any(m in str(exc).lower() for m in _OUT_OF_MEMORY):  # the teacher pass halves its batch, as for torch
                raise torch.OutOfMemoryError(first_line(exc, None)) from exc
            raise

    def __call__(self, x: torch.Tensor):
        self._check_shape(tuple(x.shape[1:]))
        rows = x.detach().cpu().numpy().astype(self.dtype, copy=False)
        n = rows.shape[0]
        step = self.fixed or n
        parts = []
        for i in range(0, n, step):
            chunk = rows[i:i + step]
            if chunk.shape[0] < step:  # the last chunk of a fixed batch: padded with zeros, their outputs dropped
                chunk = np.concatenate([chunk, np.zeros((step - chunk.shape[0], *chunk.shape[1:]), chunk.dtype)])
            parts.append(self._run(chunk))
        out = tuple(torch.from_numpy(np.concatenate([p[k] for p in parts])[:n].astype(np.float32)).to(x.device)
                    for k in range(len(self.outputs)))
        return out if len(out) > 1 else out[0]
