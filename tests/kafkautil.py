"""Helpers for tests on the real Kafka broker: topics, reading back, commits, /metrics."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import urllib.request
from contextlib import suppress
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy


async def create_topics(bootstrap: str, *specs: tuple[str, int]) -> None:
    """Create the topics and wait until every partition has a leader."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        for name, parts in specs:
            with suppress(TopicAlreadyExistsError):
                await admin.create_topics([NewTopic(name, parts, replication_factor=1)])
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
        ends = await consumer.end_offsets(tps)
        committed = {tp: await consumer.committed(tp) or 0 for tp in tps}
        return bool(tps) and committed == ends
    finally:
        await consumer.stop()


async def wait_committed(bootstrap: str, group: str, topic: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await committed_everything(bootstrap, group, topic):
            return
        await asyncio.sleep(0.3)
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


class LocalBroker:
    """A broker of the test's own (``deploy/kafka/kafka-local.sh`` on free ports), for tests
    that stop and restart it; ``start(keep_data=True)`` restarts it with its topics and
    offsets, as after a real outage. The session's ``kafka_bootstrap`` broker is never stopped."""

    def __init__(self, run_dir: Path) -> None:
        from tests.conftest import KAFKA_SH, free_port

        self.script = KAFKA_SH
        self.env = {
            **os.environ,
            "KAFKA_RUN_DIR": str(run_dir),
            "KAFKA_PORT": str(free_port()),
            "KAFKA_CONTROLLER_PORT": str(free_port()),
        }
        self.bootstrap = f"127.0.0.1:{self.env['KAFKA_PORT']}"

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
            pytest.fail(f"kafka-local.sh start failed ({proc.returncode}):\n{proc.stderr[-3000:]}")

    def stop(self) -> None:
        subprocess.run(["bash", str(self.script), "stop"], env=self.env, timeout=120, check=False)
