"""End-of-run summary: per host and category, how many hits, when, and to which names."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TextIO

from kaspwatch.event import Event
from kaspwatch.table import print_table

MAX_NAMES_SHOWN = 3
MAX_ROWS = 100_000  # (host, category) rows kept; hits of further rows are only counted


@dataclass
class _Row:
    hits: int = 0
    first: str = ""
    last: str = ""
    severity: str = ""
    names: dict[str, None] = field(default_factory=dict)  # insertion-ordered set


class Summary:
    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], _Row] = {}
        self.untabled = 0  # hits of (host, category) pairs past MAX_ROWS

    async def handle(self, events: list[Event]) -> None:
        for ev in events:
            if not isinstance(ev, Event) or ev.indicator is None or ev.extra.get("allowlisted"):
                continue
            key = (ev.host, ev.indicator.category)
            row = self.rows.get(key)
            if row is None:
                if len(self.rows) >= MAX_ROWS:
                    self.untabled += 1
                    continue
                row = self.rows[key] = _Row()
            row.hits += 1
            row.first = min(row.first, ev.ts) if row.first else ev.ts
            row.last = max(row.last, ev.ts)
            row.severity = row.severity or ev.indicator.severity
            if len(row.names) < 100:
                row.names[ev.name] = None

    def print(self, out: TextIO) -> None:
        if not self.rows:
            out.write("No Kaspersky traffic seen.\n")
            return
        table = []
        for (host, category), r in sorted(self.rows.items()):
            names = list(r.names)
            shown = ", ".join(names[:MAX_NAMES_SHOWN])
            if len(names) > MAX_NAMES_SHOWN:
                shown += f" (+{len(names) - MAX_NAMES_SHOWN} more)"
            table.append((host, category, str(r.hits), r.first, r.last, shown))
        out.write("\nSummary: hosts talking to Kaspersky\n")
        print_table(table, out, ("host", "category", "hits", "first_seen", "last_seen", "names"))
        if self.untabled:
            out.write(
                f"(+{self.untabled} hits of further host/category pairs: the table keeps "
                f"{MAX_ROWS} rows)\n"
            )
        out.flush()
