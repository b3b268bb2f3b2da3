"""The CLI's plumbing, shared by its command modules: domain errors to one-line click errors and exit codes,
``--config`` files, the log format, torchrun's ranks, missing extras."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from cmcd_edge.errors import CmcdError, UserError, first_line
from cmcd_edge.launch import launched_as
from cmcd_edge.registry import check_unique


def one_line(text: str) -> str:
    """A message on one line: one that quotes a multi-line error (TorchScript's interpreter prints both stacks, the
    cause last) keeps its first line and its last, the rest being what --debug shows."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else text.strip()
    return f"{lines[0]} ... {lines[-1]}"


class CmcdClickError(click.ClickException):
    """A domain error as one line on stderr, with the error's own exit code (2 user mistake, 1 environment)."""

    def __init__(self, exc: CmcdError) -> None:
        super().__init__(one_line(str(exc)))
        self.exit_code = exc.exit_code


class Group(click.Group):
    """Turns CmcdError (and, without --debug, any unexpected error) into a one-line message and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        debug = "--debug" in sys.argv[1:]
        try:
            return super().invoke(ctx)
        except CmcdError as exc:
            if debug:
                traceback.print_exc()
            raise CmcdClickError(exc) from None
        except KeyboardInterrupt:  # Ctrl-C: say what was kept and how to go on (click alone prints "Aborted!")
            if debug:
                traceback.print_exc()
            hint = ctx.meta[INTERRUPT_HINT]() if INTERRUPT_HINT in ctx.meta else None
            exc = click.ClickException(f"interrupted: {hint}" if hint else "interrupted")
            exc.exit_code = 130  # 128 + SIGINT, as a shell reports it
            raise exc from None
        except (click.ClickException, click.exceptions.Exit, click.Abort, SystemExit):
            raise
        except MemoryError:
            raise click.ClickException("out of memory: lower --batch-size or the data size") from None
        except Exception as exc:  # noqa: BLE001  (last resort: never a traceback unless --debug)
            if debug or (isinstance(exc, BrokenPipeError) and _stdout_gone()):
                raise  # the traceback; or `cmcd-edge predict ... | head` closed stdout: click ends quietly, exit 1
            disk = _disk_error(exc)
            if disk is not None:  # raised inside a library (torch, onnx) that wrapped the OSError
                raise click.ClickException(disk) from None
            peer = _peer_gone(exc)
            if peer is not None:
                raise click.ClickException(peer) from None
            gpu = _gpu_out_of_memory(exc)
            if gpu is not None:
                raise click.ClickException(gpu) from None
            raise click.ClickException(one_line(f"internal error: {type(exc).__name__}: {exc}") + " (rerun with --debug)"
                                       ) from None


def _gpu_out_of_memory(exc: BaseException) -> str | None:
    """torch's CUDA out-of-memory error (known by its type, as this module imports no torch) as advice: training
    has no backoff (the teacher pass over the rows has one)."""
    kind = type(exc)
    if kind.__name__ != "OutOfMemoryError" or not kind.__module__.startswith("torch"):
        return None
    return (f"out of GPU memory ({first_line(exc, 160)}): lower --batch-size (the built-in teacher's: teacher_batch_size in "
            "--config), or run with --device cpu")


INTERRUPT_HINT = "cmcd_edge.interrupt_hint"


def on_interrupt(hint: Callable[[], str | None]) -> None:
    """Register what the running command tells a user who presses Ctrl-C: ``hint()`` is called then, so it can look at
    what is on disk (a run folder may not exist yet)."""
    click.get_current_context().find_root().meta[INTERRUPT_HINT] = hint


def _stdout_gone() -> bool:
    """Whether stdout is a pipe whose reader has closed it (poll reports POLLERR); False where poll is missing."""
    import select

    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poll.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows), or stdout is not a file
        return False


def _disk_error(exc: BaseException) -> str | None:
    """A full disk or file-size limit anywhere in the exception chain, as one line; else None."""
    import errno

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            where = f" writing {exc.filename}" if exc.filename else ""
            return f"no space left{where} ({exc.strerror}): free disk space and rerun; nothing partial was kept"
        exc = exc.__cause__ or exc.__context__
    return None


# What gloo, NCCL and the TCPStore say when the process at the other end of a collective is gone.
_PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "remote process exited", "ncclRemoteError")


def _peer_gone(exc: BaseException) -> str | None:
    """Under torchrun, a collective that failed because another rank ended (its own error, a kill, a lost node), as one
    line; else None. Without it a rank behind a failed one printed gloo's "internal error: RuntimeError:
    [.../pair.cc:553] Connection closed by peer [...] GLHF!" as if it were a second fault."""
    here = launched_as()
    if here is None or not here.distributed:
        return None
    found = next((p for p in _PEER_GONE if p in str(exc)), None)
    if found is None:
        return None
    return (f"rank {here.rank}: another process of this torchrun ended first, so this one stopped "
            f"too ({found}); that process's error says why")


def load_config(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    """--config FILE: a JSON or TOML file whose keys set any flag of the command (flag name, dashes or underscores)."""
    if not value:
        return
    path = Path(value)
    try:
        text = path.read_text()
        if path.suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except (OSError, ValueError) as exc:
        raise click.BadParameter(f"{path}: {exc}", param_hint="--config") from None
    if not isinstance(data, dict):
        raise click.BadParameter(f"{path}: expected an object of flag names", param_hint="--config")
    names = _param_names(ctx)
    norm = {names.get(k.replace("-", "_"), k.replace("-", "_")): v for k, v in data.items()}
    extra = {k: v for k, v in norm.items() if k not in names.values()}
    if extra and not getattr(ctx.command, "takes_config_extras", False):
        raise click.BadParameter(f"{path}: unknown flag(s) {', '.join(sorted(extra))}", param_hint="--config")
    ctx.meta["config_extra"] = extra  # stage-config fields without a flag (checked by the stage's config)
    ctx.meta["config_path"] = str(path)
    params = {p.name: p for p in ctx.command.params}
    flags = {k: [v] if isinstance(v, str) and getattr(params[k], "multiple", False) else v  # a repeatable flag, once
             for k, v in norm.items() if k in names.values()}
    for key, v in flags.items():  # converted here, so a bad value names the file and its key, not a flag not typed
        try:
            params[key].type_cast_value(ctx, v)
        except click.BadParameter as exc:
            raise click.BadParameter(f"{path}: {key}: {exc.message}", param_hint="--config") from None
    ctx.default_map = {**(ctx.default_map or {}), **flags}


def _param_names(ctx: click.Context) -> dict[str, str]:
    """Each name a --config key may give a flag by (its long option, `--batch` as batch, or its parameter, batches),
    with dashes as underscores, mapped to the parameter's name."""
    names = {}
    for p in ctx.command.params:
        if p.name:
            names.update({o[2:].replace("-", "_"): p.name for o in getattr(p, "opts", []) if o.startswith("--")})
            names[p.name] = p.name
    return names


_LEADING_KEY = re.compile(r"(--)?([a-z][a-z0-9_-]*)")  # the flag or key a config error starts by naming


@contextlib.contextmanager
def naming_config_file_values():
    """Around building a stage's config from flags and a --config file: an error about a value the file set names the
    file and its key (the stage names the flag, which the user did not type, or which does not exist)."""
    try:
        yield
    except UserError as exc:
        ctx = click.get_current_context()
        path, text = ctx.meta.get("config_path"), str(exc)
        m = _LEADING_KEY.match(text)
        key = m.group(2).replace("-", "_") if m else None
        from_file = set(ctx.meta.get("config_extra", {})) | {
            p.name for p in ctx.command.params
            if p.name and ctx.get_parameter_source(p.name) == click.core.ParameterSource.DEFAULT_MAP}
        if path is None or _param_names(ctx).get(key, key) not in from_file:
            raise
        raise UserError(f"--config {path}: {key}{text[m.end(2):]}") from exc


config_option = click.option("--config", type=click.Path(dir_okay=False), callback=load_config, is_eager=True,
                             expose_value=False, help="JSON or TOML file setting any of this command's flags.")


def csv_items(value: str, flag: str) -> list[str]:
    """A comma-separated flag's items: stripped ("a, b" is a and b), empty ones dropped, each at most once."""
    items = [v.strip() for v in value.split(",") if v.strip()]
    check_unique(flag, items)
    return items


def view_items(values: tuple[str, ...], flag: str, form: str) -> dict[str, str]:
    """A repeated ``VIEW=VALUE`` flag as {view: value}: each names its view once."""
    out: dict[str, str] = {}
    for item in values:
        view, eq, value = item.partition("=")
        if not (eq and view.strip() and value.strip()):
            raise UserError(f"{flag} {item}: expected {form}")
        if view.strip() in out:
            raise UserError(f"{flag} {item}: view {view.strip()!r} given twice")
        out[view.strip()] = value.strip()
    return out


def csv_ints(value: str, flag: str) -> list[int]:
    """A comma-separated flag of positive integers, each at most once."""
    try:
        out = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{flag} {value!r}: expected comma-separated integers") from None
    if not out or min(out) < 1:
        raise UserError(f"{flag} {value!r}: expected positive integers")
    check_unique(flag, out)
    return out


def refuse_inert(names: tuple[str, ...], why: str) -> None:
    """Refuse flags typed on the command line that the rest of it leaves without effect (``why`` says which flag
    does that and what to do): a user who typed ``--calib-method entropy`` expects entropy calibration, not a bundle
    made without it. Keys of a ``--config`` file are left alone: one file may serve several commands."""
    ctx = click.get_current_context()
    typed = [p for p in ctx.command.params
             if p.name in names and ctx.get_parameter_source(p.name) is click.core.ParameterSource.COMMANDLINE]
    if typed:
        flags = [_typed_flag(p, ctx.params[p.name]) for p in typed]
        raise UserError(f"{', '.join(flags)}: {why}")


def _typed_flag(param: click.Parameter, value: Any) -> str:
    """How the user wrote a flag: '--per-tensor' (a boolean's other spelling), '--calib-method entropy'."""
    if isinstance(param, click.Option) and param.is_flag:
        return param.opts[0] if value or not param.secondary_opts else param.secondary_opts[0]
    return f"{param.opts[0]} {value}"


def main_rank() -> bool:
    """False in torchrun's ranks other than 0: they train alongside rank 0 but only rank 0 reports progress and
    results (each line came once per rank), so theirs show warnings and errors only."""
    here = launched_as()  # an unusable torchrun environment is reported by the command that needs it
    return here is None or here.rank == 0


def single_process(what: str, instead: str) -> None:
    """Refuse ``what`` under torchrun (WORLD_SIZE > 1): it trains one network after another, each rank on its own,
    writing into the same folder."""
    world = os.environ.get("WORLD_SIZE", "").strip()
    if world not in ("", "1"):
        raise UserError(f"{what} does not run under torchrun (WORLD_SIZE={world}); {instead}")


class LevelPrefix(logging.Formatter):
    """Progress lines as they are; warnings and errors led by their level, so they stand out among them."""

    def format(self, record: logging.LogRecord) -> str:
        msg = super().format(record)
        return f"{record.levelname.lower()}: {msg}" if record.levelno >= logging.WARNING else msg



def require(module: str, extra: str) -> None:
    import importlib.util

    from cmcd_edge.errors import missing_extra

    if importlib.util.find_spec(module) is None:
        raise missing_extra(module, extra)
