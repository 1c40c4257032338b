"""Kafka transport (aiokafka): idempotent acks=all producer; consumer groups with manual commits."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from kaspwatch.bus import BusError, Record


class KafkaPublisher:
    def __init__(
        self, bootstrap: str, client_id: str, delivery_timeout: float | None = None
    ) -> None:
        """``delivery_timeout`` (seconds) makes every send fail after that long without an
        acknowledgement, instead of retrying for ever: what a spooling sensor needs to notice
        an outage (aiokafka's idempotent producer never gives up, so it is off then; ordering
        holds with one request in flight, and consumers drop a retry's duplicate by event_id)."""
        self.bootstrap = bootstrap
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            client_id=client_id,
            acks="all",
            enable_idempotence=delivery_timeout is None,
            compression_type="gzip",
            linger_ms=5,
            request_timeout_ms=30_000 if delivery_timeout is None else int(delivery_timeout * 1000),
            max_batch_size=16_384 if delivery_timeout is None else 1 << 20,
        )

    async def start(self) -> None:
        try:
            await self._producer.start()
        except KafkaError as exc:
            await self._producer.stop()
            raise BusError(f"kafka {self.bootstrap}: cannot connect: {exc}") from None

    async def prepare(self, topics: list[str], timeout_s: float = 30.0) -> None:
        """Wait until every partition of these topics has a leader (creating a topic the
        broker auto-creates). Producing into a partition whose leader the client has not
        learnt yet can fail a batch; waiting here before the first packet avoids it."""
        client = self._producer.client
        deadline = asyncio.get_running_loop().time() + timeout_s
        for topic in topics:
            while True:
                try:
                    parts = await self._producer.partitions_for(topic)
                except KafkaError as exc:
                    parts, last = set(), exc
                else:
                    last = None
                leaders = [
                    client.cluster.leader_for_partition(TopicPartition(topic, p)) for p in parts
                ]
                if parts and all(leader is not None and leader >= 0 for leader in leaders):
                    break
                if asyncio.get_running_loop().time() > deadline:
                    raise BusError(
                        f"kafka {self.bootstrap}: topic {topic} has no leader for every partition ({last})"
                    )
                await client.force_metadata_update()
                await asyncio.sleep(0.1)

    async def send(self, topic: str, value: bytes, key: bytes | None = None) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = await self._producer.send(topic, value=value, key=key)
        return fut

    async def flush(self) -> None:
        await self._producer.flush()

    async def stop(self) -> None:
        await self._producer.stop()


class KafkaSubscriber:
    def __init__(self, bootstrap: str, topics: list[str], group: str, client_id: str) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.group = group
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=group,
            client_id=client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )

    def _rebalance_listener(self) -> Any:
        """Called on partition assignment; subclasses that position partitions override."""
        return None

    async def start(self) -> None:
        try:
            await self._consumer.start()
        except KafkaError as exc:
            await self._consumer.stop()
            raise BusError(f"kafka {self.bootstrap}: cannot connect: {exc}") from None
        listener = self._rebalance_listener()
        if listener is None:
            self._consumer.subscribe(self.topics)
        else:
            self._consumer.subscribe(self.topics, listener=listener)

    async def poll(self, timeout: float = 1.0, max_records: int = 500) -> list[Record]:
        batches = await self._consumer.getmany(
            timeout_ms=int(timeout * 1000), max_records=max_records
        )
        return [
            Record(m.topic, m.partition, m.offset, m.key, m.value)
            for msgs in batches.values()
            for m in msgs
        ]

    async def commit(self) -> None:
        await self._consumer.commit()

    async def lag(self) -> int:
        parts = self._consumer.assignment()
        if not parts:
            return 0
        ends = await self._consumer.end_offsets(list(parts))
        total = 0
        for tp in parts:
            committed = await self._consumer.committed(tp)
            total += ends[tp] - (committed or 0)
        return total

    async def rewind(self) -> None:
        await self._consumer.seek_to_committed()

    async def stop(self) -> None:
        await self._consumer.stop()


async def group_lag(bootstrap: str, groups: list[str]) -> dict[tuple[str, str, int], int]:
    """Records not yet committed, per (group, topic, partition), for the groups given."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="kaspwatch-lag")
    probe = AIOKafkaConsumer(bootstrap_servers=bootstrap, client_id="kaspwatch-lag")
    await admin.start()
    await probe.start()
    try:
        out: dict[tuple[str, str, int], int] = {}
        for group in groups:
            committed = await admin.list_consumer_group_offsets(group)
            if not committed:
                continue
            ends = await probe.end_offsets(list(committed))
            for tp, meta in committed.items():
                out[(group, tp.topic, tp.partition)] = max(ends.get(tp, 0) - meta.offset, 0)
        return out
    finally:
        await probe.stop()
        await admin.close()
