"""The store's tables and indexes, shared by SQLite and PostgreSQL.

Times are integer microseconds since the epoch (UTC), the same in both databases.

- ``hits``: one row per hit (an event with an indicator, allowlisted ones included),
  primary key ``(ts_us, event_id)``: an event id is a hash over the packet time among
  other things, so the pair is exactly as unique as the id, and a time-first key makes
  inserts appends (no random writes into an index of millions of hashes) and retention a
  range delete. In SQLite the table is clustered on it (``WITHOUT ROWID``). Indexed by
  ``(host, ts_us)`` for a host's timeline. Retention deletes rows here only.
- Materialised aggregates, updated in the transaction that inserts the hits and only for
  hits that were new (a replay changes nothing): ``host_indicator`` and ``host_category``
  (first/last seen, count, allowlisted count, sensors and names seen — bounded JSON lists),
  ``hosts`` (one row per host: what ``query hosts`` and ``after-ban`` read, a few thousand
  rows scanned whole), ``host_names`` (who contacted which name, keyed by reversed name
  first, so a zone is one key range) and ``pdns`` (passive DNS of watched names: name →
  answer addresses, keyed the same way). Their rows are clustered by key in SQLite.
  No aggregate column that changes on update is indexed: an update rewrites one row in
  place and moves no index entry.
- ``meta``: the schema version.
"""

from __future__ import annotations

from typing import Final

SCHEMA_VERSION: Final = 1

HIT_COLUMNS: Final = (
    "event_id",
    "ts_us",
    "host",
    "sensor",
    "kind",
    "name",
    "query",
    "answers",
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

# {t}: a text column compared and ordered bytewise; {i}: a 64-bit integer.
_TABLES: Final = (
    """CREATE TABLE IF NOT EXISTS meta (
        key {t} PRIMARY KEY,
        value {t} NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS hits (
        event_id {t} NOT NULL,
        ts_us {i} NOT NULL,
        host {t} NOT NULL,
        sensor {t} NOT NULL,
        kind {t} NOT NULL,
        name {t} NOT NULL,
        query {t},
        answers {t},
        src_ip {t} NOT NULL,
        src_port {i} NOT NULL,
        dst_ip {t} NOT NULL,
        dst_port {i} NOT NULL,
        transport {t} NOT NULL,
        indicator_id {t} NOT NULL,
        pattern {t} NOT NULL,
        match_kind {t} NOT NULL,
        category {t} NOT NULL,
        severity {t} NOT NULL,
        confidence {t} NOT NULL,
        allowlisted {t},
        extra {t},
        PRIMARY KEY (ts_us, event_id)
    ){clustered}""",
    """CREATE TABLE IF NOT EXISTS host_indicator (
        host {t} NOT NULL,
        indicator_id {t} NOT NULL,
        category {t} NOT NULL,
        first_us {i} NOT NULL,
        last_us {i} NOT NULL,
        count {i} NOT NULL,
        allowlisted {i} NOT NULL,
        sensors {t} NOT NULL,
        names {t} NOT NULL,
        PRIMARY KEY (host, indicator_id)
    ){clustered}""",
    """CREATE TABLE IF NOT EXISTS host_category (
        host {t} NOT NULL,
        category {t} NOT NULL,
        first_us {i} NOT NULL,
        last_us {i} NOT NULL,
        count {i} NOT NULL,
        allowlisted {i} NOT NULL,
        sensors {t} NOT NULL,
        names {t} NOT NULL,
        PRIMARY KEY (host, category)
    ){clustered}""",
    """CREATE TABLE IF NOT EXISTS hosts (
        host {t} NOT NULL PRIMARY KEY,
        first_us {i} NOT NULL,
        last_us {i} NOT NULL,
        count {i} NOT NULL,
        allowlisted {i} NOT NULL,
        categories {t} NOT NULL,
        sensors {t} NOT NULL
    ){clustered}""",
    """CREATE TABLE IF NOT EXISTS host_names (
        rname {t} NOT NULL,
        host {t} NOT NULL,
        name {t} NOT NULL,
        category {t} NOT NULL,
        indicator_id {t} NOT NULL,
        first_us {i} NOT NULL,
        last_us {i} NOT NULL,
        count {i} NOT NULL,
        PRIMARY KEY (rname, host)
    ){clustered}""",
    """CREATE TABLE IF NOT EXISTS pdns (
        rname {t} NOT NULL,
        answer {t} NOT NULL,
        name {t} NOT NULL,
        first_us {i} NOT NULL,
        last_us {i} NOT NULL,
        count {i} NOT NULL,
        PRIMARY KEY (rname, answer)
    ){clustered}""",
)

INDEXES: Final = (
    "CREATE INDEX IF NOT EXISTS hits_host_ts ON hits (host, ts_us)",
    "CREATE INDEX IF NOT EXISTS host_category_category ON host_category (category)",
)
INDEX_NAMES: Final = ("hits_host_ts", "host_category_category")


def tables(text: str, integer: str, clustered: str = "") -> list[str]:
    """CREATE TABLE statements with the backend's column types; ``clustered`` ends every
    table but ``meta`` (SQLite: `` WITHOUT ROWID``: rows kept in primary-key order, so a
    batch's updates to one host's rows touch few pages)."""
    return [t.format(t=text, i=integer, clustered=clustered) for t in _TABLES]
