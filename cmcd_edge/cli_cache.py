"""`cmcd-edge teacher-cache list|prune DIR`: what a ``--teacher-cache`` folder holds, and removing what this install
can no longer use. Registered on the main group by cli.py, as `data` is."""

from __future__ import annotations

import json
from pathlib import Path

import click

from cmcd_edge.cli_base import require
from cmcd_edge.errors import EnvironmentFailure, OutputBusy, UserError
from cmcd_edge.fsutil import exclusive

FOLDER = click.argument("folder", type=click.Path(file_okay=False, exists=True, path_type=Path))


@click.group("teacher-cache")
def teacher_cache() -> None:
    """List and prune a --teacher-cache folder."""


def _teacher(key: dict) -> str:
    if key["teacher"] == "train":
        return f"train, seed {key['seed']}, {key['teacher_epochs']} epochs"
    return ("file " if key["teacher"] == "file" else f"{key['teacher']} ") + key["teacher_sha256"][:12]


@teacher_cache.command("list")
@FOLDER
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_entries(folder: Path, as_json: bool) -> None:
    """What each entry holds, its size, and whether this install can use it.

    Example: cmcd-edge teacher-cache list ~/.cache/cmcd-teachers
    """
    require("torch", "train")
    from cmcd_edge.distill.teacher_cache import entries, utc

    found = entries(folder)
    if as_json:
        click.echo(json.dumps([{"entry": e.path.name, "key": e.key, "made_on": e.made_on, "bytes": e.size,
                                "last_used": utc(e.last_used), "usable": e.usable} for e in found], indent=2))
        return
    rows = [("entry", "source", "teacher", "data", "made", "last used", "MB", "usable here")]
    for e in found:
        if e.key is None:
            rows.append((e.path.name, "-", "- (no key.json: damaged, or a write in progress)", "-", "-", "-",
                         f"{e.size / 1e6:.1f}", "no"))
            continue
        made = e.made_on
        rows.append((e.path.name, e.key["source"], _teacher(e.key), str(made["data"]) if "data" in made else "-",
                     f"{made['time'] if 'time' in made else '-'} on {made['cpu'] if 'cpu' in made else '-'}",
                     utc(e.last_used), f"{e.size / 1e6:.1f}", "yes" if e.usable else "no (other code or versions)"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    click.echo("\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows))
    total, stale = sum(e.size for e in found), sum(not e.usable for e in found)
    click.echo(f"{len(found)} entr{'y' if len(found) == 1 else 'ies'}, {total / 1e6:.1f} MB; {stale} this install "
               "cannot use (`cmcd-edge teacher-cache prune` removes them)")


def parse_size(text: str) -> int:
    """Bytes of ``500M``, ``10G``, ``1.5GB``, ``2T`` or a plain byte count (powers of 1000, as `list` prints MB)."""
    units = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    t = text.strip().upper().removesuffix("B")
    unit = t[-1:] if t[-1:] in units else ""
    try:
        value = float(t[:len(t) - len(unit)])
    except ValueError:
        value = -1.0
    if not value >= 0:  # NaN too
        raise UserError(f"--max-size {text!r}: expected a size such as 500M, 10G or 2T")
    return int(value * units[unit])


@teacher_cache.command("prune")
@FOLDER
@click.option("--all", "everything", is_flag=True, help="Remove every entry, not only those this install cannot use.")
@click.option("--max-size", default=None, metavar="SIZE",
              help="Then remove the least recently used entries until the rest take at most SIZE (500M, 10G).")
def prune(folder: Path, everything: bool, max_size: str | None) -> None:
    """Remove the entries this install can never be served (made by other code or versions, damaged, or left by a
    killed write); with --all, every entry; with --max-size, then the entries used longest ago (a run that is served
    an entry marks it used) until the rest fit. An entry another process is writing is left alone.

    Example: cmcd-edge teacher-cache prune ~/.cache/cmcd-teachers --max-size 20G
    """
    require("torch", "train")
    from cmcd_edge.distill.teacher_cache import entries

    if everything and max_size is not None:
        raise UserError(f"--max-size {max_size}: keeps the entries used last, but --all removes every entry; drop one")
    limit = None if max_size is None else parse_size(max_size)
    found = entries(folder)
    doomed, kept = [], []
    for e in found:
        (doomed if everything or not e.usable else kept).append(e)
    kept.sort(key=lambda e: e.last_used)  # least recently used first
    total = sum(e.size for e in kept)
    while limit is not None and kept and total > limit:
        doomed.append(kept.pop(0))
        total -= doomed[-1].size
    removed, freed, busy, gone = 0, 0, 0, 0
    for e in doomed:
        try:
            with exclusive(folder / e.name):  # the lock a write of this entry holds
                e.remove()
        except OutputBusy:
            busy += 1
            continue
        except FileNotFoundError:  # another prune removed it first
            gone += 1
            continue
        except OSError as exc:
            raise EnvironmentFailure(f"cannot remove {e.path}: {exc.strerror or exc}") from exc
        removed, freed = removed + 1, freed + e.size
    left = len(found) - removed - gone
    note = f"; {busy} being written by another process, left alone" if busy else ""
    note += f"; {gone} removed meanwhile by another process" if gone else ""
    size = f" ({total / 1e6:.1f} MB, at most {max_size})" if limit is not None else ""
    click.echo(f"removed {removed} entr{'y' if removed == 1 else 'ies'} ({freed / 1e6:.1f} MB); {left} left in "
               f"{folder}{size}{note}")
