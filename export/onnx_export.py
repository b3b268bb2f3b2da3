"""Student -> ONNX FP32: rebuilt from the run's safetensors + JSON spec (no pickle), exported with torch.onnx (dynamo,
one file), dynamic batch, the view's normalisation inside the graph; two outputs, logits and embedding."""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cmcd_edge.distill import students
from cmcd_edge.errors import UserError
from cmcd_edge.export.lift2d import conv1d_as_conv2d

log = logging.getLogger(__name__)
INPUT, OUTPUTS = "input", ("logits", "embedding")


@dataclass
class LoadedRun:
    root: Path
    net: students.Net
    spec: students.NetSpec
    student_json: dict
    run_json: dict
    metrics: dict


def _source_run(bundle: Path) -> str:
    try:
        return str(json.loads((bundle / "manifest.json").read_text())["source_run"]["path"])
    except (ValueError, KeyError, TypeError):
        return "the run folder that distill wrote (its --out)"


def load_run(run_dir: str | Path) -> LoadedRun:
    """Read a distill run: every missing or corrupt file is a one-line UserError naming it."""
    root = Path(run_dir)
    if not root.is_dir():
        raise UserError(f"{root}: no such run folder")
    docs = {}
    run_json = root / "run.json"
    if not run_json.is_file() and (root / "manifest.json").is_file():
        raise UserError(f"{root}: a bundle, not a distill run; it was exported from {_source_run(root)}")
    if run_json.is_file():  # a killed or still-running distill: say so, not which of its files is missing
        try:
            status = json.loads(run_json.read_text())["status"]
        except (ValueError, KeyError, TypeError):
            status = "done"  # unreadable: the loop below names the problem
        if status != "done" and not (root / "metrics.json").is_file():
            raise UserError(f"{root}: the distill run did not finish (status {status!r}); continue it with "
                            f"cmcd-edge distill ... --out {root} --resume")
    for name in ("run.json", "student.json", "metrics.json"):
        path = root / name
        if not path.is_file():
            hint = " (the run did not finish: cmcd-edge distill --resume)" if name == "metrics.json" else ""
            raise UserError(f"{path}: missing{hint}")
        try:
            docs[name] = json.loads(path.read_text())
        except ValueError as exc:
            raise UserError(f"{path}: not valid JSON ({exc})") from exc
    sj = docs["student.json"]
    spec = students.NetSpec.from_json({k: v for k, v in sj.items() if k in students.NetSpec.__dataclass_fields__})
    net = students.build(spec)
    st = root / "student.safetensors"
    if not st.is_file():
        raise UserError(f"{st}: missing")
    try:
        from safetensors.torch import load_file

        state = load_file(st)
        net.load_state_dict(state)
    except Exception as exc:  # noqa: BLE001  (safetensors raises several types for corrupt files)
        raise UserError(f"{st}: corrupt or not matching student.json ({type(exc).__name__}: {str(exc)[:120]})") from exc
    net.eval()
    return LoadedRun(root, net, spec, sj, docs["run.json"], docs["metrics.json"])


class _Both(nn.Module):
    def __init__(self, net: students.Net) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net.forward_both(x)


@contextlib.contextmanager
def _quiet_exporter():
    """torch's exporter warns about torchvision ops it cannot register and a pytree deprecation: noise, not ours."""
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*LeafSpec.*")
            yield
    finally:
        logger.setLevel(level)


def export_fp32(net: students.Net, in_shape: tuple[int, ...], path: Path, example: np.ndarray | None = None) -> None:
    import onnx

    x = torch.from_numpy(np.ascontiguousarray(example[:4], np.float32)) if example is not None else torch.randn(4, *in_shape)
    with torch.no_grad(), _quiet_exporter():
        program = torch.onnx.export(_Both(net).eval(), (x,), dynamo=True, external_data=False, input_names=[INPUT],
                                    output_names=list(OUTPUTS), dynamic_shapes=({0: torch.export.Dim("batch")},),
                                    verbose=False)
    program.save(str(path), external_data=False)
    strip_debug_info(path)
    global_average_pools(path)
    conv1d_as_conv2d(path)
    onnx.checker.check_model(str(path), full_check=True)


def global_average_pools(path: Path) -> int:
    """ReduceMean over every spatial axis with keepdims -> GlobalAveragePool (the same result): the quantizer then
    keeps the pool in int8 (QLinearGlobalAveragePool, channels-last) instead of dequantizing the whole last feature
    map for a float ReduceMean. Returns how many nodes were rewritten."""
    import onnx

    from cmcd_edge.export.compact import constants, drop_unused_constants, ranks

    model = onnx.load(str(path))
    rank = ranks(model)
    consts = constants(model)
    done = 0
    for n in model.graph.node:
        if n.op_type != "ReduceMean" or len(n.input) < 2 or n.input[1] not in consts or n.input[0] not in rank:
            continue
        r = rank[n.input[0]]
        axes = sorted(int(a) % r for a in np.atleast_1d(consts[n.input[1]]))
        keep = [a.i for a in n.attribute if a.name == "keepdims"]
        if r >= 3 and axes == list(range(2, r)) and keep in ([], [1]):
            n.op_type = "GlobalAveragePool"
            del n.input[1]
            n.ClearField("attribute")
            done += 1
    if done:
        drop_unused_constants(model.graph)  # the axes the pools no longer read (else onnxruntime warns on load)
        onnx.save(model, str(path))
    return done


def strip_debug_info(path: Path) -> None:
    """Drop the exporter's per-node stack traces, FX metadata and torch.export graph signature (parameter names and
    kinds, on the graph and its inputs/outputs): debug text, often larger than a small model's weights, and nothing a
    device needs. Every variant is derived from this file, so none carries it."""
    import onnx

    model = onnx.load(str(path))
    g = model.graph
    for item in [*g.node, *g.input, *g.output]:
        item.ClearField("metadata_props")
    for node in g.node:
        node.doc_string = ""
    g.ClearField("metadata_props")
    g.ClearField("value_info")
    onnx.save(model, str(path))


def parity(net: students.Net, got: np.ndarray, x: np.ndarray) -> dict:
    """Torch eager vs the exported graph's logits ``got`` on ``x``: max-abs error relative to the logits' scale, top-1
    agreement."""
    with torch.no_grad():
        ref = torch.cat([net(torch.from_numpy(np.ascontiguousarray(x[i:i + 256], np.float32)))
                         for i in range(0, len(x), 256)]).numpy()
    rel = float(np.abs(got - ref).max() / max(1e-12, np.abs(ref).max()))
    agree = float((got.argmax(1) == ref.argmax(1)).mean())
    return {"max_abs_rel": rel, "top1_agreement": agree}
