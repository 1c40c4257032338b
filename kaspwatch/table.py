"""Plain-text tables for terminals: upper-case headers, columns padded to their widest cell."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TextIO


def print_table(rows: Sequence[tuple[str, ...]], out: TextIO, columns: tuple[str, ...]) -> None:
    widths = [
        max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(columns)
    ]
    out.write(
        "  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip() + "\n"
    )
    for r in rows:
        out.write("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() + "\n")
