"""cli_base: the comma-separated flag values every command parses the same way."""

from __future__ import annotations

import pytest

from cmcd_edge.cli_base import csv_ints, csv_items
from cmcd_edge.errors import UserError


def test_csv_items_strips_and_drops_empty_items():
    assert csv_items(" dog, cat ,,bird", "--classes") == ["dog", "cat", "bird"]


def test_csv_ints_reads_positive_integers():
    assert csv_ints("1, 8,32", "--batch") == [1, 8, 32]


@pytest.mark.parametrize("parse,value,needle", [
    (csv_items, "cmcd,kd,cmcd", "--x: 'cmcd' appears twice"),
    (csv_ints, "1,4,1", "--x: 1 appears twice"),
    (csv_ints, "1, 01", "--x: 1 appears twice"),
    (csv_ints, "1,a", "--x '1,a': expected comma-separated integers"),
    (csv_ints, "0", "--x '0': expected positive integers"),
    (csv_ints, ",", "--x ',': expected positive integers"),
])
def test_csv_flags_refuse_repeats_and_bad_numbers(parse, value, needle):
    with pytest.raises(UserError) as err:
        parse(value, "--x")
    assert str(err.value) == needle
