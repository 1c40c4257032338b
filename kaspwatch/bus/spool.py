"""A bounded on-disk queue of hits (the spool), for a sensor whose bus is down.

``Spool`` is a directory of segment files ``<n>.seg``. Each record is
``length (u32 BE) | crc32 (u32 BE) | payload`` with the payload
``topic length (u16) | topic | key length (i32, -1 = none) | key | value``: exactly what
would have been published, nothing more. Appends are written and ``fsync``-ed per batch;
the read position (segment, offset) lives in ``head``, replaced atomically after each
acknowledged batch; a segment whose records were all acknowledged is deleted. The spool is
bounded by bytes and records; when full, ``drop-oldest`` or ``drop-newest`` decides which
hit is lost, and every loss is counted and logged. On start every segment is scanned: what
is left is replayed first; a corrupt or cut-off record ends its segment with a log line
naming the file and offset, counted, never a crash.

The publisher that uses it is ``kaspwatch.bus.spooling_publisher.SpoolingPublisher``.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import struct
import time
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

log = logging.getLogger("kaspwatch.spool")

POLICIES: Final = ("drop-oldest", "drop-newest")
SPOOLED: Final = "spooled"  # result of a send() whose hit waits on disk (not yet acknowledged)
DROPPED: Final = "dropped"  # result of a send() whose hit the full spool dropped (counted, logged)
_HEADER = struct.Struct(">II")
_SEG = re.compile(r"^(\d{12})\.seg$")
MAX_RECORD = 1 << 20  # a hit is ~1 KiB; anything larger in a length field is corruption


class SpoolError(Exception):
    """The spool directory cannot be used (not writable, bad settings)."""


@dataclass(frozen=True, slots=True)
class SpoolRecord:
    topic: str
    key: bytes | None
    value: bytes

    def encode(self) -> bytes:
        t = self.topic.encode()
        k = self.key
        payload = b"".join(
            (
                struct.pack(">H", len(t)),
                t,
                struct.pack(">i", -1 if k is None else len(k)),
                k or b"",
                self.value,
            )
        )
        return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload

    @staticmethod
    def decode(payload: bytes) -> SpoolRecord:
        (tlen,) = struct.unpack_from(">H", payload, 0)
        topic = payload[2 : 2 + tlen].decode()
        (klen,) = struct.unpack_from(">i", payload, 2 + tlen)
        at = 6 + tlen
        key = None if klen < 0 else payload[at : at + klen]
        return SpoolRecord(topic, key, payload[at + max(klen, 0) :])


@dataclass(slots=True)
class _Segment:
    seq: int
    path: Path
    end: int = 0  # bytes of valid records
    records: int = 0  # valid records after the head (head segment) or in all of it


@dataclass
class SpoolStats:
    spooled: int = 0  # records written to the spool
    replayed: int = 0  # spooled records the bus acknowledged
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(POLICIES, 0))
    corrupt: int = 0  # corrupt or cut-off regions found on start (their bytes are skipped)
    corrupt_bytes: int = 0


class Spool:
    """FIFO of records on disk, bounded by ``max_bytes`` and ``max_records``.

    Single-threaded: call from the event loop only. ``append`` + ``sync`` add a batch;
    ``peek`` reads from the head; ``ack`` moves the head past acknowledged records.
    """

    def __init__(
        self,
        directory: str | Path,
        max_bytes: int = 512 << 20,
        max_records: int = 0,
        policy: str = "drop-oldest",
        segment_bytes: int = 8 << 20,
    ) -> None:
        if policy not in POLICIES:
            raise SpoolError(f"spool policy {policy!r}: expected one of {', '.join(POLICIES)}")
        if max_bytes < 4096:
            raise SpoolError(f"spool size {max_bytes} bytes: at least 4096")
        self.dir = Path(directory)
        self.max_bytes = max_bytes
        self.max_records = max_records
        self.policy = policy
        self.segment_bytes = max(4096, min(segment_bytes, max_bytes // 4 or 4096))
        self.stats = SpoolStats()
        self.depth_records = 0
        self.depth_bytes = 0
        self._segments: deque[_Segment] = deque()
        self._head = 0  # offset into the first segment
        self._out: Any = None  # open file of the last segment, for appends
        self._unsynced = False
        self._dropped_unlogged = 0
        self._last_drop_log = 0.0
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._check_owner()
            probe = self.dir / ".probe"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise SpoolError(f"spool {self.dir}: not writable: {exc.strerror or exc}") from None
        self._recover()

    def _check_owner(self) -> None:
        """Whoever can write the spool makes the sensor publish it with its credentials:
        only a directory of the sensor's own user that nobody else can write will do."""
        st = self.dir.stat()
        if st.st_uid != os.geteuid():
            raise SpoolError(
                f"spool {self.dir}: owned by uid {st.st_uid}, not by this sensor's user "
                f"(uid {os.geteuid()}); use a directory of the sensor's own user"
            )
        if st.st_mode & 0o022:
            raise SpoolError(
                f"spool {self.dir}: writable by group or others (mode "
                f"{stat.S_IMODE(st.st_mode):04o}); run chmod 700 {self.dir}"
            )
        self.dir.chmod(0o700)

    # ------------------------------------------------------------------ recovery
    def _recover(self) -> None:
        seqs = sorted(int(m.group(1)) for p in self.dir.iterdir() if (m := _SEG.match(p.name)))
        head_seq, head_off = self._read_head()
        for seq in seqs:
            path = self._path(seq)
            if seq < head_seq:
                path.unlink()  # acknowledged before a crash, not yet deleted
                continue
            start = head_off if seq == head_seq else 0
            seg = _Segment(seq, path)
            seg.end, seg.records = self._scan(path, start)
            if seg.records == 0:
                path.unlink()
                continue
            if not self._segments:
                self._head = start
            self._segments.append(seg)
            self.depth_records += seg.records
            self.depth_bytes += seg.end - start
        if self.depth_records:
            log.warning(
                "spool %s: %d hits (%d bytes) left from an earlier run; replaying them first",
                self.dir,
                self.depth_records,
                self.depth_bytes,
            )

    def _read_head(self) -> tuple[int, int]:
        try:
            text = (self.dir / "head").read_text()
            seq, off = (int(x) for x in text.split())
            return seq, off
        except FileNotFoundError:
            return 0, 0
        except (OSError, ValueError) as exc:
            log.error("spool %s/head unreadable (%s): replaying every segment", self.dir, exc)
            return 0, 0

    def _scan(self, path: Path, start: int) -> tuple[int, int]:
        """(end of the last valid record, records from ``start``); a bad record ends it."""
        data = path.read_bytes()
        off, records = start, 0
        while off < len(data):
            reason = ""
            if len(data) - off < _HEADER.size:
                reason = "cut-off record header"
            else:
                length, crc = _HEADER.unpack_from(data, off)
                body = data[off + _HEADER.size : off + _HEADER.size + length]
                if length > MAX_RECORD:
                    reason = f"record length {length} out of range"
                elif len(body) < length:
                    reason = f"cut-off record ({len(body)} of {length} bytes)"
                elif zlib.crc32(body) != crc:
                    reason = "CRC mismatch"
            if reason:
                skipped = len(data) - off
                self.stats.corrupt += 1
                self.stats.corrupt_bytes += skipped
                log.error(
                    "spool %s: offset %d: %s; skipping the rest of the segment (%d bytes)",
                    path,
                    off,
                    reason,
                    skipped,
                )
                return off, records
            off += _HEADER.size + length
            records += 1
        return off, records

    # ------------------------------------------------------------------ writing
    def _path(self, seq: int) -> Path:
        return self.dir / f"{seq:012d}.seg"

    def _roll(self) -> None:
        if self._out is not None:
            self._out.close()
        seq = self._segments[-1].seq + 1 if self._segments else self._read_head()[0] + 1
        seg = _Segment(seq, self._path(seq))
        self._out = open(seg.path, "ab")  # noqa: SIM115 - kept open across appends
        if not self._segments:
            self._head = 0
        self._segments.append(seg)

    def append(self, rec: SpoolRecord) -> bool:
        """Add a record (durable after ``sync``); False when it was dropped (drop-newest)."""
        data = rec.encode()
        while self._full(len(data)):
            if self.policy == "drop-newest" or not self.depth_records:
                self._count_drop(1)
                return False
            self._drop_oldest()
        tail = self._segments[-1] if self._segments else None
        if tail is None or self._out is None or tail.end >= self.segment_bytes:
            self._roll()
            tail = self._segments[-1]
        self._out.write(data)
        tail.end += len(data)
        tail.records += 1
        self.depth_records += 1
        self.depth_bytes += len(data)
        self.stats.spooled += 1
        self._unsynced = True
        return True

    def _full(self, size: int) -> bool:
        if self.max_records and self.depth_records + 1 > self.max_records:
            return True
        return self.depth_bytes + size > self.max_bytes

    def sync(self) -> None:
        """Make every appended record durable (one fsync per batch)."""
        if self._out is not None and self._unsynced:
            self._out.flush()
            os.fsync(self._out.fileno())
            self._unsynced = False

    def _drop_oldest(self) -> None:
        """Lose the oldest record to make room (policy drop-oldest)."""
        seg = self._segments[0]
        if seg.records and self._out is not None and seg is self._segments[-1]:
            self._out.flush()
        with open(seg.path, "rb") as fh:
            fh.seek(self._head)
            length, _ = _HEADER.unpack(fh.read(_HEADER.size))
        self._advance(self._head + _HEADER.size + length, 1)
        self._count_drop(1)

    def _count_drop(self, n: int) -> None:
        self.stats.dropped[self.policy] += n
        self._dropped_unlogged += n
        self.log_drops()

    def log_drops(self, force: bool = False) -> None:
        """One line per 10 s at most, with the counts: losses are never silent."""
        now = time.monotonic()
        if self._dropped_unlogged and (force or now - self._last_drop_log >= 10.0):
            log.error(
                "spool %s full (%d bytes, %d records): %s lost %d hits (%d in total)",
                self.dir,
                self.depth_bytes,
                self.depth_records,
                self.policy,
                self._dropped_unlogged,
                self.stats.dropped[self.policy],
            )
            self._dropped_unlogged = 0
            self._last_drop_log = now

    # ------------------------------------------------------------------ reading
    def peek(self, max_records: int, max_bytes: int) -> tuple[list[SpoolRecord], tuple[int, int]]:
        """Records from the head (at least one if any), and the position just after them."""
        out: list[SpoolRecord] = []
        size = 0
        pos = (self._segments[0].seq, self._head) if self._segments else (0, 0)
        if self._out is not None:
            self._out.flush()
        for i, seg in enumerate(self._segments):
            off = self._head if i == 0 else 0
            with open(seg.path, "rb") as fh:
                fh.seek(off)
                while off < seg.end:
                    length, _ = _HEADER.unpack(fh.read(_HEADER.size))
                    if out and (len(out) >= max_records or size + length > max_bytes):
                        return out, pos
                    out.append(SpoolRecord.decode(fh.read(length)))
                    size += length
                    off += _HEADER.size + length
                    pos = (seg.seq, off)
        return out, pos

    def ack(self, pos: tuple[int, int], n: int) -> None:
        """The bus acknowledged the ``n`` records up to ``pos``: move the head past them."""
        seq, off = pos
        if not self._segments or seq < self._segments[0].seq:
            return  # dropped (drop-oldest) while they were in flight
        if seq == self._segments[0].seq and off <= self._head:
            return
        self._advance_to(seq, off)
        self._write_head()

    def _advance_to(self, seq: int, off: int) -> None:
        while self._segments and self._segments[0].seq < seq:
            self._advance(self._segments[0].end, self._segments[0].records)
        if self._segments and self._segments[0].seq == seq:
            n = self._count_between(self._segments[0], self._head, off)
            self._advance(off, n)

    def _count_between(self, seg: _Segment, start: int, end: int) -> int:
        n = 0
        with open(seg.path, "rb") as fh:
            fh.seek(start)
            while start < end:
                length, _ = _HEADER.unpack(fh.read(_HEADER.size))
                fh.seek(length, os.SEEK_CUR)
                start += _HEADER.size + length
                n += 1
        return n

    def _advance(self, off: int, n: int) -> None:
        seg = self._segments[0]
        self.depth_records -= n
        self.depth_bytes -= off - self._head
        seg.records -= n
        self._head = off
        if off >= seg.end and (len(self._segments) > 1 or self._out is None):
            self._segments.popleft()
            seg.path.unlink(missing_ok=True)
            self._head = 0
        elif off >= seg.end and self.depth_records == 0:
            # the only segment, fully read: start afresh so it does not grow forever
            self._out.close()
            self._out = None
            self._segments.popleft()
            self._write_head(seg.seq + 1, 0)
            seg.path.unlink(missing_ok=True)
            self._head = 0

    def _write_head(self, seq: int | None = None, off: int | None = None) -> None:
        if seq is None:
            seq, off = (self._segments[0].seq, self._head) if self._segments else (0, 0)
            if not self._segments:
                return
        tmp = self.dir / "head.tmp"
        with open(tmp, "w") as fh:
            fh.write(f"{seq} {off}\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.dir / "head")

    def close(self) -> None:
        self.sync()
        self.log_drops(force=True)
        if self._out is not None:
            self._out.close()
            self._out = None

    def __iter__(self) -> Iterator[SpoolRecord]:
        """Every record in order (for inspection and tests)."""
        recs, _ = self.peek(self.depth_records or 1, 1 << 62)
        return iter(recs if self.depth_records else [])
