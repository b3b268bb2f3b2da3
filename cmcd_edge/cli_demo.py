"""`cmcd-edge demo`: the whole pipeline on builtin:mfeat, each stage run through its own command."""

from __future__ import annotations

import shutil
from pathlib import Path

import click

from cmcd_edge import datasets
from cmcd_edge.cli_data import info_table


def command(ctx: click.Context, name: str) -> click.Command:
    """The root group's command ``name``, the one `cmcd-edge NAME` runs (no import of cli, which imports this)."""
    root = ctx.find_root()
    cmd = root.command.get_command(root, name)
    if cmd is None:
        raise LookupError(name)
    return cmd


def run_demo(root: Path, quick: bool) -> None:
    """Each stage through its own command (looked up on the root group, as the user would type it)."""
    if root.exists():
        shutil.rmtree(root)
    ds = datasets.load("builtin:mfeat")
    click.echo("== 1. data: builtin:mfeat (UCI Multiple Features, CC BY 4.0)")
    click.echo(info_table(ds.summary()))
    ctx = click.get_current_context()
    data = {"data": "builtin:mfeat", "target": "zer"}
    train = {"labeled_fraction": 0.1, "teacher": "train", "epochs": 60, "finetune": "head", "student": "auto",
             "batch_size": 128, "device": "auto", "seed": 0, "teacher_cache": str(root / "teacher-cache"), **data}
    click.echo("\n== 2. select-teacher: which source view should teach the zer student?")
    ctx.invoke(command(ctx, "select-teacher"), candidates="fac,pix,kar,fou,mor", seeds=1, out=str(root / "select.json"),
               **data)
    click.echo("\n== 3. distill: CMCD student on zer from a frozen fac teacher")
    ctx.invoke(command(ctx, "distill"), source="fac", out=str(root / "run"), resume=False, force=False, method="cmcd",
               recipe=None, **train)
    click.echo("\n== 4. compare: CMCD against baselines under one protocol (seed 0's teacher from --teacher-cache)")
    methods = "cmcd,kd,supervised" if quick else "cmcd,cmd,cmc,kd,fitnet,rkd,crd,supervised"
    ctx.invoke(command(ctx, "compare"), source="fac", methods=methods, seeds=1 if quick else 3, out=str(root / "compare"),
               force=True, upper_bound=True, **train)
    # per-tensor weights: for this 28k-parameter MLP the per-channel scales and zero points cost 6% of the INT8 file
    # and no accuracy on val (BENCHMARKS.md); conv students keep the per-channel default
    click.echo("== 5. export --int8 --per-tensor: ONNX FP32 + calibrated static INT8 + accuracy gate")
    ctx.invoke(command(ctx, "export"), run=str(root / "run"), out=str(root / "bundle"), data=None, int8=True, fp16=False,
               calib_size=None, calib_method="minmax", calib_select="random", max_accuracy_drop=1.0,
               max_class_drop=None, allow_accuracy_drop=False, target="auto", stem="auto", per_channel=False,
               force=False, recalibrate=False, engine=False)
    click.echo("\n== 6. bench: latency with accuracy beside it (torch-free runtime)")
    ctx.invoke(command(ctx, "bench"), bundles=(str(root / "bundle"),), variants="all", batches="1,8", threads="1",
               backend="cpu", duration=1.0, warmup=0.3, data=None, no_accuracy=False, torch_run=None,
               out=str(root / "bench.json"), plot=None)
    click.echo(f"\nEverything is in {root}/: run/, compare/results.md, bundle/, bench.json, teacher-cache/")
