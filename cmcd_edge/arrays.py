"""Loading user arrays from loose .npy / .npz files (never pickle), and reading their per-row columns (labels,
groups, splits) as ids, with errors that name the flag and file."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from cmcd_edge.datasets import KIND_NDIM, check_splits
from cmcd_edge.errors import UserError
from cmcd_edge.registry import did_you_mean

log = logging.getLogger(__name__)


def parse_view_arg(arg: str) -> tuple[str, str, str | None]:
    """``NAME=FILE[:KIND]`` -> (name, file, kind or None); FILE may be ``x.npz:KEY``."""
    if "=" not in arg:
        raise UserError(f"--view {arg!r}: expected NAME=FILE.npy[:KIND]")
    name, rest = arg.split("=", 1)
    kind = None
    head, _, tail = rest.rpartition(":")
    if head and tail in KIND_NDIM:
        rest, kind = head, tail
    elif head.endswith(".npy") or ".npz:" in head:  # after FILE.npy or FILE.npz:KEY, only a kind can follow
        raise UserError(f"--view {arg!r}: unknown kind {tail!r}{did_you_mean(tail, KIND_NDIM)}; valid: {', '.join(KIND_NDIM)}")
    if not name.isidentifier():
        raise UserError(f"--view {arg!r}: view name {name!r} must be a plain identifier")
    return name, rest, kind


def load_array(spec: str, flag: str, mmap: bool = False) -> np.ndarray:
    """Load ``FILE.npy`` or ``FILE.npz:KEY`` (or an .npz with a single array) with allow_pickle=False; ``mmap``: a
    .npy is memory-mapped (read-only), so a caller reading it in slices holds one slice (an .npz is read whole)."""
    path, key = spec, None
    if ".npz:" in spec:
        path, key = spec.rsplit(":", 1)
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{flag} {spec}: no such file")
    with p.open("rb") as fh:
        head = fh.read(6)
    if not head.startswith((b"\x93NUMPY", b"PK")):  # numpy would try it as a pickle, and say so
        raise UserError(f"{flag} {spec}: not a .npy or .npz file (no numpy header); for a CSV: "
                        "np.save(FILE, np.loadtxt(CSV, delimiter=',', dtype=np.float32))")
    try:
        loaded = np.load(p, allow_pickle=False, mmap_mode="r" if mmap and head.startswith(b"\x93NUMPY") else None)
    except (OSError, ValueError) as exc:
        if "Object arrays" in str(exc):  # pandas' .values of text, saved with pickle inside
            raise UserError(f"{flag} {spec}: an object array, which would need pickle to load (never done here); "
                            "save text as np.save(FILE, arr.astype(str)), numbers with a numeric dtype") from exc
        raise UserError(f"{flag} {spec}: not a readable .npy/.npz array ({exc})") from exc
    if isinstance(loaded, np.lib.npyio.NpzFile):
        keys = list(loaded.keys())
        if key is None and len(keys) == 1:
            key = keys[0]
        if key not in keys:
            raise UserError(f"{flag} {spec}: name the array as FILE.npz:KEY; keys: {', '.join(keys)}")
        return loaded[key]
    return loaded


# ------------------------------------------------------------------------------------------ per-row columns

SPLIT_IDS = {"train": 0, "val": 1, "test": 2}


def _column(arr: np.ndarray, where: str, one: str, many: str, n_rows: int) -> np.ndarray:
    """A per-row array as [N]: a [N, 1] column (what a CSV reader gives) is taken as it."""
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise UserError(f"{where}: expected one {one} per row, shape [{n_rows}], got {list(arr.shape)}")
    if arr.shape[0] != n_rows:
        raise UserError(f"{where}: {arr.shape[0]} {many} but the views have {n_rows} rows")
    return arr


def _is_text(arr: np.ndarray) -> bool:
    return arr.dtype.kind in "US"


def _integers(arr: np.ndarray, where: str, expected: str) -> np.ndarray:
    """Integer values as int64; integral floats (1.0) are taken, anything else is refused with the first bad value."""
    if np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_:
        return arr.astype(np.int64)
    if np.issubdtype(arr.dtype, np.floating):
        bad = ~np.isfinite(arr) | (arr != np.round(np.nan_to_num(arr)))
        if not bad.any():
            return arr.astype(np.int64)
        raise UserError(f"{where}: expected {expected}, got {arr[bad][0]:.6g} at row {int(np.flatnonzero(bad)[0])}")
    raise UserError(f"{where}: expected {expected}, got dtype {arr.dtype}")


def labels_from_array(arr: np.ndarray, where: str, n_rows: int,
                      classes: list[str] | None) -> tuple[np.ndarray, list[str]]:
    """``--labels``: integer class ids (-1 unlabeled) or class names ('' unlabeled) -> (int64 ids, class names).

    Names are numbered in ``classes`` order when given, else sorted; ids name ``classes`` or 0..max."""
    col = _column(arr, where, "label", "labels", n_rows)
    given_classes = classes
    if classes is not None:
        dup = sorted({c for c in classes if classes.count(c) > 1})
        if dup or "" in classes:
            raise UserError(f"--classes {','.join(classes)}: " +
                            (f"{dup[0]!r} appears twice" if dup else "a class name is empty"))
    if _is_text(col):
        uniq, inv = np.unique(col.astype(str), return_inverse=True)
        names = [str(u) for u in uniq if u != ""]
        if classes is None:
            classes = names
        unknown = [n for n in names if n not in classes]
        if unknown:
            more = f" and {len(unknown) - 1} more" if len(unknown) > 1 else ""
            raise UserError(f"{where}: label {unknown[0]!r}{more} is not in --classes ({', '.join(classes)})")
        lut = np.array([classes.index(str(u)) if u != "" else -1 for u in uniq], np.int64)
        ids = lut[inv.reshape(-1)]
    else:
        ids = _integers(col, where, "integer class ids or class names")
        if classes is None:
            classes = [str(i) for i in range(int(ids.max()) + 1 if ids.size and ids.max() >= 0 else 0)]
        bad = (ids < -1) | (ids >= len(classes))
        if bad.any():
            given = f" ({len(classes)} names in --classes)" if classes else ""
            raise UserError(f"{where}: label {int(ids[bad][0])} out of range; expected -1 (unlabeled) or "
                            f"0..{len(classes) - 1}{given}")
    if not classes:
        raise UserError(f"{where}: every row is unlabeled; name the classes with --classes")
    counts = np.bincount(ids[ids >= 0], minlength=len(classes))
    _warn_empty_classes([c for c, k in zip(classes, counts, strict=True) if k == 0], len(classes), where,
                        numbered=given_classes is None and not _is_text(col))
    return ids, list(classes)


def _warn_empty_classes(empty: list[str], n_classes: int, where: str, numbered: bool) -> None:
    """One warning line for the classes no row holds: each still gets a student output."""
    if not empty:
        return
    shown = ", ".join(repr(c) for c in empty[:8]) + (f" and {len(empty) - 8} more" if len(empty) > 8 else "")
    if numbered:  # ids 0, 5, 10 make 11 classes: say how to renumber
        log.warning("%s: %d of %d class ids 0..%d have no rows (%s); each still gets a student output: pass class "
                    "names (strings) to number only the classes present, or --classes", where, len(empty), n_classes,
                    n_classes - 1, shown)
    else:
        log.warning("--classes: %s %s no rows", "class" if len(empty) == 1 else "classes",
                    shown + (" has" if len(empty) == 1 else " have"))


def groups_from_array(arr: np.ndarray, where: str, n_rows: int) -> np.ndarray:
    """``--groups``: integer or text ids (subject, session); text ids are numbered in sorted order."""
    col = _column(arr, where, "group id", "group ids", n_rows)
    if _is_text(col):
        return np.unique(col.astype(str), return_inverse=True)[1].reshape(-1).astype(np.int64)
    return _integers(col, where, "integer or text group ids")


def splits_from_array(arr: np.ndarray, where: str, n_rows: int) -> np.ndarray:
    """``--splits``: 0/1/2 or train/val/test per row."""
    col = _column(arr, where, "split", "entries", n_rows)
    if _is_text(col):
        uniq, inv = np.unique(col.astype(str), return_inverse=True)
        unknown = [str(u) for u in uniq if u not in SPLIT_IDS]
        if unknown:
            raise UserError(f"{where}: values must be train, val or test, got {unknown[0]!r}")
        return np.array([SPLIT_IDS[str(u)] for u in uniq], np.int64)[inv.reshape(-1)]
    ids = _integers(col, where, "0/1/2 or train/val/test")
    check_splits(where, ids)
    return ids
