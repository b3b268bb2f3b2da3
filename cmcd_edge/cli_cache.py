"""`cmcd-edge teacher-cache list|prune DIR`: what a ``--teacher-cache`` folder holds, and removing what this install
can no longer use. Registered on the main group by cli.py, as `data` is."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import click

from cmcd_edge.cli_base import require
from cmcd_edge.errors import EnvironmentFailure, OutputBusy
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
    from cmcd_edge.distill.teacher_cache import entries

    found = entries(folder)
    if as_json:
        click.echo(json.dumps([{"entry": e.path.name, "key": e.key, "made_on": e.made_on, "bytes": e.size,
                                "usable": e.usable} for e in found], indent=2))
        return
    rows = [("entry", "source", "teacher", "data", "made", "MB", "usable here")]
    for e in found:
        if e.key is None:
            rows.append((e.path.name, "-", "- (no key.json: damaged, or a write in progress)", "-", "-",
                         f"{e.size / 1e6:.1f}", "no"))
            continue
        made = e.made_on
        rows.append((e.path.name, e.key["source"], _teacher(e.key), str(made["data"]) if "data" in made else "-",
                     f"{made['time'] if 'time' in made else '-'} on {made['cpu'] if 'cpu' in made else '-'}",
                     f"{e.size / 1e6:.1f}", "yes" if e.usable else "no (other code or versions)"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    click.echo("\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows))
    total, stale = sum(e.size for e in found), sum(not e.usable for e in found)
    click.echo(f"{len(found)} entr{'y' if len(found) == 1 else 'ies'}, {total / 1e6:.1f} MB; {stale} this install "
               "cannot use (`cmcd-edge teacher-cache prune` removes them)")


@teacher_cache.command("prune")
@FOLDER
@click.option("--all", "everything", is_flag=True, help="Remove every entry, not only those this install cannot use.")
def prune(folder: Path, everything: bool) -> None:
    """Remove the entries this install can never be served (made by other code or versions, damaged, or left by a
    killed write); with --all, every entry. An entry another process is writing is left alone.

    Example: cmcd-edge teacher-cache prune ~/.cache/cmcd-teachers
    """
    require("torch", "train")
    from cmcd_edge.distill.teacher_cache import entries

    found = entries(folder)
    removed, freed, busy = 0, 0, 0
    for e in found:
        if e.usable and not everything:
            continue
        try:
            with exclusive(folder / e.name):  # the lock a write of this entry holds
                shutil.rmtree(e.path)
        except OutputBusy:
            busy += 1
            continue
        except OSError as exc:
            raise EnvironmentFailure(f"cannot remove {e.path}: {exc.strerror or exc}") from exc
        removed, freed = removed + 1, freed + e.size
    left = len(found) - removed
    note = f"; {busy} being written by another process, left alone" if busy else ""
    click.echo(f"removed {removed} entr{'y' if removed == 1 else 'ies'} ({freed / 1e6:.1f} MB); {left} left in {folder}{note}")
