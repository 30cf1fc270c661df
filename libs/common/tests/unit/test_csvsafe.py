"""CSV cells no spreadsheet runs (every export of the platform writes through this)."""

from __future__ import annotations

import csv
import io

import pytest
from tenantry_common.csvsafe import csv_text, neutralise

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "cell", ["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx", "\x00x", "=cmd|' /C calc'!A0"]
)
def test_formula_cells_are_prefixed_with_a_quote(cell: str) -> None:
    assert neutralise(cell) == "'" + cell


@pytest.mark.parametrize("cell", ["plain", "1+1", "a=b", " =x", "", "'quoted", "gpt-4o-mini"])
def test_ordinary_cells_are_left_alone(cell: str) -> None:
    assert neutralise(cell) == cell


def test_a_table_has_its_header_and_every_cell_neutralised() -> None:
    text = csv_text(("name", "n", "none"), [{"name": "=HYPERLINK(x)", "n": -3, "none": None}])
    assert list(csv.reader(io.StringIO(text))) == [
        ["name", "n", "none"],
        ["'=HYPERLINK(x)", "'-3", ""],
    ]


def test_number_columns_stay_numbers_and_take_nothing_else() -> None:
    text = csv_text(("value", "comment"), [{"value": -3, "comment": "-bad"}], numbers={"value"})
    assert list(csv.reader(io.StringIO(text)))[1] == ["-3", "'-bad"]
    with pytest.raises(TypeError, match="not an integer"):
        csv_text(("value",), [{"value": "=1+1"}], numbers={"value"})
