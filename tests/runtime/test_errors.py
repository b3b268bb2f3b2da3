"""runtime/errors.py: the error hierarchy's helpers."""

from __future__ import annotations


def test_first_line_quotes_an_errors_first_non_blank_line():
    """The one helper that quotes a library's error inside ours (onnxruntime's load error, a CUDA out-of-memory);
    an error without a message gives 'no detail' (was an IndexError where a copy of it read splitlines()[0])."""
    from cmcd_edge.errors import first_line

    assert first_line(RuntimeError("\n  CUDA out of memory. Tried  \nstack")) == "CUDA out of memory. Tried"
    assert first_line("x" * 300) == "x" * 200 and first_line("x" * 300, None) == "x" * 300
    assert first_line(RuntimeError()) == "no detail"
