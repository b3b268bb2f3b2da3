"""onnxruntime's CalibrationDataReader protocol over an in-memory array: the tiny interface between calibration-set
selection and range collection."""

from __future__ import annotations

import numpy as np


class ArrayReader:
    """Yields ``{input_name: batch}`` dicts; ``rewind()`` starts over (ORT calls get_next until it returns None).

    Every batch has the same size (the largest divisor of the row count up to ``batch``): ORT's histogram
    calibrators stack per-batch outputs and fail on a ragged last batch."""

    def __init__(self, input_name: str, x: np.ndarray, batch: int = 32) -> None:
        n = len(x)
        batch = max(d for d in range(1, max(1, min(batch, n)) + 1) if n % d == 0)
        self.input_name, self.x, self.batch = input_name, np.ascontiguousarray(x, np.float32), batch
        self._i = 0

    def get_next(self) -> dict | None:
        if self._i >= len(self.x):
            return None
        out = {self.input_name: self.x[self._i:self._i + self.batch]}
        self._i += self.batch
        return out

    def rewind(self) -> None:
        self._i = 0

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch)

    def set_range(self, start_index: int, end_index: int) -> None:  # part of ORT's protocol (strided calibration)
        self._i = start_index
