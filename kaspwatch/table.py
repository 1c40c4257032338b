"""Plain-text tables for terminals: upper-case headers, columns padded to their widest cell.

Cells come from the bus and from packets: ``printable`` escapes what a terminal or a log
reader would act on (ESC, BEL, line breaks, bidi overrides) before anything is printed.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Sequence
from typing import TextIO


@functools.cache
def _unsafe() -> re.Pattern[str]:
    """C0, DEL, C1, and the Unicode line/paragraph separators and format characters (U+2028,
    U+2029, U+202E, U+200B, the BOM ...): anything that moves the cursor, rings, or reorders.
    Built on first use (a walk of the BMP, ≈ 10 ms), not when the module is imported."""
    return re.compile(
        "[\x00-\x1f\x7f-\x9f"
        + "".join(
            chr(c)
            for c in range(0xA0, 0x10000)
            if unicodedata.category(chr(c)) in ("Cf", "Zl", "Zp")
        )
        + "]"
    )


def _escape(m: re.Match[str]) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def printable(text: str) -> str:
    """``text`` with every control, separator and format character written as ``\\xNN`` or
    ``\\uNNNN``: safe on a terminal, in a syslog line, in one table cell."""
    return _unsafe().sub(_escape, text)


def print_table(rows: Sequence[tuple[str, ...]], out: TextIO, columns: tuple[str, ...]) -> None:
    rows = [tuple(printable(v) for v in r) for r in rows]
    widths = [
        max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(columns)
    ]
    out.write(
        "  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip() + "\n"
    )
    for r in rows:
        out.write("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() + "\n")
