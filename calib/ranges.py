"""Activation ranges for static INT8, and their cache (calibration.json).

Methods: ``minmax``; ``entropy`` (KL divergence over a real 2048-bin histogram, 128 quantized bins, via
create_calibrator: quantize_static's own default uses 128 bins); ``percentile`` (99.99th, 2048 bins).
The cache is keyed by the sha256 of the model that was calibrated, the data fingerprint, the method and the selection
(kind, size, seed); it is written atomically, and a mismatched cache is refused with the fix in the message.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cmcd_edge.calib.reader import ArrayReader
from cmcd_edge.errors import UserError
from cmcd_edge.fsutil import write_json

METHODS = ("minmax", "entropy", "percentile")


@dataclass(frozen=True)
class CalibKey:
    model_sha256: str
    data_fingerprint: str
    method: str
    select: str
    size: int
    symmetric: bool
    seed: int  # picks the random rows (and k-center's first one)


def _calibrator_options(method: str, symmetric: bool) -> dict:
    if method == "entropy":
        return {"num_bins": 2048, "num_quantized_bins": 128, "symmetric": symmetric}
    if method == "percentile":
        return {"num_bins": 2048, "percentile": 99.99, "symmetric": True}
    return {"symmetric": symmetric}


def ort_method(method: str):
    from onnxruntime.quantization import CalibrationMethod

    if method not in METHODS:
        raise UserError(f"--calib-method {method!r}; valid: {', '.join(METHODS)}")
    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}[method]


def compute_ranges(model_path: Path, input_name: str, x: np.ndarray, method: str, symmetric: bool = False) -> dict:
    """Run the calibrator over ``x``; return ORT's TensorsData as a JSON-able dict."""
    from onnxruntime.quantization.calibrate import CalibrationCacheEncoder, create_calibrator

    with tempfile.TemporaryDirectory(prefix="cmcd-calib.") as tmp:
        cal = create_calibrator(Path(model_path), augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                calibrate_method=ort_method(method), extra_options=_calibrator_options(method, symmetric))
        cal.collect_data(ArrayReader(input_name, x))
        data = cal.compute_data()
    # sorted: ORT collects tensor names in a set, whose order changes with each process's hash seed; so the same
    # export writes the same calibration.json bytes in any process
    return json.loads(json.dumps(data.to_dict(), cls=CalibrationCacheEncoder, sort_keys=True))


def save_cache(path: Path, key: CalibKey, ranges: dict, rows: np.ndarray) -> None:
    write_json(path, {"key": asdict(key), "rows": [int(r) for r in rows], "ranges": ranges})


def load_cache(path: Path, key: CalibKey, ignore: tuple[str, ...] = ()) -> dict | None:
    """The cached ranges when ``path`` exists and its key matches (but for the fields in ``ignore``); a mismatch is an
    error that says how to fix it."""
    if not path.exists():
        return None
    try:
        cached = json.loads(path.read_text())
        old = cached["key"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: unreadable calibration cache; pass --recalibrate (or delete it)") from exc
    want = {k: v for k, v in asdict(key).items() if k not in ignore}
    if any(k not in old or old[k] != v for k, v in want.items()):
        diff = ", ".join(f"{k}: cached {old.get(k)!r} vs now {v!r}" for k, v in want.items() if old.get(k) != v)
        raise UserError(f"{path}: calibration cache was made for another model/data/method ({diff}); "
                        "pass --recalibrate to compute new ranges (or delete it)")
    return cached["ranges"]


def write_ort_cache(ranges: dict, path: Path) -> None:
    """ORT's own calibration-cache format (what quantize_static's calibration_cache_path loads)."""
    path.write_text(json.dumps(ranges))
