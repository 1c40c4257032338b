"""The store as a consume-loop handler: one write transaction per batch, idempotent.

``Store.handle(events)`` (the consume loop's handler protocol) runs ``ingest`` on the
store's own thread and returns once the batch is committed, so the loop commits offsets
only after the hits are durable. ``ingest`` keeps hits only (events with an indicator,
allowlisted ones too), inserts those whose ``event_id`` is new and, in the same
transaction, adds exactly those new hits to the aggregates: replaying a batch, a topic or
a capture changes no count.

Retention (``retention_days``) deletes hits older than the cutoff once an hour; the
aggregates keep their first/last seen. Hits already older than the cutoff when they
arrive are not stored: their ids may have been purged, so counting them again could
count them twice.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Final

from consumers import verdict
from consumers.store import rollup, schema
from consumers.store.backends import open_backend
from consumers.store.base import Backend
from kaspwatch.event import Event
from kaspwatch.identity import Identity

log = logging.getLogger("kaspwatch.store")

PURGE_EVERY_S: Final = 3600.0
_DAY_US: Final = 86_400_000_000
_CHUNK: Final = 500  # hosts per IN (...) list


@dataclass
class StoreStats:
    events: int = 0  # everything handed to ingest
    stored: int = 0  # new hits inserted
    duplicates: int = 0  # hits already stored (replays, redeliveries)
    expired: int = 0  # hits older than the retention cutoff on arrival
    purged: int = 0  # hits deleted by retention
    repeats: int = 0  # hits of a packet already counted (another sensor saw it too)


class Store:
    """A store of hits over a backend; usable in-process (``ingest``) and as a handler."""

    def __init__(
        self,
        backend: Backend,
        retention_days: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.backend = backend
        self.retention_days = retention_days
        self.clock = clock  # wall clock for the retention cutoff (tests set it)
        self.stats = StoreStats()
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kaspwatch-store")
        self._last_purge = float("-inf")

    # ------------------------------------------------------------------ handler protocol

    async def handle(self, events: list[Event | Identity]) -> None:
        """Hits, and identity records when subscribed to kaspwatch.identity.v1 too."""
        idents = [e for e in events if isinstance(e, Identity)]
        hits = [e for e in events if isinstance(e, Event)]
        loop = asyncio.get_running_loop()
        if idents:
            await loop.run_in_executor(self._executor, self.ingest_identities, idents)
        if hits:
            await loop.run_in_executor(self._executor, self.ingest, hits)

    def ingest_identities(self, idents: Iterable[Identity]) -> None:
        """Keep who held which address from when; queries join them to hits by time, so an
        identity that arrives after its hits still names them."""
        rows = [
            (i.address, rollup.ts_to_us(i.ts), i.mac, i.hostname, i.fqdn, i.source, i.sensor,
             i.lease_s)
            for i in idents
        ]  # fmt: skip
        with self._lock:
            b = self.backend
            b.begin()
            try:
                b.executemany(
                    "INSERT INTO identities (address, ts_us, mac, hostname, fqdn, source, "
                    "sensor, lease_s) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    rows,
                )
                b.commit()
            except BaseException:
                b.rollback()
                raise

    def rollback(self) -> None:
        """Nothing to undo: a failed ``ingest`` rolled its transaction back already."""

    # ------------------------------------------------------------------ writing

    def cutoff_us(self, now: float | None = None) -> int | None:
        if self.retention_days is None:
            return None
        now_us = int((self.clock() if now is None else now) * 1_000_000)
        return now_us - int(self.retention_days * _DAY_US)

    def ingest(self, events: Iterable[Event]) -> int:
        """Store the hits among ``events``; return how many were new."""
        with self._lock:
            if time.monotonic() - self._last_purge >= PURGE_EVERY_S:
                self._purge()
            return self._ingest(events)

    def _ingest(self, events: Iterable[Event]) -> int:
        cutoff = self.cutoff_us()
        rows: dict[str, rollup.HitRow] = {}
        packet_ids: dict[str, str] = {}  # event id -> packet id, for the hits carrying one
        found: dict[str, tuple[str, str, str]] = {}  # event id -> what it says of its host
        n = 0
        for ev in events:
            n += 1
            if ev.indicator is None or ev.event_id in rows:
                continue
            row = rollup.hit_row(ev)
            if cutoff is not None and row.ts_us < cutoff:
                self.stats.expired += 1
                continue
            rows[ev.event_id] = row
            if ev.packet_id is not None:
                packet_ids[ev.event_id] = ev.packet_id
            if not row.allowlisted and (c := verdict.classify(ev)) is not None:
                found[ev.event_id] = c
        self.stats.events += n
        if not rows:
            return 0
        b = self.backend
        b.begin()
        try:
            new_ids = b.insert_hits(schema.HIT_COLUMNS, list(rows.values()))
            new = [r for r in rows.values() if r.event_id in new_ids]
            counted, repeats = self._first_sightings(new, packet_ids)
            if new:
                d = rollup.deltas(counted, repeats)
                for r in new:
                    if r.event_id in found:
                        d.verdicts.setdefault(r.host, []).append(found[r.event_id])
                self._aggregate(d)
            b.commit()
        except BaseException:
            b.rollback()
            raise
        self.stats.repeats += len(repeats)
        self.stats.stored += len(new)
        self.stats.duplicates += len(rows) - len(new)
        return len(new)

    def _first_sightings(
        self, new: list[rollup.HitRow], packet_ids: dict[str, str]
    ) -> tuple[list[rollup.HitRow], list[rollup.HitRow]]:
        """(hits that count, hits of a packet counted already): the first report of a
        packet counts, later ones (other sensors' copies, in this batch or stored before)
        only add their sensor. Hits without a packet identity all count. The packets
        counted now are recorded in ``packets``."""
        if not packet_ids or not new:
            return new, []
        wanted = sorted({packet_ids[r.event_id] for r in new if r.event_id in packet_ids})
        known: set[str] = set()
        for i in range(0, len(wanted), _CHUNK):
            chunk = wanted[i : i + _CHUNK]
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT packet_id FROM packets WHERE packet_id IN ({marks})"  # noqa: S608
            known.update(r[0] for r in self.backend.query(sql, chunk))
        counted: list[rollup.HitRow] = []
        repeats: list[rollup.HitRow] = []
        fresh: dict[str, int] = {}
        for r in sorted(new, key=rollup.row_time):  # the earliest copy counts
            pid = packet_ids.get(r.event_id)
            if pid is None:
                counted.append(r)
            elif pid in known or pid in fresh:
                repeats.append(r)
            else:
                fresh[pid] = r.ts_us
                counted.append(r)
        if fresh:
            self.backend.executemany(
                "INSERT INTO packets (packet_id, ts_us) VALUES (?, ?) "
                "ON CONFLICT (packet_id) DO NOTHING",
                sorted(fresh.items()),
            )
        return counted, repeats

    def _existing(
        self, table: str, key: str, sets: str, hosts: list[str]
    ) -> dict[tuple[str, ...], tuple[rollup.Counts, tuple[str, ...]]]:
        """The stored counts and sets of these hosts' rows in ``table``, by key."""
        out: dict[tuple[str, ...], tuple[rollup.Counts, tuple[str, ...]]] = {}
        keycols = "host" if not key else f"host, {key}"
        width = 1 if not key else 2
        for i in range(0, len(hosts), _CHUNK):
            chunk = hosts[i : i + _CHUNK]
            marks = ",".join("?" * len(chunk))
            sql = (
                f"SELECT {keycols}, first_us, last_us, count, allowlisted, {sets} "  # noqa: S608
                f"FROM {table} WHERE host IN ({marks})"
            )
            for r in self.backend.query(sql, chunk):
                out[tuple(r[:width])] = (r[width : width + 4], r[width + 4 :])
        return out

    def _aggregate(self, d: rollup.Deltas) -> None:
        """Each key of the batch is written once: ``hosts`` and ``host_category`` are read
        first (their bounded sets are merged here), the others add in SQL."""
        b = self.backend
        hosts = sorted(d.hosts)
        merge_counts, merge_set = rollup.merge_counts, rollup.merge_set
        old = self._existing(
            "hosts", "", "sensors, categories, verdict, verdict_confidence, evidence", hosts
        )
        none: tuple[None, ...] = (None, None, None, None, None)
        rows: list[tuple[object, ...]] = []
        for h in hosts:
            agg = d.hosts[h]
            counts, sets = old.get((h,), (None, none))
            rows.append(
                (
                    h,
                    *merge_counts(counts, agg),
                    merge_set(sets[0], agg.sensors, rollup.MAX_SENSORS),
                    merge_set(sets[1], agg.names, rollup.MAX_CATEGORIES),
                    *rollup.merge_verdict(sets[2:], d.verdicts.get(h, [])),
                )
            )
        b.executemany(
            "INSERT INTO hosts (host, first_us, last_us, count, allowlisted, sensors, categories, "
            "verdict, verdict_confidence, evidence) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (host) DO UPDATE SET "
            "first_us = excluded.first_us, last_us = excluded.last_us, count = excluded.count, "
            "allowlisted = excluded.allowlisted, sensors = excluded.sensors, "
            "categories = excluded.categories, verdict = excluded.verdict, "
            "verdict_confidence = excluded.verdict_confidence, evidence = excluded.evidence",
            rows,
        )
        old = self._existing("host_category", "category", "sensors", hosts)
        none = (None,)
        rows = []
        for (h, cat), agg in sorted(d.host_category.items()):
            counts, sets = old.get((h, cat), (None, none))
            rows.append(
                (
                    h,
                    cat,
                    *merge_counts(counts, agg),
                    merge_set(sets[0], agg.sensors, rollup.MAX_SENSORS),
                )
            )
        b.executemany(
            "INSERT INTO host_category (host, category, first_us, last_us, count, allowlisted, "
            "sensors) VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (host, category) DO UPDATE SET "
            "first_us = excluded.first_us, last_us = excluded.last_us, count = excluded.count, "
            "allowlisted = excluded.allowlisted, sensors = excluded.sensors",
            rows,
        )
        least, greatest = b.least, b.greatest
        if not d.host_names:
            return  # only other sensors' copies of packets counted before: sensors added
        b.executemany(
            "INSERT INTO host_names (host, rname, name, category, indicator_id, first_us, "  # noqa: S608
            "last_us, count) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (host, rname) DO UPDATE SET "
            "category = CASE WHEN excluded.last_us >= host_names.last_us "
            "THEN excluded.category ELSE host_names.category END, "
            "indicator_id = CASE WHEN excluded.last_us >= host_names.last_us "
            "THEN excluded.indicator_id ELSE host_names.indicator_id END, "
            f"first_us = {least}(host_names.first_us, excluded.first_us), "
            f"last_us = {greatest}(host_names.last_us, excluded.last_us), "
            "count = host_names.count + excluded.count",
            d.host_names,
        )
        if d.pdns:
            b.executemany(
                "INSERT INTO pdns (rname, answer, name, first_us, last_us, count) "  # noqa: S608
                "VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (rname, answer) DO UPDATE SET "
                f"first_us = {least}(pdns.first_us, excluded.first_us), "
                f"last_us = {greatest}(pdns.last_us, excluded.last_us), "
                "count = pdns.count + excluded.count",
                sorted(
                    (
                        rollup.reverse_cached(name),
                        answer,
                        name,
                        agg.first_us,
                        agg.last_us,
                        agg.count,
                    )
                    for (name, answer), agg in d.pdns.items()
                ),
            )

    # ------------------------------------------------------------------ retention

    def purge(self, now: float | None = None) -> int:
        """Delete hits older than the retention cutoff now; return how many."""
        with self._lock:
            return self._purge(now)

    def _purge(self, now: float | None = None) -> int:
        self._last_purge = time.monotonic()
        cutoff = self.cutoff_us(now)
        if cutoff is None:
            return 0
        b = self.backend
        b.begin()
        try:
            before = b.query("SELECT count(*) FROM hits WHERE ts_us < ?", (cutoff,))[0][0]
            if before:
                b.query("DELETE FROM hits WHERE ts_us < ?", (cutoff,))
            b.query("DELETE FROM packets WHERE ts_us < ?", (cutoff,))
            b.query("DELETE FROM identities WHERE ts_us < ?", (cutoff,))
            b.commit()
        except BaseException:
            b.rollback()
            raise
        if before:
            log.info("retention: deleted %d hits older than %s", before, rollup.us_to_ts(cutoff))
        self.stats.purged += int(before)
        return int(before)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        with self._lock:
            self.backend.close()


def open_store(url: str, retention_days: float | None = None) -> Store:
    """Open (creating if needed) the store at a ``sqlite:///…`` or ``postgresql://…`` URL."""
    return Store(open_backend(url), retention_days)
