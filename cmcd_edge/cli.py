"""The `cmcd-edge` command line. The only module that sees every stage; each stage is imported inside its command,
so `cmcd-edge --help` and the device-side commands start fast and work without torch."""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path

import click

from cmcd_edge import __version__, cli_base
from cmcd_edge.cli_base import Group, LevelPrefix, config_option, main_rank, on_interrupt, require, single_process
from cmcd_edge.cli_cache import teacher_cache
from cmcd_edge.cli_data import data
from cmcd_edge.cli_export import build_engine_cmd, export
from cmcd_edge.errors import UserError
from cmcd_edge.fsutil import exclusive, write_json

log = logging.getLogger("cmcd_edge")


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="cmcd-edge")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
def main(debug: bool, quiet: bool) -> None:
    """cmcd-edge: distill a strong source-modality model into a small, fast target-modality model for the edge.

    \b
    Pipeline:  select-teacher -> distill -> export --int8 -> predict / bench
    Try:       cmcd-edge demo
    """
    level = logging.DEBUG if debug else logging.WARNING if quiet or not main_rank() else logging.INFO
    # our INFO lines only; libraries (onnxscript, onnxruntime's quantizer, torch) stay at WARNING unless --debug
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LevelPrefix())
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, handlers=[handler])
    log.setLevel(level)


main.add_command(data)
main.add_command(export)
main.add_command(build_engine_cmd)
main.add_command(teacher_cache)


# --------------------------------------------------------------------------------------------------------- distill


def _distill_options(fn):
    opts = [
        click.option("--data", required=True, help="Dataset folder or builtin:NAME."),
        click.option("--source", required=True, help="Source (teacher) view, or 'auto' (best by select-teacher)."),
        click.option("--target", required=True, help="Target (student) view."),
        click.option("--labeled-fraction", type=float, default=0.1, show_default=True,
                     help="Fraction of target train rows with labels."),
        click.option("--teacher", default="train", show_default=True,
                     help="'train', a TorchScript .pt / ExportedProgram .pt2 / ONNX .onnx file, or pkg.module:factory."),
        click.option("--teacher-cache", type=click.Path(file_okay=False), default=None,
                     help="Folder keeping each teacher's outputs across runs: the same teacher distilled into another "
                          "target or method (or seed, for a file or factory) is not trained or run again."),
        click.option("--epochs", type=int, default=60, show_default=True),
        click.option("--finetune", type=click.Choice(["head", "full", "none"]), default="head", show_default=True),
        click.option("--student", default="auto", show_default=True, help="mlp | cnn1d | cnn2d | auto (by view kind)."),
        click.option("--batch-size", type=int, default=128, show_default=True),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True),
        click.option("--seed", type=int, default=0, show_default=True),
        config_option,
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def _make_config(method: str, **kw):
    from cmcd_edge.distill.config import DistillConfig

    meta = click.get_current_context().meta
    where = f"--config {meta['config_path']}" if "config_path" in meta else "config"
    with cli_base.naming_config_file_values():
        return DistillConfig.from_json({**meta.get("config_extra", {}), **kw, "method": kw.get("method", method)}, where)


@main.command()
@_distill_options
@click.option("--method", default="cmcd", show_default=True,
              help="cmcd | cmd | cmc | kd | fitnet | rkd | crd | supervised")
@click.option("--recipe", default=None, help="Override the loss recipe, e.g. '1.0*cmd+0.5*cmc+1.0*ce'.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run folder to write.")
@click.option("--resume", is_flag=True, help="Continue a killed run in --out from its last checkpoint.")
@click.option("--force", is_flag=True, help="Replace an existing run in --out.")
def distill(out: str, resume: bool, force: bool, source: str, **kw) -> None:
    """Train a compact target-view student from a frozen source-view teacher.

    Example: cmcd-edge distill --data builtin:mfeat --source fac --target zer --out runs/zer
    """
    require("torch", "train")
    from cmcd_edge.distill.pipeline import run_distill

    source, ranking = _source(source, kw)
    cfg = _make_config(kw.pop("method"), source=source, **kw)
    on_interrupt(lambda: f"{out} keeps its last finished epoch: rerun the same command with --resume to continue"
                 if (Path(out) / "run.json").exists() else f"nothing was written to {out}")
    res = run_distill(cfg, Path(out), resume=resume, force=force, ranking=ranking)
    if not main_rank():
        return
    m = res.metrics
    # the pipeline logged the recipe as training began; under -q that line was hidden, so the summary carries it
    recipe = "" if logging.getLogger("cmcd_edge.distill.pipeline").isEnabledFor(logging.INFO) else f"{m['recipe']}\n"
    click.echo(f"{recipe}{cfg.method}: {cfg.source} -> {cfg.target}  test top-1 {100 * m['test_accuracy']:.1f}%  "
               f"macro-F1 {100 * m['test_macro_f1']:.1f}%  teacher {_teacher_top1(m)}  "
               f"params {m['params']:,}  MACs {m['macs']:,}  ({m['wall_s']:.1f}s{_speed(m)}) -> {out}")


def _teacher_top1(m: dict) -> str:
    none = "- (none: the recipe reads no teacher)" if m["teacher_kind"] == "none" else "- (no logits)"
    return none if m["teacher_test_accuracy"] is None else f"{100 * m['teacher_test_accuracy']:.1f}%"


def _source(source: str, kw: dict) -> tuple[str, dict | None]:
    """--source, or with 'auto' the top of select-teacher's ranking (one seed) and the ranking itself."""
    if source != "auto":
        return source, None
    if kw["teacher"] != "train":  # else views are ranked (minutes) before the file fails on another view's rows
        raise UserError(f"--source auto: ranks views to train a teacher on, but --teacher {kw['teacher']} is a model "
                        "of one view: name that view with --source")
    single_process("--source auto", "run `cmcd-edge select-teacher` once without torchrun and pass its pick as --source")
    from cmcd_edge.distill.select import best_source

    source, ranking = best_source(kw["data"], kw["target"], seed=kw["seed"], device=kw["device"],
                                  teacher_cache=kw["teacher_cache"])
    click.echo(f"--source auto: {source} (top of the CCH ranking)")
    return source, ranking


def _speed(m: dict) -> str:
    if m["distill_samples_per_s"] is None:  # resumed after the distill phase
        return ""
    amp = f", {m['train_autocast']} autocast" if m["train_autocast"] else ""
    return f"; distill {m['distill_samples_per_s']:,.0f} samples/s on {m['train_device']}{amp}"


@main.command()
@_distill_options
@click.option("--methods", default="cmcd,cmd,cmc,kd,fitnet,rkd,crd,supervised", show_default=True,
              help="Comma-separated, each once; the first is the one the others are paired against.")
@click.option("--seeds", type=int, default=3, show_default=True, help="Number of seeds (seed, seed+1, ...).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for results.json/.md and runs.")
@click.option("--force", is_flag=True, help="Recompute an existing comparison.")
@click.option("--extend", is_flag=True,
              help="Add seeds or methods to a finished comparison in --out: its finished runs are kept.")
@click.option("--upper-bound/--no-upper-bound", default=True, show_default=True,
              help="Also train the 100%-labels student (the ceiling).")
@click.option("--jobs", type=int, default=1, show_default=True,
              help="Runs at a time, each on 1/N of the cores (small students train as fast on fewer threads) "
                   "and, with several GPUs, on one in turn; its figures are not --jobs 1's bit for bit.")
def compare(methods: str, seeds: int, out: str, force: bool, extend: bool, upper_bound: bool, jobs: int,
            source: str, **kw) -> None:
    """Compare methods over seeds under one protocol (teachers shared per seed).

    Example: cmcd-edge compare --data builtin:mfeat --source fac --target zer --seeds 3 --out cmp/zer

    More seeds later (its finished runs kept): the same command with --seeds 6 --extend
    """
    single_process("compare", "launch it as a plain command (its runs are small and run one after another); "
                    "torchrun is for one large `distill`")
    require("torch", "train")
    from cmcd_edge.distill.compare import check_request, kept_ranking, run_compare
    from cmcd_edge.distill.compare_results import results_markdown

    method_list = cli_base.csv_items(methods, "--methods")
    check_request(method_list, kw["seed"], seeds, force=force, extend=extend, jobs=jobs)  # before --source auto's
    on_interrupt(lambda: f"{out} keeps its finished runs and the last epoch of the one it was in: rerun the same "
                 "command (without --force) to continue")
    kept = kept_ranking(Path(out)) if extend and source == "auto" else None
    if kept is not None:
        click.echo(f"--source auto: {kept[0]} (the ranking kept in {Path(out) / 'results.json'})")
    source, ranking = kept or _source(source, kw)
    res = run_compare(_make_config("cmcd", source=source, **kw), method_list, seeds, Path(out), force=force,
                      extend=extend, upper_bound=upper_bound, ranking=ranking, jobs=jobs)
    click.echo(results_markdown(res))


distill.takes_config_extras = True
compare.takes_config_extras = True


@main.command("select-teacher")
@click.option("--data", required=True, help="Dataset folder or builtin:NAME.")
@click.option("--target", required=True, help="Target (student) view.")
@click.option("--candidates", default=None, help="Comma-separated source views (default: every other view).")
@click.option("--seeds", type=int, default=3, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="First seed (splits, teachers, students).")
@click.option("--labeled-fraction", type=float, default=0.1, show_default=True)
@click.option("--teacher-epochs", type=int, default=15, show_default=True,
              help="Epochs of each candidate's teacher (early stop on val).")
@click.option("--student-epochs", type=int, default=30, show_default=True,
              help="Epochs of the supervised target student whose embedding is H_S.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--out", default=None, type=click.Path(dir_okay=False),
              help="Write the ranking as JSON; also keeps each measured teacher in OUT.partial.json, so a killed run "
              "resumes when rerun.")
@click.option("--teacher-cache", type=click.Path(file_okay=False), default=None,
              help="Folder keeping each candidate's teacher across runs: ranking for another target trains none again.")
@click.option("--margin", type=float, default=0.1, show_default=True,
              help="Nats: a delta within +-margin reads 'marginal' (the verdict only; the ranking is the same).")
@click.option("--teacher", "teachers", multiple=True, metavar="VIEW=FILE",
              help="A view's own teacher (.pt/.pt2/.onnx file or pkg.module:factory, as distill takes), measured "
              "instead of one trained on the view; repeat for several views.")
@config_option
def select_teacher(data: str, target: str, candidates: str | None, seeds: int, seed: int, labeled_fraction: float,
                   teacher_epochs: int, student_epochs: int, device: str, out: str | None,
                   teacher_cache: str | None, margin: float, teachers: tuple[str, ...]) -> None:
    """Rank candidate source views by the CCH criterion I(T;S) - I(S;Y) (nats).

    Example: cmcd-edge select-teacher --data builtin:mfeat --target zer --candidates fac,pix,kar,fou,mor

    With a pretrained teacher: cmcd-edge select-teacher --data DIR --target depth --teacher rgb=camera.onnx
    """
    single_process("select-teacher", "launch it as a plain command")
    require("torch", "train")
    from cmcd_edge.distill.select import rank_teachers, table

    progress = Path(out).with_suffix(".partial.json") if out else None
    on_interrupt(lambda: f"{progress} keeps the measured teachers: rerun the same command to continue" if progress
                 and progress.exists() else None)
    with cli_base.naming_config_file_values():
        if not 0 < labeled_fraction <= 1:
            raise UserError(f"--labeled-fraction {labeled_fraction} is outside (0, 1]")
        cands = cli_base.csv_items(candidates, "--candidates") if candidates else None
        own = cli_base.view_items(teachers, "--teacher", "VIEW=FILE (e.g. cam=camera.onnx)")
        with exclusive(out) if out else contextlib.nullcontext():  # one select-teacher per --out and progress file
            res = rank_teachers(data, target, cands, seeds=seeds, seed=seed, labeled_fraction=labeled_fraction,
                                teacher_epochs=teacher_epochs, student_epochs=student_epochs, device=device,
                                progress=progress, teacher_cache=teacher_cache, teachers=own, margin=margin)
            click.echo(table(res))
            if out:
                write_json(out, res)
                progress.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------- predict, bench


@main.command()
@click.argument("bundle", type=click.Path())
@click.argument("input_npy", metavar="INPUT.npy", type=click.Path())
@click.option("--variant", default="auto", show_default=True, help="auto | int8 | fp32 | fp16")
@click.option("--backend", default="auto", show_default=True, help="auto | tensorrt | ort-tensorrt | cuda | cpu")
@click.option("--out", default=None, type=click.Path(dir_okay=False),
              help="Write here instead of printing: .json, .csv (a row a sample) or .npz (arrays).")
@click.option("--top", type=click.IntRange(min=1), default=3, show_default=True, help="Classes to print per sample.")
@click.option("--allow-nonfinite", is_flag=True, help="Run samples holding NaN or Inf instead of refusing them.")
def predict(bundle: str, input_npy: str, variant: str, backend: str, out: str | None, top: int,
            allow_nonfinite: bool) -> None:
    """Classify samples (one sample or a batch in a .npy file, read in slices) with a bundle. Needs no torch.

    Example: cmcd-edge predict bundles/zer samples.npy --top 2
    """
    from cmcd_edge.predictcli import run_predict

    if out:
        cli_base.refuse_inert(("top",), "sets the classes printed per sample; --out writes every class's probability; "
                              "drop one")
    run_predict(bundle, input_npy, variant=variant, backend=backend, out=out, top=top, allow_nonfinite=allow_nonfinite)


@main.command()
@click.argument("bundles", nargs=-1, required=True, type=click.Path(), metavar="BUNDLE...")
@click.option("--variants", default="all", show_default=True, help="Comma-separated variants, or all.")
@click.option("--batch", "batches", default="1,8", show_default=True, help="Batch sizes, comma-separated.")
@click.option("--threads", default="1", show_default=True, help="intra-op thread counts, comma-separated.")
@click.option("--backend", default="cpu", show_default=True, help="cpu | cuda | ort-tensorrt | tensorrt | auto")
@click.option("--duration", type=float, default=2.0, show_default=True, help="Timed seconds per case.")
@click.option("--warmup", type=float, default=0.5, show_default=True, help="Warm-up seconds (all cases).")
@click.option("--data", default=None, help="Dataset for accuracy beside latency (default: the bundle's own data).")
@click.option("--rows", type=click.Choice(["test", "all"]), default="test", show_default=True,
              help="Rows top-1 is measured on: the data's test split (the run's seed), or all labeled rows of "
                   "--data (new data the run never saw).")
@click.option("--no-accuracy", is_flag=True, help="Skip the accuracy run.")
@click.option("--compare-torch", "torch_run", default=None, type=click.Path(), help="Add torch eager of this run.")
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="Write JSON results here.")
@click.option("--plot", default=None, type=click.Path(dir_okay=False), help="Write a PNG (needs matplotlib).")
@config_option
def bench(bundles: tuple[str, ...], **kw) -> None:
    """Latency (p50/p90/p99) of a bundle's variants, interleaved, with accuracy beside it; several bundles are
    timed in one interleaved run. Needs no torch.

    Example: cmcd-edge bench bundles/zer bundles/fou --batch 1,8 --out bench.json
    """
    from cmcd_edge.benchcli import run_bench

    if kw["no_accuracy"]:
        cli_base.refuse_inert(("data", "rows"), "says what the accuracy run scores, which --no-accuracy skips; drop one")
    with cli_base.naming_config_file_values():
        threads = cli_base.csv_ints(kw.pop("threads"), "--threads")
        batches = cli_base.csv_ints(kw.pop("batches"), "--batch")
        run_bench(list(bundles), threads=threads, batches=batches, **kw)


# ------------------------------------------------------------------------------------------------------------ demo


@main.command()
@click.option("--out", default="demo-out", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the demo's run, comparison, bundle and bench results (replaced if present).")
@click.option("--quick/--full", default=True, show_default=True,
              help="Quick: 3 methods x 1 seed in the comparison; full: 8 methods x 3 seeds.")
def demo(out: str, quick: bool) -> None:
    """The whole pipeline on builtin:mfeat (fac -> zer, 10% labels), with a summary table.

    Example: cmcd-edge demo --out demo-out
    """
    from cmcd_edge.cli_demo import run_demo

    single_process("demo", "launch it as a plain command")
    require("torch", "train")
    root = Path(out)
    try:
        run_demo(root, quick)
    except KeyboardInterrupt:  # each stage registered its own advice; a rerun demo replaces --out and starts over
        on_interrupt(lambda: f"`cmcd-edge demo` starts over when rerun (it replaces {root})")
        raise
