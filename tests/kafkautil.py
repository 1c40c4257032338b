"""Helpers for tests on the real Kafka broker: topics, reading back, commits, /metrics.

bench/ scripts use them too, so pytest is imported only where a test fails."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from contextlib import suppress

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy


async def create_topics(
    bootstrap: str, *specs: tuple[str, int], configs: dict[str, str] | None = None
) -> None:
    """Create the topics (with these topic ``configs``) and wait until every partition
    has a leader."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        for name, parts in specs:
            with suppress(TopicAlreadyExistsError):
                await admin.create_topics(
                    [NewTopic(name, parts, replication_factor=1, topic_configs=configs or {})]
                )
        names = [name for name, _ in specs]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            described = await admin.describe_topics(names)
            ready = {
                d["topic"]
                for d in described
                if not d["error_code"]
                and d["partitions"]
                and all(p["leader"] >= 0 for p in d["partitions"])
            }
            if ready == set(names):
                return
            await asyncio.sleep(0.1)
        import pytest

        pytest.fail(f"topics {names} have no leader after 20 s")
    finally:
        await admin.close()


async def read_topic(
    bootstrap: str, topic: str, want: int, timeout: float = 20.0
) -> list[tuple[bytes | None, bytes]]:
    """At least ``want`` records (and anything more that shows up within a second)."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    out: list[tuple[bytes | None, bytes]] = []
    try:
        deadline = time.monotonic() + timeout
        while len(out) < want and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=300)
            out.extend((m.key, m.value) for msgs in batches.values() for m in msgs)
        batches = await consumer.getmany(timeout_ms=1000)  # a duplicate would show up here
        out.extend((m.key, m.value) for msgs in batches.values() for m in msgs)
    finally:
        await consumer.stop()
    return out


async def committed_everything(bootstrap: str, group: str, topic: str) -> bool:
    committed, end = await group_progress(bootstrap, group, topic)
    return end is not None and committed == end


async def group_progress(bootstrap: str, group: str, topic: str) -> tuple[int, int | None]:
    """(offsets the group committed, end offsets), summed over the topic's partitions;
    end is None while the topic has no partitions."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in parts]
        if not tps:
            return 0, None
        ends = await consumer.end_offsets(tps)
        committed = [await consumer.committed(tp) or 0 for tp in tps]
        return sum(committed), sum(ends.values())
    finally:
        await consumer.stop()


async def wait_committed(bootstrap: str, group: str, topic: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await committed_everything(bootstrap, group, topic):
            return
        await asyncio.sleep(0.3)
    import pytest

    pytest.fail(f"group {group} did not commit every offset of {topic} within {timeout} s")


def scrape(port: int) -> dict[str, float]:
    with _DIRECT.open(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        body = resp.read().decode()
    samples = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            samples[key] = float(value)
    return samples
