"""The multi-view dataset format (numpy only, memory-mapped) and the built-in data sets.

    DATASET/
      dataset.json      {"name", "views": {NAME: {"kind": "vector"|"sequence"|"image"}}, "classes": [...]}
      views/NAME.npy    rows aligned across views; vector [N, D], sequence [N, C, T], image [N, C, H, W]
      labels.npy        int64 [N], -1 = unlabeled
      groups.npy        optional int64 [N]: a group never straddles two splits
      splits.npy        optional int8 [N]: 0 train, 1 val, 2 test

``builtin:NAME`` resolves to a data set shipped inside the package (``builtin:mfeat``).
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from cmcd_edge.errors import DataError
from cmcd_edge.fsutil import atomic_dir

KIND_NDIM = {"vector": 2, "sequence": 3, "image": 4}
BUILTIN_ROOT = Path(__file__).parent / "data"
_CHUNK_ROWS = 4096


def builtin_names() -> list[str]:
    return sorted(p.name for p in BUILTIN_ROOT.iterdir() if (p / "dataset.json").is_file())


@dataclass(frozen=True)
class ViewSpec:
    """An in-memory view to write: the array, its kind, and where it came from (for error messages)."""

    array: np.ndarray
    kind: str
    origin: str = ""  # e.g. "--view depth=depth.npy"; "view NAME" when empty


@dataclass(frozen=True)
class ViewInfo:
    name: str
    kind: str
    shape: tuple[int, ...]
    dtype: str
    path: Path

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self.shape[1:]


@dataclass(frozen=True)
class Dataset:
    root: Path
    spec: str
    name: str
    views: dict[str, ViewInfo]
    classes: tuple[str, ...]
    meta: dict[str, Any]

    def view(self, name: str) -> np.ndarray:
        """The view's array, memory-mapped (read-only): data larger than RAM works."""
        if name not in self.views:
            raise DataError(f"{self.spec}: unknown view {name!r}; valid views: {', '.join(self.views)}")
        return np.load(self.views[name].path, mmap_mode="r")

    @cached_property
    def labels(self) -> np.ndarray:
        return _load_aux(self.root / "labels.npy", self.n_rows)

    @cached_property
    def groups(self) -> np.ndarray | None:
        path = self.root / "groups.npy"
        return _load_aux(path, self.n_rows) if path.exists() else None

    @cached_property
    def fixed_splits(self) -> np.ndarray | None:
        path = self.root / "splits.npy"
        return _load_aux(path, self.n_rows) if path.exists() else None

    @property
    def n_rows(self) -> int:
        return next(iter(self.views.values())).shape[0]

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def fingerprint(self) -> str:
        """sha256 over dataset.json and every array file (what a cache or a run records of its data). Hashed once per
        process while no file's size or modification time changes: a compare's 24 runs do not read 24 times a view of
        many GB."""
        paths = [self.root / "dataset.json", *sorted(self.root.glob("*.npy")), *sorted(self.root.glob("views/*.npy"))]
        return _fingerprint(tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths))

    def summary(self) -> dict[str, Any]:
        labels = np.asarray(self.labels)
        counts = {c: int((labels == i).sum()) for i, c in enumerate(self.classes)}
        return {
            "name": self.name,
            "path": str(self.root),
            "rows": self.n_rows,
            "views": {v.name: {"kind": v.kind, "shape": list(v.shape), "dtype": v.dtype} for v in self.views.values()},
            "classes": list(self.classes),
            "label_counts": counts,
            "unlabeled": int((labels < 0).sum()),
            "groups": None if self.groups is None else int(len(np.unique(self.groups))),
            "fixed_splits": self.fixed_splits is not None,
        }


def changed_since(ds: Dataset, recorded: str | None) -> bool:
    """Whether ``ds``'s files differ from those a run recorded as its ``data_fingerprint`` (a copy elsewhere of the
    same files does not; a record without one, from an older version, is taken as unchanged)."""
    return recorded is not None and ds.fingerprint() != recorded


@functools.lru_cache(maxsize=16)
def _fingerprint(files: tuple[tuple[str, int, int], ...]) -> str:
    h = hashlib.sha256()
    for name, _size, _mtime in files:
        path = Path(name)
        h.update(path.name.encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _load_aux(path: Path, n_rows: int) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{path}: missing (every dataset has labels.npy: int64 [N], -1 marks an unlabeled row)")
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc
    return _check_column(path, arr, n_rows)


def _check_column(where: str | Path, arr: np.ndarray, n_rows: int) -> np.ndarray:
    """A per-row integer array (labels, groups, splits) as int64 [N]."""
    if arr.ndim != 1 or arr.shape[0] != n_rows:
        raise DataError(f"{where}: expected shape [{n_rows}] (one entry per row), got {list(arr.shape)}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"{where}: expected integers, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def check_splits(where: str | Path, splits: np.ndarray) -> None:
    """Fixed split ids: 0 train, 1 val, 2 test."""
    bad = ~np.isin(splits, (0, 1, 2))
    if bad.any():
        raise DataError(f"{where}: values must be 0 (train), 1 (val) or 2 (test), got {int(splits[bad][0])}")


def canonical_spec(spec: str) -> str:
    """``spec`` as a run records it: ``builtin:NAME`` as it is, a folder as an absolute path (a relative one would
    name another folder, or none, when export or bench runs from elsewhere)."""
    return spec if spec.startswith("builtin:") else str(Path(spec).resolve())


def resolve(spec: str | Path) -> Path:
    """Map ``builtin:NAME`` or a folder path to the dataset folder."""
    spec = str(spec)
    if spec.startswith("builtin:"):
        name = spec.split(":", 1)[1]
        path = BUILTIN_ROOT / name
        if not (path / "dataset.json").is_file():
            raise DataError(f"unknown builtin dataset {spec!r}; valid: {', '.join('builtin:' + n for n in builtin_names())}")
        return path
    path = Path(spec)
    if not path.is_dir():
        raise DataError(f"{spec}: no such dataset folder")
    if not (path / "dataset.json").is_file():
        raise DataError(f"{path / 'dataset.json'}: missing (a dataset folder needs dataset.json; see `cmcd-edge data from-arrays`)")
    return path


def load(spec: str | Path) -> Dataset:
    """Open a dataset: reads dataset.json and array headers only (cheap); ``validate`` checks the values."""
    root = resolve(spec)
    meta_path = root / "dataset.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{meta_path}: not valid JSON ({exc})") from exc
    if not isinstance(meta, dict) or not isinstance(meta.get("views"), dict) or not meta["views"]:
        raise DataError(f"{meta_path}: needs a non-empty \"views\" object")
    if not isinstance(meta.get("classes"), list) or not meta["classes"]:
        raise DataError(f"{meta_path}: needs a non-empty \"classes\" list")
    views: dict[str, ViewInfo] = {}
    for name, vmeta in meta["views"].items():
        path = root / "views" / f"{name}.npy"
        kind = vmeta.get("kind") if isinstance(vmeta, dict) else None
        if kind not in KIND_NDIM:
            raise DataError(f"{meta_path}: view {name!r} has kind {kind!r}; valid kinds: {', '.join(KIND_NDIM)}")
        if not path.is_file():
            raise DataError(f"{path}: missing (listed in dataset.json)")
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: not a readable .npy array ({exc})") from exc
        _check_view(path, arr, kind)
        views[name] = ViewInfo(name, kind, tuple(arr.shape), str(arr.dtype), path)
    rows = {v.shape[0] for v in views.values()}
    if len(rows) > 1:
        detail = ", ".join(f"{v.name}: {v.shape[0]}" for v in views.values())
        raise DataError(f"{root}: views have different row counts ({detail}); rows must be aligned across views")
    ds = Dataset(root, str(spec), str(meta.get("name", root.name)), views, tuple(str(c) for c in meta["classes"]), meta)
    _check_labels(root / "labels.npy", ds.labels, ds.n_classes)
    if ds.fixed_splits is not None:
        check_splits(root / "splits.npy", ds.fixed_splits)
    return ds


def _check_view(path: Path, arr: np.ndarray, kind: str) -> None:
    if arr.ndim != KIND_NDIM[kind]:
        layout = {"vector": "[N, D]", "sequence": "[N, C, T]", "image": "[N, C, H, W]"}[kind]
        raise DataError(f"{path}: {'an' if kind == 'image' else 'a'} {kind} view must be {layout}, got shape {list(arr.shape)}")
    if arr.size == 0:
        raise DataError(f"{path}: empty view (shape {list(arr.shape)})")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise DataError(f"{path}: dtype {arr.dtype} is not numeric")


def _check_labels(path: Path, labels: np.ndarray, n_classes: int) -> None:
    bad = (labels < -1) | (labels >= n_classes)
    if bad.any():
        raise DataError(f"{path}: label {int(labels[bad][0])} out of range; expected -1 (unlabeled) or 0..{n_classes - 1}")


def validate(ds: Dataset, views: list[str] | None = None) -> None:
    """Full value check of ``views`` (default: all), chunked so memory-mapped views larger than RAM are fine: no NaN
    or Inf anywhere. A NaN would otherwise reach the normalisation statistics and train a model on garbage without a
    word. One pass over the file, cheap beside any training on it."""
    for name in views if views is not None else list(ds.views):
        info = ds.views[name]
        arr = ds.view(name)
        _refuse_nonfinite(info.path, nonfinite_rows_chunked(arr))


def nonfinite_rows(block: np.ndarray) -> np.ndarray:
    """Indices of the rows of ``block`` holding a NaN or Inf anywhere."""
    return np.flatnonzero(~np.isfinite(block.reshape(len(block), -1)).all(axis=1))


def nonfinite_rows_chunked(arr: np.ndarray, start: int = 0) -> np.ndarray:
    """:func:`nonfinite_rows` of ``arr[start:]`` (indices into ``arr``), read ``_CHUNK_ROWS`` rows at a time, so a
    memory-mapped array larger than RAM is fine; none for an array that is not floating point."""
    if not np.issubdtype(arr.dtype, np.floating):
        return np.zeros(0, np.int64)
    return np.concatenate([np.zeros(0, np.int64)] + [i + nonfinite_rows(np.asarray(arr[i:i + _CHUNK_ROWS]))
                                                     for i in range(start, arr.shape[0], _CHUNK_ROWS)])


def _refuse_nonfinite(where: str | Path, rows: np.ndarray) -> None:
    """A DataError naming the first of ``rows`` (the rows holding NaN or Inf) and how many more; nothing if none."""
    if len(rows):
        more = f" and {len(rows) - 1} more row{'s' if len(rows) > 2 else ''}" if len(rows) > 1 else ""
        raise DataError(f"{where}: NaN or Inf at row {int(rows[0])}{more}; fix or drop those rows")


def write_dataset(out: str | Path, views: dict[str, ViewSpec], labels: np.ndarray, classes: list[str], *,
                  name: str | None = None, groups: np.ndarray | None = None, splits: np.ndarray | None = None,
                  force: bool = False, extra: dict[str, Any] | None = None) -> Dataset:
    """Write a dataset folder atomically, after checking everything a reader would check."""
    out = Path(out)
    labels = np.asarray(labels)  # integer ids: the CLI reads names and integral floats (cmcd_edge.arrays)
    labels = _check_column("labels", labels, labels.shape[0] if labels.ndim else 0)
    if not views:
        raise DataError("at least one view is needed")
    for vname, spec in views.items():
        where = spec.origin or f"view {vname}"
        if spec.kind not in KIND_NDIM:
            raise DataError(f"{where}: unknown kind {spec.kind!r}; valid kinds: {', '.join(KIND_NDIM)}")
        _check_view(Path(where), spec.array, spec.kind)
        if spec.array.shape[0] != labels.shape[0]:
            raise DataError(f"{where}: {spec.array.shape[0]} rows but labels have {labels.shape[0]}")
        if np.issubdtype(spec.array.dtype, np.floating):
            _refuse_nonfinite(where, nonfinite_rows(spec.array))
    _check_labels(Path("labels"), labels, len(classes))
    for what, arr in (("groups", groups), ("splits", splits)):  # named here, not as the temp folder's copy
        if arr is not None:
            _check_column(what, np.asarray(arr), len(labels))
    if splits is not None:
        check_splits("splits", np.asarray(splits))
    meta = {"name": name or out.name, "views": {v: {"kind": s.kind} for v, s in views.items()},
            "classes": [str(c) for c in classes], **(extra or {})}
    with atomic_dir(out, force=force) as tmp:
        (tmp / "views").mkdir()
        for vname, spec in views.items():
            np.save(tmp / "views" / f"{vname}.npy", np.ascontiguousarray(spec.array))
        np.save(tmp / "labels.npy", labels.astype(np.int64))
        for fname, arr, dtype in (("groups.npy", groups, np.int64), ("splits.npy", splits, np.int8)):
            if arr is not None:
                np.save(tmp / fname, np.asarray(arr).astype(dtype))
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
        load(tmp)  # the reader must accept what we wrote
    return load(out)


# ------------------------------------------------------------------------------------------------ reading rows


class SplitRows:
    """Rows ``rows`` of a (memory-mapped) view, read as float32 one slice at a time: what export and bench evaluate on.
    ``rows[i:j]`` is a float32 array; ``len`` and ``shape`` are the split's. The runtime's batched helpers take it
    where they take an array, so scoring a split of a view larger than RAM holds one batch, not the split."""

    def __init__(self, arr: np.ndarray, rows: np.ndarray) -> None:
        self.arr, self.rows = arr, np.asarray(rows, dtype=np.int64)
        self.shape = (len(self.rows), *arr.shape[1:])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: slice) -> np.ndarray:
        if not isinstance(key, slice):
            raise TypeError(f"SplitRows takes a slice, got {type(key).__name__}")
        return read_rows(self.arr, self.rows[key])


def read_rows(arr: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``arr[rows]`` as float32, each distinct row read once and in ascending order (a memory map's pages in file
    order); ``rows`` may repeat and come in any order."""
    uniq, inverse = np.unique(rows, return_inverse=True)
    return np.asarray(arr[uniq], dtype=np.float32)[inverse]


def norm_stats(arr: np.ndarray, rows: np.ndarray, kind: str, chunk_bytes: int = 256 << 20) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std from ``rows`` (the train split): per feature for vectors, per channel for sequences/images.
    Shapes broadcast against one sample: vector [D], sequence [C, 1], image [C, 1, 1]. Rows whose float64 copy would
    pass ``chunk_bytes`` are read in chunks and the moments merged (Chan et al.), so a memory-mapped view larger than
    RAM is fine."""
    rows = np.sort(rows)
    axes = {"vector": (0,), "sequence": (0, 2), "image": (0, 2, 3)}[kind]
    step = max(1, chunk_bytes // (8 * max(1, int(np.prod(arr.shape[1:], dtype=np.int64)))))
    if len(rows) <= step:  # one pass, as before chunking existed: small views keep their exact figures
        x = np.asarray(arr[rows], dtype=np.float64)
        mean, std = x.mean(axis=axes, keepdims=True)[0], x.std(axis=axes, keepdims=True)[0]
    else:
        n, mean, m2 = 0, 0.0, 0.0
        for i in range(0, len(rows), step):
            x = np.asarray(arr[rows[i:i + step]], dtype=np.float64)
            c = x.shape[0] * int(np.prod([x.shape[a] for a in axes[1:]]))  # values per feature/channel
            cmean = x.mean(axis=axes, keepdims=True)
            cm2 = ((x - cmean) ** 2).sum(axis=axes, keepdims=True)
            delta, total = cmean - mean, n + c
            mean, m2, n = mean + delta * (c / total), m2 + cm2 + delta ** 2 * (n * c / total), total
        mean, std = mean[0], np.sqrt(m2 / n)[0]
    std = np.where(std < 1e-6, 1.0, std)
    return mean.astype(np.float32), std.astype(np.float32)
