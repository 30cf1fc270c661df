"""CSV that no spreadsheet runs: every export of the platform writes its cells through here.

A cell starting with ``= + - @``, a tab, CR or NUL may be evaluated as a formula when the file is
opened in a spreadsheet (CSV injection, OWASP), so such a cell gets a leading single quote.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Collection, Iterable, Mapping, Sequence

#: Cell starts a spreadsheet would run as a formula (or strip first).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\x00")


def neutralise(cell: object) -> str:
    """The cell as text that no spreadsheet will evaluate as a formula (None is empty)."""
    text = "" if cell is None else str(cell)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def csv_text(
    columns: Sequence[str],
    rows: Iterable[Mapping[str, object]],
    *,
    numbers: Collection[str] = (),
) -> str:
    """A header and one line per row (the row's values of ``columns``), every cell neutralised
    except those of ``numbers``: integer columns the platform computed, written as numbers so
    that a spreadsheet can sum them (a negative one would otherwise become text)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for values in rows:
        writer.writerow(
            [_number(values[c]) if c in numbers else neutralise(values[c]) for c in columns]
        )
    return out.getvalue()


def _number(cell: object) -> str:
    if not isinstance(cell, int) or isinstance(cell, bool):
        raise TypeError(f"a number column holds {type(cell).__name__}, not an integer")
    return str(cell)
