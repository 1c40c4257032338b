"""Which backend a database URL names: SQLite (the embedded default) or PostgreSQL.

Each backend is imported only when its URL is opened (psycopg is not loaded for SQLite)."""

from __future__ import annotations

from consumers.store.base import Backend, StoreError, redact


def open_backend(url: str, readonly: bool = False) -> Backend:
    """``sqlite:///path`` (relative) or ``sqlite:////abs/path``; ``postgresql://…``.
    A malformed URL, or a SQLite file in a folder that does not exist, is a ``StoreError``:
    nothing creates folders here (a typo must not make a new, empty store)."""
    scheme, sep, rest = url.partition("://")
    if scheme == "sqlite" and sep:
        from consumers.store.sqlite import SQLiteBackend

        if not rest.startswith("/"):  # sqlite://x.sqlite: "x.sqlite" would be a host
            raise StoreError(
                f"database URL {url!r}: expected sqlite:///PATH, three slashes "
                f"(sqlite:///{rest or 'store.sqlite'} relative, sqlite:////abs/path absolute)"
            )
        path = rest[1:]
        if not path or path.endswith("/"):
            raise StoreError(f"database URL {url!r}: expected sqlite:///PATH of a file")
        return SQLiteBackend(path, readonly=readonly)
    if scheme in ("postgresql", "postgres") and sep:
        from consumers.store.postgres import PostgresBackend

        return PostgresBackend(url, readonly=readonly)
    raise StoreError(
        f"database URL {redact(url)!r}: expected sqlite:///PATH or postgresql://USER@HOST/DB"
    )
