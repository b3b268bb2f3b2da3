"""Device-side runtime: bundle reader, Predictor, backends, benchmark. numpy + onnxruntime (+ tensorrt); never torch.

Import cost stays low: the Predictor (and onnxruntime) load on first use of ``cmcd_edge.runtime.Predictor``.
"""

from __future__ import annotations

from typing import Any

from cmcd_edge.runtime.errors import BundleError, CmcdError, InputShapeError

__all__ = ["BundleError", "CmcdError", "InputShapeError", "Predictor"]


def __getattr__(name: str) -> Any:
    if name == "Predictor":
        from cmcd_edge.runtime.predictor import Predictor

        return Predictor
    raise AttributeError(name)
