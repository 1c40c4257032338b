"""Which backend a database URL names: SQLite (the embedded default) or PostgreSQL.

Each backend is imported only when its URL is opened (psycopg is not loaded for SQLite)."""

from __future__ import annotations

from consumers.store.base import Backend, StoreError, redact


def open_backend(url: str, readonly: bool = False) -> Backend:
    """``sqlite:///path`` (relative) or ``sqlite:////abs/path``; ``postgresql://…``."""
    scheme, sep, rest = url.partition("://")
    if scheme == "sqlite" and sep:
        from consumers.store.sqlite import SQLiteBackend

        path = rest[1:] if rest.startswith("/") else rest
        if not path:
            raise StoreError(f"database URL {url!r}: expected sqlite:///PATH")
        return SQLiteBackend(path, readonly=readonly)
    if scheme in ("postgresql", "postgres") and sep:
        from consumers.store.postgres import PostgresBackend

        return PostgresBackend(url, readonly=readonly)
    raise StoreError(
        f"database URL {redact(url)!r}: expected sqlite:///PATH or postgresql://USER@HOST/DB"
    )
