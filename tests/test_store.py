"""The incident-response store: the same answers from SQLite and a real PostgreSQL server,
idempotent ingestion (replays change no count), retention, the CLI's formats and exit
codes, the HTTP API (token, loopback default) and, through real Kafka, store + rebuild.

The events are the sample capture's hits (``kaspwatch scan samples/sample.pcap``) plus
synthetic ones around the ban date (2024-09-29) for ``after-ban`` and the time filters.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import dataclasses
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from consumers.assets import load_assets
from consumers.loop import consume
from consumers.store import open_backend, open_store, queries, schema
from consumers.store.api import make_server
from consumers.store.base import Backend, StoreError
from consumers.store.names import parse_pattern, reverse_name
from consumers.store.queries import Result
from kaspwatch.bus.memory import MemoryBus
from kaspwatch.cli import build_parser
from kaspwatch.cli import main as cli_main
from kaspwatch.cli import main as kaspwatch_main
from kaspwatch.event import Event, IndicatorRef, event_from_json, make_event_id
from tests import postgres
from tests.testenv import KASPWATCH, SAMPLE, free_port

pytestmark = pytest.mark.timeout(60)

postgres_url = postgres.postgres_url  # the session fixture: a real server for this module
STORE_CLI = [sys.executable, "-m", "kaspwatch"]
BACKENDS = ("sqlite", "postgresql")
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy

# ---------------------------------------------------------------------------- events


def scan_sample() -> list[Event]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert kaspwatch_main(["scan", "--sensor", "e2e", str(SAMPLE)]) == 0
    return [event_from_json(line.encode()) for line in out.getvalue().splitlines()]


def hit(
    ts: str,
    host: str,
    name: str,
    category: str = "update",
    indicator: str = "kw-test-update",
    kind: str = "tls_sni",
    sensor: str = "edge-1",
    answers: tuple[str, ...] = (),
    allowlisted: str | None = None,
    peer: str = "198.51.100.10",
) -> Event:
    dns_answer = kind == "dns_answer"
    src, dst = (peer, host) if dns_answer else (host, peer)
    sport, dport = (53, 40000) if dns_answer else (40000, 443)
    transport = "udp" if kind.startswith("dns") else "tcp"
    ts_ns = int(queries.parse_time(ts)) * 1000
    return Event(
        event_id=make_event_id(sensor, ts_ns, src, sport, dst, dport, transport, kind, name),
        ts=ts,
        sensor=sensor,
        kind=kind,
        name=name,
        src_ip=src,
        src_port=sport,
        dst_ip=dst,
        dst_port=dport,
        transport=transport,
        indicator=IndicatorRef(indicator, name, "exact", category, "high", "medium"),
        answers=answers,
        extra={"allowlisted": allowlisted} if allowlisted else {},
    )


SYNTHETIC = [
    # before the ban only
    hit("2024-06-01T08:00:00.000000Z", "10.1.0.5", "s01.upd.kaspersky.com"),
    hit(
        "2024-06-01T08:00:01.000000Z",
        "10.1.0.5",
        "dnl-01.geo.kaspersky.com",
        kind="dns_answer",
        answers=("203.0.113.5", "203.0.113.6"),
        peer="10.1.0.53",
    ),
    hit("2024-09-28T23:59:59.999999Z", "10.1.0.5", "s01.upd.kaspersky.com"),
    # exactly at the ban: counts as after it
    hit(
        "2024-09-29T00:00:00.000000Z",
        "10.1.0.6",
        "ksn-file-geo.kaspersky-labs.com",
        "telemetry",
        "kw-test-ksn",
        sensor="edge-2",
    ),
    # an allowlisted (sanctioned) hit: stored with its allowlist entry
    hit(
        "2025-01-01T12:00:00.000000Z",
        "10.1.0.9",
        "ksc.example.kaspersky.com",
        "management",
        "kw-test-ksc",
        allowlisted="allow-ksc",
    ),
    # a host at another site, active in 2025 and late 2026, one flow to a bare IP
    hit(
        "2025-03-01T00:00:00.000000Z",
        "10.2.0.7",
        "activation-v2.kaspersky.com",
        "activation",
        "kw-test-activation",
    ),
    hit("2026-11-02T10:00:00.000000Z", "10.2.0.7", "s02.upd.kaspersky.com"),
    hit(
        "2026-11-02T10:00:01.000000Z",
        "10.2.0.7",
        "77.74.181.5",
        "infrastructure",
        "kw-test-cidr",
        kind="ip_flow",
        peer="77.74.181.5",
    ),
    hit(
        "2025-06-15T00:00:00.000000Z",
        "2001:db8::7",
        "dnl-02.geo.kaspersky.com",
        kind="dns_answer",
        answers=("2001:db8:ffff::1",),
        peer="2001:db8::53",
    ),
]

ASSETS_YAML = """schema: kaspwatch-assets/1
networks:
  - {cidr: 10.1.0.0/16, site: plant-a, zone: office}
  - {cidr: 10.2.0.0/16, site: plant-b, zone: ot}
"""


@pytest.fixture(scope="module")
def events() -> list[Event]:
    sample = scan_sample()
    assert len(sample) == 20 and all(e.indicator is not None for e in sample)
    return sample + SYNTHETIC


@pytest.fixture(scope="module")
def assets_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("assets") / "assets.yaml"
    path.write_text(ASSETS_YAML)
    return path


def _db_url(kind: str, base: Path, pg: str) -> str:
    if kind == "sqlite":
        return f"sqlite:///{base / f'store-{uuid.uuid4().hex[:8]}.sqlite'}"
    return postgres.create_database(pg, f"t_{uuid.uuid4().hex[:12]}")


def ingest_in_batches(url: str, events: list[Event], size: int) -> None:
    store = open_store(url)
    try:
        for i in range(0, len(events), size):
            store.ingest(events[i : i + size])
    finally:
        store.close()


@pytest.fixture(scope="module")
def stores(
    events: list[Event], postgres_url: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """One populated store per backend, fed the same events in the same batches."""
    base = tmp_path_factory.mktemp("stores")
    urls = {kind: _db_url(kind, base, postgres_url) for kind in BACKENDS}
    for url in urls.values():
        ingest_in_batches(url, events, 7)
    return urls


@pytest.fixture(params=BACKENDS)
def db(request: pytest.FixtureRequest, stores: dict[str, str]) -> Iterator[Backend]:
    backend = open_backend(stores[request.param], readonly=True)
    yield backend
    backend.close()


@pytest.fixture(params=BACKENDS)
def fresh_url(request: pytest.FixtureRequest, postgres_url: str, tmp_path: Path) -> str:
    return _db_url(request.param, tmp_path, postgres_url)


def hosts_of(result: Result) -> list[str]:
    return [r["host"] for r in result.rows]


TABLES = ("hits", "host_category", "hosts", "host_names", "pdns")


def snapshot(url: str) -> dict[str, Any]:
    """Every row of every table, ordered: what 'changes no count' is checked against."""
    b = open_backend(url, readonly=True)
    try:
        out: dict[str, Any] = {}
        for table in TABLES:
            rows = b.query(f"SELECT * FROM {table}")
            out[table] = sorted(tuple(str(v) for v in r) for r in rows)
        return out
    finally:
        b.close()


# ---------------------------------------------------------------------------- ingestion


def test_replaying_the_same_hits_changes_no_count(fresh_url: str, events: list[Event]) -> None:
    ingest_in_batches(fresh_url, events, 5)
    first = snapshot(fresh_url)
    assert len(first["hits"]) == len(events) == 29
    store = open_store(fresh_url)
    try:
        assert store.ingest(events) == 0  # the whole set again, one batch
        assert store.ingest(list(reversed(events))[:3] * 2) == 0  # duplicates inside a batch
        assert store.stats.duplicates == len(events) + 3
    finally:
        store.close()
    ingest_in_batches(fresh_url, events, 1)  # and one by one
    assert snapshot(fresh_url) == first
    hosts = {r[0]: r for r in open_backend(fresh_url, readonly=True).query("SELECT * FROM hosts")}
    assert int(hosts["10.77.0.2"][3]) == 18  # count
    assert int(hosts["10.1.0.9"][4]) == 1  # allowlisted


def test_a_partly_stored_batch_adds_only_its_new_hits(
    fresh_url: str, events: list[Event], postgres_url: str, tmp_path: Path
) -> None:
    """A batch mixing stored and new hits (a redelivery overlapping new traffic) stores
    and counts exactly the new ones: SQLite's optimistic insert must fall back."""
    half = events[::2]
    store = open_store(fresh_url)
    try:
        assert store.ingest(half) == len(half)
        assert store.ingest(events) == len(events) - len(half)
        assert store.stats.duplicates == len(half)
        assert store.ingest(events[1::2]) == 0  # all stored: nothing rolled back or added
    finally:
        store.close()
    reference = _db_url(fresh_url.split(":", 1)[0], tmp_path, postgres_url)
    ingest_in_batches(reference, events, 5)
    assert snapshot(fresh_url) == snapshot(reference)


def _as_schema_1(url: str) -> None:
    """Rewrite a store into the layout kaspwatch wrote as schema 1: host_names keyed by
    name first, names lists in host_category and its category index, host_indicator."""
    b = open_backend(url)
    text, integer, clustered = (
        ("TEXT", "INTEGER", " WITHOUT ROWID")
        if b.kind == "sqlite"
        else ('TEXT COLLATE "C"', "BIGINT", "")
    )
    try:
        b.begin()
        for stmt in (
            "ALTER TABLE host_names RENAME TO host_names_v2",
            f"CREATE TABLE host_names (rname {text} NOT NULL, host {text} NOT NULL, "
            f"name {text} NOT NULL, category {text} NOT NULL, indicator_id {text} NOT NULL, "
            f"first_us {integer} NOT NULL, last_us {integer} NOT NULL, count {integer} NOT NULL, "
            f"PRIMARY KEY (rname, host)){clustered}",
            "INSERT INTO host_names SELECT rname, host, name, category, indicator_id, first_us, "
            "last_us, count FROM host_names_v2",
            "DROP TABLE host_names_v2",
            f"ALTER TABLE host_category ADD COLUMN names {text} NOT NULL DEFAULT '[]'",
            "CREATE INDEX host_category_category ON host_category (category)",
            f"CREATE TABLE host_indicator (host {text} NOT NULL, indicator_id {text} NOT NULL, "
            f"category {text} NOT NULL, first_us {integer} NOT NULL, last_us {integer} NOT NULL, "
            f"count {integer} NOT NULL, allowlisted {integer} NOT NULL, sensors {text} NOT NULL, "
            f"names {text} NOT NULL, PRIMARY KEY (host, indicator_id)){clustered}",
            "INSERT INTO host_indicator VALUES ('10.1.0.5', 'kw-x', 'update', 1, 2, 3, 0, '[]', '[]')",
            "DROP TABLE packets",  # schema 3's
            "ALTER TABLE hosts DROP COLUMN verdict",  # schema 4's
            "ALTER TABLE hosts DROP COLUMN verdict_confidence",
            "ALTER TABLE hosts DROP COLUMN evidence",
            "DROP TABLE identities",  # schema 5's
            "UPDATE meta SET value = '1' WHERE key = 'schema'",
        ):
            b.query(stmt)
        b.commit()
    finally:
        b.close()


def test_a_schema_1_store_is_upgraded_in_place_by_the_writer(
    fresh_url: str, events: list[Event], capsys: pytest.CaptureFixture[str]
) -> None:
    ingest_in_batches(fresh_url, events, 7)
    before = snapshot(fresh_url)
    _as_schema_1(fresh_url)
    # readers do not write: they say what to do
    with pytest.raises(
        StoreError,
        match=f"store schema 1, this kaspwatch reads {schema.SCHEMA_VERSION}: run 'kaspwatch store'",
    ):
        open_backend(fresh_url, readonly=True)
    code, out, err = run_cli(capsys, "query", "hosts", "--db", fresh_url)
    assert code == 2 and out == "" and "run 'kaspwatch store' on it once" in err
    store = open_store(fresh_url)  # the writer upgrades it, in one transaction
    try:
        assert store.ingest(events) == 0  # every hit is still known: nothing counts twice
    finally:
        store.close()
    after = snapshot(fresh_url)
    # hosts stored before verdicts have none ('': after-ban still lists them); all else kept
    assert {r[-3:] for r in after["hosts"]} == {("", "", "[]")}
    assert [r[:-3] for r in after.pop("hosts")] == [r[:-3] for r in before.pop("hosts")]
    assert after == before
    b = open_backend(fresh_url, readonly=True)
    try:
        assert b.query("SELECT value FROM meta WHERE key = 'schema'") == [
            (str(schema.SCHEMA_VERSION),)
        ]
        assert hosts_of(queries.name_contacts(b, parse_pattern("kaspersky.com")))[0] == "10.1.0.5"
    finally:
        b.close()


def test_a_schema_2_store_gains_the_packets_table_in_place(
    fresh_url: str, events: list[Event]
) -> None:
    """A store written before packet identities (schema 2): the writer adds ``packets``
    in place, every count kept; from then on another sensor's copy counts nothing."""
    ingest_in_batches(fresh_url, events, 7)
    before = snapshot(fresh_url)
    b = open_backend(fresh_url)
    try:
        b.begin()
        for stmt in (  # back to what schema 2 was: no packets, verdicts or identities
            "DROP TABLE packets",
            "ALTER TABLE hosts DROP COLUMN verdict",
            "ALTER TABLE hosts DROP COLUMN verdict_confidence",
            "ALTER TABLE hosts DROP COLUMN evidence",
            "DROP TABLE identities",
            "UPDATE meta SET value = '2' WHERE key = 'schema'",
        ):
            b.query(stmt)
        b.commit()
    finally:
        b.close()
    with pytest.raises(
        StoreError, match=f"store schema 2, this kaspwatch reads {schema.SCHEMA_VERSION}"
    ):
        open_backend(fresh_url, readonly=True)
    copy = dataclasses.replace(events[0], sensor="edge-9", event_id="9" * 32, packet_id="c" * 32)
    first = dataclasses.replace(copy, sensor="edge-8", event_id="8" * 32)
    store = open_store(fresh_url)
    try:
        assert store.ingest(events) == 0
        after = snapshot(fresh_url)
        # every count kept; the verdict columns (schema 4, last in hosts) start empty
        assert {k: v for k, v in after.items() if k != "hosts"} == {
            k: v for k, v in before.items() if k != "hosts"
        }
        assert [r[:-3] for r in after["hosts"]] == [r[:-3] for r in before["hosts"]]
        assert {r[-3:] for r in after["hosts"]} == {("", "", "[]")}
        assert store.ingest([first]) == 1 and store.ingest([copy]) == 1
        assert store.stats.repeats == 1
    finally:
        store.close()
    b = open_backend(fresh_url, readonly=True)
    try:
        host = next(r for r in queries.hosts(b).rows if r["host"] == events[0].host)
    finally:
        b.close()
    before_count = next(int(r[3]) for r in before["hosts"] if r[0] == events[0].host)
    assert host["count"] == before_count + 1 and {"edge-8", "edge-9"} <= set(host["sensors"])


@pytest.mark.parametrize(
    ("version", "advice"),
    [
        (
            "0",
            "rebuild it from the hits topic ('kaspwatch store --from-beginning' into a new --db)",
        ),
        ("99", "upgrade kaspwatch to read it"),
    ],
)
def test_a_store_of_another_schema_is_refused_with_what_to_do(
    fresh_url: str, events: list[Event], version: str, advice: str
) -> None:
    ingest_in_batches(fresh_url, events[:3], 3)
    b = open_backend(fresh_url)
    try:
        b.begin()
        b.query("UPDATE meta SET value = ? WHERE key = 'schema'", (version,))
        b.commit()
    finally:
        b.close()
    for readonly in (True, False):
        with pytest.raises(StoreError) as exc:
            open_backend(fresh_url, readonly=readonly)
        assert str(exc.value).endswith(
            f"store schema {version}, this kaspwatch reads {schema.SCHEMA_VERSION}: {advice}"
        )


def test_one_packet_seen_by_three_sensors_counts_once_and_lists_them(
    fresh_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Three sensors on one path report the same packet (same packet_id, their own
    event_id and sensor): ``query hosts`` counts one hit and lists the three sensors, in
    one batch as across batches; another packet of the host still counts."""
    first = dataclasses.replace(
        hit("2026-11-30T10:00:00.000000Z", "10.9.0.1", "s01.upd.kaspersky.com"),
        packet_id="a" * 32,
    )
    copies = [
        dataclasses.replace(
            first,
            sensor=sensor,
            event_id=make_event_id(sensor, 1, "10.9.0.1", 40000, "x", 443, "tcp", "tls_sni", "n"),
            ts=f"2026-11-30T10:00:00.00000{i}Z",  # each sensor's own clock
        )
        for i, sensor in enumerate(("edge-2", "edge-3"), start=1)
    ]
    other = dataclasses.replace(
        hit("2026-11-30T10:05:00.000000Z", "10.9.0.1", "s01.upd.kaspersky.com"),
        packet_id="b" * 32,
    )
    store = open_store(fresh_url)
    try:
        assert store.ingest([first]) == 1
        assert store.ingest([*copies, other]) == 3  # every report is kept in hits
        assert store.stats.repeats == 2
    finally:
        store.close()
    code, out, _ = run_cli(capsys, "query", "hosts", "--db", fresh_url, "--format", "json")
    assert code == 0
    (row,) = json.loads(out)
    assert (row["count"], row["sensors"]) == (2, ["edge-1", "edge-2", "edge-3"])
    code, out, _ = run_cli(
        capsys, "query", "name", "s01.upd.kaspersky.com", "--db", fresh_url, "--format", "json"
    )
    assert code == 0 and json.loads(out)[0]["count"] == 2, out


def test_observations_are_not_stored(fresh_url: str, events: list[Event]) -> None:
    obs = dataclasses.replace(events[0], indicator=None, event_id="f" * 32)
    store = open_store(fresh_url)
    try:
        assert store.ingest([obs]) == 0
        assert store.ingest(events[:1]) == 1
    finally:
        store.close()
    assert len(snapshot(fresh_url)["hits"]) == 1


async def test_the_consume_loop_stores_each_batch_once(fresh_url: str, events: list[Event]) -> None:
    """The store as a handler: a topic replayed twice (two groups) stores everything once."""
    bus = MemoryBus()
    for ev in events:
        bus.append("hits", ev.host.encode(), ev.to_json())
    bus.append("hits", None, b"{not json")
    store = open_store(fresh_url)
    bad: list[str] = []

    async def dead(rec: Any, why: str) -> None:
        bad.append(why)

    try:
        for group in ("store-a", "store-b"):
            sub = bus.subscriber(["hits"], group)
            await sub.start()
            await consume(sub, [store], asyncio.Event(), dead, lambda: True)
            assert bus.committed[(group, "hits")] == len(events) + 1
    finally:
        store.close()
    assert store.stats.stored == len(events) and store.stats.duplicates == len(events)
    assert len(bad) == 2
    assert len(snapshot(fresh_url)["hits"]) == len(events)


def test_retention_deletes_old_hits_and_keeps_the_aggregates(
    fresh_url: str, events: list[Event]
) -> None:
    now = queries.parse_time("2026-11-28") / 1e6
    store = open_store(fresh_url)  # no retention while loading: everything is stored
    try:
        store.ingest(events)
        store.retention_days = 365
        store.clock = lambda: now
        # older than 2025-11-28: the seven 2024/2025 synthetic hits
        assert store.purge() == 7
        before = snapshot(fresh_url)
        # hits past the cutoff are not stored again, so they can never count twice
        assert store.ingest(events) == 0
        assert store.stats.expired == 7
        assert store.purge() == 0
    finally:
        store.close()
    after = snapshot(fresh_url)
    assert after == before
    assert len(after["hits"]) == len(events) - 7
    b = open_backend(fresh_url, readonly=True)
    try:
        hosts = queries.hosts(b)
        assert "10.1.0.5" in hosts_of(hosts)  # aggregates outlive the hits
        row = next(r for r in hosts.rows if r["host"] == "10.1.0.5")
        assert (row["first_seen"], row["count"]) == ("2024-06-01T08:00:00.000000Z", 3)
        timeline = queries.host_timeline(b, "10.1.0.5")
        assert timeline.rows == [] and "retention" in timeline.note
    finally:
        b.close()


# ---------------------------------------------------------------------------- queries


ALL_HOSTS = [
    "10.1.0.5",
    "10.1.0.6",
    "10.1.0.9",
    "10.2.0.7",
    "10.77.0.2",
    "2001:db8::7",
    "fd77::2",
]


def test_hosts(db: Backend) -> None:
    result = queries.hosts(db)
    assert hosts_of(result) == ALL_HOSTS
    row = next(r for r in result.rows if r["host"] == "10.77.0.2")
    assert row == {
        "host": "10.77.0.2",
        "host_name": "",  # no identity records in this store
        "mac": "",
        "first_seen": "2026-11-27T18:44:03.397779Z",
        "last_seen": "2026-11-27T18:44:03.733609Z",
        "count": 18,
        "allowlisted": 0,
        "categories": ["telemetry", "update"],
        "sensors": ["e2e"],
        "verdict": "installed",
        "verdict_confidence": "high",
        "evidence": [  # the strongest kinds first, then in order: the same in any batches
            "http_request downloads.kaspersky-labs.com [kw-content-update-files] backed_by none",
            "ip_flow dnl-11.geo.kaspersky.com [kw-update-dnl-nn-geo] backed_by dns",
            "dns_answer dnl-03.geo.kaspersky.com [kw-update-dnl-nn-geo] backed_by dns",
            "dns_answer dnl-11.geo.kaspersky.com [kw-update-dnl-nn-geo] backed_by dns",
            "dns_answer ds.kaspersky.com [kw-update-ds] backed_by dns",
        ],
    }
    row = next(r for r in result.rows if r["host"] == "10.2.0.7")
    assert row["categories"] == ["activation", "infrastructure", "update"]
    assert row["count"] == 3


def test_hosts_filters(db: Backend, assets_file: Path) -> None:
    t = queries.parse_time
    since = queries.hosts(db, since_us=t("2026-01-01"))
    assert hosts_of(since) == ["10.2.0.7", "10.77.0.2", "fd77::2"]
    until = queries.hosts(db, until_us=t("2024-12-31", end_of_day=True))
    assert hosts_of(until) == ["10.1.0.5", "10.1.0.6"]
    window = queries.hosts(db, t("2025-01-01"), t("2025-06-30", end_of_day=True))
    assert hosts_of(window) == ["10.1.0.9", "10.2.0.7", "2001:db8::7"]
    cat = queries.hosts(db, categories=["activation"])
    assert hosts_of(cat) == ["10.2.0.7", "fd77::2"]
    row = cat.rows[0]  # the span and count of the chosen category only
    assert (row["first_seen"], row["last_seen"], row["count"], row["categories"]) == (
        "2025-03-01T00:00:00.000000Z",
        "2025-03-01T00:00:00.000000Z",
        1,
        ["activation"],
    )
    both = queries.hosts(db, since_us=t("2026-01-01"), categories=["update", "telemetry"])
    assert hosts_of(both) == ["10.2.0.7", "10.77.0.2"]
    assets = load_assets(assets_file)
    site = queries.hosts(db, sites=["plant-a"], assets=assets)
    assert hosts_of(site) == ["10.1.0.5", "10.1.0.6", "10.1.0.9"]
    assert {r["site"] for r in site.rows} == {"plant-a"}
    with pytest.raises(queries.QueryError, match="--assets"):
        queries.hosts(db, sites=["plant-a"])


def test_after_ban(db: Backend) -> None:
    result = queries.after_ban(db)
    assert hosts_of(result) == [h for h in ALL_HOSTS if h != "10.1.0.5"]
    assert result.query == "after-ban"
    later = queries.after_ban(db, queries.date(2026, 11, 3))
    assert hosts_of(later) == ["10.77.0.2", "fd77::2"]
    none = queries.after_ban(db, queries.date(2030, 1, 1))
    assert none.rows == [] and "2030-01-01" in none.note


def test_host_timeline(db: Backend) -> None:
    result = queries.host_timeline(db, "10.77.0.2")
    assert len(result.rows) == 18
    assert [r["ts"] for r in result.rows] == sorted(r["ts"] for r in result.rows)
    first = result.rows[0]
    assert (first["kind"], first["name"], first["peer"]) == (
        "dns_query",
        "dnl-03.geo.kaspersky.com",
        "10.77.0.53:53",
    )
    cname = next(r for r in result.rows if r["query"])
    assert cname["query"] == "av-updates.example.net" and cname["answers"] == ["10.77.0.1"]
    limited = queries.host_timeline(db, "10.77.0.2", limit=5)
    assert limited.rows == result.rows[:5] and "first 5" in limited.note
    window = queries.host_timeline(
        db, "10.2.0.7", since_us=queries.parse_time("2026-01-01T00:00:00Z")
    )
    assert [r["name"] for r in window.rows] == ["s02.upd.kaspersky.com", "77.74.181.5"]
    allow = queries.host_timeline(db, "10.1.0.9").rows
    assert [r["allowlisted"] for r in allow] == ["allow-ksc"]
    v6 = queries.host_timeline(db, "2001:0db8:0000::7")  # any spelling of the address
    assert [r["peer"] for r in v6.rows] == ["[2001:db8::53]:53"]
    nothing = queries.host_timeline(db, "192.0.2.1")
    assert nothing.rows == [] and nothing.note == "no hits for 192.0.2.1"
    with pytest.raises(queries.QueryError):
        queries.host_timeline(db, "not-an-ip")


def test_name_patterns(db: Backend) -> None:
    zone = queries.name_contacts(db, parse_pattern("kaspersky.com"))
    assert hosts_of(zone) == [
        "10.1.0.5",
        "10.1.0.9",
        "10.2.0.7",
        "10.77.0.2",
        "2001:db8::7",
        "fd77::2",
    ]
    sub = queries.name_contacts(db, parse_pattern("*.geo.kaspersky.com"))
    assert hosts_of(sub) == ["10.1.0.5", "10.77.0.2", "2001:db8::7"]
    row = next(r for r in sub.rows if r["host"] == "10.77.0.2")
    assert row["names"] == [
        "dnl-03.geo.kaspersky.com",
        "dnl-05.geo.kaspersky.com",
        "dnl-11.geo.kaspersky.com",
    ]
    assert row["count"] == 8 and row["categories"] == ["update"]
    exact = queries.name_contacts(db, parse_pattern("DS.Kaspersky.com.", exact=True))
    assert hosts_of(exact) == ["10.77.0.2"] and exact.rows[0]["count"] == 2
    labs = queries.name_contacts(db, parse_pattern("kaspersky-labs.com"))
    assert hosts_of(labs) == ["10.1.0.6", "10.77.0.2"]
    ip = queries.name_contacts(db, parse_pattern("77.74.181.5"))
    assert hosts_of(ip) == ["10.2.0.7"]
    # label boundaries: no partial labels, no lookalike zones
    for pattern in ("persky.com", "labs.com", "*.kaspersky.com.evil.example", "upd.kaspersky"):
        assert queries.name_contacts(db, parse_pattern(pattern)).rows == []


def test_passive_dns(db: Backend) -> None:
    result = queries.passive_dns(db, parse_pattern("geo.kaspersky.com"))
    assert [(r["name"], r["answer"]) for r in result.rows] == [
        ("dnl-01.geo.kaspersky.com", "203.0.113.5"),
        ("dnl-01.geo.kaspersky.com", "203.0.113.6"),
        ("dnl-02.geo.kaspersky.com", "2001:db8:ffff::1"),
        ("dnl-03.geo.kaspersky.com", "10.77.0.1"),
        ("dnl-11.geo.kaspersky.com", "10.77.0.1"),
    ]
    assert result.rows[0]["first_seen"] == "2024-06-01T08:00:01.000000Z"


def test_sqlite_and_postgresql_give_the_same_answers(stores: dict[str, str]) -> None:
    answers: dict[str, list[dict[str, Any]]] = {}
    t = queries.parse_time
    for kind, url in stores.items():
        b = open_backend(url, readonly=True)
        try:
            answers[kind] = [
                r.to_json()
                for r in (
                    queries.hosts(b),
                    queries.hosts(b, t("2025-01-01"), t("2026-11-02", end_of_day=True)),
                    queries.hosts(b, categories=["update"]),
                    queries.after_ban(b),
                    *(queries.host_timeline(b, h) for h in ALL_HOSTS),
                    queries.name_contacts(b, parse_pattern("kaspersky.com")),
                    queries.name_contacts(b, parse_pattern("*.upd.kaspersky.com")),
                    queries.passive_dns(b, parse_pattern("kaspersky.com")),
                )
            ]
        finally:
            b.close()
    assert answers["sqlite"] == answers["postgresql"]
    assert snapshot(stores["sqlite"]) == snapshot(stores["postgresql"])


def test_reversed_names_and_patterns() -> None:
    assert reverse_name("dnl-01.geo.kaspersky.com") == "com.kaspersky.geo.dnl-01"
    assert reverse_name("2001:db8::1") == "2001:db8::1"
    m = parse_pattern("*.kaspersky.com")
    assert m.matches("com.kaspersky.x") and not m.matches("com.kaspersky")
    assert not m.matches("com.kaspersky-labs.x")
    assert parse_pattern("kaspersky.com").matches("com.kaspersky")
    for bad in ("", "*", "a.*.com", "two words", "a..b"):
        with pytest.raises(ValueError, match="pattern"):
            parse_pattern(bad)


# ---------------------------------------------------------------------------- CLI


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli_main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("kind", BACKENDS)
def test_cli_formats_parse(
    kind: str, stores: dict[str, str], capsys: pytest.CaptureFixture[str], assets_file: Path
) -> None:
    url = stores[kind]
    code, out, _ = run_cli(capsys, "query", "hosts", "--db", url, "--format", "json")
    assert code == 0 and [r["host"] for r in json.loads(out)] == ALL_HOSTS
    code, out, _ = run_cli(capsys, "query", "after-ban", "--db", url, "--format", "ndjson")
    assert code == 0
    assert [json.loads(line)["host"] for line in out.splitlines()] == ALL_HOSTS[1:]
    code, out, _ = run_cli(
        capsys, "query", "hosts", "--db", url, "--format", "csv", "--assets", str(assets_file)
    )
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and [r["host"] for r in rows] == ALL_HOSTS
    assert (
        rows[3]["site"] == "plant-b" and rows[3]["categories"] == "activation infrastructure update"
    )
    code, out, err = run_cli(capsys, "query", "host", "10.77.0.2", "--db", url)
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:4] == ["TS", "SENSOR", "KIND", "NAME"]
    assert len(lines) == 19 and "dnl-03.geo.kaspersky.com" in lines[1]
    assert err.startswith("kaspwatch: verdict installed (high): http_request ")
    code, out, _ = run_cli(
        capsys, "query", "name", "*.geo.kaspersky.com", "--db", url, "--format", "csv"
    )
    assert code == 0 and [r["host"] for r in csv.DictReader(io.StringIO(out))] == [
        "10.1.0.5",
        "10.77.0.2",
        "2001:db8::7",
    ]
    code, out, _ = run_cli(
        capsys,
        "query",
        "dns",
        "dnl-01.geo.kaspersky.com",
        "--exact",
        "--db",
        url,
        "--format",
        "json",
    )
    assert code == 0 and [r["answer"] for r in json.loads(out)] == ["203.0.113.5", "203.0.113.6"]
    code, out, _ = run_cli(
        capsys, "query", "hosts", "--db", url, "--since", "2026-11-01", "--category", "telemetry"
    )
    assert code == 0 and [line.split()[0] for line in out.splitlines()[1:]] == ["10.77.0.2"]


def test_cli_exit_codes(stores: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    url = stores["sqlite"]
    code, out, err = run_cli(capsys, "query", "host", "192.0.2.1", "--db", url)
    assert (code, out, err) == (1, "", "kaspwatch: no hits for 192.0.2.1\n")
    code, out, _ = run_cli(
        capsys, "query", "after-ban", "--date", "2030-01-01", "--db", url, "--format", "json"
    )
    assert code == 1 and json.loads(out) == []
    code, out, _ = run_cli(capsys, "query", "name", "example.org", "--db", url, "--format", "csv")
    assert code == 1 and out == "host,first_seen,last_seen,count,names,categories\n"
    code, _, err = run_cli(capsys, "query", "hosts", "--db", url, "--since", "yesterday")
    assert code == 2 and err.startswith("kaspwatch: error: time 'yesterday'")
    code, _, err = run_cli(capsys, "query", "hosts", "--db", "sqlite:////nonexistent/x.db")
    assert code == 2 and "no store there" in err
    code, _, err = run_cli(capsys, "query", "hosts", "--db", "mysql://x")
    assert code == 2 and "expected sqlite:///PATH or postgresql://" in err
    code, _, err = run_cli(
        capsys, "query", "hosts", "--db", "postgresql://kw:hunter2@127.0.0.1:1/x"
    )
    assert code == 2 and "cannot connect" in err and "hunter2" not in err
    assert "Traceback" not in err


def test_cli_parsers_and_defaults() -> None:
    parser = build_parser()
    api = parser.parse_args(["api"])
    assert api.listen == ("127.0.0.1", 9110) and api.token_file is None  # loopback by default
    store = parser.parse_args(["store", "--bus", "memory://x"])
    assert (store.group, store.topic, store.retention_days) == (None, "kaspwatch.hits.v1", None)
    query = parser.parse_args(["query", "after-ban", "--date", "2025-01-01", "--format", "csv"])
    assert (query.command, query.what, str(query.date), query.format) == (
        "query",
        "after-ban",
        "2025-01-01",
        "csv",
    )


# ---------------------------------------------------------------------------- API


def get(url: str, token: str | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(url)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with _DIRECT.open(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@contextlib.contextmanager
def serving(url: str, token: str | None, assets: Path | None = None) -> Iterator[str]:
    server = make_server(url, ("127.0.0.1", 0), token, load_assets(assets) if assets else None)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        server.pool.close()


@pytest.mark.parametrize("kind", BACKENDS)
def test_api_serves_the_same_queries(kind: str, stores: dict[str, str], assets_file: Path) -> None:
    url = stores[kind]
    b = open_backend(url, readonly=True)
    try:
        with serving(url, None, assets_file) as base:
            assert get(f"{base}/healthz") == (200, {"status": "ok"})
            status, doc = get(
                f"{base}/v1/hosts?since=2025-01-01&until=2025-06-30&site=plant-a,plant-b"
            )
            assert status == 200 and [r["host"] for r in doc["results"]] == ["10.1.0.9", "10.2.0.7"]
            assert doc["count"] == 2 and doc["results"][0]["site"] == "plant-a"
            status, doc = get(f"{base}/v1/hosts?category=activation")
            assert [r["host"] for r in doc["results"]] == ["10.2.0.7", "fd77::2"]
            status, doc = get(f"{base}/v1/hosts/10.77.0.2?limit=3")
            assert status == 200 and doc == queries.host_timeline(b, "10.77.0.2", limit=3).to_json()
            assert get(f"{base}/v1/hosts/192.0.2.1")[0] == 404
            status, doc = get(f"{base}/v1/names/*.geo.kaspersky.com")
            assert [r["host"] for r in doc["results"]] == ["10.1.0.5", "10.77.0.2", "2001:db8::7"]
            status, doc = get(f"{base}/v1/names/ds.kaspersky.com?exact=1")
            assert [r["host"] for r in doc["results"]] == ["10.77.0.2"]
            status, doc = get(f"{base}/v1/dns/geo.kaspersky.com")
            assert status == 200 and doc["count"] == 5
            status, doc = get(f"{base}/v1/after-ban")
            assert [r["host"] for r in doc["results"]] == ALL_HOSTS[1:]
            status, doc = get(f"{base}/v1/after-ban?date=2026-11-03")
            assert [r["host"] for r in doc["results"]] == ["10.77.0.2", "fd77::2"]
            assert get(f"{base}/v1/after-ban?date=soon")[0] == 400
            assert get(f"{base}/v1/hosts?since=soon")[0] == 400
            assert get(f"{base}/v1/hosts/not-an-ip")[0] == 400
            assert get(f"{base}/v1/nothing")[0] == 404
            req = urllib.request.Request(f"{base}/v1/hosts", data=b"{}", method="POST")
            with pytest.raises(urllib.error.HTTPError) as exc:
                _DIRECT.open(req, timeout=10)
            assert exc.value.code == 405
    finally:
        b.close()


def test_api_bearer_token(stores: dict[str, str]) -> None:
    token = "kw-" + uuid.uuid4().hex
    with serving(stores["sqlite"], token) as base:
        assert get(f"{base}/v1/hosts", token)[0] == 200
        for wrong in (None, "", token[:-1], token + "x", "Basic " + token):
            status, doc = get(f"{base}/v1/hosts", wrong)
            assert status == 401 and doc == {"error": "bearer token required"}
            assert token not in json.dumps(doc)
        req = urllib.request.Request(f"{base}/v1/hosts")
        req.add_header("Authorization", f"Basic {token}")
        with pytest.raises(urllib.error.HTTPError) as exc:
            _DIRECT.open(req, timeout=10)
        assert exc.value.code == 401 and exc.value.headers["WWW-Authenticate"].startswith("Bearer")
        assert get(f"{base}/healthz") == (200, {"status": "ok"})  # probes need no token


def test_api_command_with_token_file_and_sigterm(stores: dict[str, str], tmp_path: Path) -> None:
    token = "kw-" + uuid.uuid4().hex
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    port = free_port()
    proc = subprocess.Popen(
        [
            *STORE_CLI,
            "api",
            "--db",
            stores["postgresql"],
            "--listen",
            f"127.0.0.1:{port}",
            "--token-file",
            str(token_file),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if get(f"http://127.0.0.1:{port}/healthz")[0] == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr
            time.sleep(0.1)
        assert get(f"http://127.0.0.1:{port}/v1/after-ban")[0] == 401
        status, doc = get(f"http://127.0.0.1:{port}/v1/after-ban", token)
        assert status == 200 and doc["count"] == len(ALL_HOSTS) - 1
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, err
    assert "bearer token required" in err and token not in err


# ---------------------------------------------------------------------------- Kafka


async def _create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()


def _hosts_json(url: str) -> list[dict[str, Any]] | None:
    proc = subprocess.run(
        [*STORE_CLI, "query", "hosts", "--db", url, "--format", "json"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    return json.loads(proc.stdout) if proc.returncode == 0 else None


@pytest.mark.kafka
async def test_store_and_rebuild_through_kafka(kafka_bootstrap: str, tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:8]
    topic = f"hits-store-{run}"
    await _create_topic(kafka_bootstrap, topic, 3)
    bus = f"kafka://{kafka_bootstrap}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "KASPWATCH_STATE_DIR": str(tmp_path)}
    for var in ("KASPWATCH_CONFIG", "KASPWATCH_BUS", "KASPWATCH_DB"):
        env.pop(var, None)
    sense = subprocess.run(
        [
            *KASPWATCH,
            "sense",
            "--pcap",
            str(SAMPLE),
            "--bus",
            bus,
            "--topic",
            topic,
            "--sensor",
            "e2e",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert sense.returncode == 0 and "20 published" in sense.stderr, sense.stderr

    live = f"sqlite:///{tmp_path / 'live.sqlite'}"
    store = subprocess.Popen(
        [
            *STORE_CLI,
            "store",
            "--bus",
            bus,
            "--topic",
            topic,
            "--group",
            f"store-{run}",
            "--db",
            live,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 40
        hosts = None
        while time.monotonic() < deadline:
            hosts = _hosts_json(live)
            if hosts and sum(h["count"] for h in hosts) == 20:
                break
            assert store.poll() is None, store.communicate()[1]
            await asyncio.sleep(0.3)
        assert hosts is not None and [(h["host"], h["count"]) for h in hosts] == [
            ("10.77.0.2", 18),
            ("fd77::2", 2),
        ]
        store.send_signal(signal.SIGTERM)
        _, err = store.communicate(timeout=20)
    finally:
        if store.poll() is None:
            store.kill()
            store.wait(10)
    assert store.returncode == 0, err
    assert "20 hits stored" in err and "Traceback" not in err

    # rebuild: a fresh group replays the topic from the beginning into a fresh store
    rebuilt = f"sqlite:///{tmp_path / 'rebuilt.sqlite'}"
    proc = subprocess.run(
        [
            *STORE_CLI,
            "store",
            "--bus",
            bus,
            "--topic",
            topic,
            "--db",
            rebuilt,
            "--from-beginning",
            "--until-caught-up",
        ],
        capture_output=True,
        text=True,
        timeout=40,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "rebuilding" in proc.stderr and "kaspwatch-store-rebuild-" in proc.stderr
    assert "20 hits stored" in proc.stderr
    assert _hosts_json(rebuilt) == _hosts_json(live)
    assert snapshot(rebuilt) == snapshot(live)

    # from a time after every hit: nothing to replay, and it still stops once caught up
    proc = subprocess.run(
        [
            *STORE_CLI,
            "store",
            "--bus",
            bus,
            "--topic",
            topic,
            "--db",
            rebuilt,
            "--from-time",
            "2099-01-01T00:00:00Z",
            "--until-caught-up",
        ],
        capture_output=True,
        text=True,
        timeout=40,
        env=env,
    )
    assert proc.returncode == 0 and "0 hits stored" in proc.stderr, proc.stderr
