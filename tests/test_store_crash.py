"""Consumer crash: ``kaspwatch store`` SIGKILLed mid-batch while hits stream in stores every
hit exactly once after a restart, on SQLite and on PostgreSQL.

The kill lands at the hardest moment of a batch: its rows are committed to the database but
its Kafka offsets are not (the test freezes the consumer with SIGSTOP the instant the row
count grows, and kills it only if the group's committed offsets are behind the rows;
otherwise it lets it go on and waits for the next batch). The restarted consumer reads that
batch again and must skip every hit of it by ``event_id``: its own tally of hits "already
stored" must equal the rows that were ahead of the committed offsets at the kill.

The alerts consumer's SIGKILL test is ``test_alerts_kafka``; both use the same harness.
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

import pytest

from consumers.store import open_backend
from consumers.store.base import Backend, StoreError
from tests import cliprocs, hitstream, postgres
from tests.cliprocs import Proc, Procs, wait_for
from tests.hitstream import synthetic_hits
from tests.kafkautil import committed_offsets, producer, standard_topics, wait_committed
from tests.testenv import KASPWATCH

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.timeout(int(os.environ.get("KASPWATCH_FAULT_TIMEOUT", "120"))),
]

procs = cliprocs.procs  # fixtures
sample_hits = hitstream.sample_hits
postgres_url = postgres.postgres_url

# the sample's 20 hits from 600 client pairs: 12 000 hits, 1 200 hosts (soak/fault.sh: more)
CLIENTS = int(os.environ.get("KASPWATCH_CRASH_CLIENTS", "600"))
KILLS = int(os.environ.get("KASPWATCH_CRASH_KILLS", "1"))  # kill, restart, kill the restart...
PER_TICK = 200  # hits produced every 0.1 s while the store consumes


def rows(b: Backend, sql: str = "SELECT count(*) FROM hits") -> int:
    return int(b.query(sql)[0][0] or 0)


def count_rows(url: str) -> int:
    try:
        b = open_backend(url, readonly=True)
    except StoreError:
        return 0  # not created yet
    try:
        return rows(b)
    finally:
        b.close()


async def stream_in(
    bootstrap: str, topic: str, docs: list[dict[str, Any]], sent: list[int]
) -> None:
    """Publish the hits keyed by host, ``PER_TICK`` every 0.1 s, each chunk acknowledged
    (``sent[0]``: how many so far)."""
    async with producer(bootstrap) as prod:
        for i in range(0, len(docs), PER_TICK):
            futures = [
                await prod.send(topic, json.dumps(d).encode(), key=d["host"].encode())
                for d in docs[i : i + PER_TICK]
            ]
            await asyncio.gather(*futures)
            sent[0] += len(futures)
            await asyncio.sleep(0.1)


def freeze_after_next_commit(url: str, proc: Proc, timeout: float) -> bool:
    """SIGSTOP ``proc`` the moment its next database commit shows (SQLite: the file's
    ``data_version``, which any other connection's commit changes; PostgreSQL: the row
    count): a batch is durable and its offsets are about to be committed."""
    b = open_backend(url, readonly=True)
    probe = "PRAGMA data_version" if b.kind == "sqlite" else "SELECT count(*) FROM hits"
    try:
        last = rows(b, probe)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.popen.poll() is None:
            if rows(b, probe) != last:
                proc.popen.send_signal(signal.SIGSTOP)
                return True
        return False
    finally:
        b.close()


async def kill_between_db_and_offset_commit(
    url: str, proc: Proc, bootstrap: str, group: str, topic: str, timeout: float = 30
) -> tuple[int, int, int]:
    """SIGKILL ``proc`` while a batch is in the database but its offsets are not committed.
    Returns (attempts, rows at the kill, committed offsets at the kill)."""
    deadline = time.monotonic() + timeout
    attempts = 0
    while time.monotonic() < deadline:
        left = deadline - time.monotonic()
        if not await asyncio.to_thread(freeze_after_next_commit, url, proc, left):
            break
        attempts += 1
        try:
            await asyncio.sleep(0.3)  # a commit request already on the wire lands now
            committed, _ = await committed_offsets(bootstrap, group, topic)
            ahead = count_rows(url) > sum(committed.values())
        except BaseException:
            proc.popen.send_signal(signal.SIGCONT)  # never leave it frozen
            raise
        if ahead:
            proc.popen.send_signal(signal.SIGKILL)
            proc.popen.wait(10)
            committed, _ = await committed_offsets(bootstrap, group, topic)
            return attempts, count_rows(url), sum(committed.values())
        proc.popen.send_signal(signal.SIGCONT)  # offsets already committed: next batch
    proc.popen.send_signal(signal.SIGCONT)
    pytest.fail(
        f"{proc.name}: no batch caught between its database commit and its offset commit "
        f"in {attempts} tries within {timeout} s:\n{proc.stderr()}"
    )


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_store_killed_mid_batch_stores_each_hit_once(
    kafka_bootstrap: str,
    sample_hits: list[dict[str, Any]],
    procs: Procs,
    tmp_path: Path,
    backend: str,
    request: pytest.FixtureRequest,
) -> None:
    started = time.monotonic()
    hits = synthetic_hits(sample_hits, CLIENTS)
    ids = {h["event_id"] for h in hits}
    assert len(ids) == len(hits)
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    else:
        pg = request.getfixturevalue("postgres_url")
        url = postgres.create_database(pg, f"crash_{uuid.uuid4().hex[:12]}")
    names = await standard_topics(kafka_bootstrap, hits_partitions=3)
    cmd = [
        *KASPWATCH, "store", "--bus", f"kafka://{kafka_bootstrap}", "--topic", names["hits"],
        "--group", names["group"], "--db", url,
    ]  # fmt: skip

    sent = [0]
    streaming = asyncio.create_task(stream_in(kafka_bootstrap, names["hits"], hits, sent))
    try:
        proc = procs.start("store-1", cmd)
        await wait_for(lambda: count_rows(url) >= 5 * PER_TICK, 30, "hits stored", proc)
        kills = []  # (freezes, rows stored, offsets committed, hits sent) at each kill
        for k in range(KILLS):
            if kills:  # the restart is consuming again: past its start-up, storing new hits
                await wait_for(
                    lambda done=kills[-1][1]: count_rows(url) > done, 60, "new hits stored", proc
                )
            kill = await kill_between_db_and_offset_commit(
                url, proc, kafka_bootstrap, names["group"], names["hits"]
            )
            kills.append((*kill, sent[0]))
            proc = procs.start(f"store-{k + 2}", cmd)
        await streaming
        await wait_for(lambda: count_rows(url) >= len(hits), 60, "every hit stored", proc)
        await wait_committed(kafka_bootstrap, names["group"], names["hits"], timeout=30)
    finally:
        streaming.cancel()
    assert Procs.terminate(proc) == 0, proc.stderr()
    err = proc.stderr()
    tally = re.search(r"store: (\d+) hits stored, (\d+) already stored", err)
    assert tally is not None, err
    stored_after, already = map(int, tally.groups())

    b = open_backend(url, readonly=True)
    try:
        total = rows(b)
        distinct = rows(b, "SELECT count(DISTINCT event_id) FROM hits")
        stored_ids = {r[0] for r in b.query("SELECT event_id FROM hits")}
        sums = {
            t: rows(b, f"SELECT sum(count) FROM {t}")
            for t in ("hosts", "host_category", "host_names")
        }
    finally:
        b.close()
    stored_at_kill = kills[-1][1]
    ahead = [stored - committed for _, stored, committed, _ in kills]
    report = (
        f"{backend}: {len(hits)} hits streamed in; {len(kills)} kill(s) "
        + "; ".join(
            f"after {freezes} freeze(s), {sent_n} hits sent, {stored} rows stored, "
            f"{committed} offsets committed"
            for freezes, stored, committed, sent_n in kills
        )
        + f"; last restart stored {stored_after}, skipped {already} already stored; rows "
        f"{total}, distinct event ids {distinct}, aggregate counts {sums}; "
        f"{time.monotonic() - started:.1f}s"
    )
    sys.stderr.write(f"\nstore crash: {report}\n")

    # each kill fell between a batch's database commit and its offset commit ...
    assert all(n > 0 for n in ahead), report
    # ... and the last restart read exactly that batch again and skipped every hit of it
    assert already == ahead[-1], report
    assert stored_after == len(hits) - stored_at_kill, report
    assert total == distinct == len(hits), report  # every hit, none twice
    assert stored_ids == ids, report
    assert sums == dict.fromkeys(sums, len(hits)), report  # aggregates count each hit once
