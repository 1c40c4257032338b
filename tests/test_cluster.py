"""Cluster fault: a broker SIGKILLed while the sensor publishes loses nothing.

A real 3-node KRaft cluster (``deploy/kafka/kafka-cluster.sh``: RF 3, min.insync.replicas=2)
and the real sensor (``kaspwatch sense --pcap -``: the product's idempotent ``acks=all``
producer) publishing a steady stream of hits. Mid-stream the node that leads every
partition of the hits topic is SIGKILLed; by default it is also the active controller, the
worst single node to lose: the survivors must first elect a new metadata leader, which then
fences the dead broker (``broker.session.timeout.ms``) and moves its partition leadership.
The stream goes on through the failover; afterwards every event id the sensor saw is on the
topic exactly once, and the sensor reports no publish failure.

``soak/cluster-fault.sh`` runs the same test longer, faster and against both kinds of
victim (``KASPWATCH_FAULT_*`` below) and prints the counts.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import pytest

from tests import cliprocs, kafkacluster
from tests.cliprocs import Procs, cli_env, wait_for
from tests.hitstream import HitStream, scan_ids
from tests.kafkacluster import Cluster
from tests.kafkautil import create_topics, partitions, read_topic, scrape, topic_config
from tests.testenv import KASPWATCH, free_port

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.timeout(int(os.environ.get("KASPWATCH_FAULT_TIMEOUT", "150"))),
]

procs = cliprocs.procs  # fixtures
kafka_cluster = kafkacluster.kafka_cluster

SENSOR = "cluster-fault"
RATE = int(os.environ.get("KASPWATCH_FAULT_RATE", "1000"))  # hits per second
BEFORE_S = float(os.environ.get("KASPWATCH_FAULT_BEFORE_S", "2"))  # published before the kill
AFTER_S = float(os.environ.get("KASPWATCH_FAULT_AFTER_S", "2"))  # streamed after the failover
VICTIMS = os.environ.get("KASPWATCH_FAULT_VICTIMS", "leader+controller").split(",")
PUBLISHED = "kaspwatch_sensor_published_total"


class Sampler(threading.Thread):
    """Scrapes the sensor's published counter every 20 ms: when acknowledgements stalled."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.samples: list[tuple[float, float]] = []  # (monotonic time, published)
        self.halt = threading.Event()

    @property
    def published(self) -> float:
        return self.samples[-1][1] if self.samples else 0.0

    def run(self) -> None:
        while not self.halt.is_set():
            with suppress(OSError, ValueError):
                value = scrape(self.port).get(PUBLISHED)
                if value is not None:
                    self.samples.append((time.monotonic(), value))
            self.halt.wait(0.02)

    def longest_stall(self, since: float) -> float:
        """The longest time after ``since`` in which no acknowledgement arrived."""
        changes = [since]
        changes += [t for (t, v), (_, w) in pairwise_back(self.samples) if v > w and t > since]
        return max((b - a for a, b in itertools.pairwise(changes)), default=0.0)


def pairwise_back(
    samples: list[tuple[float, float]],
) -> Iterator[tuple[tuple[float, float], tuple[float, float]]]:
    """(sample, the one before it) for each sample after the first."""
    return ((b, a) for a, b in itertools.pairwise(samples))


@pytest.mark.parametrize("victim_role", VICTIMS)
async def test_broker_killed_mid_stream_loses_and_duplicates_nothing(
    kafka_cluster: Cluster, procs: Procs, tmp_path: Path, victim_role: str
) -> None:
    cluster = kafka_cluster
    controller = cluster.active_controller()
    if victim_role == "leader+controller":
        victim = controller
    elif victim_role == "leader":
        victim = min(n for n in cluster.nodes if n != controller)
    else:
        pytest.fail(f"KASPWATCH_FAULT_VICTIMS: unknown role {victim_role!r}")
    others = sorted(n for n in cluster.nodes if n != victim)
    run = uuid.uuid4().hex[:8]
    topic, beats = f"hits-cluster-{run}", f"beats-cluster-{run}"
    # every partition's preferred leader is the victim; the others follow
    await create_topics(cluster.bootstrap, (topic, 3), (beats, 1), replicas=[victim, *others])
    before = await partitions(cluster.bootstrap, topic)
    assert [p["leader"] for p in before] == [victim] * 3, before
    assert all(sorted(p["isr"]) == sorted(cluster.nodes) for p in before), before
    config = await topic_config(cluster.bootstrap, topic)
    assert config["min.insync.replicas"] == "2", config
    assert config["unclean.leader.election.enable"] == "false", config

    port = free_port()
    sense = procs.start(
        "sense",
        [
            *KASPWATCH, "sense", "--pcap", "-", "--bus", f"kafka://{cluster.bootstrap}",
            "--topic", topic, "--heartbeats-topic", beats, "--sensor", SENSOR,
            "--metrics-addr", f"127.0.0.1:{port}",
        ],
        stdin=subprocess.PIPE,
    )  # fmt: skip
    assert sense.popen.stdin is not None
    stream = HitStream(sense.popen.stdin, tmp_path / "stream.pcap", RATE)
    sampler = Sampler(port)
    sampler.start()
    stream.start()
    try:
        await wait_for(
            lambda: sampler.published >= RATE * BEFORE_S,
            60,
            "hits published before the kill",
            sense,
        )
        killed = cluster.kill(victim)
        written_at_kill = stream.written
        # production continues: hits written after the kill get acknowledged
        await wait_for(
            lambda: sampler.published > written_at_kill, 60, "publishing after the kill", sense
        )
        resumed = time.monotonic()
        await wait_for(lambda: time.monotonic() - resumed >= AFTER_S, AFTER_S + 1, "more hits")
        written = stream.finish()
        rc = await _wait_exit(sense, 60)
    finally:
        stream.finish()
        sampler.halt.set()
    err = sense.stderr()
    assert rc == 0, err
    stats = re.search(r"(\d+) hits, (\d+) published, (\d+) publish failures", err)
    assert stats is not None, err
    hits, published, failures = map(int, stats.groups())

    truth = scan_ids(tmp_path / "stream.pcap", SENSOR, cli_env(tmp_path))
    records = await read_topic(cluster.bootstrap, topic, len(truth), 60 + len(truth) / 5000)
    ids = Counter(json.loads(value)["event_id"] for _, value in records)
    after = await partitions(cluster.bootstrap, topic)
    duplicates = sum(n - 1 for n in ids.values())
    pause = sampler.longest_stall(killed)
    report = (
        f"killed node {victim} ({victim_role}; active controller was {controller}); "
        f"cluster start {cluster.start_s:.1f}s; {written} frames streamed at {RATE}/s, "
        f"{written_at_kill} before the kill; sensor: {hits} hits, {published} published, "
        f"{failures} publish failures; topic: {len(records)} records, {len(ids)} distinct "
        f"event ids, {duplicates} raw duplicates, {len(set(truth) - set(ids))} missing; "
        f"failover pause (longest acknowledgement stall after the kill) {pause:.2f}s; "
        f"leaders after {[p['leader'] for p in after]}, ISR after {[sorted(p['isr']) for p in after]}"
    )
    sys.stderr.write(f"\ncluster fault: {report}\n")

    assert len(truth) == written == len(set(truth)), report  # one hit per frame, unique ids
    assert (hits, published, failures) == (written, written, 0), report  # the sensor: no loss
    assert set(ids) == set(truth), report  # every hit arrived (after dedup) ...
    assert duplicates == 0, report  # ... and once: the idempotent producer's retries
    assert all(p["leader"] in others and sorted(p["isr"]) == others for p in after), report


async def _wait_exit(proc: cliprocs.Proc, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while proc.popen.poll() is None:
        if time.monotonic() > deadline:
            pytest.fail(f"{proc.name} did not exit {timeout} s after its input ended")
        await asyncio.sleep(0.1)
    return proc.popen.returncode
