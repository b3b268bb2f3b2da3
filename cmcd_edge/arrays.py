"""Loading user arrays from loose .npy / .npz files (never pickle)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cmcd_edge.errors import UserError


def parse_view_arg(arg: str) -> tuple[str, str, str | None]:
    """``NAME=FILE[:KIND]`` -> (name, file, kind or None); FILE may be ``x.npz:KEY``."""
    if "=" not in arg:
        raise UserError(f"--view {arg!r}: expected NAME=FILE.npy[:KIND]")
    name, rest = arg.split("=", 1)
    kind = None
    head, _, tail = rest.rpartition(":")
    if head and tail in ("vector", "sequence", "image"):
        rest, kind = head, tail
    if not name.isidentifier():
        raise UserError(f"--view {arg!r}: view name {name!r} must be a plain identifier")
    return name, rest, kind


def load_array(spec: str, flag: str) -> np.ndarray:
    """Load ``FILE.npy`` or ``FILE.npz:KEY`` (or an .npz with a single array) with allow_pickle=False."""
    path, key = spec, None
    if ".npz:" in spec:
        path, key = spec.rsplit(":", 1)
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{flag} {spec}: no such file")
    try:
        loaded = np.load(p, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise UserError(f"{flag} {spec}: not a readable .npy/.npz array ({exc})") from exc
    if isinstance(loaded, np.lib.npyio.NpzFile):
        keys = list(loaded.keys())
        if key is None and len(keys) == 1:
            key = keys[0]
        if key not in keys:
            raise UserError(f"{flag} {spec}: name the array as FILE.npz:KEY; keys: {', '.join(keys)}")
        return loaded[key]
    return loaded
