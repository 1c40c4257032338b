"""What every store backend offers, the store's one error type, and database URLs."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from consumers.store import schema

log = logging.getLogger("kaspwatch.store")

Row = tuple[Any, ...]


class StoreError(Exception):
    """The store cannot be opened or used; ``str()`` is one line for the operator."""


def check_version(where: str, rows: Sequence[Sequence[Any]], version: int) -> None:
    """The store's recorded schema version must be the one this kaspwatch reads; the
    error says what to do about it."""
    found = rows[0][0] if rows else "?"
    if found == str(version):
        return
    if not str(found).isdigit():
        raise StoreError(f"{where}: not a kaspwatch store (no schema version)")
    if int(found) > version:
        what = "upgrade kaspwatch to read it"
    elif int(found) in schema.MIGRATIONS:
        what = "run 'kaspwatch store' on it once to upgrade it in place"
    else:
        what = "rebuild it from the hits topic ('kaspwatch store --from-beginning' into a new --db)"
    raise StoreError(f"{where}: store schema {found}, this kaspwatch reads {version}: {what}")


def ensure_schema(b: Backend, text: str, integer: str, clustered: str = "") -> None:
    """Create the schema in an empty database, or upgrade an older store in place, in one
    write transaction (so two writers starting together cannot both do it), logging each
    upgrade. A version this kaspwatch cannot upgrade is left as it is, for
    ``check_version`` to explain."""
    migrated: list[int] = []
    b.begin()
    try:
        made = schema.tables(text, integer, clustered)
        b.query(made[0])  # meta
        rows = b.query("SELECT value FROM meta WHERE key = 'schema'")
        if not rows:
            for stmt in (*made[1:], *schema.INDEXES):
                b.query(stmt)
            b.query(
                "INSERT INTO meta (key, value) VALUES ('schema', ?)", (str(schema.SCHEMA_VERSION),)
            )
        elif str(rows[0][0]).isdigit():
            version = int(rows[0][0])
            while version < schema.SCHEMA_VERSION and version in schema.MIGRATIONS:
                for stmt in schema.migration(version, text, integer, clustered):
                    b.query(stmt)
                migrated.append(version)
                version += 1
            if migrated:
                b.query("UPDATE meta SET value = ? WHERE key = 'schema'", (str(version),))
            if version == schema.SCHEMA_VERSION:
                for stmt in schema.INDEXES:  # indexes added since the store was made
                    b.query(stmt)
        b.commit()
    except BaseException:
        b.rollback()
        raise
    for version in migrated:
        log.info("%s: store schema %d upgraded to %d", b.where, version, version + 1)


class Backend(Protocol):
    """One connection to one database. SQL uses ``?`` placeholders; backends translate.

    Not thread-safe: the store and the API give each thread its own or serialise.
    """

    kind: str  # "sqlite" | "postgresql"
    where: str  # the URL without its password, for messages
    least: str  # two-argument minimum: min() in SQLite, LEAST() in PostgreSQL
    greatest: str

    def agg_join(self, column: str) -> str:
        """SQL aggregate joining every value of ``column`` with commas."""
        ...

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...

    def begin(self) -> None:
        """Start a write transaction that excludes every other writer until commit."""
        ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...

    def insert_hits(self, columns: Sequence[str], rows: Sequence[Row]) -> set[str]:
        """Insert what is not stored yet (by event_id); return the ids actually inserted."""
        ...

    def close(self) -> None: ...


def default_db_url() -> str:
    """``$KASPWATCH_DB``, else SQLite in the state directory (like the alerts state)."""
    env = os.environ.get("KASPWATCH_DB")
    if env:
        return env
    base = Path(os.environ.get("KASPWATCH_STATE_DIR", ".kaspwatch"))
    return f"sqlite:///{base / 'store.sqlite'}"


_SECRET_PARAMS = frozenset({"password", "sslpassword"})


def redact(url: str) -> str:
    """The URL with any password replaced (``user:PASSWORD@`` and ``?password=``, as libpq
    takes both), safe for logs and error messages."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<a malformed database URL>"
    secret_query = any(k.lower() in _SECRET_PARAMS for k, _ in parse_qsl(parts.query))
    if password is None and not secret_query:
        return url
    if password is not None:
        netloc = parts.netloc.rsplit("@", 1)[1]
        parts = parts._replace(netloc=f"{parts.username or ''}:***@{netloc}")
    if secret_query:
        query = parse_qsl(parts.query, keep_blank_values=True)
        clean = [(k, "***" if k.lower() in _SECRET_PARAMS else v) for k, v in query]
        parts = parts._replace(query=urlencode(clean, safe="*"))
    return urlunsplit(parts)
