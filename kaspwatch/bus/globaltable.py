"""A topic every instance reads whole, outside the consumer group (Kafka Streams'
GlobalKTable): the identity records an alerts instance joins to its share of the hits.

The group splits every subscribed topic's partitions between its members, so with several
instances each would hold only some of the identity records, and an alert would name its
machine only when its instance happened to read that machine's record. ``GlobalJoin``
keeps the hits in the group and reads the whole identity topic with a consumer of no
group: at ``start`` it assigns every partition, reads them from the beginning to the end
offsets of that moment (bounded by ``RESTORE_S``; one INFO line: records, seconds) and
only then joins the group; afterwards each ``poll`` first applies what the reader fetched
since (partitions added to the topic are read from their beginning within
``GROWTH_CHECK_S``). Nothing is committed for it: the topic is compacted (the last record per address),
and every start reads it again from the beginning.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Final

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from kaspwatch.bus import BusError, PartitionListener, Record, Subscriber
from kaspwatch.bus.kafka import TOPIC_CHECK_S, start_client
from kaspwatch.bus.security import PLAINTEXT, KafkaSecurity

log = logging.getLogger("kaspwatch.bus")

RESTORE_S: Final = 60.0  # longest wait for the restore before the hits are handled anyway
GROWTH_CHECK_S: Final = 30.0  # how often the reader asks whether the topic gained partitions
Apply = Callable[[list[Record]], Awaitable[None]]


class KafkaGlobalTopic:
    """Every partition of ``topic``, from the beginning, with a consumer of no group."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        client_id: str,
        security: KafkaSecurity = PLAINTEXT,
        growth_check_s: float = GROWTH_CHECK_S,
    ) -> None:
        self.bootstrap, self.topic, self.security = bootstrap, topic, security
        self._client: AIOKafkaConsumer | None = None
        self._parts: list[TopicPartition] = []
        self._client_id = client_id
        self._next_check = self._next_growth = 0.0
        self.growth_check_s = growth_check_s

    async def start(self) -> int:
        """Assign every partition at its beginning; the number of partitions (0: the topic
        does not exist yet, and is read from its beginning as soon as it does)."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            client_id=self._client_id,
            **self.security.client_kwargs(),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await start_client(self.bootstrap, self.security, consumer.start, consumer.stop)
        self._client = consumer
        if not await self._assign():
            log.info(
                "kafka %s: topic %s does not exist yet; reading it as soon as it does",
                self.bootstrap, self.topic,
            )  # fmt: skip
        return len(self._parts)

    async def _assign(self) -> bool:
        """Every partition of the topic, if it exists: those not read yet from their
        beginning, the others where they were (a topic that gained partitions)."""
        now = asyncio.get_running_loop().time()
        self._next_check, self._next_growth = now + TOPIC_CHECK_S, now + self.growth_check_s
        try:
            cluster = await self._consumer._client.fetch_all_metadata()
        except KafkaError as exc:
            raise self._error("reading its partitions", exc) from None
        numbers = sorted(cluster.partitions_for_topic(self.topic) or ())
        if len(numbers) <= len(self._parts):
            return bool(self._parts)
        where = {tp: await self._consumer.position(tp) for tp in self._parts}
        if self._parts:
            log.info(
                "kafka %s: topic %s grew from %d to %d partitions: reading the new ones from "
                "their beginning", self.bootstrap, self.topic, len(self._parts), len(numbers),
            )  # fmt: skip
        self._parts = [TopicPartition(self.topic, p) for p in numbers]
        self._consumer.assign(self._parts)
        for tp, offset in where.items():
            self._consumer.seek(tp, offset)
        await self._consumer.seek_to_beginning(*(tp for tp in self._parts if tp not in where))
        return True

    def _error(self, doing: str, exc: BaseException) -> BusError:
        return BusError(f"kafka {self.bootstrap}: topic {self.topic}: {doing}: {exc}")

    @property
    def _consumer(self) -> AIOKafkaConsumer:
        if self._client is None:
            raise BusError(f"kafka {self.bootstrap}: global reader used before start()")
        return self._client

    async def restore(self, apply: Apply, timeout_s: float = RESTORE_S) -> tuple[int, bool]:
        """Read every partition to its end offset of now, ``apply`` each batch; the records
        read and whether the ends were reached within ``timeout_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        if not self._parts:
            return 0, True
        try:
            ends = await self._consumer.end_offsets(self._parts)
            pending = [tp for tp in self._parts if await self._consumer.position(tp) < ends[tp]]
            count = 0
            while pending:
                left = deadline - loop.time()
                if left <= 0:
                    return count, False
                batches = await self._consumer.getmany(
                    *pending, timeout_ms=int(min(left, 0.5) * 1000), max_records=2000
                )
                records = _records(batches)
                count += len(records)
                if records:
                    await apply(records)
                pending = [tp for tp in pending if await self._consumer.position(tp) < ends[tp]]
            return count, True
        except KafkaError as exc:
            raise self._error("restoring", exc) from None

    async def fetched(self) -> list[Record]:
        """What the reader has fetched since (no wait)."""
        now = asyncio.get_running_loop().time()
        if not self._parts:
            if now < self._next_check or not await self._assign():
                return []
            log.info("kafka %s: topic %s exists now", self.bootstrap, self.topic)
        elif now >= self._next_growth:
            await self._assign()
        try:
            return _records(await self._consumer.getmany(timeout_ms=0, max_records=2000))
        except KafkaError as exc:
            raise self._error("following", exc) from None

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.stop()


def _records(batches: dict[TopicPartition, list[object]]) -> list[Record]:
    """Records with a value: a tombstone (deleted key) has nothing to apply."""
    return [
        Record(m.topic, m.partition, m.offset, m.key, m.value)  # type: ignore[attr-defined]
        for msgs in batches.values()
        for m in msgs
        if m.value is not None  # type: ignore[attr-defined]
    ]


class GlobalJoin:
    """A group subscriber (``sub``, the hits) joined to a topic read whole by every
    instance (``table``): the table is restored before the group is joined, and what it
    fetched since is applied before each poll of the group."""

    def __init__(
        self, sub: Subscriber, table: KafkaGlobalTopic, apply: Apply, restore_s: float = RESTORE_S
    ) -> None:
        self.sub, self.table, self.apply, self.restore_s = sub, table, apply, restore_s
        self.group = sub.group

    def listen(self, listener: PartitionListener) -> None:
        self.sub.listen(listener)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        began = loop.time()
        parts = await self.table.start()
        count, complete = await self.table.restore(self.apply, self.restore_s)
        took = loop.time() - began
        if complete:
            log.info(
                "%s: %d records restored from %d partitions in %.2f s (read whole by every "
                "instance, outside group %s)",
                self.table.topic, count, parts, took, self.group,
            )  # fmt: skip
        else:
            log.warning(
                "%s: restore not finished in %.0f s (%d records from %d partitions): the "
                "rest is read while hits are handled, and alerts of hosts not read yet do "
                "not name their machine",
                self.table.topic, took, count, parts,
            )  # fmt: skip
        await self.sub.start()

    async def poll(self, timeout: float = 1.0, max_records: int = 500) -> list[Record]:
        news = await self.table.fetched()
        if news:
            await self.apply(news)
        return await self.sub.poll(timeout, max_records)

    async def commit(self) -> None:
        await self.sub.commit()

    async def lag(self) -> int:
        return await self.sub.lag()

    async def rewind(self) -> None:
        await self.sub.rewind()

    async def stop(self) -> None:
        try:
            await self.sub.stop()
        finally:
            await self.table.stop()
