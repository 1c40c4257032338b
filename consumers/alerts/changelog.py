"""Alert state that moves with its hits partition: a compacted changelog topic.

Several ``kaspwatch alerts`` in one consumer group split the hits topic's partitions, and a
rebalance moves partitions between them. The state that decides an alert (the suppression
windows of each (host, category)), the alert ids each sink took and the alerts topic offsets
past them (where a read-back starts) belong to the hits partition the host is on. This
store keeps them per partition, in memory (one SQLite ``AlertState`` each), and writes
every change as a record of the compacted changelog topic (``CHANGELOG_TOPIC``, one
partition per hits partition): partition p of the changelog holds partition p's state,
Kafka Streams' model. A record's key names what it is, its value is the latest value
(JSON), and a key with no value (a tombstone) deletes it:

    ["w", host, category]   a window: start_us, first_event, hits, last_us, stages
    ["d", sink, alert_id]   an alert the sink took: at (epoch seconds)
    ["m", sink, part]       the sink's read-back mark: next (alerts topic offset)
    ["o"]                   next: the first hits offset whose effects are not in the state

The changes of a batch are written (and acknowledged) before its offsets are committed: a
sink's deliveries right after it took them, the windows and ``o`` at the end. On an
assignment the partition is restored by reading its changelog partition to the end (or
kept, when this process held it and nobody wrote to it since), so whichever instance owns
the partition next decides exactly as the last one did; ``o`` lets it skip the hits whose
effects the state already holds. The grouping sinks' outbox stays in the local SQLite file.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable
from datetime import datetime
from typing import Any, Final

from consumers.alerts.engine import MAX_WINDOWS, Window
from consumers.alerts.state import AlertState, WindowRow, _us, window_row
from kaspwatch.bus import BusError, Publisher, Record, TopicReader

log = logging.getLogger("kaspwatch.alerts")
CHANGELOG_TOPIC: Final = "kaspwatch.alerts-state.v1"


def _key(*parts: object) -> bytes:
    return json.dumps(parts, separators=(",", ":")).encode()


class ChangelogState(AlertState):
    partitioned = True

    def __init__(
        self,
        path: str | None,
        publisher: Publisher,
        reader: TopicReader,
        topic: str = CHANGELOG_TOPIC,
    ) -> None:
        """``path``: the local SQLite file of the grouping sinks' outbox."""
        super().__init__(path)
        self.publisher, self.reader, self.topic = publisher, reader, topic
        self.parts: dict[int, AlertState] = {}  # hits partition -> its state, owned now
        self.parked: dict[int, AlertState] = {}  # revoked: kept if assigned again unchanged
        self.written: dict[int, int] = {}  # changelog end offset, as far as this process knows
        self.host_part: dict[str, int] = {}
        self.pending: list[tuple[int, bytes, bytes | None]] = []
        self.restores = 0  # partitions read back from the changelog
        self.restored_records = 0
        self.kept = 0  # partitions assigned again and still current: no restore

    # ------------------------------------------------------------ ownership

    def owned(self) -> list[int | None]:
        return [p for p in sorted(self.parts)]

    def locate(self, host: str, part: int) -> None:
        self.host_part[host] = part

    def next_offset(self, part: int) -> int:
        """The first hits offset of ``part`` whose effects the state does not hold."""
        row = self.parts[part].db.execute("SELECT next_offset FROM marks WHERE sink = '' "
                                          "AND part = -1").fetchone()  # fmt: skip
        return int(row[0]) if row else 0

    def processed(self, offsets: dict[int, int]) -> None:
        """The batch's hits up to these offsets (partition -> next) are in the state."""
        for p, n in offsets.items():
            if p in self.parts:
                self.parts[p].mark_delivered([], "", {-1: n})
                self.pending.append((p, _key("o"), json.dumps({"next": n}).encode()))

    async def restore(self, parts: list[int]) -> dict[int, int]:
        """Take these partitions over: kept when still current, else read from the changelog
        (records per partition restored); the partitions no longer held are dropped."""
        _, ends = await self.reader.read(self.topic, None, parts)
        missing = [p for p in parts if p not in ends]
        if missing:
            raise BusError(f"changelog topic {self.topic} has no partition {missing}")
        need = []
        for p in parts:
            if p in self.parts:
                continue
            old = self.parked.pop(p, None)
            if old is not None and self.written.get(p) == ends[p]:
                self.parts[p] = old
                self.kept += 1
            else:
                if old is not None:
                    old.close()
                need.append(p)
        for old in self.parked.values():
            old.close()
        self.parked.clear()
        counts = dict.fromkeys(need, 0)
        if need:
            records, now = await self.reader.read(self.topic, dict.fromkeys(need, 0), need)
            ends.update(now)
            fresh = {p: AlertState(None) for p in need}
            for rec in records:
                if rec.partition in fresh:
                    _apply(fresh[rec.partition], rec)
                    counts[rec.partition] += 1
            self.parts.update(fresh)
            self.restores += len(need)
            self.restored_records += len(records)
        for p in parts:
            self.written[p] = ends[p]
        return counts

    def revoke(self, parts: Iterable[int]) -> None:
        """Give these partitions up (their changes flushed): parked until the next
        assignment, which keeps them only if nobody wrote to their changelog meanwhile."""
        gone = set(parts)
        for p in gone:
            state = self.parts.pop(p, None)
            if state is not None:
                self.parked[p] = state
        self.host_part = {h: p for h, p in self.host_part.items() if p not in gone}

    async def flush(self) -> None:
        """Write the changes so far to the changelog and wait for the acknowledgements."""
        if not self.pending:
            return
        todo, self.pending = self.pending, []
        futures = [
            await self.publisher.send(self.topic, value, key, p)  # type: ignore[arg-type]
            for p, key, value in todo
        ]
        try:
            acks = await asyncio.gather(*futures)
        except Exception:
            self.pending = todo + self.pending  # written again next time: the same values
            raise
        for md in acks:
            self.written[md.partition] = max(self.written.get(md.partition, 0), md.offset + 1)

    # ------------------------------------------------------------ the AlertState interface

    def load_windows(self, limit: int = MAX_WINDOWS) -> dict[tuple[str, str], Window]:
        merged = [(k, w) for s in self.parts.values() for k, w in s.load_windows(limit).items()]
        merged.sort(key=lambda kw: kw[1].start)
        return dict(merged[-limit:] if limit else merged)

    def save_windows(
        self, windows: dict[tuple[str, str], Window], keys: Iterable[tuple[str, str]]
    ) -> None:
        by_part: dict[int, list[WindowRow]] = {}
        for h, c in set(keys):
            w, p = windows.get((h, c)), self.host_part.get(h)
            if w is not None and p is not None and p in self.parts:
                by_part.setdefault(p, []).append(window_row(h, c, w))
        for p, rows in by_part.items():
            self.parts[p].put_windows(rows)
            for row in rows:
                doc = dict(zip(("start_us", "first_event", "hits", "last_us", "stages"), row[2:],
                               strict=True))  # fmt: skip
                self.pending.append((p, _key("w", row[0], row[1]), json.dumps(doc).encode()))

    def delivered(self, alert_ids: list[str], sink: str) -> set[str]:
        found = super().delivered(alert_ids, sink)
        for state in self.parts.values():
            found |= state.delivered(alert_ids, sink)
        return found

    def mark_delivered(
        self,
        alert_ids: list[str],
        sink: str,
        marks: dict[int, int] | None = None,
        part: int | None = None,
        at: float | None = None,
    ) -> None:
        if part is None or part not in self.parts:
            super().mark_delivered(alert_ids, sink, marks, at=at)
            return
        now = time.time() if at is None else at
        self.parts[part].mark_delivered(alert_ids, sink, marks, at=now)
        value = json.dumps({"at": now}).encode()
        self.pending.extend((part, _key("d", sink, a), value) for a in alert_ids)
        for q, n in (marks or {}).items():
            self.pending.append((part, _key("m", sink, q), json.dumps({"next": n}).encode()))

    def marks(self, sink: str, part: int | None = None) -> dict[int, int] | None:
        if part is None or part not in self.parts:
            return super().marks(sink)
        return self.parts[part].marks(sink)

    def prune_windows(self, opened_before: datetime) -> None:
        for p, state in self.parts.items():
            old = state.db.execute(
                "SELECT host, category FROM windows WHERE start_us < ?", (_us(opened_before),)
            ).fetchall()
            state.prune_windows(opened_before)
            self.pending.extend((p, _key("w", h, c), None) for h, c in old)

    def prune(self, older_than_s: float) -> None:
        super().prune(older_than_s)
        cut = time.time() - older_than_s
        for p, state in self.parts.items():
            old = state.db.execute(
                "SELECT alert_id, sink FROM delivered WHERE at < ?", (cut,)
            ).fetchall()
            state.prune(older_than_s)
            self.pending.extend((p, _key("d", s, a), None) for a, s in old)

    def close(self) -> None:
        for state in [*self.parts.values(), *self.parked.values()]:
            state.close()
        super().close()


def _apply(state: AlertState, rec: Record) -> None:
    """One changelog record into a partition's state (a tombstone deletes)."""
    if rec.key is None:
        return
    key: list[Any] = json.loads(rec.key)
    doc: dict[str, Any] | None = json.loads(rec.value) if rec.value else None
    kind = key[0]
    with state.db:
        if kind == "w" and doc is None:
            state.db.execute("DELETE FROM windows WHERE host = ? AND category = ?", key[1:3])
        elif kind == "w" and doc is not None:
            state.put_windows([(key[1], key[2], doc["start_us"], doc["first_event"], doc["hits"],
                                doc["last_us"], doc["stages"])])  # fmt: skip
        elif kind == "d" and doc is None:
            state.db.execute("DELETE FROM delivered WHERE sink = ? AND alert_id = ?", key[1:3])
        elif kind == "d" and doc is not None:
            state.mark_delivered([key[2]], key[1], at=float(doc["at"]))
        elif kind == "m" and doc is not None:
            state.mark_delivered([], key[1], {int(key[2]): int(doc["next"])})
        elif kind == "o" and doc is not None:
            state.mark_delivered([], "", {-1: int(doc["next"])})
