"""SQLite backend: the embedded default. One file, WAL journal, one writer at a time.

``BEGIN IMMEDIATE`` takes the write lock up front, so checking which event ids are new
and inserting them is one atomic step even with several writer processes; readers (the
``query`` command, the API) never block the writer and see only committed batches.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from itertools import chain
from operator import itemgetter
from pathlib import Path
from typing import Any
from urllib.parse import quote

from consumers.store import schema
from consumers.store.base import Row, StoreError, check_version, ensure_schema
from kaspwatch.secretfile import private_file

log = logging.getLogger("kaspwatch.store")

CHECKPOINT_EVERY_S = 1.0
_WAL_LIMIT = 256 * 2**20
_ROWS_PER_INSERT = 40  # 840 parameters per statement
_SKIP_STORED = " ON CONFLICT (ts_us, event_id) DO NOTHING"


class SQLiteBackend:
    kind = "sqlite"
    least = "min"
    greatest = "max"

    def __init__(self, path: str, readonly: bool = False) -> None:
        self.path = path
        self.where = f"sqlite:///{path}"
        folder = Path(path).parent
        if not folder.is_dir():
            raise StoreError(
                f"{self.where}: folder {folder} does not exist"
                + (
                    ": no store there (fix the path, or run 'kaspwatch store' first)"
                    if readonly
                    else "; create it, or fix the path"
                )
            )
        try:
            if readonly:
                if not Path(path).is_file():
                    raise StoreError(f"{self.where}: no store there (run 'kaspwatch store' first)")
                self.conn = sqlite3.connect(
                    f"file:{quote(str(Path(path).resolve()))}?mode=ro",
                    uri=True,
                    isolation_level=None,
                    check_same_thread=False,
                    timeout=30,
                )
            else:
                private_file(path)  # the inventory of weak spots: for the owner only
                self.conn = sqlite3.connect(
                    path, isolation_level=None, check_same_thread=False, timeout=30
                )
                self.conn.execute("PRAGMA journal_mode=WAL")
                # FULL: a committed batch survives power loss, because the consumer commits
                # its Kafka offsets right after; NORMAL could lose rows whose offsets are gone
                self.conn.execute("PRAGMA synchronous=FULL")
                # checkpoints run on a thread of their own, off the ingest path
                self.conn.execute("PRAGMA wal_autocheckpoint=0")
            self.conn.execute("PRAGMA cache_size=-131072")  # 128 MiB
            self.conn.execute("PRAGMA mmap_size=1073741824")
            self.conn.execute("PRAGMA temp_store=MEMORY")
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"{self.where}: cannot open: {exc}") from None
        self._checkpointer: _Checkpointer | None = None
        self._changes_at_begin = -1  # total_changes when the write transaction began
        if readonly:
            self.check_schema()
        else:
            self.ensure_schema()
            self._checkpointer = _Checkpointer(path)

    def ensure_schema(self) -> None:
        try:
            ensure_schema(self, "TEXT", "INTEGER", " WITHOUT ROWID")
        except sqlite3.Error as exc:
            raise StoreError(f"{self.where}: cannot create the schema: {exc}") from None
        self.check_schema()

    def check_schema(self) -> None:
        try:
            rows = self.query("SELECT value FROM meta WHERE key = 'schema'")
        except sqlite3.Error:
            raise StoreError(f"{self.where}: not a kaspwatch store") from None
        check_version(self.where, rows, schema.SCHEMA_VERSION)

    def agg_join(self, column: str) -> str:
        return f"group_concat({column})"

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return self.conn.execute(sql, params).fetchall()

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self.conn.executemany(sql, rows)

    def begin(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")
        self._changes_at_begin = self.conn.total_changes

    def commit(self) -> None:
        self.conn.execute("COMMIT")

    def rollback(self) -> None:
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")

    def insert_hits(self, columns: Sequence[str], rows: Sequence[Row]) -> set[str]:
        """Multi-row INSERTs (a fifth faster than a statement step per row) that skip what
        is stored; return the ids they inserted.

        Optimistic when this is the transaction's first write (the store's case): insert
        without RETURNING (which costs a fifth of the insert) and count the rows SQLite
        inserted. All of them: every id is new; none: none is (a replay). Only a batch
        that is partly stored is rolled back and inserted again with RETURNING, in a new
        write transaction, which says exactly which ids were new."""
        if not self.conn.in_transaction or self.conn.total_changes != self._changes_at_begin:
            return self._insert_returning(columns, rows)
        inserted = self._insert_count(columns, rows)
        if inserted == len(rows):
            return {r[0] for r in rows}
        if inserted == 0:
            return set()
        self.conn.execute("ROLLBACK")
        self.begin()
        return self._insert_returning(columns, rows)

    def _statements(
        self, columns: Sequence[str], rows: Sequence[Row], tail: str
    ) -> Iterator[sqlite3.Cursor]:
        """Insert ``rows`` in statements of ``_ROWS_PER_INSERT`` rows ending in ``tail``."""
        one = "(" + ",".join("?" * len(columns)) + ")"
        head = f"INSERT INTO hits ({', '.join(columns)}) VALUES "  # noqa: S608
        full = head + ",".join([one] * _ROWS_PER_INSERT) + tail
        execute, flat = self.conn.execute, chain.from_iterable
        for i in range(0, len(rows), _ROWS_PER_INSERT):
            chunk = rows[i : i + _ROWS_PER_INSERT]
            many = len(chunk) == _ROWS_PER_INSERT
            yield execute(
                full if many else head + ",".join([one] * len(chunk)) + tail, tuple(flat(chunk))
            )

    def _insert_returning(self, columns: Sequence[str], rows: Sequence[Row]) -> set[str]:
        new: set[str] = set()
        first = itemgetter(0)
        for cur in self._statements(columns, rows, _SKIP_STORED + " RETURNING event_id"):
            new.update(map(first, cur))
        return new

    def _insert_count(self, columns: Sequence[str], rows: Sequence[Row]) -> int:
        return sum(cur.rowcount for cur in self._statements(columns, rows, _SKIP_STORED))

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
        self.conn.close()


class _Checkpointer:
    """Copies the WAL back into the database every second from its own connection and
    thread, so a commit never pays for a checkpoint (SQLite's default runs one inside
    the commit that crosses 1000 pages). Passive: it never blocks the writer or readers.
    If the WAL still grows past ``_WAL_LIMIT`` (a writer that never pauses), the next
    pass waits for a moment between commits and restarts it from the beginning."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._stop = threading.Event()
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._thread = threading.Thread(target=self._run, name="kaspwatch-checkpoint", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(CHECKPOINT_EVERY_S):
            self.checkpoint()

    def checkpoint(self, mode: str = "PASSIVE") -> None:
        try:
            wal = Path(self.path + "-wal")
            if mode == "PASSIVE" and wal.exists() and wal.stat().st_size > _WAL_LIMIT:
                mode = "RESTART"
            self._conn.execute(f"PRAGMA wal_checkpoint({mode})")
        except (sqlite3.Error, OSError) as exc:
            log.warning("%s: checkpoint failed: %s", self.path, exc)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.checkpoint("TRUNCATE")
        self._conn.close()
