"""Topics the product creates itself, and the consumer group's settings as options.

On the real broker (a lone one: ``kafka_bootstrap``; the 3-node cluster once, for
replication "auto"): a command creates the topics it reads and writes with the partitions
and replication asked (the identity topic compacted); an existing topic is left as it is,
with one WARNING line when it has fewer partitions than asked; a value the broker refuses
is one line and exit 2. ``--session-timeout`` and ``--group-instance-id`` reach the
consumer: of two members frozen with SIGSTOP, the one with a short session timeout is
expelled and the one with a long one stays past the default's expiry.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from kaspwatch.bus import GroupSettings
from kaspwatch.bus.topics import TopicSpec, ensure_topics
from kaspwatch.cli.alerting import state_store_settings
from tests import cliprocs, kafkacluster
from tests.cliprocs import Procs, cli_env
from tests.kafkacluster import Cluster
from tests.kafkautil import create_topics, group_members, partitions, topic_config
from tests.testenv import KASPWATCH

procs = cliprocs.procs  # fixtures
kafka_cluster = kafkacluster.kafka_cluster


def kw(tmp: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*KASPWATCH, *args], capture_output=True, text=True, timeout=timeout, cwd=tmp,
        env=cli_env(tmp),
    )  # fmt: skip


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if " INFO " not in line]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("kaspwatch: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def names() -> dict[str, str]:
    run = uuid.uuid4().hex[:10]
    return {k: f"{k}-{run}" for k in ("hits", "ident", "group")}


def store_args(
    tmp: Path, bootstrap: str, n: dict[str, str], *more: str, db: str = "store.sqlite"
) -> list[str]:
    """``db``: the SQLite file; two members started together each get their own (one SQLite
    file is one process's store: a shared store between instances is PostgreSQL's job)."""
    return [
        "store", "--bus", f"kafka://{bootstrap}", "--db", f"sqlite:///{tmp / db}",
        "--topic", n["hits"], "--identity-topic", n["ident"], "--group", n["group"], *more,
    ]  # fmt: skip


# ---------------------------------------------------------------- bad values: one line, exit 2


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--partitions", "0"], ["--partitions", "'0'", "1 or more"]),
        (["--partitions", "many"], ["--partitions", "'many'"]),
        (["--replication", "0"], ["--replication", "auto"]),
        (["--replication", "three"], ["--replication", "'three'", "auto"]),
        (["--session-timeout", "-1"], ["--session-timeout", "positive number of seconds"]),
        (["--max-poll-interval", "soon"], ["--max-poll-interval", "'soon'"]),
        (
            ["--session-timeout", "6", "--group-heartbeat-interval", "6"],
            ["--group-heartbeat-interval", "shorter than the session timeout (6 s)"],
        ),
    ],
)
def test_bad_topic_and_group_values_are_one_line(
    tmp_path: Path, args: list[str], words: list[str]
) -> None:
    line = one_error_line(kw(tmp_path, "store", "--bus", "memory://", *args))
    for word in words:
        assert word in line, line
    assert not (tmp_path / "store.sqlite").exists()


def test_config_file_topics_and_group_values_are_checked_with_their_line(tmp_path: Path) -> None:
    cfg = tmp_path / "kaspwatch.yaml"
    cfg.write_text("bus: memory://\ntopics:\n  partitions: 12\n  replication: none\n")
    line = one_error_line(kw(tmp_path, "--config", str(cfg), "metrics", "--listen", "127.0.0.1:1"))
    assert f"{cfg}:4: topics.replication 'none'" in line, line
    cfg.write_text("bus: memory://\ngroup:\n  session: 6\n")
    line = one_error_line(kw(tmp_path, "--config", str(cfg), "alerts"))
    assert f"{cfg}:3:" in line and "'session'" in line and "session_timeout" in line, line


def test_config_file_alerts_state_store_is_read_and_checked(tmp_path: Path) -> None:
    """``alerts: state_store: changelog`` reaches the command: on the memory bus it is
    refused as ``--state-store changelog`` is (no broker needed to prove it was read); a
    bad value is one line with its file:line; the flag overrides the file."""
    cfg = tmp_path / "kaspwatch.yaml"
    cfg.write_text("bus: memory://\nalerts:\n  state_store: changelog\n")
    line = one_error_line(kw(tmp_path, "--config", str(cfg), "alerts"))
    assert "the alerts state changelog needs a kafka:// bus" in line, line
    cfg.write_text("bus: memory://\nalerts:\n  state_topic: t\n  state_store: kafka\n")
    line = one_error_line(kw(tmp_path, "--config", str(cfg), "alerts"))
    assert f"{cfg}:4: alerts.state_store 'kafka': give sqlite or changelog" in line, line
    cfg.write_text("bus: memory://\nalerts:\n  state_topic: ''\n")
    line = one_error_line(kw(tmp_path, "--config", str(cfg), "alerts"))
    assert f"{cfg}:3: alerts.state_topic ''" in line, line
    cfg.write_text("bus: memory://\nalerts:\n  state: sqlite\n")
    line = one_error_line(kw(tmp_path, "--config", str(cfg), "alerts"))
    assert f"{cfg}:3:" in line and "'state'" in line and "state_store" in line, line
    section = {
        "state_store": ("changelog", "f:3: alerts.state_store"),
        "state_topic": ("site.alerts-state", "f:4: alerts.state_topic"),
    }
    flags = argparse.Namespace(state_store="sqlite", state_topic=None)
    state_store_settings(flags, section)
    assert (flags.state_store, flags.state_topic) == ("sqlite", "site.alerts-state")
    unset = argparse.Namespace(state_store=None, state_topic=None)
    state_store_settings(unset, {})
    assert (unset.state_store, unset.state_topic) == ("sqlite", "kaspwatch.alerts-state.v1")


def test_group_settings_default_to_aiokafkas_and_scale_the_heartbeat() -> None:
    assert GroupSettings().consumer_kwargs() == {
        "session_timeout_ms": 10_000,
        "heartbeat_interval_ms": 3_000,
        "max_poll_interval_ms": 300_000,
        "group_instance_id": None,
    }
    short = GroupSettings(
        session_timeout_s=6, rebalance_timeout_s=20, instance_id="a"
    ).consumer_kwargs()
    assert short["heartbeat_interval_ms"] == 2_000  # a third of the session: 3 beats a session
    assert short["rebalance_timeout_ms"] == 20_000 and short["group_instance_id"] == "a"


# ---------------------------------------------------------------- topics on the real broker


def test_store_creates_its_topics_with_the_partitions_asked_identity_compacted(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    n = names()
    proc = kw(tmp_path, *store_args(tmp_path, kafka_bootstrap, n, "--partitions", "5",
                                    "--until-caught-up"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    hits = asyncio.run(partitions(kafka_bootstrap, n["hits"]))
    ident = asyncio.run(partitions(kafka_bootstrap, n["ident"]))
    assert len(hits) == len(ident) == 5
    assert all(len(p["replicas"]) == 1 for p in hits + ident)  # auto on a lone broker: 1
    assert asyncio.run(topic_config(kafka_bootstrap, n["ident"]))["cleanup.policy"] == "compact"
    assert asyncio.run(topic_config(kafka_bootstrap, n["hits"]))["cleanup.policy"] == "delete"
    assert f"created topic {n['hits']} (5 partitions, replication 1)" in proc.stderr
    assert "ERROR" not in proc.stderr, proc.stderr  # no fetch from a partition not led yet


def test_sensor_creates_hits_heartbeats_and_identity_topics(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    from tests.testenv import SAMPLE

    run = uuid.uuid4().hex[:10]
    topics = {k: f"{k}-{run}" for k in ("hits", "beats", "ident")}
    proc = kw(
        tmp_path, "sense", "--pcap", str(SAMPLE), "--bus", f"kafka://{kafka_bootstrap}",
        "--sensor", "topics", "--topic", topics["hits"], "--heartbeats-topic", topics["beats"],
        "--identity-topic", topics["ident"], "--partitions", "3",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    for name in topics.values():
        assert len(asyncio.run(partitions(kafka_bootstrap, name))) == 3, name
    assert (
        asyncio.run(topic_config(kafka_bootstrap, topics["ident"]))["cleanup.policy"] == "compact"
    )


def test_an_existing_topic_is_left_as_it_is_with_one_line(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    n = names()
    asyncio.run(create_topics(kafka_bootstrap, (n["hits"], 2), (n["ident"], 12)))
    proc = kw(tmp_path, *store_args(tmp_path, kafka_bootstrap, n, "--until-caught-up"))
    assert proc.returncode == 0, proc.stderr
    assert len(asyncio.run(partitions(kafka_bootstrap, n["hits"]))) == 2
    warned = [line for line in proc.stderr.splitlines() if " WARNING " in line]
    said = [line for line in warned if n["hits"] in line]
    assert len(said) == 1, proc.stderr
    assert "exists with 2 partitions, fewer than the 12 asked: left as is" in said[0]
    assert not [line for line in warned if n["ident"] in line], proc.stderr  # 12 as asked
    assert "created topic" not in proc.stderr, proc.stderr


def test_replication_beyond_the_brokers_is_one_line(kafka_bootstrap: str, tmp_path: Path) -> None:
    n = names()
    proc = kw(tmp_path, *store_args(tmp_path, kafka_bootstrap, n, "--replication", "3"))
    line = one_error_line(proc)
    assert "replication 3, 1 broker" in line and "--replication auto" in line, line


def test_a_session_timeout_the_broker_refuses_is_one_line(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    n = names()
    proc = kw(tmp_path, *store_args(tmp_path, kafka_bootstrap, n, "--session-timeout", "1"))
    line = one_error_line(proc)
    assert "session timeout 1 s" in line and "accepts 6 to 1800 s" in line, line


async def test_topics_already_created_by_another_instance_are_not_an_error(
    kafka_bootstrap: str,
) -> None:
    n = names()
    specs = [TopicSpec(n["hits"], 4)]
    first, second = await asyncio.gather(
        ensure_topics(kafka_bootstrap, specs), ensure_topics(kafka_bootstrap, specs)
    )
    assert {first[n["hits"]], second[n["hits"]]} == {"created", "exists"}
    assert len(await partitions(kafka_bootstrap, n["hits"])) == 4


@pytest.mark.timeout(240)
async def test_replication_auto_is_three_on_a_cluster(kafka_cluster: Cluster) -> None:
    n = names()
    done = await ensure_topics(kafka_cluster.bootstrap, [TopicSpec(n["hits"], 6)])
    assert done == {n["hits"]: "created"}
    parts = await partitions(kafka_cluster.bootstrap, n["hits"])
    assert len(parts) == 6 and all(len(p["replicas"]) == 3 for p in parts), parts


# ---------------------------------------------------------------- group settings reach the consumer


async def test_session_timeout_and_instance_id_reach_the_consumer(
    kafka_bootstrap: str, procs: Procs, tmp_path: Path
) -> None:
    """Two members of one group, frozen together with SIGSTOP: ``short`` (static member,
    --session-timeout 6) is expelled; ``long`` (--session-timeout 45) is still a member
    well past the 10 s default's expiry."""
    n = names()
    short = procs.start(
        "short",
        [*KASPWATCH, *store_args(tmp_path, kafka_bootstrap, n, "--partitions", "4",
                                 "--session-timeout", "6", "--group-instance-id", "short",
                                     db="short.sqlite")],
    )  # fmt: skip
    long = procs.start(
        "long",
        [
            *KASPWATCH,
            *store_args(tmp_path, kafka_bootstrap, n, "--session-timeout", "45", db="long.sqlite"),
        ],
    )
    members: dict[str, set[tuple[str, int]]] = {}
    deadline = time.monotonic() + 60
    while not (len(members) == 2 and all(members.values())):  # both joined, both assigned
        assert time.monotonic() < deadline, (members, short.stderr(), long.stderr())
        assert short.popen.poll() is None and long.popen.poll() is None
        await asyncio.sleep(0.3)
        members = await group_members(kafka_bootstrap, n["group"])
    assert sum(1 for m in members if m.startswith("short-")) == 1, members  # static: its name
    for p in (short, long):
        p.popen.send_signal(signal.SIGSTOP)
    frozen = time.monotonic()
    try:
        while any(m.startswith("short-") for m in members):
            assert time.monotonic() < frozen + 40, members
            await asyncio.sleep(0.3)
            members = await group_members(kafka_bootstrap, n["group"])
        assert len(members) == 1, members  # short expelled, long still in
        # past the default session (10 s) plus a heartbeat interval and slack: still there
        await asyncio.sleep(max(0.0, frozen + 16 - time.monotonic()))
        members = await group_members(kafka_bootstrap, n["group"])
        assert len(members) == 1 and not any(m.startswith("short-") for m in members), members
    finally:
        for p in (short, long):
            p.popen.send_signal(signal.SIGKILL)
            p.popen.send_signal(signal.SIGCONT)
            p.popen.wait(10)
