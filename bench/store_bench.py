"""The incident-response store on SQLite: ingest rate, and query latency at 10 million hits.

    .venv/bin/python bench/store_bench.py [--hits 10000000] [--hosts 10000] [--ingest 200000]
                                          [--batch 500] [--runs 7] [--dir DIR] [--keep]

1. Ingest: ``Store.ingest`` (the consume-loop handler's work: dedup by event_id, insert,
   update every aggregate in the same transaction) into a fresh SQLite store, in batches
   of ``--batch`` (the consume loop polls 500), with events shaped like real hits
   (hash event ids, ~1 in 5 a DNS answer). Reported: hits/s, and hits per CPU-second of
   the process (what the code costs when the machine is shared); also with JSON parsing
   of each message (``event_from_json``) included, and into the big store afterwards.
2. Queries: a store with ``--hits`` rows is generated in SQL (a recursive CTE, indexes
   built after the load, aggregates by GROUP BY: the same rows the store would hold),
   then each query of ``kaspwatch query`` runs ``--runs`` times warm; the median and the
   maximum are reported, with the median CPU time and the number of result rows.
   The last line gives the machine's load average at the start and at the end.

Data shape: ``--hosts`` clients, each using 4 of 48 indicators (8 categories) and 4 names
per indicator across 6 zones, 4 sensors; a third of the hosts stop before 2024-09-29,
the others run until 2026-11-27; 1 hit in 1000 is allowlisted.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

from consumers.store import open_store, queries, schema
from consumers.store.names import parse_pattern, reverse_name
from consumers.store.queries import Result, parse_time
from consumers.store.rollup import MAX_CATEGORIES, MAX_SENSORS, dumps_set, us_to_ts
from consumers.store.sqlite import SQLiteBackend
from kaspwatch.event import Event, IndicatorRef, event_from_json, make_event_id

INDICATORS = 48
CATEGORIES = (
    "update", "telemetry", "activation", "management", "portal", "oem", "infrastructure", "canary",
)  # fmt: skip
ZONES = (
    "kaspersky.com", "kaspersky-labs.com", "geo.kaspersky.com", "upd.kaspersky.com",
    "ksn.kaspersky-labs.com", "kaspersky.ru",
)  # fmt: skip
NAMES_PER_INDICATOR = 4
SLOTS = 4  # indicators per host
START = parse_time("2024-01-01")
BAN = parse_time("2024-09-29")
END = parse_time("2026-11-27")
DAY_US = 86_400_000_000
KINDS = ("dns_query", "dns_answer", "tls_sni", "http_host", "ip_flow")


def progress(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def host_ip(hid: int) -> str:
    return f"10.{hid // 65536 % 256}.{hid // 256 % 256}.{hid % 256}"


def name_of(nid: int) -> tuple[str, str, str]:
    """(name, indicator id, category) of name number ``nid``."""
    k = nid // NAMES_PER_INDICATOR
    return f"n{nid}.{ZONES[k % len(ZONES)]}", f"kw-bench-{k:02d}", CATEGORIES[k % len(CATEGORIES)]


# ---------------------------------------------------------------------------- ingest


def make_events(
    n: int,
    hosts: int,
    seed: int = 7,
    burst: tuple[int, int] = (6, 24),
    span: tuple[int, int] = (START, END),
) -> list[Event]:
    """``n`` hits in bursts: a host's agent wakes up and resolves, then contacts, a few of
    its names within seconds (as in the sample capture: 17 hits in 0.3 s). ``burst=(1, 1)``
    gives independent hits from random hosts: the worst case for the aggregates."""
    rng = random.Random(seed)
    out: list[Event] = []
    step = (span[1] - span[0]) // max(n, 1)
    ts_us = span[0]
    while len(out) < n:
        hid = rng.randrange(hosts)
        host = host_ip(hid)
        sensor = f"edge-{hid % 4}"
        for j in range(min(rng.randint(*burst), n - len(out))):
            k = (hid * 5 + rng.randrange(SLOTS) * 11) % INDICATORS
            nid = k * NAMES_PER_INDICATOR + rng.randrange(NAMES_PER_INDICATOR)
            name, ind, cat = name_of(nid)
            kind = KINDS[j % len(KINDS)]
            src, dst = ("10.255.0.53", host) if kind == "dns_answer" else (host, "203.0.113.80")
            transport = "udp" if kind.startswith("dns") else "tcp"
            ts_us += rng.randrange(1, 2 * step)
            out.append(
                Event(
                    event_id=make_event_id(
                        sensor, ts_us * 1000, src, 40000 + j, dst, 443, transport, kind, name
                    ),
                    ts=us_to_ts(ts_us),
                    sensor=sensor,
                    kind=kind,
                    name=name,
                    src_ip=src,
                    src_port=40000 + j,
                    dst_ip=dst,
                    dst_port=443,
                    transport=transport,
                    indicator=IndicatorRef(ind, name, "exact", cat, "high", "medium"),
                    answers=(f"203.0.113.{nid % 250}",) if kind == "dns_answer" else (),
                    extra={"allowlisted": "allow-bench"} if len(out) % 1000 == 0 else {},
                    packet_id=f"{ts_us:016x}{nid:08x}{j:08x}",  # as sensors send: one each
                )
            )
    return out


def ingest_rate(url: str, events: list[Event], batch: int, parse: bool = False) -> str:
    """Hits per second of wall-clock time, and per second of this process's CPU time
    (every thread: the checkpointer's too): on a shared machine the second one says what
    the code costs, the first one what the machine gave it."""
    store = open_store(url)
    raw = [e.to_json() for e in events] if parse else []
    # the events are the bench's own heap: a consumer holds one batch, not 200,000 events,
    # so keep them out of the garbage collector's full passes (what gc.freeze is for)
    gc.collect()
    gc.freeze()
    try:
        started, cpu = time.perf_counter(), time.process_time()
        for i in range(0, len(events), batch):
            chunk = (
                [event_from_json(r) for r in raw[i : i + batch]] if parse else events[i : i + batch]
            )
            store.ingest(chunk)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        assert store.stats.stored == len(events), store.stats
    finally:
        gc.unfreeze()
        store.close()
    return f"{len(events) / elapsed:,.0f} hits/s ({len(events) / cpu:,.0f} per CPU-s)"


# ---------------------------------------------------------------------------- bulk load


def _set_fn(bound: int) -> Callable[[str | None], str]:
    def kw_set(text: str | None) -> str:
        values = sorted(set(text.split(","))) if text else []
        return dumps_set(values[:bound])

    return kw_set


def bulk_load(path: Path, n: int, hosts: int) -> dict[str, float]:
    """Generate ``n`` hits and their aggregates directly in SQL; return phase timings."""
    timings: dict[str, float] = {}
    url = f"sqlite:///{path}"
    open_store(url).close()  # the store's own schema
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-1048576")  # 1 GiB for the load and the index builds
    conn.execute("PRAGMA temp_store=MEMORY")
    conn.create_function("kw_rname", 1, reverse_name, deterministic=True)
    conn.create_function("kw_sensors", 1, _set_fn(MAX_SENSORS), deterministic=True)
    conn.create_function("kw_categories", 1, _set_fn(MAX_CATEGORIES), deterministic=True)
    for index in schema.INDEX_NAMES:
        conn.execute(f"DROP INDEX IF EXISTS {index}")
    conn.execute("BEGIN")
    conn.execute("CREATE TEMP TABLE bh (hid INTEGER PRIMARY KEY, host TEXT NOT NULL)")
    conn.executemany("INSERT INTO bh VALUES (?, ?)", ((h, host_ip(h)) for h in range(hosts)))
    conn.execute("CREATE TEMP TABLE bn (nid INTEGER PRIMARY KEY, name TEXT, ind TEXT, cat TEXT)")
    conn.executemany(
        "INSERT INTO bn VALUES (?, ?, ?, ?)",
        ((nid, *name_of(nid)) for nid in range(INDICATORS * NAMES_PER_INDICATOR)),
    )
    step = (END - START) // n
    started = time.perf_counter()
    # time grows with i (the clustered primary key is appended to); hosts whose number is a
    # multiple of 3 stop at the ban: after it their turns go to the next host
    conn.execute(
        f"""
        WITH RECURSIVE seq(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM seq WHERE i + 1 < {n}),
        g0 AS (SELECT i, {START} + i * {step} AS ts, (i * 7919) % {hosts} AS raw FROM seq),
        g1 AS (
            SELECT i, ts,
                   CASE WHEN ts >= {BAN} AND raw % 3 = 0 THEN (raw + 1) % {hosts} ELSE raw END
                       AS hid
            FROM g0
        ),
        g AS (
            SELECT i, ts, hid,
                   (hid * 5 + ((i / {hosts}) % {SLOTS}) * 11) % {INDICATORS}
                       * {NAMES_PER_INDICATOR} + (i / ({hosts} * {SLOTS})) % {NAMES_PER_INDICATOR}
                       AS nid,
                   i % 5 AS k
            FROM g1
        )
        INSERT INTO hits ({", ".join(schema.HIT_COLUMNS)})
        SELECT printf('%032x', g.i), g.ts, bh.host, 'edge-' || (g.hid % 4),
               CASE g.k WHEN 0 THEN 'dns_query' WHEN 1 THEN 'dns_answer' WHEN 2 THEN 'tls_sni'
                        WHEN 3 THEN 'http_host' ELSE 'ip_flow' END,
               bn.name, NULL,
               CASE WHEN g.k = 1 THEN '["203.0.113.' || (g.nid % 250) || '"]' END,
               CASE WHEN g.k = 1 THEN '10.255.0.53' ELSE bh.host END, 40000 + g.i % 20000,
               CASE WHEN g.k = 1 THEN bh.host ELSE '203.0.113.80' END,
               CASE WHEN g.k < 2 THEN 53 ELSE 443 END,
               CASE WHEN g.k < 2 THEN 'udp' ELSE 'tcp' END,
               bn.ind, bn.name, 'exact', bn.cat, 'high', 'medium',
               CASE WHEN g.i % 1000 = 0 THEN 'allow-bench' END, NULL
        FROM g JOIN bh ON bh.hid = g.hid JOIN bn ON bn.nid = g.nid
        """
    )
    conn.execute("COMMIT")
    timings["insert hits"] = time.perf_counter() - started

    started = time.perf_counter()
    conn.execute("BEGIN")
    conn.execute(
        """CREATE TEMP TABLE hn AS
           SELECT host, name, max(indicator_id) AS ind, max(category) AS cat,
                  min(ts_us) AS f, max(ts_us) AS l, count(*) AS c, count(allowlisted) AS a,
                  group_concat(DISTINCT sensor) AS s
           FROM hits GROUP BY host, name"""
    )
    conn.execute(
        """INSERT INTO host_names (host, rname, name, category, indicator_id, first_us,
                                   last_us, count)
           SELECT host, kw_rname(name), name, cat, ind, f, l, c FROM hn"""
    )
    conn.execute(
        """INSERT INTO host_category (host, category, first_us, last_us, count, allowlisted,
                                      sensors)
           SELECT host, cat, min(f), max(l), sum(c), sum(a), kw_sensors(group_concat(DISTINCT s))
           FROM hn GROUP BY host, cat"""
    )
    conn.execute(
        """INSERT INTO hosts (host, first_us, last_us, count, allowlisted, sensors, categories)
           SELECT host, min(f), max(l), sum(c), sum(a),
                  kw_sensors(group_concat(DISTINCT s)), kw_categories(group_concat(DISTINCT cat))
           FROM hn GROUP BY host"""
    )
    conn.execute(
        """INSERT INTO pdns (rname, answer, name, first_us, last_us, count)
           SELECT kw_rname(name), json_extract(answers, '$[0]'), name,
                  min(ts_us), max(ts_us), count(*)
           FROM hits WHERE kind = 'dns_answer' GROUP BY name, answers"""
    )
    conn.execute("COMMIT")
    timings["aggregates"] = time.perf_counter() - started

    started = time.perf_counter()
    for stmt in schema.INDEXES:
        conn.execute(stmt)
    conn.execute("ANALYZE")
    timings["indexes"] = time.perf_counter() - started
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return timings


# ---------------------------------------------------------------------------- queries


def time_queries(path: Path, runs: int, hosts: int) -> list[tuple[str, int, float, float, float]]:
    backend = SQLiteBackend(str(path), readonly=True)
    probe = host_ip(1)  # a host active all along
    cases: list[tuple[str, Callable[[], Result]]] = [
        ("hosts", lambda: queries.hosts(backend)),
        ("hosts --since 2026-01-01", lambda: queries.hosts(backend, parse_time("2026-01-01"))),
        (
            "hosts --since 2025-01-01 --until 2025-06-30",
            lambda: queries.hosts(
                backend, parse_time("2025-01-01"), parse_time("2025-06-30", end_of_day=True)
            ),
        ),
        ("hosts --category activation", lambda: queries.hosts(backend, categories=["activation"])),
        ("after-ban", lambda: queries.after_ban(backend)),
        ("after-ban --date 2026-11-01", lambda: queries.after_ban(backend, date(2026, 11, 1))),
        (f"host {probe}", lambda: queries.host_timeline(backend, probe)),
        (
            f"host {probe} --since 2026-01-01",
            lambda: queries.host_timeline(backend, probe, parse_time("2026-01-01")),
        ),
        (
            "name n5.kaspersky-labs.com --exact",
            lambda: queries.name_contacts(backend, parse_pattern("n5.kaspersky-labs.com", True)),
        ),
        (
            "name *.upd.kaspersky.com",
            lambda: queries.name_contacts(backend, parse_pattern("*.upd.kaspersky.com")),
        ),
        (
            "name kaspersky.com (zone: 1/2 of the names)",
            lambda: queries.name_contacts(backend, parse_pattern("kaspersky.com")),
        ),
        (
            "dns geo.kaspersky.com",
            lambda: queries.passive_dns(backend, parse_pattern("geo.kaspersky.com")),
        ),
    ]
    out = []
    for label, run in cases:
        run()  # warm
        times, cpu_times = [], []
        rows = 0
        for _ in range(runs):
            started, cpu = time.perf_counter(), time.process_time()
            rows = len(run().rows)
            times.append((time.perf_counter() - started) * 1000)
            cpu_times.append((time.process_time() - cpu) * 1000)
        out.append(
            (label, rows, statistics.median(times), max(times), statistics.median(cpu_times))
        )
    backend.close()
    return out


def count_hits(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT count(*) FROM hits").fetchone()[0] or 0)
    finally:
        conn.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hits", type=int, default=10_000_000, help="stored hits for the queries")
    ap.add_argument("--hosts", type=int, default=10_000)
    ap.add_argument("--ingest", type=int, default=200_000, help="hits for the ingest figure")
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--dir", help="where to put the databases (default: a temporary dir)")
    ap.add_argument("--keep", action="store_true", help="keep the databases")
    args = ap.parse_args()
    base = Path(args.dir or tempfile.mkdtemp(prefix="kaspwatch-store-bench-"))
    base.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str, str]] = []
    load_start = os.getloadavg()
    try:
        events = make_events(args.ingest, args.hosts)
        for batch in sorted({args.batch, 5000}):
            rate = ingest_rate(f"sqlite:///{base / f'ingest-{batch}.sqlite'}", events, batch)
            rows.append((f"ingest, fresh store, batches of {batch}", rate, ">= 50,000"))  # fmt: skip
        rate = ingest_rate(
            f"sqlite:///{base / 'ingest-json.sqlite'}", events, args.batch, parse=True
        )
        rows.append((f"ingest + JSON parsing, batches of {args.batch}", rate, ""))
        spread = make_events(args.ingest, args.hosts, seed=3, burst=(1, 1))
        rate = ingest_rate(f"sqlite:///{base / 'ingest-spread.sqlite'}", spread, args.batch)
        rows.append((f"ingest, no bursts (worst case), batches of {args.batch}", rate, ""))  # fmt: skip
        progress(f"ingest figures done; generating {args.hits:,} hits")
        del events, spread  # a CLI or API process holds no such heap: keep gen-2 GC pauses out
        gc.collect()

        big = base / "big.sqlite"
        timings = bulk_load(big, args.hits, args.hosts)
        n = count_hits(big)
        progress(f"generated {n:,} hits: {timings}; timing the queries")
        size = sum(p.stat().st_size for p in base.glob("big.sqlite*")) / 2**30
        load = ", ".join(f"{k} {v:.1f} s" for k, v in timings.items())
        rows.append((f"generate {n:,} hits ({size:.2f} GiB)", load, ""))
        for label, count, median, worst, cpu in time_queries(big, args.runs, args.hosts):
            rows.append(
                (
                    f"query {label} -> {count:,} rows",
                    f"{median:.1f} ms (max {worst:.1f}, CPU {cpu:.1f})",
                    "< 100 ms",
                )
            )
        progress("queries done; ingesting into the big store")
        # the next month of traffic from the same hosts: the steady state of a long-lived store
        later = make_events(args.ingest, args.hosts, seed=11, span=(END, END + 30 * DAY_US))
        rate = ingest_rate(f"sqlite:///{big}", later, args.batch)
        rows.append((f"ingest into the {n:,}-hit store, batches of {args.batch}", rate, ">= 50,000"))  # fmt: skip
    finally:
        if not args.keep and not args.dir:
            shutil.rmtree(base, ignore_errors=True)
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    print(f"{'figure':<{widths[0]}}  {'value':<{widths[1]}}  target")
    for r in rows:
        print(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]}".rstrip())
    info = {"hits": args.hits, "hosts": args.hosts, "batch": args.batch}
    print(json.dumps(info | {"loadavg_start": load_start, "loadavg_end": os.getloadavg()}))


if __name__ == "__main__":
    main()
