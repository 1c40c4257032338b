"""Per-partition state without a broker: the changelog store's restore, the memory bus's
one owner of every partition, a commit refused by a rebalance, and the metrics consumer's
gauges leaving with a revoked partition.

The changelog here is a topic of the in-process bus (one partition, 0): the records and
their replay are the same ones the Kafka changelog carries; the real broker runs the same
store across processes in tests/test_scale_out.py."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from consumers.alerts.changelog import ChangelogState
from consumers.alerts.delivery import AlertDelivery
from consumers.alerts.engine import AlertEngine
from consumers.alerts.handover import Handover
from consumers.loop import consume
from consumers.metrics import HitMetrics
from kaspwatch.bus import CommitFailed, Partition, Record
from kaspwatch.bus.memory import MemoryBus, MemorySubscriber
from kaspwatch.event import Event
from tests.factories import hit

TOPIC = "state"


class Sink:
    """A sink that keeps what it was sent."""

    name = "list"

    def __init__(self) -> None:
        self.got: list[str] = []

    async def start(self) -> None:
        return None

    async def send(self, alerts: list[Any]) -> None:
        self.got += [a.alert_id for a in alerts]

    async def stop(self) -> None:
        return None


def located(bus: MemoryBus, events: list[Event]) -> list[tuple[Record, Event]]:
    return [(bus.append("hits", e.host.encode(), e.to_json()), e) for e in events]


def delivery(bus: MemoryBus, sink: Sink) -> AlertDelivery:
    state = ChangelogState(None, bus.publisher(), bus.reader(), TOPIC)
    return AlertDelivery(AlertEngine(), [sink], state)  # type: ignore[list-item]


async def test_a_new_owner_restores_the_partition_and_decides_as_the_last_one() -> None:
    bus = MemoryBus()
    first_sink, next_sink = Sink(), Sink()
    first = delivery(bus, first_sink)
    await Handover(first, "hits").assigned([("hits", 0)])
    # the host's first three hits, 80 s apart: one first_contact
    await first.handle_located(located(bus, [hit("10.0.0.1", s) for s in (0, 80, 160)]))
    assert len(first_sink.got) == 1
    note = await Handover(first, "hits").revoked([("hits", 0)])
    assert note is not None and TOPIC in note

    after = delivery(bus, next_sink)
    note = await Handover(after, "hits").assigned([("hits", 0)])
    assert note is not None and "1 partitions restored" in note
    # the batch read again (not committed) changes nothing; the next hits make sustained
    replay = [
        (Record("hits", 0, i, None, b""), hit("10.0.0.1", s)) for i, s in enumerate((0, 80, 160))
    ]
    await after.handle_located(replay)
    assert next_sink.got == [] and after.stats.skipped == 3
    await after.handle_located(located(bus, [hit("10.0.0.1", s) for s in (240, 320, 400)]))
    # one sustained at the fifth hit (320 s), never a second first_contact
    assert len(next_sink.got) == 1 and next_sink.got[0] not in first_sink.got
    window = after.engine.windows[("10.0.0.1", "update")]
    assert window.hits == 6 and window.stages == {"first_contact", "sustained"}
    # a third owner that restores from the changelog alone holds the same window and ids
    third = delivery(bus, Sink())
    await Handover(third, "hits").assigned([("hits", 0)])
    assert third.engine.windows[("10.0.0.1", "update")].hits == 6
    assert third.state.delivered(first_sink.got + next_sink.got, "list") == set(
        first_sink.got + next_sink.got
    )


async def test_a_partition_assigned_again_unchanged_is_kept_not_restored() -> None:
    bus = MemoryBus()
    d = delivery(bus, Sink())
    handover = Handover(d, "hits")
    await handover.assigned([("hits", 0)])
    await d.handle_located(located(bus, [hit("10.0.0.1", 0)]))
    await handover.revoked([("hits", 0)])
    assert d.engine.windows == {}  # the revoked partition's windows left this instance
    note = await handover.assigned([("hits", 0)])
    assert note is not None and "0 partitions restored" in note and "1 kept" in note
    assert ("10.0.0.1", "update") in d.engine.windows


async def test_the_memory_bus_has_one_owner_of_every_partition() -> None:
    bus = MemoryBus()
    seen: list[tuple[str, list[Partition]]] = []

    class Listener:
        async def assigned(self, partitions: list[Partition]) -> str | None:
            seen.append(("assigned", partitions))
            return None

        async def revoked(self, partitions: list[Partition]) -> str | None:
            seen.append(("revoked", partitions))
            return None

    sub = bus.subscriber(["identity", "hits"], "g")
    sub.listen(Listener())
    await sub.start()
    await sub.stop()
    both = [("identity", 0), ("hits", 0)]
    assert seen == [("assigned", both), ("revoked", both)]


async def test_a_commit_refused_by_a_rebalance_rolls_back_and_reads_again() -> None:
    bus = MemoryBus()
    for i in range(3):
        bus.append("hits", None, hit(f"10.0.0.{i}", i).to_json())

    class Refusing(MemorySubscriber):
        refused = 0

        async def commit(self) -> None:
            if not self.refused:
                self.refused += 1
                raise CommitFailed("kafka group g: commit refused, the group rebalanced")
            await super().commit()

    class Handler:
        def __init__(self) -> None:
            self.events: list[Event] = []
            self.rollbacks = 0

        async def handle(self, events: list[Event]) -> None:
            self.events += events

        def rollback(self) -> None:
            self.rollbacks += 1

    sub = Refusing(bus, ["hits"], "g")
    await sub.start()
    handler = Handler()

    async def dead_letter(rec: Record, why: str) -> None:
        raise AssertionError(why)

    await consume(sub, [handler], asyncio.Event(), dead_letter, lambda: True)
    assert sub.refused == 1 and handler.rollbacks == 1
    assert [e.src_ip for e in handler.events] == [f"10.0.0.{i}" for i in (0, 1, 2)] * 2
    assert bus.committed[("g", "hits")] == 3


async def test_hosts_of_a_revoked_partition_leave_the_active_host_gauge() -> None:
    metrics = HitMetrics(known={("update", "high")}, clock=lambda: 1_750_000_500.0)
    batch = [(Record("hits", p, 0, None, b""), hit(f"10.0.0.{p}", 0)) for p in (0, 1, 1)]
    await metrics.handle_located(batch)

    def active() -> dict[str, float]:
        return {
            json.dumps(s.labels, sort_keys=True): s.value
            for fam in metrics.active.collect()
            for s in fam.samples
            if s.name == "kaspwatch_active_hosts" and s.labels["window"] == "24h"
        }

    assert sum(active().values()) == 2
    note = await metrics.revoked([("hits", 1)])
    assert note == "1 hosts left the active-host gauges"
    assert sum(active().values()) == 1
    assert metrics.hits.labels("update", "dns_query", "high", "unknown")._value.get() == 3


async def test_pruned_windows_leave_the_changelog_as_tombstones() -> None:
    bus = MemoryBus()
    d = delivery(bus, Sink())
    await Handover(d, "hits").assigned([("hits", 0)])
    await d.handle_located(located(bus, [hit("10.0.0.1", 0), hit("10.0.0.2", 7200)]))
    assert d.engine.newest is not None
    d.state.prune_windows(d.engine.newest - d.engine.window)  # the first one closed
    await d.state.flush()
    assert [json.loads(r.key or b"") for r in bus.topics[TOPIC] if not r.value] == [
        ["w", "10.0.0.1", "update"]
    ]
    after = delivery(bus, Sink())
    await Handover(after, "hits").assigned([("hits", 0)])
    assert list(after.engine.windows) == [("10.0.0.2", "update")]
