"""The one error hierarchy of cmcd-edge.

It lives in the runtime (the bottom layer, which imports nothing of the project) so that device apps, the
training stages and the CLI all raise and catch the same classes. Only cli.py turns them into exit codes:
``UserError`` (a bad flag, file or input: exit 2) and every other ``CmcdError`` (the environment failed: exit 1).
"""

from __future__ import annotations


class CmcdError(Exception):
    """Base of every error cmcd-edge raises on purpose. The message is one line for the user."""

    exit_code = 1


class UserError(CmcdError):
    """The user's input is wrong: a flag, a file, a dataset, an array. Exit code 2."""

    exit_code = 2


class OutputBusy(UserError):
    """Another cmcd-edge process is writing the output named (fsutil.exclusive holds its lock)."""


class DataError(UserError):
    """A dataset on disk is malformed."""


class BundleError(UserError):
    """A bundle (manifest, model file, engine) is missing, malformed, tampered or unsafe."""


class EngineMismatch(BundleError):
    """The bundle has no TensorRT engine for this TensorRT version and GPU (the auto backend falls back past it)."""


class InputShapeError(UserError):
    """An array handed to the Predictor does not match the bundle's input."""


class EnvironmentFailure(CmcdError):
    """The machine lacks something: an optional extra, disk space, a device. Exit code 1."""


class AccuracyGateError(CmcdError):
    """A quantized variant lost more accuracy than allowed."""


def first_line(exc: BaseException | str, limit: int | None = 200) -> str:
    """The first non-blank line of an error's message (a library's, to quote in one of ours), cut to ``limit``
    characters; "no detail" when it has none."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0][:limit] if lines else "no detail"


def missing_extra(module: str, extra: str) -> EnvironmentFailure:
    """The error for an optional dependency that is not installed."""
    return EnvironmentFailure(f"this needs {module}, which is not installed: pip install 'cmcd-edge[{extra}]'")
