"""Re-export of the error hierarchy (defined in cmcd_edge.runtime.errors, the bottom layer)."""

from cmcd_edge.runtime.errors import (
    AccuracyGateError,
    BundleError,
    CmcdError,
    DataError,
    EngineMismatch,
    EnvironmentFailure,
    InputShapeError,
    OutputBusy,
    UserError,
    first_line,
    missing_extra,
)

__all__ = [
    "AccuracyGateError",
    "BundleError",
    "CmcdError",
    "DataError",
    "EngineMismatch",
    "EnvironmentFailure",
    "InputShapeError",
    "OutputBusy",
    "UserError",
    "first_line",
    "missing_extra",
]
