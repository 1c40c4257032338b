"""PostgreSQL backend (psycopg 3), for teams sharing one store.

Writers serialise on a transaction-level advisory lock, so the read-merge-write of the
bounded aggregate sets is safe with several ``kaspwatch store`` processes; readers use
read-only sessions and never wait for it. New hits are inserted with one
``INSERT … SELECT FROM unnest(…) ON CONFLICT DO NOTHING RETURNING event_id``: the
database itself says which hits were new. Text columns use the ``C`` collation, so
ordering and the reversed-name ranges behave exactly as in SQLite.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import psycopg

from consumers.store import schema
from consumers.store.base import Row, StoreError, check_version, ensure_schema, redact

_LOCK_KEY: Final = 0x6B617370  # "kasp": the store writers' advisory lock
_INTEGER_COLUMNS: Final = frozenset({"ts_us", "src_port", "dst_port"})


def _sql(text: str) -> bytes:
    """``?`` placeholders → psycopg's ``%s`` (the store's SQL has no literal % or ?)."""
    return text.replace("?", "%s").encode()


class PostgresBackend:
    kind = "postgresql"
    least = "LEAST"
    greatest = "GREATEST"

    def __init__(self, url: str, readonly: bool = False) -> None:
        self.where = redact(url)
        try:
            self.conn = psycopg.connect(url, autocommit=readonly, connect_timeout=10)
        except psycopg.Error as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StoreError(f"{self.where}: cannot connect: {reason}") from None
        if readonly:
            self.conn.execute(b"SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
            self.check_schema()
        else:
            self.ensure_schema()

    def ensure_schema(self) -> None:
        try:
            ensure_schema(self, 'TEXT COLLATE "C"', "BIGINT")
        except psycopg.Error as exc:
            raise StoreError(f"{self.where}: cannot create the schema: {exc}") from None
        self.check_schema()

    def check_schema(self) -> None:
        try:
            rows = self.query("SELECT value FROM meta WHERE key = 'schema'")
        except psycopg.Error:
            self.rollback()
            raise StoreError(f"{self.where}: not a kaspwatch store") from None
        check_version(self.where, rows, schema.SCHEMA_VERSION)
        if not self.conn.autocommit:
            self.conn.commit()

    def agg_join(self, column: str) -> str:
        return f"string_agg({column}, ',')"

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with self.conn.cursor() as cur:
            cur.execute(_sql(sql), params)
            return cur.fetchall() if cur.description else []

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            with self.conn.cursor() as cur:
                cur.executemany(_sql(sql), rows)

    def begin(self) -> None:
        self.conn.execute(b"SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))

    def commit(self) -> None:
        self.conn.commit()

    def rollback(self) -> None:
        if not self.conn.closed:
            self.conn.rollback()

    def insert_hits(self, columns: Sequence[str], rows: Sequence[Row]) -> set[str]:
        if not rows:
            return set()
        arrays = [list(col) for col in zip(*rows, strict=True)]
        casts = ", ".join("?::bigint[]" if c in _INTEGER_COLUMNS else "?::text[]" for c in columns)
        sql = (
            f"INSERT INTO hits ({', '.join(columns)}) SELECT * FROM unnest({casts}) "  # noqa: S608
            "ON CONFLICT (ts_us, event_id) DO NOTHING RETURNING event_id"
        )
        return {r[0] for r in self.query(sql, arrays)}

    def close(self) -> None:
        self.conn.close()
