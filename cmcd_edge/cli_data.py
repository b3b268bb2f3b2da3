"""`cmcd-edge data ...`: inspect, validate and create datasets. Registered on the main group by cli.py, whose Group
turns domain errors into one-line messages for these commands as for every other."""

from __future__ import annotations

import json
import logging

import click

from cmcd_edge.cli_base import csv_items
from cmcd_edge.errors import UserError

log = logging.getLogger(__name__)


CHANNELS = (1, 3, 4)  # gray, RGB, RGBA: what a camera's channel axis holds
ONE_CHANNEL = ("image", "sequence")  # kinds whose channel axis `:KIND` may add to a one-channel array
MAX_SENSOR_CHANNELS = 16  # a sequence's channel axis: IMU axes, EMG/EEG leads, a few features


def _check_layout(arg: str, shape: tuple[int, ...], dtype, kind: str) -> None:
    """Layouts a kind taken from ndim would read wrong: channels-last images ([N, H, W, C], as PIL and OpenCV give
    them) would train on H channels of W x C pictures; time-major sequences ([N, T, C], as Keras and most activity
    datasets store windows) on T channels of C steps; 3-d uint8 or square arrays, usually grayscale images or depth
    maps, become sequences."""
    if kind == "image" and shape[-1] in CHANNELS and shape[1] not in CHANNELS:
        raise UserError(f"--view {arg}: shape {list(shape)} looks channels-last (the last axis has {shape[-1]}); "
                        "image views are [N, C, H, W]: save np.moveaxis(x, -1, 1), or append :image to keep this layout")
    if kind == "sequence" and shape[2] <= MAX_SENSOR_CHANNELS and shape[1] >= 4 * shape[2]:
        raise UserError(f"--view {arg}: shape {list(shape)} looks time-major ({shape[1]} steps of {shape[2]} "
                        "channels); sequence views are [N, C, T]: save np.moveaxis(x, -1, 1), or append :sequence to "
                        "keep this layout")
    if kind == "sequence" and (dtype == "uint8" or shape[1] == shape[2]):
        what = "uint8" if dtype == "uint8" else f"square {dtype}"
        log.warning("--view %s: a 3-d %s array is taken as a sequence (%d channels x %d steps); if it holds "
                    "grayscale images or depth maps, append :image to read it as [N, 1, H, W], or :sequence to say "
                    "it is one", arg, what, shape[1], shape[2])


def _echo_json_or_table(obj: dict, as_json: bool, table: str) -> None:
    click.echo(json.dumps(obj, indent=2) if as_json else table)


# ------------------------------------------------------------------------------------------------------------ data


@click.group()
def data() -> None:
    """Inspect, validate and create datasets (numpy multi-view format)."""


def info_table(s: dict) -> str:
    lines = [f"dataset {s['name']}  ({s['path']})", f"rows {s['rows']}  views {len(s['views'])}  "
             f"classes {len(s['classes'])}  unlabeled {s['unlabeled']}  groups {s['groups'] or '-'}  "
             f"fixed splits {'yes' if s['fixed_splits'] else 'no'}", "", f"{'view':<12}{'kind':<10}{'shape':<22}dtype"]
    for name, v in s["views"].items():
        lines.append(f"{name:<12}{v['kind']:<10}{str(v['shape']):<22}{v['dtype']}")
    lines.append("")
    lines.append("labels  " + "  ".join(f"{c}:{n}" for c, n in s["label_counts"].items()))
    return "\n".join(lines)


@data.command("info")
@click.argument("dataset")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def data_info(dataset: str, as_json: bool) -> None:
    """Views, kinds, shapes, dtypes, rows, classes, label counts.

    Example: cmcd-edge data info builtin:mfeat
    """
    from cmcd_edge import datasets

    s = datasets.load(dataset).summary()
    _echo_json_or_table(s, as_json, info_table(s))


@data.command("validate")
@click.argument("dataset")
def data_validate(dataset: str) -> None:
    """Check every file and value (shapes, dtypes, alignment, NaN/Inf, label range).

    Example: cmcd-edge data validate ./my-data
    """
    from cmcd_edge import datasets

    ds = datasets.load(dataset)
    datasets.validate(ds)
    _warn_if_unsplittable(ds)
    click.echo(f"ok: {ds.spec} ({_counts(ds)})")


def _counts(ds) -> str:
    n = len(ds.views)
    return f"{ds.n_rows} rows, {n} view{'s' if n != 1 else ''}, {ds.n_classes} class{'es' if ds.n_classes != 1 else ''}"


def _warn_if_unsplittable(ds) -> None:
    """Said when the data is made or validated, not first at a distill: splits (fixed, by group or stratified) that
    leave val or test without labeled rows, or too few groups to fill three splits. A warning, not a refusal: bench
    --rows all scores such data (a held-out set in one split)."""
    from cmcd_edge.errors import DataError
    from cmcd_edge.splitting import make_splits

    try:
        make_splits(ds, seed=0)
    except DataError as exc:
        log.warning("%s; until then distill, compare, select-teacher and export refuse this data (bench --data "
                    "... --rows all can still score it)", exc)


@data.command("from-arrays")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--view", "views", multiple=True, required=True, metavar="NAME=FILE[:KIND]",
              help="A view from a .npy file or FILE.npz:KEY; KIND vector|sequence|image (default: from ndim; "
                   ":image on [N, H, W] and :sequence on [N, T] add a channel axis).")
@click.option("--labels", required=True, metavar="FILE",
              help="Labels [N] (.npy, or FILE.npz:KEY): class ids (-1 = unlabeled) or class names ('' = unlabeled).")
@click.option("--classes", default=None,
              help="Comma-separated class names, in id order [default: 0..K-1, or the sorted names in --labels].")
@click.option("--groups", default=None, metavar="FILE", help="Optional group ids [N], integers or names (subject, session...).")
@click.option("--splits", default=None, metavar="FILE", help="Optional fixed splits [N]: 0/1/2 or train/val/test.")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
def data_from_arrays(out: str, views: tuple[str, ...], labels: str, classes: str | None, groups: str | None,
                     splits: str | None, force: bool) -> None:
    """Make a dataset folder from loose .npy/.npz arrays.

    Example: cmcd-edge data from-arrays ./my-data --view rgb=rgb.npy --view depth=depth.npy:image --labels y.npy
    """
    from cmcd_edge import datasets
    from cmcd_edge.arrays import groups_from_array, labels_from_array, load_array, parse_view_arg, splits_from_array

    specs = {}
    for arg in views:
        name, path, kind = parse_view_arg(arg)
        if name in specs:
            raise UserError(f"--view {arg}: view {name!r} given twice")
        arr = load_array(path, "--view")
        if kind in ONE_CHANNEL and arr.ndim == datasets.KIND_NDIM[kind] - 1:
            arr = arr[:, None]  # [N, H, W] -> [N, 1, H, W], [N, T] -> [N, 1, T]: one channel, as the user named the kind
            log.info("--view %s: read as one channel, %s", arg, list(arr.shape))
        if kind is None:
            kind = {n: k for k, n in datasets.KIND_NDIM.items()}.get(arr.ndim)
            if kind is None:
                raise UserError(f"--view {arg}: cannot infer the kind of a {arr.ndim}-d array; append :vector|:sequence|:image")
            _check_layout(arg, arr.shape, arr.dtype, kind)
        specs[name] = datasets.ViewSpec(arr, kind, origin=f"--view {arg}")
    first, *rest = specs.values()
    n_rows = len(first.array)
    for spec in rest:
        if len(spec.array) != n_rows:
            raise UserError(f"{spec.origin}: {len(spec.array)} rows but {first.origin} has {n_rows}")
    y, names = labels_from_array(load_array(labels, "--labels"), f"--labels {labels}", n_rows,
                                 csv_items(classes, "--classes") if classes else None)
    g = groups_from_array(load_array(groups, "--groups"), f"--groups {groups}", n_rows) if groups else None
    sp = splits_from_array(load_array(splits, "--splits"), f"--splits {splits}", n_rows) if splits else None
    ds = datasets.write_dataset(out, specs, y, names, groups=g, splits=sp, force=force)
    _warn_if_unsplittable(ds)
    click.echo(f"wrote {out} ({_counts(ds)}): " +
               ", ".join(f"{n} {v.kind} {list(v.sample_shape)}" for n, v in ds.views.items()))
