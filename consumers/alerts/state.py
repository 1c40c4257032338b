"""Alert state that must survive a restart: suppression windows and delivered alert ids.

SQLite (WAL, synchronous=FULL), one file per alerts consumer group. A delivery is
recorded per sink right after that sink accepted it, so after a crash a sink is never
sent an alert it already has; windows are saved with the batch, before the offsets are
committed, so a restart neither forgets a window nor re-alerts on it. A sink that can be
read back (the Kafka alerts topic) also has its marks recorded with each delivery: the
topic offsets past its last recorded batch, where a read-back after a crash starts.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from datetime import UTC, datetime

from consumers.alerts.engine import MAX_WINDOWS, Window
from kaspwatch.secretfile import private_file

_SCHEMA = """
CREATE TABLE IF NOT EXISTS windows (
  host TEXT NOT NULL, category TEXT NOT NULL, start_us INTEGER NOT NULL,
  first_event TEXT NOT NULL, hits INTEGER NOT NULL, last_us INTEGER, stages TEXT NOT NULL,
  PRIMARY KEY (host, category));
CREATE INDEX IF NOT EXISTS windows_start ON windows (start_us);
CREATE TABLE IF NOT EXISTS delivered (
  alert_id TEXT NOT NULL, sink TEXT NOT NULL, at REAL NOT NULL, PRIMARY KEY (alert_id, sink));
CREATE TABLE IF NOT EXISTS outbox (
  sink TEXT NOT NULL, alert_id TEXT NOT NULL, grp TEXT NOT NULL, queued_at REAL NOT NULL,
  doc TEXT NOT NULL, PRIMARY KEY (sink, alert_id));
CREATE TABLE IF NOT EXISTS marks (
  sink TEXT NOT NULL, part INTEGER NOT NULL, next_offset INTEGER NOT NULL,
  PRIMARY KEY (sink, part));
"""


WindowRow = tuple[str, str, int, str, int, int | None, str]


def window_row(host: str, category: str, w: Window) -> WindowRow:
    last = _us(w.last) if w.last else None
    return (host, category, _us(w.start), w.first_event, w.hits, last, ",".join(sorted(w.stages)))


def _us(dt: datetime) -> int:
    return int(dt.timestamp() * 1_000_000)


def _dt(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1_000_000, UTC)


class AlertState:
    partitioned = False  # one store of every hits partition (a single process)

    def __init__(self, path: str | None) -> None:
        self.host_part: dict[str, int] = {}  # a partitioned store's: host -> hits partition
        self.path = path or ":memory:"
        if path:
            private_file(path)  # alert state names hosts: for the owner only
        self.db = sqlite3.connect(self.path)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(_SCHEMA)

    def load_windows(self, limit: int = MAX_WINDOWS) -> dict[tuple[str, str], Window]:
        """The ``limit`` most recently opened windows, oldest first (the engine's order)."""
        rows = self.db.execute(
            "SELECT * FROM (SELECT host, category, start_us, first_event, hits, last_us, stages"
            " FROM windows ORDER BY start_us DESC LIMIT ?) ORDER BY start_us",
            (limit,),
        )
        return {
            (host, cat): Window(
                _dt(start), first, hits, _dt(last) if last is not None else None,
                set(filter(None, stages.split(","))),
            )
            for host, cat, start, first, hits, last, stages in rows
        }  # fmt: skip

    def save_windows(
        self, windows: dict[tuple[str, str], Window], keys: Iterable[tuple[str, str]]
    ) -> None:
        rows = [
            window_row(h, c, w) for (h, c) in set(keys) if (w := windows.get((h, c))) is not None
        ]
        self.put_windows(rows)

    def put_windows(self, rows: list[WindowRow]) -> None:
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO windows VALUES (?, ?, ?, ?, ?, ?, ?)", rows)

    def owned(self) -> list[int | None]:
        """The hits partitions this store holds state of: here all of them, as one."""
        return [None]

    async def flush(self) -> None:
        """Every change is on disk already (each call is its own transaction)."""
        return None

    def locate(self, host: str, part: int) -> None:
        """Which hits partition ``host`` is on: one store holds every partition here."""
        return None

    def next_offset(self, part: int) -> int:
        """The first offset of a hits partition whose effects are not in the state: a
        partitioned store's; this one does not know (at-least-once replay)."""
        return 0

    def processed(self, offsets: dict[int, int]) -> None:
        """The hits up to these offsets (partition -> next) are in the state: a
        partitioned store's record."""
        return None

    def delivered(self, alert_ids: list[str], sink: str) -> set[str]:
        if not alert_ids:
            return set()
        marks = ",".join("?" * len(alert_ids))
        rows = self.db.execute(
            f"SELECT alert_id FROM delivered WHERE sink = ? AND alert_id IN ({marks})",  # noqa: S608
            [sink, *alert_ids],
        )
        return {r[0] for r in rows}

    def mark_delivered(
        self,
        alert_ids: list[str],
        sink: str,
        marks: dict[int, int] | None = None,
        part: int | None = None,
        at: float | None = None,
    ) -> None:
        """Record the deliveries and, in the same transaction, the sink's marks (partition ->
        offset past them; a mark only moves forward). ``part``: the hits partition they
        belong to (one store of every partition here: ignored)."""
        now = time.time() if at is None else at
        with self.db:
            self.db.executemany(
                "INSERT OR IGNORE INTO delivered VALUES (?, ?, ?)",
                [(a, sink, now) for a in alert_ids],
            )
            self.db.executemany(
                "INSERT INTO marks VALUES (?, ?, ?) ON CONFLICT (sink, part) "
                "DO UPDATE SET next_offset = max(next_offset, excluded.next_offset)",
                [(sink, p, n) for p, n in (marks or {}).items()],
            )

    def marks(self, sink: str, part: int | None = None) -> dict[int, int] | None:
        """Where a read-back of the sink starts; None when none was ever recorded."""
        rows = self.db.execute("SELECT part, next_offset FROM marks WHERE sink = ?", (sink,))
        return {p: n for p, n in rows} or None

    def queue(self, sink: str, rows: list[tuple[str, str, float, str]]) -> None:
        """Hold alerts (alert_id, group, queued_at, JSON document) for a grouping sink and
        record them as delivered to it, in one transaction: once queued they survive a
        crash, and a replayed batch does not queue them again."""
        with self.db:
            self.db.executemany(
                "INSERT OR IGNORE INTO outbox VALUES (?, ?, ?, ?, ?)",
                [(sink, a, g, t, d) for a, g, t, d in rows],
            )
            self.db.executemany(
                "INSERT OR IGNORE INTO delivered VALUES (?, ?, ?)",
                [(a, sink, t) for a, _, t, _ in rows],
            )

    def queued(self, sink: str) -> list[tuple[str, str, float, str]]:
        """What the sink's outbox holds, oldest first: (alert_id, group, queued_at, doc)."""
        rows = self.db.execute(
            "SELECT alert_id, grp, queued_at, doc FROM outbox WHERE sink = ? "
            "ORDER BY queued_at, rowid",
            (sink,),
        )
        return list(rows)

    def unqueue(self, sink: str, alert_ids: list[str]) -> None:
        with self.db:
            self.db.executemany(
                "DELETE FROM outbox WHERE sink = ? AND alert_id = ?", [(sink, a) for a in alert_ids]
            )

    def prune_windows(self, opened_before: datetime) -> None:
        """Forget windows that closed: the next hit of their host opens a new one anyway."""
        with self.db:
            self.db.execute("DELETE FROM windows WHERE start_us < ?", (_us(opened_before),))

    def prune(self, older_than_s: float) -> None:
        """Forget deliveries older than the longest replay anyone would do."""
        with self.db:
            self.db.execute("DELETE FROM delivered WHERE at < ?", (time.time() - older_than_s,))

    def close(self) -> None:
        self.db.close()
