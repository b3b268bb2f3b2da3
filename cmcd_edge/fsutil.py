"""Atomic writes: every output goes to a temp path in the same folder, then is renamed into place."""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cmcd_edge.errors import EnvironmentFailure, OutputBusy, UserError

log = logging.getLogger(__name__)


def _umask_mode(mode: int) -> int:
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


def _fail(path: Path, exc: OSError) -> EnvironmentFailure:
    return EnvironmentFailure(f"cannot write {path}: {exc.strerror or exc}")


def make_dir(path: str | os.PathLike) -> Path:
    """``mkdir -p`` whose failure is one line naming the folder: a file in the way (a user error), or no permission,
    a read-only or full disk (the environment's)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        block = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), path)
        where = "" if block == path else f" (on the way to {path})"
        raise UserError(f"{block}: is a file where a folder is needed{where}") from None
    except OSError as exc:
        raise _fail(path, exc) from exc
    return path


def _temp_in(folder: Path, make: Callable[..., Any], name: str) -> Any:
    """``tempfile.mkstemp``/``mkdtemp`` in ``folder`` (which exists), a failure named by the output it was for."""
    try:
        return make(prefix=f".{name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise _fail(folder / name, exc) from exc


@contextlib.contextmanager
def open_atomic(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """A file to write ``path`` through a piece at a time: a temp file beside it, renamed into place when the block
    ends without an error (removed when it raises), so a reader never sees it half-written."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a folder; name a file to write")
    fd, tmp = _temp_in(make_dir(path.parent), tempfile.mkstemp, path.name)
    try:
        os.chmod(tmp, _umask_mode(0o666))
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise _fail(path, exc) from exc
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with open_atomic(path) as f:
        f.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_csv_rows(path: str | os.PathLike, rows: list[dict]) -> None:
    """``rows`` as CSV with a header: the columns in the order they first appear (a later row may add some)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for row in rows for k in row)))
    w.writeheader()
    w.writerows(rows)
    write_text(path, buf.getvalue())


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """``obj`` as strict JSON. A NaN or Inf (which json.dumps writes as a bare ``NaN``, and strict parsers such as
    JavaScript's JSON.parse or Go's encoding/json reject) is written as null, with a warning naming where it was: the
    file is still written, since it may be the last output of a long run."""
    try:
        text = json.dumps(obj, indent=2, allow_nan=False)
    except ValueError:
        found: list[str] = []
        text = json.dumps(_finite(obj, "", found), indent=2, allow_nan=False)
        more = f" and {len(found) - 5} more" if len(found) > 5 else ""
        log.warning("%s: %s not a finite number, written as null", path, ", ".join(found[:5]) + more)
    write_text(path, text + "\n")


def _finite(obj: Any, where: str, found: list[str]) -> Any:
    """``obj`` with every non-finite float replaced by None, and where each was appended to ``found``."""
    if isinstance(obj, float) and not math.isfinite(obj):
        found.append(where or "the value")
        return None
    if isinstance(obj, dict):
        return {k: _finite(v, f"{where}.{k}" if where else str(k), found) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v, f"{where}[{i}]", found) for i, v in enumerate(obj)]
    return obj


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete the ``.<name>.*.tmp`` litter a killed writer left in ``folder``; return what was removed.

    Only call this on a folder this process owns (a run being resumed): a live writer's temp file would go too.
    """
    removed = []
    for stale in Path(folder).glob(".*.tmp"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                stale.unlink()
        removed.append(stale)
    return removed


@contextlib.contextmanager
def exclusive(out: str | os.PathLike) -> Iterator[None]:
    """Hold the output ``out`` (a run, compare or bundle folder) for this process while it writes there.

    A second cmcd-edge process naming the same output (``--resume`` while the run still trains in another terminal,
    a second export) fails in one line instead of writing into it, or removing its temp files as a killed run's
    litter. The lock is an flock on ``.<name>.lock`` beside ``out``: the kernel drops it when the holder dies, kill -9
    included, so a killed run never blocks the next one; a clean exit removes the file. One process cannot hold one
    output twice."""
    out = Path(out)
    real = out.resolve()  # one lock for every spelling of the folder: relative, absolute, through a link, "."
    path = make_dir(real.parent) / f".{real.name}.lock"
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, _umask_mode(0o666))
        except OSError as exc:
            raise _fail(out, exc) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip()
            os.close(fd)
            pid = f" (pid {holder})" if holder.isdigit() else ""
            raise OutputBusy(f"{out}: another cmcd-edge process{pid} is writing it; wait for it to end or stop it, "
                             "then run again") from None
        except OSError as exc:  # a filesystem without flock (some network mounts): said, not silent
            log.warning("%s: cannot lock it (%s); make sure no other cmcd-edge process writes there", out,
                        exc.strerror or exc)
            break
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:  # not a file its last holder removed meanwhile
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a temp folder beside ``out``; on success it replaces ``out`` whole, on failure it is removed.

    An existing ``out`` is refused unless ``force``; with ``force`` the old folder survives until the new one is
    complete, so a killed run leaves either the old or the new output, never a mix.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: is a file; name a folder to write")
    if out.exists() and not force:
        raise UserError(f"{out} already exists: pass --force to replace it")
    with exclusive(out):
        for stale in out.parent.glob(f".{out.name}.*.tmp"):  # litter of an earlier killed run (none is live)
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(_temp_in(out.parent, tempfile.mkdtemp, out.name))
        os.chmod(tmp, _umask_mode(0o777))
        try:
            yield tmp
            old = None
            if out.exists():
                old = out.parent / f".{out.name}.{os.getpid()}.old.tmp"
                os.replace(out, old)
            os.replace(tmp, out)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise _fail(out, exc) from exc
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
