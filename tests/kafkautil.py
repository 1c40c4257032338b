"""Helpers for tests on the real Kafka broker: topics, producing, reading back, commits,
/metrics.

bench/ scripts use them too, so pytest is imported only where a test fails."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import GroupCoordinatorNotAvailableError, TopicAlreadyExistsError

from kaspwatch import event as event_module
from kaspwatch import identity as identity_module
from tests.testenv import KAFKA_SH, free_port, kafka_jars

_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy


async def create_topics(
    bootstrap: str,
    *specs: tuple[str, int],
    replicas: list[int] | None = None,
    configs: dict[str, str] | None = None,
) -> None:
    """Create the topics (with these topic ``configs``) and wait until every partition has a
    leader. ``replicas`` (broker ids, the preferred leader first) places every partition on
    those brokers; without it, one replica."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        for name, parts in specs:
            topic = (
                NewTopic(
                    name,
                    -1,
                    -1,
                    replica_assignments={p: replicas for p in range(parts)},
                    topic_configs=configs or {},
                )
                if replicas
                else NewTopic(name, parts, replication_factor=1, topic_configs=configs or {})
            )
            with suppress(TopicAlreadyExistsError):
                await admin.create_topics([topic])
        names = [name for name, _ in specs]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            described = await admin.describe_topics(names)
            ready = {
                d["topic"]
                for d in described
                if not d["error_code"]
                and d["partitions"]
                and all(
                    p["leader"] >= 0 and len(p["isr"]) == len(replicas or [p["leader"]])
                    for p in d["partitions"]
                )
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


async def committed_offsets(
    bootstrap: str, group: str, topic: str
) -> tuple[dict[int, int], dict[int, int]]:
    """The group's committed offset (0 when none) and the end offset, per partition."""
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
            return {}, {}
        ends = await consumer.end_offsets(tps)
        committed = {tp.partition: await consumer.committed(tp) or 0 for tp in tps}
        return committed, {tp.partition: n for tp, n in ends.items()}
    finally:
        await consumer.stop()


async def committed_everything(bootstrap: str, group: str, topic: str) -> bool:
    committed, ends = await committed_offsets(bootstrap, group, topic)
    return bool(ends) and committed == ends


async def group_progress(bootstrap: str, group: str, topic: str) -> tuple[int, int | None]:
    """(offsets the group committed, end offsets), summed over the topic's partitions;
    end is None while the topic has no partitions."""
    committed, ends = await committed_offsets(bootstrap, group, topic)
    return sum(committed.values()), (sum(ends.values()) if ends else None)


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


async def wait_metrics(
    port: int, ok: Callable[[dict[str, float]], bool], timeout: float = 15
) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    got: dict[str, float] = {}
    while time.monotonic() < deadline:
        with suppress(OSError):
            got = scrape(port)
            if ok(got):
                break
        await asyncio.sleep(0.2)
    return got


async def standard_topics(bootstrap: str, hits_partitions: int) -> dict[str, str]:
    run = uuid.uuid4().hex[:10]
    names = {k: f"{k}-{run}" for k in ("hits", "alerts", "dlq", "group")}
    # Every topic the CLI writes exists up front: a fresh broker auto-creating one while
    # the client produces has been seen to fail sends with NotLeaderForPartition.
    heartbeats = getattr(event_module, "HEARTBEATS_TOPIC", None)
    specs = [(names["hits"], hits_partitions), (names["alerts"], 1), (names["dlq"], 1)]
    await create_topics(bootstrap, *specs, *([(heartbeats, 1)] if heartbeats else []))
    identity = getattr(identity_module, "IDENTITY_TOPIC", None)
    if identity:  # compacted, as deployed: the last record per address counts
        await create_topics(bootstrap, (identity, 1), configs={"cleanup.policy": "compact"})
    return names


@asynccontextmanager
async def producer(bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    prod = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await prod.start()
    try:
        yield prod
    finally:
        await prod.stop()


async def produce(
    bootstrap: str, topic: str, docs: list[dict[str, Any]]
) -> dict[str, tuple[int, int]]:
    """Publish keyed by host; where each event landed: event_id -> (partition, offset)."""
    async with producer(bootstrap) as prod:
        futures = [
            await prod.send(topic, json.dumps(d).encode(), key=d["host"].encode()) for d in docs
        ]
        done = await asyncio.gather(*futures)
    return {d["event_id"]: (md.partition, md.offset) for d, md in zip(docs, done, strict=True)}


async def partitions(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    """Each partition of ``topic`` as the cluster describes it now: ``partition``,
    ``leader``, ``replicas``, ``isr`` (broker ids)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
        return sorted(described["partitions"], key=lambda p: int(p["partition"]))
    finally:
        await admin.close()


async def topic_config(bootstrap: str, topic: str) -> dict[str, str]:
    """The topic's effective configuration (cluster defaults included)."""
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (resp,) = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        (resource,) = resp.to_object()["resources"]
        return {c["config_names"]: c["config_value"] for c in resource["config_entries"]}
    finally:
        await admin.close()


class LocalBroker:
    """A broker of the test's own (``deploy/kafka/kafka-local.sh`` on free ports), for tests
    that stop and restart it; ``start(keep_data=True)`` restarts it with its topics and
    offsets, as after a real outage. The session's ``kafka_bootstrap`` broker is never stopped."""

    def __init__(self, run_dir: Path) -> None:
        self.script = KAFKA_SH
        self.env = {
            **os.environ,
            "KAFKA_RUN_DIR": str(run_dir),
            "KAFKA_PORT": str(free_port()),
            "KAFKA_CONTROLLER_PORT": str(free_port()),
        }
        self.bootstrap = f"127.0.0.1:{self.env['KAFKA_PORT']}"
        kafka_jars(self.env)

    def start(self, keep_data: bool = False) -> None:
        env = {**self.env, "KAFKA_KEEP_DATA": "1" if keep_data else "0"}
        proc = subprocess.run(
            ["bash", str(self.script), "start"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if proc.returncode != 0:
            import pytest

            pytest.fail(f"kafka-local.sh start failed ({proc.returncode}):\n{proc.stderr[-3000:]}")

    def stop(self) -> None:
        subprocess.run(["bash", str(self.script), "stop"], env=self.env, timeout=120, check=False)


async def group_members(bootstrap: str, group: str) -> dict[str, set[tuple[str, int]]]:
    """The members of a consumer group now (member id -> its assigned partitions); a static
    member's id starts with its group instance id."""
    from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        try:
            (answer,) = await admin.describe_consumer_groups([group])
        except GroupCoordinatorNotAvailableError:  # a fresh broker: no member yet, ask again
            return {}
        (described,) = answer.to_object()["groups"]
        out: dict[str, set[tuple[str, int]]] = {}
        for m in described["members"]:
            raw = m["member_assignment"]
            parts = ConsumerProtocolMemberAssignment.decode(raw).partitions() if raw else []
            out[m["member_id"]] = {(tp.topic, tp.partition) for tp in parts}
        return out
    finally:
        await admin.close()
