"""The Predictor a device app embeds: numpy + onnxruntime, never torch.

    from cmcd_edge.runtime import Predictor
    p = Predictor.load("bundle/")                 # a variant that passed the gate (INT8 first, unless the export
                                                  # timed another >= 10% faster on this kind of CPU), fastest backend,
                                                  # warmed up at batch 1
    names, probs = p.classify(sample)             # one sample (C, ...) or a batch (B, C, ...)

One ONNX Runtime session is shared by every thread (``InferenceSession.run`` is thread-safe); session options are set
once at load. Inputs are checked against the manifest: float64 and integer arrays are cast to float32, a wrong rank or
size is an error naming the expected shape, NaN/Inf are refused (``allow_nonfinite=True`` passes them through).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence

import numpy as np

from cmcd_edge.runtime import cpu
from cmcd_edge.runtime.errors import BundleError, EngineMismatch, EnvironmentFailure, InputShapeError, UserError
from cmcd_edge.runtime.manifest import Manifest, Variant, load_manifest
from cmcd_edge.runtime.session import BACKENDS, available_backends, make_session

log = logging.getLogger(__name__)
VARIANT_PREFERENCE = {"cpu": ("int8", "fp32", "fp16"), "cuda": ("fp16", "int8", "fp32"),
                      "ort-tensorrt": ("int8", "fp16", "fp32")}
# which variant targets each backend can run: the CPU presets' asymmetric uint8 QDQ is not for TensorRT
MIN_SPEEDUP = 1.10  # auto leaves the precision preference only for a variant this much faster where it was timed
RUNS_TARGET = {"cpu": ("any", "cpu"), "cuda": ("any", "cpu", "cuda", "tensorrt"), "ort-tensorrt": ("any", "cuda", "tensorrt")}


class Predictor:
    def __init__(self, manifest: Manifest, variant: Variant, backend: str, session, max_batch: int = 256,
                 allow_nonfinite: bool = False) -> None:
        self.manifest, self.variant, self.backend, self.session = manifest, variant, backend, session
        self.max_batch, self.allow_nonfinite = max_batch, allow_nonfinite
        self._input = manifest.input_name
        self._shape = manifest.sample_shape
        outs = [o.name for o in session.get_outputs()]
        self._logits = "logits" if "logits" in outs else outs[0]
        self._embedding = "embedding" if "embedding" in outs else None
        self.warmup_batches: list[int] = []
        self.warmup_s = 0.0

    # ------------------------------------------------------------------------------------------------ loading

    @classmethod
    def load(cls, bundle: str | os.PathLike, variant: str = "auto", backend: str = "auto", threads: int | None = None,
             max_batch: int = 256, allow_nonfinite: bool = False, warmup: Sequence[int] = (1,)) -> Predictor:
        """Open a bundle: manifest checked, file sha256 checked, session created once.

        ``backend="auto"`` tries tensorrt (an engine built for this device), ort-tensorrt, cuda, cpu in that order,
        as far as this machine has them, and logs a warning for each one it falls back past. ``variant="auto"`` takes
        the backend's precision preference among the variants that passed the gate; on the CPU backend it takes
        another instead when the export timed that one at least 10% faster on a CPU of this kind (``cpu_timed_on``
        and each variant's ``cpu_p50_us`` in the manifest). ``warmup``: batch sizes run (twice) on zeros before this
        returns, so the session's first-run work (memory arenas, kernel choice, a TensorRT context's buffers) is not
        paid by the app's first request; ``()`` skips it."""
        if max_batch < 1:
            raise UserError(f"max_batch {max_batch}: must be >= 1")
        for b in warmup:
            if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= max_batch:
                raise UserError(f"warmup batch {b!r}: must be an integer in [1, {max_batch}] (max_batch)")
        if threads is not None and threads < 0:
            raise UserError(f"threads {threads}: must be >= 0 (0: onnxruntime's default)")
        manifest = load_manifest(bundle)
        backends = _backend_order(backend)
        skipped: list[str] = []
        for i, b in enumerate(backends):
            try:
                chosen, session = _open(manifest, variant, b, threads)
            except (EnvironmentFailure, EngineMismatch) as exc:
                if len(backends) == 1:
                    raise
                skipped.append(f"{b}: {exc}")
                nxt = backends[i + 1] if i + 1 < len(backends) else None
                log.warning("backend %s skipped (%s)%s", b, exc, f"; falling back to {nxt}" if nxt else "")
                continue
            limit = min(max_batch, session.max_batch) if b == "tensorrt" else max_batch
            p = cls(manifest, chosen, b, session, limit, allow_nonfinite)
            p.warm_up(warmup)
            return p
        raise EnvironmentFailure(f"no backend could load {manifest.root}: {' | '.join(skipped)}")

    def warm_up(self, batches: Sequence[int] = (1,)) -> None:
        """Run zeros twice at each batch size (one above ``max_batch`` runs in its chunks), timed into ``warmup_s``:
        the first run makes the session's buffers, the second settles what is left. mfeat zer bundle, a fresh process:
        the app's first call 271 us without it, 62 us with it (0.35 ms at load), 11 us steady (BENCHMARKS.md)."""
        t0 = time.perf_counter()
        for b in batches:
            try:
                for _ in range(2):
                    self._run(np.zeros((b, *self._shape), np.float32), self._logits)
            except Exception as exc:  # noqa: BLE001  (onnxruntime's and TensorRT's errors share no base class)
                raise BundleError(f"{self.manifest.root}: variant {self.variant.name} fails on a batch of {b} in the "
                                  f"manifest's input shape {list(self._shape)} ({type(exc).__name__}: "
                                  f"{str(exc)[:200]}); re-export the bundle") from exc
        self.warmup_batches += list(batches)
        self.warmup_s += time.perf_counter() - t0

    # ------------------------------------------------------------------------------------------------ inference

    @property
    def classes(self) -> tuple[str, ...]:
        return self.manifest.classes

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.manifest.sample_shape

    def check_input(self, x) -> tuple[np.ndarray, bool]:
        """(float32 C-contiguous batch, whether a single sample was given)."""
        arr = x if isinstance(x, np.ndarray) else np.asarray(x)
        if arr.dtype != np.float32:
            if arr.dtype == object or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
                raise InputShapeError(f"input dtype {arr.dtype} is not numeric; expected float32")
            arr = arr.astype(np.float32)
        shape = self._shape
        single = arr.ndim == len(shape)
        if single:
            arr = arr[None]
        if arr.shape[1:] != shape or arr.ndim != len(shape) + 1:
            given, hint = tuple(np.shape(x)), ""
            if len(shape) > 1 and arr.ndim == len(shape) + 1 and sorted(arr.shape[1:]) == sorted(shape):
                want = f" ({self.manifest.layout} expected)" if self.manifest.layout else ""
                hint = f"; the same sizes in another order{want}: axes transposed?"
            axis = missing_channel_axis(given, shape)
            if axis is not None:
                hint = f"; the channel axis (1) is missing: add it with {('x[None]', 'x[:, None]')[axis]}"
            raise InputShapeError(f"input shape {list(given)} does not match the bundle's "
                                  f"{list(shape)} (one sample) or [batch, {', '.join(map(str, shape))}]{hint}")
        if arr.shape[0] == 0:
            raise InputShapeError("empty batch: the input has 0 samples")
        if not arr.flags.c_contiguous:
            arr = np.ascontiguousarray(arr)
        # a sum is finite iff every element is, barring float overflow, which the exact check then settles
        if not self.allow_nonfinite and not np.isfinite(arr.sum()) and not np.isfinite(arr).all():
            bad = np.flatnonzero(~np.isfinite(arr.reshape(len(arr), -1)).all(axis=1))
            more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
            where = "" if single else f" in sample {int(bad[0])}{more}"
            raise InputShapeError(f"input contains NaN or Inf{where} (allow_nonfinite runs it anyway)")
        return arr, single

    def _run(self, x, output: str) -> np.ndarray:
        arr, single = self.check_input(x)
        feed, run = self._input, self.session.run
        if arr.shape[0] <= self.max_batch:
            out = run([output], {feed: arr})[0]
        else:
            out = np.concatenate([run([output], {feed: arr[i:i + self.max_batch]})[0]
                                  for i in range(0, arr.shape[0], self.max_batch)])
        return out[0] if single else out

    def predict(self, x) -> np.ndarray:
        """Logits: (K,) for one sample, (B, K) for a batch."""
        return self._run(x, self._logits)

    def embed(self, x) -> np.ndarray:
        if self._embedding is None:
            raise BundleError(f"{self.manifest.root}: variant {self.variant.name} has no embedding output")
        return self._run(x, self._embedding)

    def classify(self, x) -> tuple[list[str] | str, np.ndarray]:
        """(class name(s), softmax probabilities)."""
        logits = self.predict(x)
        z = logits - logits.max(axis=-1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=-1, keepdims=True)
        idx = p.argmax(axis=-1)
        names = self.classes[int(idx)] if np.ndim(idx) == 0 else [self.classes[int(i)] for i in idx]
        return names, p

    def describe(self) -> dict:
        """What was loaded, as JSON-ready facts (for a device app's log or health endpoint)."""
        return {"bundle": str(self.manifest.root), "variant": self.variant.name, "precision": self.variant.precision,
                "gate": self.variant.gate, "backend": self.backend, "input_shape": list(self.input_shape),
                "max_batch": self.max_batch, "classes": list(self.classes), "warmup_batches": self.warmup_batches,
                "warmup_ms": round(1e3 * self.warmup_s, 3)}

    def __repr__(self) -> str:
        v = self.variant
        dims = ", ".join(map(str, self.input_shape))
        return (f"Predictor({str(self.manifest.root)!r}, variant={v.name!r} ({v.precision}, gate {v.gate}), "
                f"backend={self.backend!r}, input=[batch, {dims}], {len(self.classes)} classes)")


def missing_channel_axis(given: tuple[int, ...], shape: tuple[int, ...]) -> int | None:
    """Where the channel axis of a one-channel sample ``shape`` ([1, H, W], [1, T]) is missing from ``given``: 0 for
    one sample ([H, W]), 1 for a batch ([N, H, W]); None when that is not the one difference. The Predictor names it in
    its error; ``predict`` adds it to a file's samples."""
    if len(shape) < 2 or shape[0] != 1 or given == shape:
        return None
    if given == shape[1:]:
        return 0
    return 1 if given[1:] == shape[1:] else None


def _open(manifest: Manifest, variant: str, backend: str, threads: int | None):
    """(variant, session) for one backend; EnvironmentFailure / EngineMismatch when this backend cannot serve it."""
    if backend == "tensorrt":
        from cmcd_edge.runtime import trt

        precision = None if variant == "auto" else manifest.variant(variant).precision
        entry = trt.match_engine(manifest, trt.current_device_key(), precision)
        return manifest.variant(entry.source_variant), trt.TrtSession(manifest, entry)
    chosen = _choose_variant(manifest, variant, backend)
    if backend == "cpu" and chosen.precision == "int8":
        risk = cpu.int8_risk(chosen.extra["preset"] if "preset" in chosen.extra else None, cpu.cpu_isa())
        if risk is not None:
            log.warning("variant %s of %s: %s", chosen.name, manifest.root, risk)
    options = None
    if backend == "ort-tensorrt":
        from cmcd_edge.runtime import trt

        options = trt.ort_tensorrt_options(chosen)
    return chosen, make_session(manifest.verified_path(chosen), backend=backend, threads=threads, provider_options=options)


def _faster_on_this_cpu(manifest: Manifest, ok: list[Variant], first: Variant) -> Variant:
    """``first`` (the precision preference), unless the export timed the CPU variants on a CPU of this kind and
    another that passed the gate ran at least MIN_SPEEDUP faster there (an INT8 MLP is slower than its FP32 twin)."""
    timed_on = manifest.raw["cpu_timed_on"] if "cpu_timed_on" in manifest.raw else None
    if not (isinstance(timed_on, dict) and timed_on.get("isa") == cpu.cpu_isa()):
        return first
    times = {v.name: _microseconds(v.extra["cpu_p50_us"]) for v in ok
             if v.target in RUNS_TARGET["cpu"] and "cpu_p50_us" in v.extra}
    times = {k: t for k, t in times.items() if t is not None}
    if first.name not in times or len(times) < 2:
        return first
    best = min(times, key=times.__getitem__)
    if times[best] * MIN_SPEEDUP > times[first.name]:
        return first
    log.debug("variant auto: %s, which ran %.1f us against %s's %.1f us at export on a CPU of this kind (%s)", best,
              times[best], first.name, times[first.name], timed_on.get("cpu"))
    return next(v for v in ok if v.name == best)


def _microseconds(value) -> float | None:
    """A manifest's timing as a positive finite float; None for anything else (it comes from an untrusted file)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        t = float(value)
    except OverflowError:  # a JSON integer past float's range
        return None
    return t if math.isfinite(t) and t > 0 else None


def _backend_order(backend: str) -> list[str]:
    have = available_backends()
    if backend == "auto":
        return have
    if backend not in BACKENDS:
        raise BundleError(f"unknown backend {backend!r}; valid: auto, {', '.join(BACKENDS)}")
    if backend not in have:
        raise EnvironmentFailure(f"backend {backend!r} is not available here; available: {', '.join(have)}")
    return [backend]


def auto_variant(manifest: Manifest, backend: str = "cpu") -> str:
    """The variant ``Predictor.load(variant="auto")`` would take on this onnxruntime ``backend`` here."""
    return _choose_variant(manifest, "auto", backend).name


def _choose_variant(manifest: Manifest, variant: str, backend: str) -> Variant:
    if variant != "auto":
        v = manifest.variant(variant)
        if v.gate == "failed":
            log.warning("variant %s failed the accuracy gate at export (%s); loading it because it was asked for",
                        v.name, v.test_accuracy)
        return v
    ok = [v for v in manifest.variants if v.gate != "failed"]
    for precision in VARIANT_PREFERENCE[backend]:  # onnxruntime backends only: the native one picks an engine
        for v in ok:
            if v.precision == precision and v.target in RUNS_TARGET[backend]:
                return _faster_on_this_cpu(manifest, ok, v) if backend == "cpu" else v
    if not ok:
        raise BundleError(f"{manifest.root}: every variant failed the accuracy gate; pass variant= explicitly")
    return ok[0]
