"""`cmcd-edge build-engine`: a TensorRT engine from a bundle's ONNX, built on the device that will run it.

    int8  the bundle's `--target tensorrt` INT8 variant: explicit quantization from its symmetric Q/DQ nodes in a
          strongly typed network (the only INT8 path of TensorRT 10.1+ and 11; no calibrator, no INT8 flag)
    fp16  TensorRT 10: the FP32 ONNX with the FP16 builder flag; TensorRT 11 (no precision flags): the bundle's FP16
          ONNX in a strongly typed network
    fp32  the FP32 ONNX, strongly typed

One optimisation profile covers the dynamic batch (min 1, opt, max). The timing cache is kept beside the engine and
reused by later builds on the same device. The engine file name and its manifest entry carry the TensorRT version,
GPU name and compute capability; the entry carries the engine's sha256, which the runtime checks before loading.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from cmcd_edge.errors import BundleError, EnvironmentFailure, UserError
from cmcd_edge.fsutil import exclusive, write_bytes, write_json
from cmcd_edge.registry import check_choice
from cmcd_edge.runtime import trt as rt
from cmcd_edge.runtime.manifest import DeviceKey, EngineEntry, Manifest, Variant, load_manifest, sha256_file

log = logging.getLogger(__name__)
PRECISIONS = ("int8", "fp16", "fp32")


@dataclass(frozen=True)
class EngineConfig:
    bundle: str
    precision: str = "int8"
    max_batch: int = 64
    opt_batch: int | None = None  # None: min(8, max_batch)
    workspace_mb: int = 1024

    def __post_init__(self) -> None:
        check_choice("--precision", self.precision, PRECISIONS)
        if self.max_batch < 1:
            raise UserError(f"--max-batch {self.max_batch}: must be >= 1")
        if self.opt_batch is not None and not 1 <= self.opt_batch <= self.max_batch:
            raise UserError(f"--opt-batch {self.opt_batch}: must be in 1..--max-batch ({self.max_batch})")
        if self.workspace_mb < 16:
            raise UserError(f"--workspace {self.workspace_mb}: must be >= 16 MB")

    @property
    def opt(self) -> int:
        return self.opt_batch or min(8, self.max_batch)


@dataclass(frozen=True)
class BuildPlan:
    """What to parse and how, decided from the bundle and the TensorRT major version alone (testable anywhere)."""

    variant: Variant
    strongly_typed: bool
    fp16_flag: bool


def plan_build(manifest: Manifest, precision: str, trt_major: int) -> BuildPlan:
    by = {(v.precision, v.target): v for v in manifest.variants}
    if precision == "int8":
        v = by.get(("int8", "tensorrt"))  # a lookup in our own parsed variants, not a raw config dict
        if v is None:
            raise BundleError(f"{manifest.root}: no TensorRT INT8 variant (symmetric Q/DQ); re-export with "
                              "cmcd-edge export RUN --int8 --target tensorrt")
        return BuildPlan(v, strongly_typed=True, fp16_flag=False)
    if precision == "fp16" and trt_major >= 11:
        v = by.get(("fp16", "cuda"))
        if v is None:
            raise BundleError(f"{manifest.root}: TensorRT {trt_major} builds FP16 only from an FP16 ONNX (no precision "
                              "flags); re-export with cmcd-edge export RUN --fp16")
        return BuildPlan(v, strongly_typed=True, fp16_flag=False)
    fp32 = manifest.variant("fp32")
    return BuildPlan(fp32, strongly_typed=precision == "fp32", fp16_flag=precision == "fp16")


def add_engine(bundle: Path, entry: EngineEntry) -> dict:
    """Rewrite manifest.json (atomically) with ``entry`` replacing any engine of the same device and precision."""
    path = bundle / "manifest.json"
    raw = json.loads(path.read_text())
    keep = [e for e in raw["engines"] if e["file"] != entry.file] if "engines" in raw else []
    raw["engines"] = [*keep, entry.to_json()]
    write_json(path, raw)
    load_manifest(bundle)  # what we wrote must read back
    return raw


def build_engine(cfg: EngineConfig) -> EngineEntry:
    bundle = Path(cfg.bundle)
    manifest = load_manifest(bundle)  # a folder that is no bundle fails here, before a lock file is made beside it
    with exclusive(bundle):  # another build's manifest entry would be lost, an export --force would swap the folder
        return _build_into(bundle, manifest, cfg)


def _build_into(bundle: Path, manifest: Manifest, cfg: EngineConfig) -> EngineEntry:
    trt = rt.import_tensorrt()
    key = rt.current_device_key()
    major = int(str(trt.__version__).split(".")[0])
    if major < 10:
        raise EnvironmentFailure(f"TensorRT {trt.__version__} is too old: build-engine needs TensorRT 10 or 11")
    plan = plan_build(manifest, cfg.precision, major)
    onnx_path = manifest.verified_path(plan.variant)
    t0 = time.perf_counter()
    plan_bytes, cache_bytes = _build(trt, onnx_path, manifest, plan, cfg, bundle / _cache_name(key))
    engine_path = bundle / rt.engine_filename(cfg.precision, key)
    write_bytes(engine_path, plan_bytes)
    write_bytes(bundle / _cache_name(key), cache_bytes)
    entry = EngineEntry(engine_path.name, cfg.precision, sha256_file(engine_path), engine_path.stat().st_size, key,
                        cfg.max_batch, plan.variant.name)
    add_engine(bundle, entry)
    log.info("built %s from %s in %.1fs (%s)", engine_path.name, plan.variant.file, time.perf_counter() - t0,
             key.describe())
    return entry


def _cache_name(key: DeviceKey) -> str:
    return f"timing.{key.slug()}.cache"


def _build(trt, onnx_path: Path, manifest: Manifest, plan: BuildPlan, cfg: EngineConfig,
           cache_path: Path) -> tuple[bytes, bytes]:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if plan.strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        first = str(parser.get_error(0)) if parser.num_errors else "unknown error"
        raise BundleError(f"{onnx_path}: TensorRT's ONNX parser refused it ({first})")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, cfg.workspace_mb << 20)
    if plan.fp16_flag:
        config.set_flag(trt.BuilderFlag.FP16)
    sample = manifest.sample_shape
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        name = network.get_input(i).name
        profile.set_shape(name, (1, *sample), (cfg.opt, *sample), (cfg.max_batch, *sample))
    config.add_optimization_profile(profile)
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EnvironmentFailure(f"TensorRT could not build an engine from {onnx_path.name} (see its log above); try a "
                                 "larger --workspace or a smaller --max-batch")
    return bytes(serialized), bytes(config.get_timing_cache().serialize())
