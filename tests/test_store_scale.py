"""Store scale-out: ``kaspwatch store`` instances in one consumer group share a
multi-partition hits topic and one PostgreSQL store; one is SIGKILLed mid-stream, another
joins, and the store ends as one instance alone would have made it.

Real broker, real PostgreSQL, the real CLI. The first instance creates the topics (6
partitions: the product's own, not the broker's ``num.partitions=1``); two instances split
them while hits stream in keyed by host; one is killed (its last batch may be in the
database but not committed on Kafka: the survivors read it again and skip it by
``event_id``); a third joins and takes its share. Afterwards every hit is stored once and
every aggregate table (hosts, host_category, host_names, pdns) equals, row for row, what a
single instance rebuilding the topic from the beginning stores.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from consumers.store import open_backend
from tests import cliprocs, hitstream, postgres
from tests.cliprocs import Proc, Procs, cli_env, wait_for
from tests.hitstream import synthetic_hits
from tests.kafkautil import (
    committed_offsets,
    group_members,
    partitions,
    producer,
    wait_committed,
)
from tests.testenv import KASPWATCH

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(240)]

procs = cliprocs.procs  # fixtures
sample_hits = hitstream.sample_hits
postgres_url = postgres.postgres_url

CLIENTS = int(os.environ.get("KASPWATCH_SCALE_CLIENTS", "300"))  # x 20 sample hits
PARTITIONS = 6
PER_TICK = 50  # hits produced every 0.1 s: 8 s before the join, time to catch the kill
AGGREGATES = ("hosts", "host_category", "host_names", "pdns")


def query(url: str, sql: str) -> list[tuple[Any, ...]]:
    b = open_backend(url, readonly=True)
    try:
        return [tuple(r) for r in b.query(sql)]
    finally:
        b.close()


def count_rows(url: str) -> int:
    try:
        return int(query(url, "SELECT count(*) FROM hits")[0][0])
    except Exception:
        return 0


def aggregates(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of each aggregate table, sorted here (PostgreSQL's collation is not
    SQLite's)."""
    return {t: sorted(query(url, f"SELECT * FROM {t}")) for t in AGGREGATES}


async def stream_in(
    bootstrap: str, topic: str, docs: list[dict[str, Any]], landed: dict[str, tuple[int, int]]
) -> None:
    """Publish keyed by host, ``PER_TICK`` every 0.1 s; ``landed``: event id -> (partition,
    offset) of every hit acknowledged so far."""
    async with producer(bootstrap) as prod:
        for i in range(0, len(docs), PER_TICK):
            chunk = docs[i : i + PER_TICK]
            futures = [
                await prod.send(topic, json.dumps(d).encode(), key=d["host"].encode())
                for d in chunk
            ]
            for d, md in zip(chunk, await asyncio.gather(*futures), strict=True):
                landed[d["event_id"]] = (md.partition, md.offset)
            await asyncio.sleep(0.1)


def freeze_when_rows_move(url: str, hosts: list[str], proc: Proc, deadline: float) -> None:
    """SIGSTOP ``proc`` the moment the rows of ``hosts`` (those of its partitions) grow: it
    has just committed a batch to the database (in a thread: the producer goes on)."""
    with psycopg.connect(url, autocommit=True) as conn:

        def rows() -> int:
            got = conn.execute("SELECT count(*) FROM hits WHERE host = ANY(%s)", (hosts,))
            return int(got.fetchone()[0])  # type: ignore[index]

        last = rows()
        while rows() == last and time.monotonic() < deadline:
            pass
    proc.popen.send_signal(signal.SIGSTOP)


async def kill_ahead_of_its_commits(
    url: str,
    proc: Proc,
    bootstrap: str,
    group: str,
    topic: str,
    landed: dict[str, tuple[int, int]],
    hits: list[dict[str, Any]],
    streaming: asyncio.Task[None],
    tries: int = 16,
) -> tuple[int, int]:
    """SIGKILL ``proc`` (group instance ``proc.name``), if it can be caught within ``tries``
    freezes, while hits of its partitions are in the database but its offsets for them are
    not committed: the hardest moment, whose batch the others must read again and skip.
    Gives up (kills it all the same) when ``streaming`` is over. Returns (freezes, hits
    stored ahead of its commits: 0 when not caught)."""
    members = await group_members(bootstrap, group)
    mine = {p for m, parts in members.items() if m.startswith(f"{proc.name}-")
            for t, p in parts if t == topic}  # fmt: skip
    assert mine, members
    ahead = 0
    for n in range(1, tries + 1):
        hosts = sorted({h["host"] for h in hits if landed.get(h["event_id"], (-1,))[0] in mine})
        await asyncio.to_thread(freeze_when_rows_move, url, hosts, proc, time.monotonic() + 5)
        try:
            await asyncio.sleep(0.3)  # a commit request already on the wire lands now
            committed, _ = await committed_offsets(bootstrap, group, topic)
            stored = {r[0] for r in query(url, "SELECT event_id FROM hits")}
            ahead = sum(
                1
                for e in stored
                if e in landed and landed[e][0] in mine and landed[e][1] >= committed[landed[e][0]]
            )
        except BaseException:
            proc.popen.send_signal(signal.SIGCONT)
            raise
        if ahead or n == tries or streaming.done():
            proc.popen.send_signal(signal.SIGKILL)
            proc.popen.wait(10)
            return n, ahead
        proc.popen.send_signal(signal.SIGCONT)
    raise AssertionError("unreachable")


async def members_holding(
    bootstrap: str, group: str, topic: str, alive: list[Proc], timeout: float
) -> dict[str, set[tuple[str, int]]]:
    """Wait until the group's members are exactly the instances ``alive`` (by group instance
    id, their ``name``) and each holds partitions of ``topic``."""
    deadline = time.monotonic() + timeout
    members: dict[str, set[tuple[str, int]]] = {}
    while time.monotonic() < deadline:
        for p in alive:
            if p.popen.poll() is not None:
                pytest.fail(f"{p.name} exited {p.popen.returncode}:\n{p.stderr()}")
        members = await group_members(bootstrap, group)
        if sorted(held(members)) == sorted(p.name for p in alive) and all(held(members).values()):
            return members
        await asyncio.sleep(0.3)
    pytest.fail(f"group {group}: not {[p.name for p in alive]} holding {topic}: {members}")


def held(members: dict[str, set[tuple[str, int]]]) -> dict[str, list[int]]:
    """Partitions of the hits topic (not the identity topic) per instance name."""
    return {
        m.rsplit("-", 5)[0]: sorted(p for t, p in parts if t.startswith("hits-"))
        for m, parts in members.items()
    }


def tally(proc: Proc) -> tuple[int, int]:
    found = re.search(r"store: (\d+) hits stored, (\d+) already stored", proc.stderr())
    assert found is not None, proc.stderr()
    return int(found[1]), int(found[2])


async def test_store_group_scales_out_and_survives_a_kill(
    kafka_bootstrap: str,
    sample_hits: list[dict[str, Any]],
    postgres_url: str,
    procs: Procs,
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    hits = synthetic_hits(sample_hits, CLIENTS)
    ids = {h["event_id"] for h in hits}
    run = uuid.uuid4().hex[:10]
    topic, ident, group = f"hits-{run}", f"ident-{run}", f"store-{run}"
    url = postgres.create_database(postgres_url, f"scale_{run}")
    cmd = [
        *KASPWATCH, "store", "--bus", f"kafka://{kafka_bootstrap}", "--db", url,
        "--topic", topic, "--identity-topic", ident, "--group", group,
        "--partitions", str(PARTITIONS), "--session-timeout", "6",
    ]  # fmt: skip

    first = procs.start("store-1", [*cmd, "--group-instance-id", "store-1"])
    second = procs.start("store-2", [*cmd, "--group-instance-id", "store-2"])
    before = await members_holding(kafka_bootstrap, group, topic, [first, second], 90)
    assert len(await partitions(kafka_bootstrap, topic)) == PARTITIONS

    # two thirds stream in while store-1 and store-2 share the partitions; store-1 is
    # killed meanwhile; the last third once store-3 has joined and taken its share
    landed: dict[str, tuple[int, int]] = {}
    split = len(hits) * 2 // 3
    streaming = asyncio.create_task(stream_in(kafka_bootstrap, topic, hits[:split], landed))
    try:
        await wait_for(lambda: count_rows(url) >= len(hits) // 20, 60, "hits stored", first)
        tries, ahead = await kill_ahead_of_its_commits(
            url, first, kafka_bootstrap, group, topic, landed, hits, streaming
        )
        at_kill = (len(landed), count_rows(url))
        third = procs.start("store-3", [*cmd, "--group-instance-id", "store-3"])
        after = await members_holding(kafka_bootstrap, group, topic, [second, third], 90)
        await streaming
        await stream_in(kafka_bootstrap, topic, hits[split:], landed)
        await wait_for(lambda: count_rows(url) >= len(hits), 90, "every hit stored", second)
        await wait_committed(kafka_bootstrap, group, topic, timeout=30)
    finally:
        streaming.cancel()
    assert Procs.terminate(second) == 0, second.stderr()
    assert Procs.terminate(third) == 0, third.stderr()
    (stored2, again2), (stored3, again3) = tally(second), tally(third)

    # one instance alone, rebuilding from the whole topic: what the aggregates must be
    alone = f"sqlite:///{tmp_path / 'alone.sqlite'}"
    rebuild = await asyncio.create_subprocess_exec(
        *KASPWATCH, "store", "--bus", f"kafka://{kafka_bootstrap}", "--db", alone,
        "--topic", topic, "--identity-topic", ident, "--from-beginning", "--until-caught-up",
        env=cli_env(tmp_path), stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(rebuild.communicate(), 120)
    assert rebuild.returncode == 0, err.decode()

    total = count_rows(url)
    distinct = int(query(url, "SELECT count(DISTINCT event_id) FROM hits")[0][0])
    stored_ids = {r[0] for r in query(url, "SELECT event_id FROM hits")}
    shared, single = aggregates(url), aggregates(alone)
    by_first = total - stored2 - stored3
    report = (
        f"{len(hits)} hits on {PARTITIONS} partitions; members before the kill "
        f"{held(before)}, after the join {held(after)}; killed store-1 after {tries} "
        f"freeze(s) with {ahead} hits stored ahead of its commits, at {at_kill[0]} hits "
        f"sent, {at_kill[1]} stored; stored by store-1 {by_first}, store-2 {stored2} (+{again2} "
        f"already stored), store-3 {stored3} (+{again3}); rows {total}, distinct {distinct}; "
        f"aggregate rows { ({t: len(r) for t, r in shared.items()}) }; "
        f"{time.monotonic() - started:.1f}s"
    )
    sys.stderr.write(f"\nstore scale: {report}\n")

    assert at_kill[0] < len(hits), report  # the kill came mid-stream
    assert total == distinct == len(hits) and stored_ids == ids, report  # each hit once
    assert by_first > 0 and stored2 > 0 and stored3 > 0, report  # all three did a share
    assert again2 + again3 >= ahead, report  # what store-1 had not committed: read again
    assert sum(r[3] for r in shared["hosts"]) == len(hits), report  # hosts.count
    for table, rows in shared.items():
        assert rows == single[table], f"{table} differs from one instance's: {report}"
