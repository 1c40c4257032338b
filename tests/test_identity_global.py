"""Every ``kaspwatch alerts`` instance of a group reads the whole identity topic (Kafka
Streams' GlobalKTable), so every alert names its machine whichever instance raised it.

Two instances share the group with ``--state-store changelog``; a 6-partition identity
topic holds a DHCP record for every host, and each host's hits are on another partition
of the 6-partition hits topic than its identity record (an identity topic is not
co-partitioned with the hits by contract: other sources write it, its partition count is
its own, and which partitions of two topics an instance gets together is the assignor's
business). Before the identity topic was read outside the group, an instance knew only
the identities of the partitions the group gave it, and these alerts named no machine.

Phase one: identities written before the instances start (the restore); phase two:
identities written while they run (the follow), then those hosts' hits.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions

from kaspwatch.event import format_ts
from kaspwatch.identity import Identity
from sensor.rules.match import Matcher
from tests import cliprocs
from tests.cliprocs import Proc, Procs, wait_for
from tests.factories import EPOCH, hit
from tests.kafkautil import (
    committed_everything,
    create_topics,
    producer,
    scrape,
    topic_config,
)
from tests.testenv import KASPWATCH, free_port

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]

procs = cliprocs.procs  # fixture

PARTITIONS = 6
HOSTS = 48  # per phase: 8 on each hits partition


def address(phase: int, h: int) -> str:
    return f"10.72.{phase}.{h + 1}"


def machine(addr: str) -> str:
    return "WS-" + addr.replace(".", "-")


async def publish_identities(bootstrap: str, topic: str, phase: int) -> None:
    """A DHCP record per host, on the partition after its hits' one."""
    async with producer(bootstrap) as prod:
        for h in range(HOSTS):
            addr = address(phase, h)
            mac = f"02:00:00:00:{phase:02x}:{h:02x}"
            ident = Identity(addr, format_ts(int((EPOCH - 60) * 1e9)), "s", "dhcp", mac,
                             machine(addr))  # fmt: skip
            part = (h + 1) % PARTITIONS
            await prod.send(topic, ident.to_json(), key=addr.encode(), partition=part)
        await prod.flush()


async def publish_hits(bootstrap: str, topic: str, phase: int) -> None:
    """One hit per host (a ``first_contact`` alert each), host h on partition h % 6."""
    async with producer(bootstrap) as prod:
        for h in range(HOSTS):
            ev = hit(address(phase, h), phase * 10 + h / 100)
            await prod.send(topic, ev.to_json(), key=ev.host.encode(), partition=h % PARTITIONS)
        await prod.flush()


def alerts_of(proc: Proc) -> list[dict[str, object]]:
    return [json.loads(line) for line in proc.stdout().splitlines() if line.startswith("{")]


async def wait_committed(bootstrap: str, group: str, topic: str, live: list[Proc]) -> None:
    for _ in range(200):
        if await committed_everything(bootstrap, group, topic):
            return
        for p in live:
            if p.popen.poll() is not None:
                pytest.fail(f"{p.name} exited {p.popen.returncode}:\n{p.stderr()}")
        await asyncio.sleep(0.2)
    pytest.fail(f"group {group} did not commit all of {topic}")


def check_named(instances: list[Proc], hosts: set[str], why: str) -> None:
    """Every alert of these hosts names its machine, and both instances raised some."""
    alerts = {p.name: [a for a in alerts_of(p) if a["host"] in hosts] for p in instances}
    raised = sorted(str(a["host"]) for found in alerts.values() for a in found)
    assert raised == sorted(hosts), f"{why}: alerts for {len(raised)} of {len(hosts)} hosts"
    unnamed = {
        name: sorted(str(a["host"]) for a in found if a.get("host_name") != machine(str(a["host"])))
        for name, found in alerts.items()
    }
    report = ", ".join(
        f"{name}: {len(alerts[name])} alerts, {len(unnamed[name])} naming no machine"
        for name in alerts
    )
    assert all(alerts.values()), f"{why}: one instance raised nothing ({report})"
    assert not any(unnamed.values()), f"{why}: {report}; e.g. {unnamed}"


async def test_every_instance_names_machines_of_every_identity_partition(
    kafka_bootstrap: str, procs: Procs, tmp_path: Path, matcher: Matcher
) -> None:
    run = uuid.uuid4().hex[:10]
    names = {k: f"{k}-{run}" for k in ("hits", "alerts", "dlq", "identity", "group", "state")}
    await create_topics(
        kafka_bootstrap, (names["hits"], PARTITIONS), (names["alerts"], PARTITIONS),
        (names["dlq"], 1),
    )  # fmt: skip
    await create_topics(
        kafka_bootstrap, (names["identity"], PARTITIONS), configs={"cleanup.policy": "compact"}
    )
    await publish_identities(kafka_bootstrap, names["identity"], 0)  # before: restored

    ports = {n: free_port() for n in ("a", "b")}

    def cmd(n: str) -> list[str]:
        return [
            *KASPWATCH, "alerts", "--bus", f"kafka://{kafka_bootstrap}",
            "--topic", names["hits"], "--identity-topic", names["identity"],
            "--alerts-topic", names["alerts"], "--dead-letter-topic", names["dlq"],
            "--group", names["group"], "--state-store", "changelog",
            "--state-topic", names["state"], "--state", str(tmp_path / f"{n}.sqlite"),
            "--group-wait", "0", "--metrics-addr", f"127.0.0.1:{ports[n]}",
        ]  # fmt: skip

    a = procs.start("alerts-a", cmd("a"))
    b = procs.start("alerts-b", cmd("b"))
    for p in (a, b):
        await wait_for(lambda p=p: "alerts state: " in p.err.read_text(), 40,
                       f"{p.name} to take partitions", p)  # fmt: skip
    await publish_hits(kafka_bootstrap, names["hits"], 0)
    await wait_committed(kafka_bootstrap, names["group"], names["hits"], [a, b])
    check_named([a, b], {address(0, h) for h in range(HOSTS)}, "identities restored at start")
    for p in (a, b):
        err = p.err.read_text()
        found = re.search(rf"{names['identity']}: (\d+) records restored from 6 partitions", err)
        assert found and int(found.group(1)) == HOSTS, err[-2000:]

    await publish_identities(kafka_bootstrap, names["identity"], 1)  # while running: followed

    def holds_all(port: int) -> bool:
        try:
            return scrape(port).get("kaspwatch_identity_addresses") == 2 * HOSTS
        except OSError:
            return False

    for p, port in ((a, ports["a"]), (b, ports["b"])):
        await wait_for(lambda port=port: holds_all(port), 30, f"{p.name} to read them", p)
    await publish_hits(kafka_bootstrap, names["hits"], 1)
    await wait_committed(kafka_bootstrap, names["group"], names["hits"], [a, b])
    check_named([a, b], {address(1, h) for h in range(HOSTS)}, "identities followed")
    for p in (a, b):
        assert Procs.terminate(p) == 0, p.stderr()
        assert "Traceback" not in p.err.read_text(), p.stderr()
    assert (await topic_config(kafka_bootstrap, names["identity"]))["cleanup.policy"] == "compact"


async def test_identity_topic_created_later_or_grown_is_read_from_its_beginning(
    kafka_bootstrap: str,
) -> None:
    """A consumer started before anything created the identity topic (the broker refused
    it the creation) reads it once it exists; a record that is not an identity is a dead
    letter, a tombstone nothing, the others fill the book."""
    from consumers.identity import IdentityBook, apply_identities
    from kaspwatch.bus import Record
    from kaspwatch.bus.globaltable import KafkaGlobalTopic

    topic = f"identity-late-{uuid.uuid4().hex[:10]}"
    book, dead = IdentityBook(), []

    async def dead_letter(rec: Record, reason: str) -> None:
        dead.append((rec.offset, reason))

    apply = apply_identities(book, dead_letter)
    table = KafkaGlobalTopic(kafka_bootstrap, topic, "test", growth_check_s=0.5)
    try:
        assert await table.start() == 0
        assert await table.restore(apply) == (0, True)
        assert await table.fetched() == []
        await create_topics(kafka_bootstrap, (topic, 2), configs={"cleanup.policy": "compact"})
        ident = Identity("10.73.0.1", format_ts(int(EPOCH * 1e9)), "s", "dhcp", "", "WS-LATE")
        async with producer(kafka_bootstrap) as prod:
            await prod.send(topic, ident.to_json(), key=b"10.73.0.1", partition=1)
            await prod.send(topic, b"{not json", key=b"10.73.0.2", partition=0)
            await prod.send(topic, None, key=b"10.73.0.3", partition=0)  # a tombstone
            await prod.flush()
        for _ in range(100):
            if news := await table.fetched():
                await apply(news)
            if len(book) and dead:
                break
            await asyncio.sleep(0.1)
        found = book.at("10.73.0.1", format_ts(int((EPOCH + 1) * 1e9)))
        assert found is not None and found.hostname == "WS-LATE"
        assert len(book) == 1 and [offset for offset, _ in dead] == [0], dead
        # a partition added: read from its beginning, the others not read again
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            await admin.create_partitions({topic: NewPartitions(3)})
        finally:
            await admin.close()
        added = Identity("10.73.0.4", format_ts(int(EPOCH * 1e9)), "s", "dhcp", "", "WS-ADDED")
        async with producer(kafka_bootstrap) as prod:
            await prod.send(topic, added.to_json(), key=b"10.73.0.4", partition=2)
        for _ in range(100):
            if news := await table.fetched():
                await apply(news)
            if len(book) == 2:
                break
            await asyncio.sleep(0.1)
        assert sorted(book.history) == ["10.73.0.1", "10.73.0.4"], book.history
        assert len(book.history["10.73.0.1"]) == 1 and len(dead) == 1, (book.history, dead)
    finally:
        await table.stop()
