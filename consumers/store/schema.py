"""The store's tables and indexes, shared by SQLite and PostgreSQL.

Times are integer microseconds since the epoch (UTC), the same in both databases.

- ``hits``: one row per hit (an event with an indicator, allowlisted ones included),
  primary key ``(ts_us, event_id)``: an event id is a hash over the packet time among
  other things, so the pair is exactly as unique as the id, and a time-first key makes
  inserts appends (no random writes into an index of millions of hashes) and retention a
  range delete. In SQLite the table is clustered on it (``WITHOUT ROWID``). Indexed by
  ``(host, ts_us)`` for a host's timeline. Retention deletes rows here only.
- Materialised aggregates, updated in the transaction that inserts the hits and only for
  hits that were new (a replay changes nothing), each key once per batch:
  ``hosts`` (one row per host: what ``query hosts`` and ``after-ban`` read, a few thousand
  rows scanned whole; sensors and categories seen as bounded JSON lists; the host's
  verdict, its confidence and evidence lines, merged batch by batch),
  ``host_category`` (the same per (host, category), for ``--category``) and
  ``host_names`` (who contacted which name: the latest indicator and category, first/last
  seen, count), all keyed by host first, and ``pdns`` (passive DNS of watched names: name
  → answer addresses, keyed by reversed name). Host-first keys are what makes ingest
  cheap: a batch's hits come in bursts per host, so a host's aggregate rows sit together
  and a batch dirties about a page per host in each table instead of one per (name, host)
  key (version 1 keyed ``host_names`` by name: 4.6 KiB of WAL per hit against 2.4 KiB
  now, measured in batches of 500). A name or zone query reads ``host_names`` whole in host order (a few hundred
  thousand short rows) and groups as it goes. Rows are clustered by key in SQLite; no
  aggregate table has a secondary index, so an update rewrites one row in place.
- ``packets``: the packet identity (``packet_id``) of every stored hit that carries one,
  with its time: a hit whose packet is already here (the same packet reported by another
  sensor) is stored and adds its sensor to the sensors sets, but no count. Retention
  deletes rows here as in ``hits``.
- ``identities``: which machine (MAC, host name, source) held an address from a time on,
  from the identity topic; joined to hits when a query runs, so an identity stored after
  its hits still names them.
- ``meta``: the schema version. ``MIGRATIONS`` upgrade older stores in place.
"""

from __future__ import annotations

from typing import Final

SCHEMA_VERSION: Final = 5

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
    """CREATE TABLE IF NOT EXISTS host_category (
        host {t} NOT NULL,
        category {t} NOT NULL,
        first_us {i} NOT NULL,
        last_us {i} NOT NULL,
        count {i} NOT NULL,
        allowlisted {i} NOT NULL,
        sensors {t} NOT NULL,
        PRIMARY KEY (host, category)
    ){clustered}""",
    """CREATE TABLE IF NOT EXISTS hosts (
        host {t} NOT NULL PRIMARY KEY,
        first_us {i} NOT NULL,
        last_us {i} NOT NULL,
        count {i} NOT NULL,
        allowlisted {i} NOT NULL,
        categories {t} NOT NULL,
        sensors {t} NOT NULL,
        verdict {t} NOT NULL DEFAULT '',
        verdict_confidence {t} NOT NULL DEFAULT '',
        evidence {t} NOT NULL DEFAULT '[]'
    ){clustered}""",
    """CREATE TABLE IF NOT EXISTS host_names (
        host {t} NOT NULL,
        rname {t} NOT NULL,
        name {t} NOT NULL,
        category {t} NOT NULL,
        indicator_id {t} NOT NULL,
        first_us {i} NOT NULL,
        last_us {i} NOT NULL,
        count {i} NOT NULL,
        PRIMARY KEY (host, rname)
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
    """CREATE TABLE IF NOT EXISTS packets (
        packet_id {t} NOT NULL PRIMARY KEY,
        ts_us {i} NOT NULL
    ){clustered}""",
    # which machine held an address from ts_us (kaspwatch.identity.v1): joined to hits at
    # query time, so an identity stored after its hits still names them (late binding)
    """CREATE TABLE IF NOT EXISTS identities (
        address {t} NOT NULL,
        ts_us {i} NOT NULL,
        mac {t} NOT NULL,
        hostname {t} NOT NULL,
        fqdn {t} NOT NULL,
        source {t} NOT NULL,
        sensor {t} NOT NULL,
        lease_s {i},
        PRIMARY KEY (address, ts_us, mac)
    ){clustered}""",
)

INDEXES: Final = (
    "CREATE INDEX IF NOT EXISTS hits_host_ts ON hits (host, ts_us)",
    # who contacted a name: a range scan on rname, not a scan of every (host, name) row
    "CREATE INDEX IF NOT EXISTS host_names_rname ON host_names (rname)",
)
INDEX_NAMES: Final = ("hits_host_ts", "host_names_rname")

# version → the statements that bring a store of that version to the next one, in one
# transaction. 1 → 2 keeps every count: host_names and host_category are copied into
# their host-first layout; host_indicator (read by no query) and the names lists of
# host_category (idem) go. 2 → 3 adds ``packets`` (hits stored before carry no packet
# identity and keep their counts); 3 → 4 adds the hosts' verdict columns; 4 → 5 adds
# ``identities`` (which machine held an address when). ``{clustered}``
# and the types are filled in as for
# ``tables``.
MIGRATIONS: Final[dict[int, tuple[str, ...]]] = {
    1: (
        "DROP INDEX IF EXISTS host_category_category",
        "DROP TABLE IF EXISTS host_indicator",
        "ALTER TABLE host_names RENAME TO host_names_v1",
        "ALTER TABLE host_category RENAME TO host_category_v1",
        "{host_names}",
        "{host_category}",
        "INSERT INTO host_names (host, rname, name, category, indicator_id, first_us, last_us, "
        "count) SELECT host, rname, name, category, indicator_id, first_us, last_us, count "
        "FROM host_names_v1",
        "INSERT INTO host_category (host, category, first_us, last_us, count, allowlisted, "
        "sensors) SELECT host, category, first_us, last_us, count, allowlisted, sensors "
        "FROM host_category_v1",
        "DROP TABLE host_names_v1",
        "DROP TABLE host_category_v1",
    ),
    2: ("{packets}",),
    # 3 → 4: each host's verdict (consumers/verdict.py), its confidence and evidence lines
    # (JSON). Hosts stored before have none ('' reads "unknown": never hidden by after-ban)
    3: (
        "ALTER TABLE hosts ADD COLUMN verdict TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE hosts ADD COLUMN verdict_confidence TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE hosts ADD COLUMN evidence TEXT NOT NULL DEFAULT '[]'",
    ),
    4: ("{identities}",),  # 4 -> 5: the identities table, nothing else changes
}


def tables(text: str, integer: str, clustered: str = "") -> list[str]:
    """CREATE TABLE statements with the backend's column types; ``clustered`` ends every
    table but ``meta`` (SQLite: `` WITHOUT ROWID``: rows kept in primary-key order, so a
    batch's updates to one host's rows touch few pages)."""
    return [t.format(t=text, i=integer, clustered=clustered) for t in _TABLES]


def migration(version: int, text: str, integer: str, clustered: str = "") -> list[str]:
    """The statements upgrading a store of ``version`` by one version."""
    made = {_name(t): t for t in tables(text, integer, clustered)}
    return [made[stmt[1:-1]] if stmt.startswith("{") else stmt for stmt in MIGRATIONS[version]]


def _name(create: str) -> str:
    return create.split("EXISTS", 1)[1].split("(", 1)[0].strip()
