"""ONNX Runtime sessions, made one way for export's accuracy gate, the Predictor and bench alike."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cmcd_edge.runtime.errors import BundleError, EnvironmentFailure, first_line

PROVIDER_FOR_BACKEND = {"ort-tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider",
                        "cpu": "CPUExecutionProvider"}
# "tensorrt" is the native engine backend (runtime/trt.py); the rest are onnxruntime execution providers
BACKENDS = ("tensorrt", *PROVIDER_FOR_BACKEND)


def available_backends() -> list[str]:
    """Backends in preference order (fastest first) that this machine offers; the native TensorRT backend counts
    when the tensorrt package is importable (whether the bundle has an engine for this GPU is checked at load)."""
    import importlib.util

    import onnxruntime as ort

    have = set(ort.get_available_providers())
    native = ["tensorrt"] if importlib.util.find_spec("tensorrt") is not None else []
    return native + [b for b, p in PROVIDER_FOR_BACKEND.items() if p in have]


def make_session(path: str | os.PathLike, backend: str = "cpu", threads: int | None = None,
                 provider_options: dict | None = None):
    """An InferenceSession with full graph optimisation and the thread counts set once."""
    import onnxruntime as ort

    if backend not in PROVIDER_FOR_BACKEND:
        raise BundleError(f"unknown onnxruntime backend {backend!r}; valid: {', '.join(PROVIDER_FOR_BACKEND)}")
    provider = PROVIDER_FOR_BACKEND[backend]
    if provider not in ort.get_available_providers():
        raise EnvironmentFailure(f"backend {backend!r} ({provider}) is not in this onnxruntime build; "
                                 f"available: {', '.join(available_backends())}")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.inter_op_num_threads = 1
    if threads:
        opts.intra_op_num_threads = int(threads)
    opts.log_severity_level = 3
    providers = [(provider, provider_options or {})]
    if provider != "CPUExecutionProvider":
        providers.append(("CPUExecutionProvider", {}))
    try:
        return ort.InferenceSession(str(Path(path)), sess_options=opts, providers=providers)
    except Exception as exc:  # noqa: BLE001  (onnxruntime raises its own untyped errors for bad files)
        raise BundleError(f"{path}: onnxruntime cannot load it ({first_line(exc)})") from exc


def run_batched(session, x: np.ndarray, batch: int = 256, output: str | None = None) -> np.ndarray:
    """Run ``session`` over ``x`` in chunks; return the first output (or the named one), concatenated."""
    name = session.get_inputs()[0].name
    outs = [session.run([output] if output else None, {name: np.ascontiguousarray(x[i:i + batch], np.float32)})[0]
            for i in range(0, len(x), batch)]
    return np.concatenate(outs)


def top1(session, x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Top-1 accuracy and the logits, through the same session code the device runs."""
    logits = run_batched(session, x)
    return float((logits.argmax(1) == y).mean()), logits
