"""The consume loop over the embedded bus: groups, commit-after-effects, poison messages."""

from __future__ import annotations

import asyncio

import pytest

from consumers.loop import consume
from kaspwatch.bus import BusError, Record, parse_bus_url
from kaspwatch.bus.memory import MemoryBus
from kaspwatch.event import Event
from tests.factories import hit


def record_into(bad: list[tuple[Record, str]]):  # type: ignore[no-untyped-def]
    async def dead_letter(rec: Record, why: str) -> None:
        bad.append((rec, why))

    return dead_letter


class Collect:
    def __init__(self, fail_after: int | None = None) -> None:
        self.events: list[Event] = []
        self.fail_after = fail_after

    async def handle(self, events: list[Event]) -> None:
        if self.fail_after is not None and len(self.events) + len(events) > self.fail_after:
            raise RuntimeError("sink down")
        self.events.extend(events)


async def run_group(
    bus: MemoryBus, group: str, handler: Collect, bad: list[tuple[Record, str]]
) -> None:
    sub = bus.subscriber(["hits"], group)
    await sub.start()
    await consume(sub, [handler], asyncio.Event(), record_into(bad), lambda: True)


async def test_every_group_reads_everything_and_poison_is_skipped() -> None:
    bus = MemoryBus()
    bus.append("hits", b"10.0.0.1", hit("10.0.0.1", 0).to_json())
    bus.append("hits", b"x", b"{not json")
    bus.append("hits", b"10.0.0.2", hit("10.0.0.2", 1).to_json())
    bad: list[tuple[Record, str]] = []
    a, b = Collect(), Collect()
    await run_group(bus, "alerts", a, bad)
    await run_group(bus, "metrics", b, bad)
    assert [e.src_ip for e in a.events] == ["10.0.0.1", "10.0.0.2"] == [e.src_ip for e in b.events]
    assert [(r.offset, why.split(":")[0]) for r, why in bad] == [(1, "not JSON"), (1, "not JSON")]


async def test_a_failed_batch_commits_nothing_and_is_read_again(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import consumers.loop

    monkeypatch.setattr(consumers.loop, "RETRY_PAUSE_S", 0.01)
    bus = MemoryBus()
    for i in range(3):
        bus.append("hits", None, hit(f"10.0.0.{i}", i).to_json())

    class FailOnce(Collect):
        def __init__(self) -> None:
            super().__init__()
            self.calls = 0
            self.rollbacks = 0

        async def handle(self, events: list[Event]) -> None:
            self.calls += 1
            if self.calls == 1:
                assert bus.committed.get(("g", "hits"), 0) == 0
                raise RuntimeError("sink down")
            await super().handle(events)

        def rollback(self) -> None:
            self.rollbacks += 1

    handler = FailOnce()
    await run_group(bus, "g", handler, [])
    assert handler.rollbacks == 1 and handler.calls == 2
    assert [e.src_ip for e in handler.events] == ["10.0.0.0", "10.0.0.1", "10.0.0.2"]
    assert bus.committed[("g", "hits")] == 3


@pytest.mark.parametrize("url", ["kafka://", "kafka://host", "nats://x:1", "localhost:9092"])
def test_bad_bus_urls_are_refused(url: str) -> None:
    with pytest.raises(BusError, match="bus URL"):
        parse_bus_url(url)


def test_bus_urls() -> None:
    assert parse_bus_url("kafka://a:1,b:2") == ("kafka", "a:1,b:2")
    assert parse_bus_url("memory://") == ("memory", "default")
