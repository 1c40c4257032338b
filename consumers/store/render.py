"""Query results on a terminal or to a file: table, csv, json, ndjson.

- ``table``: the result's table columns, aligned; lists joined with ", "; control
  characters escaped (``\\x1b``).
- ``csv``: every column, a header row; lists joined with spaces, objects as JSON; a cell
  that starts like a formula (``=``, ``+``, ``-``, ``@``) gets a leading apostrophe.
- ``json``: one array of row objects (an empty result is ``[]``).
- ``ndjson``: one row object per line.
"""

from __future__ import annotations

import csv
import json
from typing import Any, Final, TextIO

from consumers.store.queries import Result
from kaspwatch.table import printable

# A cell a spreadsheet would run as a formula (=HYPERLINK(...), +cmd, -1+1, @SUM, a tab or
# CR first): written with a leading apostrophe, shown as text (OWASP "CSV injection").
_FORMULA: Final = ("=", "+", "-", "@", "\t", "\r")


def _csv_cell(value: Any) -> str:
    text = _cell(value, " ")
    return "'" + text if isinstance(value, str) and text.startswith(_FORMULA) else text


FORMATS: Final = ("table", "csv", "json", "ndjson")


def _cell(value: Any, sep: str) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return sep.join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, separators=(",", ":")) if value else ""
    return str(value)


def render(result: Result, fmt: str, out: TextIO) -> None:
    if fmt == "json":
        json.dump(result.rows, out, indent=2)
        out.write("\n")
    elif fmt == "ndjson":
        for row in result.rows:
            out.write(json.dumps(row, separators=(",", ":")) + "\n")
    elif fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(result.columns)
        for row in result.rows:
            writer.writerow([_csv_cell(row.get(c)) for c in result.columns])
    elif fmt == "table":
        if result.rows:
            _table(result, out)
    else:
        raise ValueError(f"unknown format {fmt!r}")


def _table(result: Result, out: TextIO) -> None:
    cols = result.table
    cells = [[printable(_cell(row.get(c), ", ")) for c in cols] for row in result.rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(cols)]
    out.write("  ".join(c.upper().ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip())
    out.write("\n")
    for r in cells:
        out.write("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() + "\n")
