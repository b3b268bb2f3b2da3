"""Shared test helpers: synthetic paired datasets, one-line-error assertions, process trees, teacher files."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cmcd_edge import datasets
from cmcd_edge.datasets import ViewSpec

INTERRUPTED = 130  # exit status of a command stopped by Ctrl-C (128 + SIGINT)


def assert_one_line_error(res, code: int = 2, *needles: str) -> None:
    """``code`` INTERRUPTED also takes death by SIGINT after the line was written (1 run in ~12 of the demo here):
    CPython sets a global "unhandled KeyboardInterrupt" flag when one leaves a frame run through PyRun_* (as C++
    extensions run Python), even if Python code then catches it, and at exit kills itself with SIGINT; a shell shows
    130 for both."""
    ok = (code, -signal.SIGINT) if code == INTERRUPTED else (code,)
    assert res.returncode in ok, (res.returncode, res.stderr[-2000:])
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert lines and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert lines[-1].startswith("Error:"), lines
    for n in needles:
        assert n in lines[-1], lines[-1]


def with_noise_view(out, n: int = 800, classes: int = 4, seed: int = 0):
    """Views ``src`` (clean class signal), ``noise`` (none at all) and ``tgt`` (noisy signal), rows aligned, labeled."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    protos = rng.normal(size=(classes, 16))
    views = {"src": ViewSpec((protos[y] * 2 + rng.normal(size=(n, 16)) * 0.5).astype(np.float32), "vector"),
             "noise": ViewSpec(rng.normal(size=(n, 16)).astype(np.float32), "vector"),
             "tgt": ViewSpec((protos[y][:, :8] + rng.normal(size=(n, 8))).astype(np.float32), "vector")}
    return datasets.write_dataset(out, views, y, [f"c{i}" for i in range(classes)])


def synthetic_paired(out, target_kind: str = "vector", n: int = 600, classes: int = 4, seed: int = 0,
                     target_shape=None, labels: bool = True, unlabeled: float = 0.0):
    """A rich source view (clean class signal) and a noisy target view of the given kind, rows aligned; a fraction
    ``unlabeled`` of the rows (every one with ``labels=False``) carries label -1."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    protos = rng.normal(size=(classes, 16))
    src = protos[y] * 2.0 + rng.normal(size=(n, 16)) * 0.5
    if target_kind == "vector":
        tgt = protos[y][:, :8] + rng.normal(size=(n, 8)) * 1.0
    elif target_kind == "sequence":
        c, t = target_shape or (3, 64)
        freqs = 1 + np.arange(classes)
        tt = np.linspace(0, 1, t)
        base = np.sin(2 * np.pi * freqs[y][:, None] * tt[None, :] * 2)
        tgt = base[:, None, :].repeat(c, 1) + rng.normal(size=(n, c, t)) * 0.8
    else:
        c, h, w = target_shape or (1, 12, 12)
        tgt = rng.normal(size=(n, c, h, w)) * 0.8
        for k in range(classes):  # a bright quadrant per class
            r, q = divmod(k, 2)
            tgt[y == k, :, r * h // 2:(r + 1) * h // 2, q * w // 2:(q + 1) * w // 2] += 1.5
    views = {"src": ViewSpec(src.astype(np.float32), "vector"), "tgt": ViewSpec(tgt.astype(np.float32), target_kind)}
    lab = np.where(rng.random(n) < (unlabeled if labels else 1.0), -1, y)
    return datasets.write_dataset(out, views, lab, [f"c{i}" for i in range(classes)])


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and every process below it, as a node failure or a scheduler's kill does. torchrun starts each
    worker in a session of its own, so killing torchrun's process group leaves the workers running (they kept
    training and writing into the run folder beside the resumed run)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children.get(p, [])
    for p in tree:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def save_torchscript(module, path) -> None:
    """torch.jit.script(module).save(path), without torch 2.13's DeprecationWarning: the .pt format is what is tested."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(module).save(str(path))


def save_exported(module, path, dynamic: bool = True) -> None:
    """torch.export a module taking (B, 16) rows, in the mode it is in, with a dynamic batch unless ``dynamic=False``."""
    import torch

    torch.manual_seed(0)
    shapes = ({0: torch.export.Dim("batch")},) if dynamic else None
    torch.export.save(torch.export.export(module, (torch.randn(4, 16),), dynamic_shapes=shapes), str(path))


def teacher_of_kind(kind: str, folder: Path, seed: int, monkeypatch) -> str:
    """A ``--teacher`` of ``kind`` taking (B, 16) rows, in ``folder``, made with ``seed``: a .pt2 or .onnx file, a
    ``pkg.module:factory`` whose module is (re)written (``factory``), or one whose unchanged module loads a
    safetensors checkpoint that is (re)written (``weights``). A second call with another seed replaces the first
    teacher."""
    import torch

    torch.manual_seed(seed)
    if kind == "pt2":
        save_exported(torch.nn.Linear(16, 8).eval(), folder / "teacher.pt2")
        return str(folder / "teacher.pt2")
    if kind == "onnx":
        lin = torch.nn.Linear(16, 8)
        save_onnx_linear(lin.weight.detach().numpy(), lin.bias.detach().numpy(), folder / "teacher.onnx")
        return str(folder / "teacher.onnx")
    if kind == "weights":  # a factory whose module stays as it is, loading a checkpoint saved over
        from safetensors.torch import save_file

        weights = folder / "teacher.safetensors"
        save_file(torch.nn.Linear(16, 8).state_dict(), str(weights))
        name = "weights_teacher_" + re.sub(r"\W", "_", folder.name)
        (folder / f"{name}.py").write_text("import torch\nfrom safetensors.torch import load_file\ndef make():\n"
                                           "    net = torch.nn.Linear(16, 8)\n"
                                           f"    net.load_state_dict(load_file({str(weights)!r}))\n    return net\n")
        monkeypatch.syspath_prepend(str(folder))
        return f"{name}:make"
    name = "teacher_" + re.sub(r"\W", "_", folder.name)  # one per test: a module imported stays in sys.modules
    (folder / f"{name}.py").write_text(f"import torch\ndef make():\n    torch.manual_seed({seed})\n"
                                       "    return torch.nn.Linear(16, 8)\n")
    monkeypatch.syspath_prepend(str(folder))
    return f"{name}:make"


def save_onnx_linear(weight: np.ndarray, bias: np.ndarray, path: Path, batch: int | None = None,
                     outputs: tuple[str, ...] = ("embedding",), logits_of: int = 0) -> Path:
    """An ONNX teacher written with onnx.helper: x (batch, in) -> x @ weight.T + bias, named ``outputs[0]``; a second
    output, when named, is the first ``logits_of`` input columns times 3 (as :func:`counted_teacher`'s logits).
    ``batch``: a fixed batch size in the graph (None: dynamic)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    out_dim, in_dim = weight.shape
    n = batch if batch is not None else "batch"
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], [outputs[0]], transB=1)]
    inits = [numpy_helper.from_array(weight.astype(np.float32), "w"), numpy_helper.from_array(bias.astype(np.float32), "b")]
    outs = [helper.make_tensor_value_info(outputs[0], TensorProto.FLOAT, [n, out_dim])]
    if len(outputs) > 1:
        nodes += [helper.make_node("Slice", ["x", "s0", "s1", "ax"], ["cols"]),
                  helper.make_node("Mul", ["cols", "three"], [outputs[1]])]
        inits += [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in
                  (("s0", [0]), ("s1", [logits_of]), ("ax", [1]))] + [numpy_helper.from_array(np.float32(3.0), "three")]
        outs.append(helper.make_tensor_value_info(outputs[1], TensorProto.FLOAT, [n, logits_of]))
    graph = helper.make_graph(nodes, "teacher", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, in_dim])],
                              outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)  # what ORT reads
    onnx.save(model, str(path))
    return path


def counted_teacher(folder: Path, name: str, monkeypatch) -> tuple[str, Path]:
    """A ``pkg.module:factory`` teacher taking (B, 16) rows, with 4-class logits (a teacher with a test score), that
    adds an ``x`` to the returned file each time it starts a pass over the rows (the 2-row probe that opens every
    load_teacher): (its --teacher reference, that file). Building it (to key it, or to load it) adds nothing."""
    passes = folder / f"{name}.passes.txt"
    (folder / f"{name}.py").write_text(
        "import pathlib, torch\n"
        f"LOG = pathlib.Path({str(passes)!r})\n"
        "def make():\n"
        "    torch.manual_seed(0)\n"
        "    net = torch.nn.Linear(16, 8)\n"
        "    def run(x):\n"
        "        if len(x) == 2:\n"
        "            LOG.write_text(LOG.read_text() + 'x' if LOG.exists() else 'x')\n"
        "        return net(x), x[:, :4] * 3.0\n"
        "    return run\n")
    monkeypatch.syspath_prepend(str(folder))
    return f"{name}:make", passes


def toy_dataset(tmp_path, n=60, **kw):
    """A 3-class dataset of a vector view ``a`` and a sequence view ``b``, written to ``tmp_path/toy``."""
    rng = np.random.default_rng(0)
    views = {"a": ViewSpec(rng.normal(size=(n, 5)).astype(np.float32), "vector"),
             "b": ViewSpec(rng.normal(size=(n, 2, 8)).astype(np.float32), "sequence")}
    return datasets.write_dataset(tmp_path / "toy", views, np.arange(n) % 3, ["x", "y", "z"], **kw)


def edited_bundle(src: Path, out: Path, edit: Callable[[dict], None]) -> Path:
    """A copy of bundle ``src`` at ``out`` whose manifest.json ``edit`` changed in place (the model files, and so
    their sha256, untouched)."""
    shutil.copytree(src, out)
    manifest = json.loads((out / "manifest.json").read_text())
    edit(manifest)
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def run_on_copied_data(run: Path, out: Path, edit: Callable[[Path], None] | None = None) -> tuple[Path, Path]:
    """A copy of distill run ``run`` at ``out/run`` whose run.json names a copy of its dataset at ``out/data``, which
    ``edit`` (given the copy's folder) may change."""
    data = out / "data"
    shutil.copytree(json.loads((run / "run.json").read_text())["config"]["data"], data)
    if edit is not None:
        edit(data)
    shutil.copytree(run, out / "run")
    doc = json.loads((out / "run" / "run.json").read_text())
    doc["config"]["data"] = str(data)
    (out / "run" / "run.json").write_text(json.dumps(doc))
    return out / "run", data


def permute_rows(data: Path) -> None:
    """Reorder every row-aligned array of dataset folder ``data`` alike (a dataset rebuilt in another row order)."""
    files = [*data.glob("*.npy"), *data.glob("views/*.npy")]
    perm = np.random.default_rng(5).permutation(len(np.load(data / "labels.npy")))
    for f in files:
        np.save(f, np.load(f)[perm])
