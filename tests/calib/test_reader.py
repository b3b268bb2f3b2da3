"""ArrayReader: onnxruntime's CalibrationDataReader protocol over an array, equal-size batches."""

from __future__ import annotations

import numpy as np
import pytest

from cmcd_edge.calib.reader import ArrayReader


def _drain(reader: ArrayReader) -> list[np.ndarray]:
    out = []
    while (item := reader.get_next()) is not None:
        out.append(item["input"])
    return out


@pytest.mark.parametrize(("n", "batch"), [(100, 25), (64, 32), (7, 7), (37, 1), (1, 1)])
def test_array_reader_equal_batches_cover_rows_in_order(n, batch):
    x = np.arange(n * 3, dtype=np.float64).reshape(n, 3)
    reader = ArrayReader("input", x)
    got = _drain(reader)
    assert reader.batch == batch and len(reader) == len(got) == n // batch
    assert {b.shape[0] for b in got} == {batch}  # ORT's histogram calibrators fail on a ragged last batch
    assert all(b.dtype == np.float32 for b in got)
    assert np.array_equal(np.concatenate(got), x.astype(np.float32))


def test_array_reader_rewind_and_set_range():
    reader = ArrayReader("input", np.zeros((8, 2)), batch=4)
    assert len(_drain(reader)) == 2 and reader.get_next() is None
    reader.rewind()
    assert len(_drain(reader)) == 2
    reader.set_range(4, 8)
    assert len(_drain(reader)) == 1
