"""manifest.json: the only contract between export and the runtime. Validated before anything is loaded; every
file it names must stay inside the bundle and match its sha256."""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cmcd_edge.runtime.errors import BundleError

SCHEMA_VERSION = 1
PRECISIONS = ("fp32", "fp16", "int8")
GATES = ("passed", "failed", "not-run")


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Variant:
    name: str
    precision: str
    file: str
    sha256: str
    size_bytes: int
    test_accuracy: float | None
    gate: str
    target: str
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class DeviceKey:
    """What a TensorRT engine is bound to: TensorRT version, GPU name and compute capability ("8.7")."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str

    def slug(self) -> str:
        gpu = re.sub(r"[^a-z0-9]+", "-", self.gpu_name.lower()).strip("-")[:40] or "gpu"
        return f"trt{self.tensorrt_version}.{gpu}.sm{self.compute_capability.replace('.', '')}"

    def describe(self) -> str:
        return f"TensorRT {self.tensorrt_version} on {self.gpu_name} (sm_{self.compute_capability.replace('.', '')})"

    def to_json(self) -> dict:
        return {"tensorrt_version": self.tensorrt_version, "gpu_name": self.gpu_name,
                "compute_capability": self.compute_capability}


@dataclass(frozen=True)
class EngineEntry:
    """A TensorRT engine listed in the manifest (built on the device by ``cmcd-edge build-engine``)."""

    file: str
    precision: str
    sha256: str
    size_bytes: int
    key: DeviceKey
    max_batch: int
    source_variant: str

    def to_json(self) -> dict:
        return {"file": self.file, "precision": self.precision, "sha256": self.sha256, "size_bytes": self.size_bytes,
                **self.key.to_json(), "max_batch": self.max_batch, "source_variant": self.source_variant}


@dataclass(frozen=True)
class Manifest:
    root: Path
    schema_version: int
    input_name: str
    input_shape: tuple  # (None|"batch", *sample dims)
    input_dtype: str
    layout: str
    outputs: list[dict]
    classes: tuple[str, ...]
    variants: tuple[Variant, ...]
    raw: dict
    engines: tuple[EngineEntry, ...] = ()

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.input_shape[1:])

    def variant(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        raise BundleError(f"{self.root}: no variant {name!r}; this bundle has {', '.join(v.name for v in self.variants)}")

    def safe_path(self, rel: str) -> Path:
        return safe_path(self.root, rel)

    def verified_path(self, variant: Variant) -> Path:
        """The variant's file, after checking it stays in the bundle and its sha256 matches the manifest."""
        path = self.safe_path(variant.file)
        if not path.is_file():
            raise BundleError(f"{path}: missing (listed in manifest.json for variant {variant.name})")
        digest = sha256_file(path)
        if digest != variant.sha256:
            raise BundleError(f"{path}: sha256 {digest[:12]}... does not match the manifest's {variant.sha256[:12]}... "
                              "(file tampered with or corrupted); re-export the bundle")
        return path


def safe_path(root: Path, rel: str) -> Path:
    """``root/rel``, refusing absolute names, ``..`` and symlinks that lead out of the bundle."""
    if not isinstance(rel, str) or not rel or os.path.isabs(rel) or rel.startswith(("/", "\\")) or ":" in rel:
        raise BundleError(f"{root}/manifest.json: file name {rel!r} must be a plain relative path inside the bundle")
    if ".." in Path(rel).parts:
        raise BundleError(f"{root}/manifest.json: file name {rel!r} escapes the bundle")
    path = root / rel
    real_root = root.resolve()
    if not str(path.resolve()).startswith(str(real_root) + os.sep):
        raise BundleError(f"{root}/manifest.json: {rel!r} resolves outside the bundle (symlink?)")
    return path


def _req(d: dict, key: str, typ, where: str) -> Any:
    if key not in d:
        raise BundleError(f"{where}: missing field {key!r}")
    val = d[key]
    if not isinstance(val, typ) or (typ is int and isinstance(val, bool)):
        names = typ.__name__ if isinstance(typ, type) else "/".join(t.__name__ for t in typ)
        raise BundleError(f"{where}: field {key!r} must be {names}, got {type(val).__name__}")
    return val


def _choice(d: dict, key: str, choices: tuple[str, ...], where: str) -> str:
    val = _req(d, key, str, where)
    if val not in choices:
        raise BundleError(f"{where}: {key} {val!r}; valid: {', '.join(choices)}")
    return val


def _obj(v: Any, where: str) -> dict:
    if not isinstance(v, dict):
        raise BundleError(f"{where}: expected an object")
    return v


def load_manifest(bundle: str | os.PathLike) -> Manifest:
    root = Path(bundle)
    path = root / "manifest.json"
    if not root.is_dir():
        raise BundleError(f"{root}: no such bundle folder")
    if not path.is_file():
        if (root / "run.json").is_file():
            raise BundleError(f"{root}: a distill run, not a bundle: export it first (cmcd-edge export {root} --out BUNDLE)")
        raise BundleError(f"{path}: missing (not a cmcd-edge bundle?)")
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise BundleError(f"{path}: expected a JSON object")
    where = str(path)
    version = _req(raw, "schema_version", int, where)
    if version != SCHEMA_VERSION:
        raise BundleError(f"{path}: schema_version {version} is not supported; this runtime reads schema_version "
                          f"{SCHEMA_VERSION} (use the cmcd-edge version that wrote the bundle, or re-export)")
    inp = _req(raw, "input", dict, where)
    name = _req(inp, "name", str, where + " input")
    shape = _req(inp, "shape", list, where + " input")
    if len(shape) < 2 or not all(isinstance(d, int) and d > 0 for d in shape[1:]):
        raise BundleError(f"{where}: input shape {shape} must be [batch, positive dims...]")
    dtype = _req(inp, "dtype", str, where + " input")
    if dtype != "float32":
        raise BundleError(f"{where}: input dtype {dtype!r} is not supported (float32)")
    outputs = _req(raw, "outputs", list, where)
    classes = _req(raw, "classes", list, where)
    variants = []
    for i, v in enumerate(_req(raw, "variants", list, where)):
        w = f"{where} variants[{i}]"
        v = _obj(v, w)
        precision, gate = _choice(v, "precision", PRECISIONS, w), _choice(v, "gate", GATES, w)
        acc = v.get("test_accuracy")
        if acc is not None and not isinstance(acc, (int, float)):
            raise BundleError(f"{w}: field 'test_accuracy' must be a number or null")
        known = {"name", "precision", "file", "sha256", "size_bytes", "test_accuracy", "gate", "target"}
        variants.append(Variant(_req(v, "name", str, w), precision, _req(v, "file", str, w), _req(v, "sha256", str, w),
                                _req(v, "size_bytes", int, w), acc, gate, _req(v, "target", str, w),
                                {k: x for k, x in v.items() if k not in known}))
        safe_path(root, variants[-1].file)
    if not variants:
        raise BundleError(f"{where}: lists no variants")
    names = {v.name for v in variants}
    engines = []
    for i, e in enumerate(_req(raw, "engines", list, where) if "engines" in raw else []):
        w = f"{where} engines[{i}]"
        e = _obj(e, w)
        precision = _choice(e, "precision", PRECISIONS, w)
        key = DeviceKey(_req(e, "tensorrt_version", str, w), _req(e, "gpu_name", str, w),
                        _req(e, "compute_capability", str, w))
        entry = EngineEntry(_req(e, "file", str, w), precision, _req(e, "sha256", str, w), _req(e, "size_bytes", int, w),
                            key, _req(e, "max_batch", int, w), _req(e, "source_variant", str, w))
        if entry.source_variant not in names:
            raise BundleError(f"{w}: source_variant {entry.source_variant!r} is not a variant of this bundle")
        safe_path(root, entry.file)
        engines.append(entry)
    return Manifest(root, version, name, tuple(shape), dtype, str(inp.get("layout", "")), outputs,
                    tuple(str(c) for c in classes), tuple(variants), raw, tuple(engines))
