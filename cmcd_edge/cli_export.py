"""`cmcd-edge export` and `cmcd-edge build-engine`: a distill run -> a deploy bundle, and a bundle's TensorRT engine.
Registered on the main group by cli.py, whose Group turns domain errors into one-line messages."""

from __future__ import annotations

import click

from cmcd_edge import cli_base
from cmcd_edge.cli_base import config_option, on_interrupt, require
from cmcd_edge.errors import UserError

INT8_FLAGS = ("calib_size", "calib_method", "calib_select", "target", "stem", "per_channel", "recalibrate")


@click.command()
@click.argument("run", type=click.Path())
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Bundle folder to write.")
@click.option("--data", default=None, help="The run's dataset where it is now [default: the path in run.json]; it "
              "must hold the same files.")
@click.option("--int8/--no-int8", default=True, show_default=True, help="Add the calibrated static INT8 variant.")
@click.option("--fp16", is_flag=True, help="Add an FP16 variant (float32 IO), for GPUs.")
@click.option("--calib-size", type=int, default=None, help="Calibration rows [default: 512, capped by the data].")
@click.option("--calib-method", default="minmax", show_default=True, help="minmax | entropy | percentile")
@click.option("--calib-select", default="random", show_default=True, help="random | coverage (k-center greedy)")
@click.option("--max-accuracy-drop", type=float, default=1.0, show_default=True, help="Top-1 points INT8 may lose.")
@click.option("--max-class-drop", type=float, default=None, help="Top-1 points a variant may lose on any one class "
              "of the test split [default: reported in report.md, not gated].")
@click.option("--allow-accuracy-drop", is_flag=True, help="Write the bundle even when a variant fails the gate.")
@click.option("--target", default="auto", show_default=True,
              help="INT8 preset: auto | cpu (this CPU) | cpu-vnni | cpu-avx2 | cpu-arm64 (the device's CPU) | tensorrt")
@click.option("--stem", default="auto", show_default=True,
              help="auto: keep the first conv float when that measures faster on this CPU; int8 | float: fixed.")
@click.option("--per-channel/--per-tensor", default=True, show_default=True,
              help="INT8 weight scales per output channel, or one per tensor (smaller file, usually less accurate).")
@click.option("--force", is_flag=True, help="Replace an existing bundle (it stays intact until the new one is done); "
              "its calibration ranges are reused when model, data and calibration flags match.")
@click.option("--recalibrate", is_flag=True, help="With --force: compute calibration ranges anew, ignoring the "
              "replaced bundle's calibration.json.")
@click.option("--engine", is_flag=True, help="Also build a TensorRT INT8 engine here (needs TensorRT and a GPU).")
@config_option
def export(run: str, engine: bool = False, **kw) -> None:
    """Export a distill run to a deploy bundle: ONNX FP32, static INT8 (QDQ), accuracy gate, manifest.

    Example: cmcd-edge export runs/zer --out bundles/zer --int8
    """
    require("torch", "train")
    require("onnx", "train")
    from cmcd_edge.export.bundle import ExportConfig, report_markdown, run_export

    if not kw["int8"]:
        # the gate also judges FP16
        gated = () if kw["fp16"] else ("max_accuracy_drop", "max_class_drop", "allow_accuracy_drop")
        cli_base.refuse_inert(INT8_FLAGS + gated, "for the INT8 variant, which --no-int8 leaves out (drop one or "
                              "the other)")
    if not kw["force"]:
        cli_base.refuse_inert(("recalibrate",), "only with --force: it ignores the calibration.json of the bundle "
                              "that --force replaces (a new bundle is always calibrated afresh)")
    with cli_base.naming_config_file_values():
        cfg = ExportConfig(run=run, **kw)
    if engine:
        from cmcd_edge.runtime import trt

        if cfg.target != "tensorrt" or not cfg.int8:
            raise UserError("--engine builds from the TensorRT INT8 variant: pass it with --int8 --target tensorrt")
        trt.current_device_key()  # TensorRT and a GPU are here, before minutes of export
    written = []  # on Ctrl-C: the bundle is renamed into place whole, so it is either the old or the new one
    on_interrupt(lambda: f"the bundle in {kw['out']} is complete; its TensorRT engine was not built (rerun "
                 f"`cmcd-edge build-engine {kw['out']}`)" if written else
                 f"{kw['out']} is as it was before this export (a bundle is written whole or not at all)")
    res = run_export(cfg)
    written.append(kw["out"])
    click.echo(report_markdown(res.manifest) + f"-> {kw['out']}")
    if engine:
        from cmcd_edge.export.trt_build import EngineConfig, build_engine

        entry = build_engine(EngineConfig(bundle=kw["out"]))
        click.echo(f"engine {entry.file} ({entry.key.describe()}) -> {kw['out']}")
    elif cfg.target == "tensorrt" and cfg.int8:
        click.echo(f"no TensorRT engine built (--engine builds one where TensorRT and the GPU are): on the device, "
                   f"cmcd-edge build-engine {kw['out']}")


@click.command("build-engine")
@click.argument("bundle", type=click.Path())
@click.option("--precision", default="int8", show_default=True, help="int8 | fp16 | fp32")
@click.option("--max-batch", type=int, default=64, show_default=True, help="Largest batch the engine accepts.")
@click.option("--opt-batch", type=int, default=None, help="Batch the kernels are tuned for [default: min(8, max)].")
@click.option("--workspace", "workspace_mb", type=int, default=1024, show_default=True, help="Builder workspace, MB.")
def build_engine_cmd(bundle: str, **kw) -> None:
    """Build a TensorRT engine for this device from a bundle and list it in the manifest (run it on the device).

    Example: cmcd-edge build-engine bundles/zer --precision int8 --max-batch 32
    """
    from cmcd_edge.export.trt_build import EngineConfig, build_engine

    entry = build_engine(EngineConfig(bundle=bundle, **kw))
    click.echo(f"{entry.file}: {entry.precision}, max batch {entry.max_batch}, {entry.size_bytes / 1024:.1f} KB, "
               f"{entry.key.describe()} -> {bundle}/manifest.json")
