"""The questions responders ask, as SQL both backends run: hosts, a host's timeline, who
contacted a name, passive DNS, and hosts active after the ban.

``hosts`` and ``after-ban`` read the per-host aggregates only (never ``hits``); ``host``
reads ``hits`` through its ``(host, ts_us)`` index; ``name`` reads ``host_names`` and
``dns`` reads ``pdns`` through their reversed-name keys. Every answer is a ``Result``:
rows of plain values (times as RFC 3339 strings), the same from SQLite and PostgreSQL.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from itertools import groupby
from operator import itemgetter
from typing import Any, Final

from consumers.assets import AssetMap
from consumers.store.base import Backend, StoreError
from consumers.store.holders import Holders, machine_named
from consumers.store.names import NameMatch
from consumers.store.rollup import loads_set, us_to_ts
from consumers.store.rows import (
    Sets,
    distinct_split,
    host_order,
    ip_order,
    marks,
    sorted_split,
)

BAN_DATE: Final = date(2024, 9, 29)  # US Commerce Department ban on Kaspersky software
DEFAULT_LIMIT: Final = 10_000
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


class QueryError(StoreError):
    """A query's parameters are wrong (a bad time, address or pattern)."""


@dataclass
class Result:
    query: str
    columns: tuple[str, ...]  # every field of a row, in order (CSV header, JSON keys)
    table: tuple[str, ...]  # the fields a terminal table shows
    rows: list[dict[str, Any]] = field(default_factory=list)
    note: str = ""  # one line for stderr: why nothing was found, or that rows were cut
    about: dict[str, Any] = field(default_factory=dict)  # of the whole answer (a verdict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"query": self.query, "count": len(self.rows), "results": self.rows}
        out.update(self.about)
        if self.note:
            out["note"] = self.note
        return out


# ---------------------------------------------------------------------------- parameters


def parse_time(text: str, end_of_day: bool = False) -> int:
    """``YYYY-MM-DD`` or RFC 3339 (``Z`` or an offset; no offset means UTC) → µs.

    With ``end_of_day`` a bare date means the last microsecond of that day (``--until``).
    """
    value = text.strip()
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            if end_of_day:
                day += timedelta(days=1)
            dt = datetime(day.year, day.month, day.day, tzinfo=UTC)
            return (dt - _EPOCH) // timedelta(microseconds=1) - (1 if end_of_day else 0)
        dt = datetime.fromisoformat(value)
    except (ValueError, OverflowError):  # 9999-12-31 as the end of a day: past datetime.max
        raise QueryError(
            f"time {text!r}: expected YYYY-MM-DD or RFC 3339 (2026-11-01T00:00:00Z)"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - _EPOCH) // timedelta(microseconds=1)


def parse_host(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text.strip().strip("[]")))
    except ValueError:
        raise QueryError(f"host {text!r} is not an IP address") from None


# ---------------------------------------------------------------------------- hosts

HOST_COLUMNS: Final = (
    "host",
    "site",
    "host_name",
    "mac",
    "first_seen",
    "last_seen",
    "count",
    "allowlisted",
    "categories",
    "sensors",
    "verdict",
    "verdict_confidence",
    "evidence",
)
# what ``after-ban`` lists unless asked for every verdict: installs, embedded engines, and
# hosts stored before verdicts existed ('')
AFTER_BAN_VERDICTS: Final = frozenset({"installed", "oem-engine", ""})


def _verdicts(b: Backend, hosts: Sequence[str]) -> dict[str, tuple[str, str, list[str]]]:
    out = {}
    for i in range(0, len(hosts), 500):
        chunk = list(hosts[i : i + 500])
        sql = (
            "SELECT host, verdict, verdict_confidence, evidence FROM hosts "  # noqa: S608
            f"WHERE host IN ({marks(chunk)})"
        )
        for host, verdict, conf, evidence in b.query(sql, chunk):
            out[host] = (verdict, conf, json.loads(evidence or "[]"))
    return out


def hosts(
    b: Backend,
    since_us: int | None = None,
    until_us: int | None = None,
    categories: Sequence[str] = (),
    sites: Sequence[str] = (),
    assets: AssetMap | None = None,
    query: str = "hosts",
) -> Result:
    """Every host with hits: first/last seen, count, categories, sensors, and its verdict
    (``consumers/verdict.py``) with its confidence and evidence ('' for hosts stored
    before verdicts).

    ``since``/``until`` keep hosts whose activity span overlaps the window (last seen ≥
    since, first seen ≤ until); with ``categories`` the span, count and categories are
    those of the chosen categories only. ``sites`` needs the asset map.
    """
    if sites and assets is None:
        raise QueryError("--site needs an asset map (--assets FILE)")
    where, params = [], []
    if since_us is not None:
        where.append("last_us >= ?")
        params.append(since_us)
    if until_us is not None:
        where.append("first_us <= ?")
        params.append(until_us)
    # (host, first, last, count, allowlisted, categories, sensors) per host
    found: list[tuple[str, int, int, int, int, list[str], list[str]]] = []
    if categories:
        cats = sorted(set(categories))
        where.insert(0, f"category IN ({marks(cats)})")
        sql = (
            "SELECT host, category, first_us, last_us, count, allowlisted, sensors "  # noqa: S608
            f"FROM host_category WHERE {' AND '.join(where)} ORDER BY host"
        )
        for host, group in groupby(b.query(sql, [*cats, *params]), itemgetter(0)):
            rows = list(group)
            found.append(
                (
                    host,
                    min(r[2] for r in rows),
                    max(r[3] for r in rows),
                    sum(r[4] for r in rows),
                    sum(r[5] for r in rows),
                    sorted({r[1] for r in rows}),
                    sorted({s for r in rows for s in loads_set(r[6])}),
                )
            )
    else:
        sql = "SELECT host, first_us, last_us, count, allowlisted, categories, sensors FROM hosts"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sets = Sets(loads_set)
        found = [
            (host, first, last, count, allow, sets(cats), sets(sensors))
            for host, first, last, count, allow, cats, sensors in b.query(sql, params)
        ]
    found.sort(key=host_order)
    fmt = us_to_ts
    verdicts = _verdicts(b, [f[0] for f in found])
    unknown: tuple[str, str, list[str]] = ("", "", [])
    held = Holders(b).load_all()  # the machine that held each address when last seen
    # the counts are integers as stored (INTEGER/BIGINT columns, or Python sums of them)
    out: list[dict[str, Any]] = [
        {
            "host": host,
            **held.at(host, last),
            "first_seen": fmt(first),
            "last_seen": fmt(last),
            "count": count,
            "allowlisted": allow,
            "categories": cats_seen,
            "sensors": sensors_seen,
            "verdict": verdicts.get(host, unknown)[0],
            "verdict_confidence": verdicts.get(host, unknown)[1],
            "evidence": verdicts.get(host, unknown)[2],
        }
        for host, first, last, count, allow, cats_seen, sensors_seen in found
    ]
    if assets is not None:
        wanted_sites = set(sites)
        with_site = []
        for row in out:
            site = assets.lookup(row["host"]).site
            if not wanted_sites or site in wanted_sites:
                with_site.append({"host": row["host"], "site": site} | row)
        out = with_site
    columns = HOST_COLUMNS if assets is not None else tuple(c for c in HOST_COLUMNS if c != "site")
    table = tuple(c for c in columns if c != "evidence")
    return Result(query, columns, table, out, "" if out else "no host matches")


def after_ban(
    b: Backend,
    day: date = BAN_DATE,
    categories: Sequence[str] = (),
    sites: Sequence[str] = (),
    assets: AssetMap | None = None,
    every_verdict: bool = False,
) -> Result:
    """Hosts with a hit on or after ``day`` (UTC): the compliance list. Only hosts whose
    verdict is an install or an embedded engine (or unknown: stored before verdicts),
    unless ``every_verdict``: web artefacts and unverified names run no Kaspersky code."""
    since = parse_time(day.isoformat())
    result = hosts(b, since, None, categories, sites, assets, query="after-ban")
    left = 0
    if not every_verdict:
        kept = [r for r in result.rows if r["verdict"] in AFTER_BAN_VERDICTS]
        left = len(result.rows) - len(kept)
        result.rows = kept
    if left:
        result.note = (
            f"{left} more host(s) with only web artefacts, unverified names or management "
            "traffic left out; --all-verdicts lists them"
        )
    elif not result.rows:
        result.note = f"no host active on or after {day.isoformat()}"
    return result


# ---------------------------------------------------------------------------- timeline

TIMELINE_COLUMNS: Final = (
    "ts",
    "event_id",
    "host",
    "host_name",
    "mac",
    "sensor",
    "kind",
    "name",
    "query",
    "answers",
    "peer",
    "src_ip",
    "src_port",
    "dst_ip",
    "dst_port",
    "transport",
    "indicator_id",
    "pattern",
    "match_kind",
    "category",
    "severity",
    "confidence",
    "allowlisted",
    "extra",
)
TIMELINE_TABLE: Final = (
    "ts", "sensor", "kind", "name", "peer", "indicator_id", "category", "severity", "allowlisted",
    "host_name", "mac",
)  # fmt: skip
_HIT_SELECT: Final = (
    "SELECT ts_us, event_id, host, sensor, kind, name, query, answers, src_ip, src_port, dst_ip, "
    "dst_port, transport, indicator_id, pattern, match_kind, category, severity, confidence, "
    "allowlisted, extra FROM hits"
)


def _endpoint(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def host_timeline(
    b: Backend,
    host: str,
    since_us: int | None = None,
    until_us: int | None = None,
    limit: int = DEFAULT_LIMIT,
) -> Result:
    """That host's hits in time order (``limit`` at most; 0 = all), each with the machine
    that held the address then (``host_name``, ``mac``). ``host`` is an address, or a host
    name or MAC seen in identity records: the hits of every address that machine held,
    while it held it."""
    named = machine_named(host)
    if named is not None:
        return _machine_timeline(b, host, named, since_us, until_us, limit)
    ip = parse_host(host)
    sql = _HIT_SELECT + " WHERE host = ?"
    params: list[Any] = [ip]
    if since_us is not None:
        sql += " AND ts_us >= ?"
        params.append(since_us)
    if until_us is not None:
        sql += " AND ts_us <= ?"
        params.append(until_us)
    sql += " ORDER BY ts_us, event_id"
    if limit > 0:
        sql += " LIMIT ?"
        params.append(limit + 1)
    rows = []
    held = Holders(b)
    for r in b.query(sql, params):
        (ts, eid, h, sensor, kind, name, query, answers, src, sport, dst, dport, transport) = r[:13]
        ind, pattern, match, cat, sev, conf, allow, extra = r[13:]
        peer = _endpoint(src, sport) if kind == "dns_answer" else _endpoint(dst, dport)
        rows.append(
            {
                "ts": us_to_ts(ts),
                "event_id": eid,
                "host": h,
                "sensor": sensor,
                "kind": kind,
                "name": name,
                "query": query,
                "answers": loads_set(answers) if answers else [],
                "peer": peer,
                "src_ip": src,
                "src_port": int(sport),
                "dst_ip": dst,
                "dst_port": int(dport),
                "transport": transport,
                "indicator_id": ind,
                "pattern": pattern,
                "match_kind": match,
                "category": cat,
                "severity": sev,
                "confidence": conf,
                "allowlisted": allow,
                "extra": json.loads(extra) if extra else {},
                **held.at(h, int(ts)),
            }
        )
    note = ""
    if limit > 0 and len(rows) > limit:
        del rows[limit:]
        note = f"showing the first {limit} hits of {ip}; raise --limit (0 = all) for more"
    elif not rows:
        known = b.query("SELECT first_us, last_us, count FROM hosts WHERE host = ?", [ip])
        if known and since_us is None and until_us is None:
            first, last, count = known[0]
            note = (
                f"no hits stored for {ip}: its {count} hits ({us_to_ts(first)} .. "
                f"{us_to_ts(last)}) are past the retention period"
            )
        elif known:
            note = f"no hits of {ip} in that window"
        else:
            note = f"no hits for {ip}"
    result = Result("host", TIMELINE_COLUMNS, TIMELINE_TABLE, rows, note)
    found = _verdicts(b, [ip]).get(ip)
    if found is not None and found[0]:
        verdict, conf, evidence = found
        result.about = {"verdict": {"verdict": verdict, "confidence": conf, "evidence": evidence}}
    return result


def _machine_timeline(
    b: Backend,
    text: str,
    machine: tuple[str, str],
    since_us: int | None,
    until_us: int | None,
    limit: int,
) -> Result:
    field, value = machine
    sql = (
        "SELECT DISTINCT address FROM identities WHERE mac = ?"
        if field == "mac"
        else "SELECT DISTINCT address FROM identities WHERE lower(hostname) = lower(?)"
    )
    addresses = [r[0] for r in b.query(sql, [value])]
    if not addresses:
        raise QueryError(
            f"host {text!r}: not an IP address, nor a host name or MAC in the identity records"
        )
    rows: list[dict[str, Any]] = []
    for address in addresses:
        found = host_timeline(b, address, since_us, until_us, 0)
        match = value.lower() if field == "host_name" else value
        rows += [r for r in found.rows if str(r[field]).lower() == match.lower()]
    rows.sort(key=lambda r: (r["ts"], r["event_id"]))
    note = "" if rows else f"no hits while {value} held {', '.join(addresses)}"
    if limit > 0 and len(rows) > limit:
        del rows[limit:]
        note = f"showing the first {limit} hits of {value}; raise --limit (0 = all) for more"
    return Result("host", TIMELINE_COLUMNS, TIMELINE_TABLE, rows, note)


# ---------------------------------------------------------------------------- names

CONTACT_COLUMNS: Final = (
    "host", "site", "first_seen", "last_seen", "count", "names", "categories",
)  # fmt: skip


def name_contacts(b: Backend, match: NameMatch, assets: AssetMap | None = None) -> Result:
    """Who contacted the names a pattern selects: one row per host."""
    cond, params = match.where()
    # a host's rows have distinct names (the key is (host, rname)): no DISTINCT needed,
    # which SQLite would pay for with a temporary B-tree per host
    sql = (
        "SELECT host, min(first_us), max(last_us), CAST(sum(count) AS BIGINT), "  # noqa: S608
        f"{b.agg_join('name')}, {b.agg_join('category')} FROM host_names WHERE {cond} "
        "GROUP BY host"
    )
    names_of, cats_of = Sets(sorted_split), Sets(distinct_split)
    found = b.query(sql, params)
    found.sort(key=host_order)
    fmt = us_to_ts
    # one dict display per row, no conversions: the SQL's types are the output's (the sum
    # is cast to BIGINT, an int in both backends)
    rows: list[dict[str, Any]] = [
        {
            "host": host,
            "first_seen": fmt(first),
            "last_seen": fmt(last),
            "count": count,
            "names": names_of(names),
            "categories": cats_of(cats),
        }
        for host, first, last, count, names, cats in found
    ]
    if assets is not None:
        lookup = assets.lookup
        rows = [{"host": r["host"], "site": lookup(r["host"]).site} | r for r in rows]
    columns = (
        CONTACT_COLUMNS if assets is not None else tuple(c for c in CONTACT_COLUMNS if c != "site")
    )
    return Result("name", columns, columns, rows, "" if rows else "no host contacted that name")


DNS_COLUMNS: Final = ("name", "answer", "first_seen", "last_seen", "count")


def passive_dns(b: Backend, match: NameMatch) -> Result:
    """Passive DNS of watched names: the addresses they resolved to, first and last seen."""
    cond, params = match.where()
    sql = f"SELECT name, answer, first_us, last_us, count FROM pdns WHERE {cond}"  # noqa: S608
    rows = [
        {
            "name": name,
            "answer": answer,
            "first_seen": us_to_ts(first),
            "last_seen": us_to_ts(last),
            "count": int(count),
        }
        for name, answer, first, last, count in sorted(
            b.query(sql, params), key=lambda r: (r[0], ip_order(r[1]))
        )
    ]
    return Result("dns", DNS_COLUMNS, DNS_COLUMNS, rows, "" if rows else "no DNS answers stored")
