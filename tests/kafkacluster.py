"""A real 3-node Kafka cluster for fault tests: ``deploy/kafka/kafka-cluster.sh`` (KRaft, every
node broker + controller, replication factor 3, min.insync.replicas=2) on loopback and free
ports, one per test, because a fault test breaks it. Missing Java or Maven fail the test with
the fix; it never skips.

Use the fixture ``kafka_cluster`` (import it into the test module: ``kafka_cluster =
kafkacluster.kafka_cluster``); ``Cluster.kill(node)`` SIGKILLs one node, and
``Cluster.active_controller()`` says which node leads the metadata quorum.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.testenv import KAFKA_SH, kafka_jars

CLUSTER_SH = KAFKA_SH.parent / "kafka-cluster.sh"


@dataclass(frozen=True)
class Node:
    node_id: int
    port: int
    run_dir: Path

    def pid(self) -> int | None:
        try:
            return int((self.run_dir / "kafka.pid").read_text())
        except (OSError, ValueError):
            return None

    def alive(self) -> bool:
        pid = self.pid()
        if pid is None:
            return False
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        return stat.rsplit(") ", 1)[1][:1] != "Z"


@dataclass
class Cluster:
    bootstrap: str  # every node, as a client is configured
    nodes: dict[int, Node]
    start_s: float  # wall time of kafka-cluster.sh start

    def active_controller(self) -> int:
        """The metadata quorum's leader, from the newest election any live node recorded
        (``quorum-state`` in its ``__cluster_metadata-0`` directory)."""
        best = (-1, -1)  # (epoch, leader)
        for node in self.nodes.values():
            if not node.alive():
                continue
            state = node.run_dir / "data" / "__cluster_metadata-0" / "quorum-state"
            try:
                doc = json.loads(state.read_text())
            except (OSError, ValueError):
                continue
            if doc.get("leaderId", -1) >= 0:
                best = max(best, (int(doc["leaderEpoch"]), int(doc["leaderId"])))
        if best[1] < 0:
            pytest.fail("no live node knows the active controller (quorum-state)")
        return best[1]

    def kill(self, node_id: int) -> float:
        """SIGKILL one node (no controlled shutdown, nothing flushed); return when it is
        gone, with the monotonic time of the kill."""
        node = self.nodes[node_id]
        pid = node.pid()
        assert pid is not None and node.alive(), f"node {node_id} is not running"
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        deadline = killed + 10
        while node.alive():
            if time.monotonic() > deadline:
                pytest.fail(f"node {node_id} (pid {pid}) survived SIGKILL for 10 s")
            time.sleep(0.01)
        return killed


@pytest.fixture
def kafka_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    run_dir = tmp_path_factory.mktemp("kafka-cluster")
    env = {**os.environ, "KAFKA_CLUSTER_DIR": str(run_dir), "KAFKA_STOP_TIMEOUT": "10"}
    kafka_jars(env)
    started = time.monotonic()
    proc = subprocess.run(
        ["bash", str(CLUSTER_SH), "start"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    took = time.monotonic() - started
    try:
        if proc.returncode != 0:
            pytest.fail(f"Kafka cluster did not start (exit {proc.returncode}):\n{proc.stderr}")
        nodes = {}
        for line in (run_dir / "nodes").read_text().splitlines():
            node_id, port, _controller_port, node_dir = line.split()
            nodes[int(node_id)] = Node(int(node_id), int(port), Path(node_dir))
        cluster = Cluster(proc.stdout.strip().splitlines()[-1], nodes, took)
        sys.stderr.write(f"\nkafka cluster {cluster.bootstrap} ready in {took:.1f}s\n")
        yield cluster
    finally:
        subprocess.run(["bash", str(CLUSTER_SH), "stop"], env=env, timeout=120, check=False)
