"""Alert delivery: decide (engine), deliver to every sink, record, then let the loop commit.

``handle`` returns only when every sink took the batch (or gave up, under the ``drop``
policy); under the default ``retry`` policy a sink that gives up raises, nothing is
committed, ``rollback`` restores the engine's windows from the state store, and the
consume loop re-reads the batch. Sinks that already took an alert are not sent it again.

A sink that can be read back (``ReadBack``: the Kafka alerts topic) closes the one gap the
records leave, a crash after the sink accepted a batch and before its record was written:
before its first send after a start, and after any failed send, the delivery reads the
receiver from the recorded marks to its end and records every alert id found there as
delivered, so it is never written twice. Other sinks may receive that batch again, with
the same alert ids.

With a partitioned state (``ChangelogState``: several instances in one group) every record
is per hits partition: the deliveries and marks of each partition's alerts, its windows,
and the hits offsets whose effects the state holds (``handle_located`` skips the hits a new
owner reads again below them). Each partition's alerts go to the same partition of the
alerts topic, so a read-back of partition p reads p's alerts only; a new owner reads back
before it writes (``read_back``, from the rebalance listener).

``KASPWATCH_FAULT_STOP_AFTER=SINK:N`` (tests only) makes the process stop itself (SIGSTOP)
once SINK accepted N alerts, before their delivery is recorded: the worst moment to crash.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from typing import Final

from consumers.alerts.engine import Alert, AlertEngine
from consumers.alerts.grouping import Grouping, Outbox
from consumers.alerts.sinks import ReadBack, Sink, SinkError
from consumers.alerts.state import AlertState
from kaspwatch.bus import Record
from kaspwatch.event import Event
from kaspwatch.identity import Identity

log = logging.getLogger("kaspwatch.alerts")
POLICIES: Final = ("retry", "drop")
PRUNE_EVERY: Final = 100  # batches between deletions of closed windows from the state file
# how long a partitioned state remembers a delivery (a replay reads one batch again, and a
# read-back what the last owner wrote): its changelog keeps no id for ever
DELIVERED_KEEP_S: Final = 7 * 86400.0

FAULT_ENV: Final = "KASPWATCH_FAULT_STOP_AFTER"


def _fault_point() -> tuple[str, int] | None:
    spec = os.environ.get(FAULT_ENV, "")
    if not spec:
        return None
    sink, _, count = spec.partition(":")
    if not sink or not count.isdigit():
        raise ValueError(f"{FAULT_ENV}={spec!r}: expected SINK:COUNT")
    return sink, int(count)


class DeliveryStats:
    def __init__(self) -> None:
        self.sent: dict[str, int] = {}
        self.failures: dict[str, int] = {}
        self.dropped: dict[str, int] = {}
        self.found: dict[str, int] = {}  # read back on the receiver, not sent again
        self.read_backs: dict[str, int] = {}  # read-backs of the receiver done
        self.skipped = 0  # hits read again whose effects the state already held
        self.alerts: dict[tuple[str, str, str], int] = {}  # (category, stage, severity)


class AlertDelivery:
    def __init__(
        self,
        engine: AlertEngine,
        sinks: list[Sink],
        state: AlertState,
        policy: str = "retry",
        group_wait_s: float = 0.0,
        clock: Callable[[], float] = time.time,
        tracebacks: bool = False,
    ) -> None:
        """``tracebacks``: log a sink failure's traceback with its warning (``-v``)."""
        if policy not in POLICIES:
            raise ValueError(
                f"sink failure policy {policy!r}: expected one of {', '.join(POLICIES)}"
            )
        self.engine = engine
        self.tracebacks = tracebacks
        self.sinks = sinks
        self.state = state
        self.policy = policy
        self.stats = DeliveryStats()
        engine.windows = state.load_windows(engine.max_windows)
        self._batches = 0
        self.unsure = {s.name for s in sinks if isinstance(s, ReadBack)}  # read back first
        if state.partitioned:  # the listener reads back each partition as it is assigned
            self.unsure.clear()
            for sink in sinks:
                if hasattr(sink, "partition_for"):  # co-partitioned with the hits topic
                    sink.partition_for = state.host_part.get
        self.failing: dict[str, int] = {}  # sink -> failed sends since its last success
        self.fault = _fault_point()
        # grouping sinks (webhook, syslog) get one message per host per group_wait_s
        self.outbox = (
            Outbox(state, group_wait_s, self.stats, policy, clock) if group_wait_s else None
        )

    async def handle_located(self, located: list[tuple[Record, Event | Identity]]) -> None:
        """The batch with its records: with a partitioned state, hits of a partition not
        held here (none: the subscriber holds them back) and hits below what the state
        already holds are skipped, and the partitions' next offsets are recorded."""
        if not self.state.partitioned:
            await self.handle([ev for _, ev in located])
            return
        owned = set(self.state.owned())
        start = {p: self.state.next_offset(p) for p in owned if p is not None}
        events: list[Event | Identity] = []
        done: dict[int, int] = {}
        for rec, ev in located:
            if isinstance(ev, Identity):
                events.append(ev)
                continue
            if rec.partition not in owned or rec.offset < start[rec.partition]:
                self.stats.skipped += 1
                continue
            self.state.locate(ev.host, rec.partition)
            events.append(ev)
            done[rec.partition] = max(done.get(rec.partition, 0), rec.offset + 1)
        await self.handle(events, done)

    async def handle(
        self, events: list[Event | Identity], offsets: dict[int, int] | None = None
    ) -> None:
        """Hits, and identity records (kaspwatch.identity.v1) when subscribed to them too:
        the identities first, each alert names the machine valid at its hit's time.
        ``offsets``: the hits partitions' offsets past this batch (a partitioned state)."""
        alerts: list[Alert] = []
        touched = []
        for ident in events:
            if isinstance(ident, Identity):
                self.engine.identities.add(ident)
        for ev in events:
            if isinstance(ev, Identity):
                continue
            if ev.indicator is not None:
                touched.append((ev.host, ev.indicator.category))
            alerts.extend(self.engine.feed(ev))
        for sink in self.sinks:
            await self._deliver(sink, alerts)
        self.state.save_windows(self.engine.windows, touched)
        if offsets:
            self.state.processed(offsets)
        self._batches += 1
        if self._batches % PRUNE_EVERY == 0 and self.engine.newest is not None:
            self.state.prune_windows(self.engine.newest - self.engine.window)
            if self.state.partitioned:
                self.state.prune(DELIVERED_KEEP_S)
        await self.state.flush()  # before the loop commits the offsets
        for a in alerts:
            key = (a.category, a.stage, a.severity)
            self.stats.alerts[key] = self.stats.alerts.get(key, 0) + 1
        await self.flush_groups()

    async def flush_groups(self, everything: bool = False) -> None:
        """Send the grouping sinks' groups that waited ``group_wait_s`` (or all of them)."""
        if self.outbox is not None:
            grouping = [s for s in self.sinks if isinstance(s, Grouping)]
            await self.outbox.flush(grouping, everything)

    def _undelivered(self, sink: Sink, alerts: list[Alert]) -> list[Alert]:
        done = self.state.delivered([a.alert_id for a in alerts], sink.name)
        return [a for a in alerts if a.alert_id not in done]

    async def read_back(self, sink: ReadBack, parts: list[int | None]) -> int:
        """Record as delivered what the receiver holds past the sink's marks, for these
        hits partitions (None: all of them, as one); how many alerts it found."""
        new: list[str] = []
        if parts == [None]:
            found, ends = await sink.read_back(self.state.marks(sink.name))
            new = sorted(found - self.state.delivered(sorted(found), sink.name))
            self.state.mark_delivered(new, sink.name, ends)
        else:
            for part, ids, end in await self._read_parts(sink, [p for p in parts if p is not None]):
                fresh = sorted(ids - self.state.delivered(sorted(ids), sink.name))
                self.state.mark_delivered(fresh, sink.name, end, part)
                new += fresh
        await self.state.flush()
        self.stats.read_backs[sink.name] = self.stats.read_backs.get(sink.name, 0) + 1
        self.unsure.discard(sink.name)
        if new:
            self.stats.found[sink.name] = self.stats.found.get(sink.name, 0) + len(new)
            log.warning(
                "sink %s: %d alerts already there past the last recorded delivery "
                "(accepted before a crash or a failed send): recorded, not sent again",
                sink.name,
                len(new),
            )
        return len(new)

    async def _read_parts(
        self, sink: ReadBack, parts: list[int]
    ) -> list[tuple[int, set[str], dict[int, int] | None]]:
        """Partition p's alerts are on partition p of the receiver: read from each one's
        mark in one read (a partition with no mark yet: its end only, no records), and
        per partition the ids found and its end."""
        marks = {p: m[p] for p in parts if (m := self.state.marks(sink.name, p)) and p in m}
        by_part = getattr(sink, "read_back_by_partition", None)
        found: dict[int, set[str]] = {}
        ends: dict[int, int] = {}
        unmarked = [p for p in parts if p not in marks]
        if by_part is None:  # a receiver that cannot tell partitions apart: one by one
            for p in parts:
                ids, end = await sink.read_back({p: marks[p]} if p in marks else None, [p])
                found[p], ends[p] = ids, end.get(p, marks.get(p, 0))
        else:
            if unmarked:
                ends.update((await by_part(None, unmarked))[1])
            if marks:
                more, last = await by_part(marks, list(marks))
                found.update(more)
                ends.update(last)
        return [(p, found.get(p, set()), {p: ends[p]} if p in ends else None) for p in parts]

    async def _deliver(self, sink: Sink, alerts: list[Alert]) -> None:
        fresh = self._undelivered(sink, alerts)
        if not fresh:
            return
        if self.outbox is not None and isinstance(sink, Grouping):
            self.outbox.hold(sink.name, fresh)  # durable: the flush sends it, per host
            return
        try:
            if isinstance(sink, ReadBack) and sink.name in self.unsure:
                await self.read_back(sink, self.state.owned())
                fresh = self._undelivered(sink, fresh)
                if not fresh:
                    return
            await sink.send(fresh)
        except SinkError as exc:
            if isinstance(sink, ReadBack):
                self.unsure.add(sink.name)  # some of the batch may be there: read back first
            self.stats.failures[sink.name] = self.stats.failures.get(sink.name, 0) + 1
            self.failing[sink.name] = self.failing.get(sink.name, 0) + 1
            trace = self.tracebacks  # the traceback only with -v
            if self.policy == "retry":
                log.warning(
                    "sink %s failed, will retry the batch: %s", sink.name, exc, exc_info=trace
                )
                raise
            self.stats.dropped[sink.name] = self.stats.dropped.get(sink.name, 0) + len(fresh)
            log.error(
                "sink %s failed, dropping %d alerts (policy drop): %s",
                sink.name,
                len(fresh),
                exc,
                exc_info=trace,
            )
            return
        failed = self.failing.pop(sink.name, 0)
        if failed:
            log.info(
                "sink %s recovered: delivered %d alerts after %d failed %s",
                sink.name,
                len(fresh),
                failed,
                "send" if failed == 1 else "sends",
            )
        self._maybe_stop(sink.name, len(fresh))
        self._record(sink, fresh)
        await self.state.flush()
        self.stats.sent[sink.name] = self.stats.sent.get(sink.name, 0) + len(fresh)

    def _record(self, sink: Sink, fresh: list[Alert]) -> None:
        """The deliveries and the sink's marks, per hits partition when the state is."""
        marks = sink.acked if isinstance(sink, ReadBack) else None
        if not self.state.partitioned:
            self.state.mark_delivered([a.alert_id for a in fresh], sink.name, marks)
            return
        by_part: dict[int | None, list[str]] = {}
        for a in fresh:
            by_part.setdefault(self.state.host_part.get(a.event.host), []).append(a.alert_id)
        for part, ids in by_part.items():
            own = {part: marks[part]} if marks is not None and part in marks else None
            self.state.mark_delivered(ids, sink.name, own, part)

    def _maybe_stop(self, sink: str, accepted: int) -> None:
        """The test hook (``KASPWATCH_FAULT_STOP_AFTER``): freeze between accept and record."""
        if self.fault is None or self.fault[0] != sink:
            return
        if self.stats.sent.get(sink, 0) + accepted < self.fault[1]:
            return
        self.fault = None
        log.warning("fault injection: sink %s accepted %d alerts, stopping before the record",
                    sink, accepted)  # fmt: skip
        os.kill(os.getpid(), signal.SIGSTOP)

    def rollback(self) -> None:
        """Forget in-memory decisions of a batch that will be re-read."""
        self.engine.windows = self.state.load_windows(self.engine.max_windows)
