"""In-process bus for the embedded mode: Kafka's semantics (topics, groups, commits) in memory.

Each topic is one partition. Every consumer group reads every record; a restarted
subscriber of a group resumes at the group's committed offset.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, ClassVar

from kaspwatch.bus import PartitionListener, Record


class MemoryBus:
    _buses: ClassVar[dict[str, MemoryBus]] = {}

    def __init__(self) -> None:
        self.topics: dict[str, list[Record]] = {}
        self.committed: dict[tuple[str, str], int] = {}
        self._changed = asyncio.Event()

    @classmethod
    def named(cls, name: str) -> MemoryBus:
        return cls._buses.setdefault(name, cls())

    @classmethod
    def forget(cls, name: str) -> None:
        cls._buses.pop(name, None)

    def append(self, topic: str, key: bytes | None, value: bytes) -> Record:
        log = self.topics.setdefault(topic, [])
        rec = Record(topic, 0, len(log), key, value)
        log.append(rec)
        self._changed.set()
        return rec

    async def wait_for_more(self, timeout: float) -> None:
        self._changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)

    def publisher(self) -> MemoryPublisher:
        return MemoryPublisher(self)

    def subscriber(self, topics: list[str], group: str) -> MemorySubscriber:
        return MemorySubscriber(self, topics, group)

    def reader(self) -> MemoryReader:
        return MemoryReader(self)


class MemoryPublisher:
    def __init__(self, bus: MemoryBus) -> None:
        self.bus = bus

    async def start(self) -> None:
        return None

    async def send(
        self, topic: str, value: bytes, key: bytes | None = None, partition: int | None = None
    ) -> asyncio.Future[Any]:
        """One partition per topic: ``partition`` can only be 0."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        fut.set_result(self.bus.append(topic, key, value))
        return fut

    async def flush(self) -> None:
        return None

    async def prepare(self, topics: list[str]) -> None:
        return None

    async def stop(self) -> None:
        return None


class MemorySubscriber:
    def __init__(self, bus: MemoryBus, topics: list[str], group: str) -> None:
        self.bus = bus
        self.topics = topics
        self.group = group
        self._pos: dict[str, int] = {}
        self._listeners: list[PartitionListener] = []

    def listen(self, listener: PartitionListener) -> None:
        self._listeners.append(listener)

    async def start(self) -> None:
        """The one owner of every partition: all of them are assigned now."""
        self._seek()
        for listener in self._listeners:
            await listener.assigned([(t, 0) for t in self.topics])

    def _seek(self) -> None:
        self._pos = {t: self.bus.committed.get((self.group, t), 0) for t in self.topics}

    def _take(self, max_records: int) -> list[Record]:
        out: list[Record] = []
        for topic in self.topics:
            log = self.bus.topics.get(topic, [])
            pos = self._pos[topic]
            chunk = log[pos : pos + max_records - len(out)]
            self._pos[topic] = pos + len(chunk)
            out.extend(chunk)
        return out

    async def poll(self, timeout: float = 1.0, max_records: int = 500) -> list[Record]:
        out = self._take(max_records)
        if not out:
            await self.bus.wait_for_more(timeout)
            out = self._take(max_records)
        return out

    async def commit(self) -> None:
        for topic, pos in self._pos.items():
            self.bus.committed[(self.group, topic)] = pos

    async def lag(self) -> int:
        return sum(
            len(self.bus.topics.get(t, [])) - self.bus.committed.get((self.group, t), 0)
            for t in self.topics
        )

    async def rewind(self) -> None:
        self._seek()

    async def stop(self) -> None:
        for listener in self._listeners:
            await listener.revoked([(t, 0) for t in self.topics])


class MemoryReader:
    def __init__(self, bus: MemoryBus) -> None:
        self.bus = bus

    async def read(
        self, topic: str, since: dict[int, int] | None, partitions: list[int] | None = None
    ) -> tuple[list[Record], dict[int, int]]:
        log = self.bus.topics.get(topic, [])
        if partitions is not None and 0 not in partitions:
            return [], {}
        ends = {0: len(log)}
        return ([] if since is None else log[since.get(0, 0) :]), ends
