"""TensorRT in the runtime: engine keying and naming, the manifest's engine entries, and a native engine session.

An engine runs only on the TensorRT version and GPU it was built for, so every engine is keyed by both:

    model.int8.trt10.3.0.orin.sm87.engine      manifest "engines": [{"file", "precision", "sha256", "size_bytes",
                                               "tensorrt_version", "gpu_name", "compute_capability", "max_batch",
                                               "opt_batch", "source_variant"}]

``tensorrt`` (and ``cuda-python`` for device memory) are imported lazily: the keying, matching and refusal logic
below is plain Python and is tested on machines without a GPU. Written against the TensorRT 10/11 Python API
(``deserialize_cuda_engine``, named I/O tensors, ``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``).
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cmcd_edge.runtime.errors import BundleError, EngineMismatch, EnvironmentFailure
from cmcd_edge.runtime.manifest import DeviceKey, EngineEntry, Manifest, Variant, sha256_file

log = logging.getLogger(__name__)
REBUILD = "rebuild with cmcd-edge build-engine on this device"


def engine_filename(precision: str, key: DeviceKey) -> str:
    return f"model.{precision}.{key.slug()}.engine"


def match_engine(manifest: Manifest, key: DeviceKey, precision: str | None = None) -> EngineEntry:
    """The engine built for exactly this device (and precision, when given); refuses anything else with the fix."""
    entries = manifest.engines
    wanted = [e for e in entries if precision in (None, e.precision)]
    for prefer in ("int8", "fp16", "fp32"):
        for e in wanted:
            if e.key == key and e.precision == prefer:
                return e
    if not entries:
        raise EngineMismatch(f"{manifest.root}: the bundle has no TensorRT engine; {REBUILD}")
    built = "; ".join(f"{e.file} ({e.key.describe()})" for e in wanted or entries)
    what = f"{precision} engine" if precision else "engine"
    raise EngineMismatch(f"{manifest.root}: no {what} for this device, {key.describe()}; the bundle has {built}: {REBUILD}")


# ------------------------------------------------------------------------------------------------ lazy imports


def import_tensorrt():
    try:
        import tensorrt
    except ImportError as exc:
        raise EnvironmentFailure("TensorRT is not importable here: on a Jetson it comes with JetPack; elsewhere "
                                 "pip install 'cmcd-edge[tensorrt]'") from exc
    return tensorrt


def import_cudart():
    """cuda-python's runtime API (``cuda.bindings.runtime`` from 12.6 on, ``cuda.cudart`` before)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError as exc:
            raise EnvironmentFailure("the TensorRT backend needs cuda-python for device memory: "
                                     "pip install 'cmcd-edge[tensorrt]'") from exc
    return cudart


def _check(result: tuple) -> Any:
    """cuda-python returns (error, *values); raise on error, return the value(s)."""
    err, *rest = result
    if int(err) != 0:
        raise EnvironmentFailure(f"CUDA call failed: {err}")
    return rest[0] if len(rest) == 1 else tuple(rest)


def current_device_key(device: int = 0) -> DeviceKey:
    """This machine's key. Raises EnvironmentFailure where TensorRT or a CUDA GPU is missing."""
    trt = import_tensorrt()
    cudart = import_cudart()
    prop = _check(cudart.cudaGetDeviceProperties(device))
    name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
    return DeviceKey(str(trt.__version__), name.strip("\x00 "), f"{prop.major}.{prop.minor}")


def cache_root() -> Path:
    """$CMCD_EDGE_CACHE, else $XDG_CACHE_HOME/cmcd-edge, else ~/.cache/cmcd-edge."""
    if os.environ.get("CMCD_EDGE_CACHE"):
        return Path(os.environ["CMCD_EDGE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cmcd-edge"


def ort_cache_dir(model_sha256: str, key: DeviceKey) -> Path:
    """Where onnxruntime's TensorRT EP keeps the engine and timing cache of one model on one device."""
    return cache_root() / "ort-tensorrt" / f"{model_sha256[:16]}.{key.slug()}"


def ort_tensorrt_options(variant: Variant) -> dict:
    """Provider options for onnxruntime's TensorRT EP: engine and timing caches keyed by the model's sha256, the
    TensorRT version and the GPU. No precision flag is set: an fp32 variant stays fp32 (no silent downgrade) and a
    QDQ int8 variant is explicitly quantized by its own Q/DQ nodes."""
    try:
        key = current_device_key()
    except EnvironmentFailure as exc:  # onnxruntime-gpu may carry TensorRT libs without the Python packages
        key = DeviceKey("unknown", "unknown-gpu", "0.0")
        log.warning("ort-tensorrt: cannot read the TensorRT version and GPU (%s); the engine cache is keyed by the "
                    "model only: clear %s after changing TensorRT or the GPU", exc, cache_root() / "ort-tensorrt")
    folder = ort_cache_dir(variant.sha256, key)
    folder.mkdir(parents=True, exist_ok=True)
    return {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(folder), "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(folder), "trt_fp16_enable": False, "trt_int8_enable": False}


# ------------------------------------------------------------------------------------------------ native session


@dataclass(frozen=True)
class _IO:
    name: str


class _Context:
    """One execution context with its stream and device buffers, allocated once for max_batch rows."""

    def __init__(self, engine, trt, cudart, max_batch: int) -> None:
        self.cudart = cudart
        self.context = engine.create_execution_context()
        self.stream = _check(cudart.cudaStreamCreate())
        self.buffers: dict[str, tuple[int, np.dtype, tuple]] = {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            shape = tuple(engine.get_tensor_shape(name))[1:]  # (batch, ...) with batch dynamic (-1)
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            nbytes = max_batch * int(np.prod(shape)) * dtype.itemsize
            ptr = _check(cudart.cudaMalloc(nbytes))
            self.buffers[name] = (int(ptr), dtype, shape)
            self.context.set_tensor_address(name, int(ptr))

    def run(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        cudart = self.cudart
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        batch = next(iter(inputs.values())).shape[0]
        for name, arr in inputs.items():
            ptr, dtype, _ = self.buffers[name]
            arr = np.ascontiguousarray(arr, dtype=dtype)
            self.context.set_input_shape(name, arr.shape)
            _check(cudart.cudaMemcpyAsync(ptr, arr.ctypes.data, arr.nbytes, h2d, self.stream))
        if not self.context.execute_async_v3(int(self.stream)):  # TensorRT takes the raw handle
            raise EnvironmentFailure("TensorRT execute_async_v3 failed (see the TensorRT log)")
        results = []
        for name in outputs:
            ptr, dtype, shape = self.buffers[name]
            host = np.empty((batch, *shape), dtype=dtype)
            _check(cudart.cudaMemcpyAsync(host.ctypes.data, ptr, host.nbytes, d2h, self.stream))
            results.append(host)
        _check(cudart.cudaStreamSynchronize(self.stream))
        return [r.astype(np.float32, copy=False) for r in results]

    def close(self) -> None:
        for ptr, _, _ in self.buffers.values():
            self.cudart.cudaFree(ptr)
        self.cudart.cudaStreamDestroy(self.stream)


class TrtSession:
    """A deserialised engine with the subset of onnxruntime's InferenceSession API the Predictor uses:
    ``run(output_names, feed)``, ``get_inputs()``, ``get_outputs()``. One execution context per calling thread."""

    def __init__(self, manifest: Manifest, entry: EngineEntry) -> None:
        path = manifest.safe_path(entry.file)
        if not path.is_file():
            raise BundleError(f"{path}: missing (listed in manifest.json engines); {REBUILD}")
        digest = sha256_file(path)  # before TensorRT sees a byte of it
        if digest != entry.sha256:
            raise BundleError(f"{path}: sha256 {digest[:12]}... does not match the manifest's {entry.sha256[:12]}... "
                              f"(tampered with or corrupted); {REBUILD}")
        trt = import_tensorrt()
        self._trt, self._cudart = trt, import_cudart()
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise BundleError(f"{path}: TensorRT could not deserialise it ({entry.key.describe()}): {REBUILD}")
        self.entry, self.max_batch = entry, entry.max_batch
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self._inputs = [_IO(n) for n in names if is_input[n]]
        self._outputs = [_IO(n) for n in names if not is_input[n]]
        self._local = threading.local()
        self._contexts: list[_Context] = []
        self._lock = threading.Lock()

    def get_inputs(self) -> list[_IO]:
        return self._inputs

    def get_outputs(self) -> list[_IO]:
        return self._outputs

    def _context(self) -> _Context:
        ctx = getattr(self._local, "ctx", None)
        if ctx is None:
            ctx = _Context(self.engine, self._trt, self._cudart, self.max_batch)
            self._local.ctx = ctx
            with self._lock:
                self._contexts.append(ctx)
        return ctx

    def run(self, output_names: list[str] | None, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        batch = next(iter(feed.values())).shape[0]
        if batch > self.max_batch:
            raise BundleError(f"batch {batch} exceeds the engine's max batch {self.max_batch}; rebuild with "
                              "cmcd-edge build-engine --max-batch N")
        return self._context().run(feed, output_names or [o.name for o in self._outputs])

    def close(self) -> None:
        with self._lock:
            for ctx in self._contexts:
                ctx.close()
            self._contexts.clear()
