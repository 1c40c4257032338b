"""Kafka transport (aiokafka): idempotent acks=all producer; consumer groups with manual commits."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError

from kaspwatch.bus import BusError, Record


class KafkaPublisher:
    def __init__(self, bootstrap: str, client_id: str) -> None:
        self.bootstrap = bootstrap
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            client_id=client_id,
            acks="all",
            enable_idempotence=True,
            compression_type="gzip",
            linger_ms=5,
            request_timeout_ms=30_000,
        )

    async def start(self) -> None:
        try:
            await self._producer.start()
        except KafkaError as exc:
            await self._producer.stop()
            raise BusError(f"kafka {self.bootstrap}: cannot connect: {exc}") from None

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
        self.group = group
        self._consumer = AIOKafkaConsumer(
            *topics,
            bootstrap_servers=bootstrap,
            group_id=group,
            client_id=client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )

    async def start(self) -> None:
        try:
            await self._consumer.start()
        except KafkaError as exc:
            await self._consumer.stop()
            raise BusError(f"kafka {self.bootstrap}: cannot connect: {exc}") from None

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
