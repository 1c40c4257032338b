"""A bounded on-disk queue of hits (the spool) and a publisher that spools while the bus is down.

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

``SpoolingPublisher`` wraps a ``Publisher``. While the bus acknowledges, hits go straight
through in rounds (one round in flight, so a failure can never let a later hit overtake an
earlier one). When a round fails or is not acknowledged within its deadline, that round and
every later hit go to the spool, in order; the spool is replayed in rounds once the bus
takes them again, and a record leaves the disk only after the bus acknowledged it. A resent
round may have reached the broker before (an ambiguous timeout): consumers deduplicate by
``event_id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import struct
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from kaspwatch.bus import BusError, BusUnreachable, Publisher

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
            probe = self.dir / ".probe"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise SpoolError(f"spool {self.dir}: not writable: {exc.strerror or exc}") from None
        self._recover()

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


@dataclass(slots=True)
class _Item:
    rec: SpoolRecord
    fut: asyncio.Future[Any]


class SpoolingPublisher:
    """A ``Publisher`` that never blocks the sensor and never loses a hit silently.

    ``send`` returns a future that resolves with the bus's acknowledgement, or with
    ``SPOOLED`` once the hit is durably in the spool (it is then counted as replayed when the
    bus takes it), or with ``DROPPED`` when the full spool dropped it (counted and logged).
    """

    def __init__(
        self,
        connect: Callable[[], Publisher],
        spool: Spool,
        delivery_timeout: float = 10.0,
        round_records: int = 500,
        round_bytes: int = 512 << 10,
        memory_records: int = 20_000,
        retry_s: float = 1.0,
        passthrough: tuple[str, ...] = (),
        grace_s: float = 5.0,
    ) -> None:
        self._connect = connect
        self.inner = connect()
        self._inner_ok = False
        self._abandoned: set[asyncio.Task[None]] = set()
        self.passthrough = passthrough  # topics sent straight to the bus, never spooled
        self.spool = spool
        self.delivery_timeout = delivery_timeout
        self.round_records = round_records
        self.round_bytes = round_bytes
        self.memory_records = memory_records
        self.retry_s = retry_s
        self.limit_s = delivery_timeout * 2 + grace_s  # a round's hard deadline
        self.down = False  # the last round failed: hits go to the spool
        self._queue: deque[_Item] = deque()  # not yet sent
        self._flight: list[_Item] | None = None  # the round the bus has now
        self._flight_spooled = False
        self._to_spool: list[_Item] = []  # waiting for the next write + fsync
        self._sync_scheduled = False
        self._wake = asyncio.Event()
        self._settled = asyncio.Event()
        self._closing = False
        self._pump: asyncio.Task[None] | None = None

    @property
    def stats(self) -> SpoolStats:
        return self.spool.stats

    async def start(self) -> None:
        """Connect; when no broker answers yet, start anyway with the bus marked down (a
        sensor must capture from boot, e.g. after a site power cut where Kafka comes up
        last). A broker that refuses us (credentials, TLS) still fails the start."""
        try:
            await self.inner.start()
        except BusUnreachable as exc:
            self._note_down(exc)
        else:
            self._inner_ok = True
        self._pump = asyncio.create_task(self._run())

    async def prepare(self, topics: list[str]) -> None:
        if self._inner_ok:  # else the first round after connecting finds the leaders
            await self.inner.prepare(topics)

    async def send(self, topic: str, value: bytes, key: bytes | None = None) -> asyncio.Future[Any]:
        if topic in self.passthrough:  # e.g. heartbeats: one lost in an outage shows as silence
            if not self._inner_ok:
                raise BusError("bus down: not sent")
            return await self.inner.send(topic, value, key)
        item = _Item(SpoolRecord(topic, key, value), asyncio.get_running_loop().create_future())
        if self.down or self._spooling or len(self._queue) >= self.memory_records:
            self._spill([item])
        else:
            self._queue.append(item)
            self._settled.clear()
            self._wake.set()
        return item.fut

    @property
    def _spooling(self) -> bool:
        return bool(self.spool.depth_records or self._to_spool)

    def _spill(self, items: list[_Item]) -> None:
        """Send these to the spool. The first spill also moves the round in flight and the
        queue there, ahead of them: while the spool holds anything, nothing overtakes it."""
        if not self._spooling:
            if self._flight is not None and not self._flight_spooled:
                self._flight_spooled = True
                self._to_spool.extend(self._flight)
            self._to_spool.extend(self._queue)
            self._queue.clear()
        self._to_spool.extend(items)
        self._settled.clear()
        if not self._sync_scheduled:
            self._sync_scheduled = True
            asyncio.get_running_loop().call_soon(self._write_spool)

    def _write_spool(self) -> None:
        """Write and fsync everything spilled since the last call (one fsync per batch)."""
        self._sync_scheduled = False
        items, self._to_spool = self._to_spool, []
        kept: list[_Item] = []
        try:
            for it in items:
                if self.spool.append(it.rec):
                    kept.append(it)
                elif not it.fut.done():
                    it.fut.set_result(DROPPED)  # drop-newest: counted and logged
            self.spool.sync()
        except OSError as exc:
            log.error("spool %s: write failed, %d hits lost: %s", self.spool.dir, len(kept), exc)
            for it in kept:
                if not it.fut.done():
                    it.fut.set_exception(exc)
            return
        finally:
            self._wake.set()
        for it in kept:
            if not it.fut.done():
                it.fut.set_result(SPOOLED)

    async def _send_round(self, recs: list[SpoolRecord]) -> list[Any] | None:
        """Hand a round to the bus and wait for it: the acknowledgements, or None when the
        bus failed or did not answer within the deadline (the producer gives up on a batch
        after ``delivery_timeout``; twice that plus a margin bounds a hung client, which is
        then replaced by a new one)."""
        if not await self._ensure_inner():
            return None
        limit = self.limit_s
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        try:
            async with asyncio.timeout_at(deadline):
                futs = [await self.inner.send(r.topic, r.value, r.key) for r in recs]
        except Exception as exc:  # every failure means: spool and retry
            self._note_down(exc)
            if isinstance(exc, TimeoutError):
                await self._replace_inner()
            return None
        # asyncio.wait, not gather under a timeout: the producer's futures must not be
        # cancelled (it sets them itself; a cancelled one breaks its sender).
        _, pending = await asyncio.wait(futs, timeout=max(0.0, deadline - loop.time()))
        if pending:
            self._note_down(TimeoutError(f"no acknowledgement within {limit:.0f} s"))
            await self._replace_inner()
            return None
        errors = [e for e in (f.exception() for f in futs) if e is not None]  # all retrieved
        bad = errors[0] if errors else None
        if bad is not None:
            self._note_down(bad)
            return None
        if self.down:
            log.warning("bus is back: replaying %d spooled hits", self.spool.depth_records)
        self.down = False
        return [f.result() for f in futs]

    async def _ensure_inner(self) -> bool:
        if self._inner_ok:
            return True
        fresh = self._connect()
        try:
            async with asyncio.timeout(self.limit_s):
                await fresh.start()
        except Exception as exc:
            self._note_down(exc)
            return False
        self.inner, self._inner_ok = fresh, True
        log.info("connected a new bus client")
        return True

    async def _replace_inner(self) -> None:
        """The client did not answer in time: stop it (abandoned if that hangs too) and
        connect a new one before the next round."""
        old, self._inner_ok = self.inner, False
        task = asyncio.create_task(old.stop())
        _, pending = await asyncio.wait([task], timeout=5)
        if pending:
            self._abandoned.add(task)
            task.add_done_callback(self._abandoned.discard)
            log.warning("abandoned a bus client that does not stop")

    def _note_down(self, exc: BaseException) -> None:
        log.debug("spool: round failed: %r", exc)
        if not self.down:
            log.error(
                "bus not acknowledging (%s: %s): spooling hits to %s",
                type(exc).__name__,
                exc or "no answer within the deadline",
                self.spool.dir,
            )
        self.down = True

    def _is_settled(self) -> bool:
        """Nothing only in memory, and the spool drained or the bus down."""
        idle = not self._queue and not self._to_spool and self._flight is None
        return idle and (not self.spool.depth_records or self.down)

    async def _run(self) -> None:
        while True:
            if self._is_settled():
                self._settled.set()
                if self._closing:
                    return
            if self.spool.depth_records:
                recs, pos = self.spool.peek(self.round_records, self.round_bytes)
                if await self._send_round(recs) is not None:
                    self.spool.ack(pos, len(recs))
                    self.stats.replayed += len(recs)
                    if not self._spooling:
                        log.info("spool drained: %d hits replayed in total", self.stats.replayed)
                    continue
                if self._closing:
                    continue  # settled now (the bus is down): the rest waits on disk
                with contextlib.suppress(TimeoutError):
                    self._wake.clear()
                    await asyncio.wait_for(self._wake.wait(), self.retry_s)
            elif self._queue:
                flight: list[_Item] = []
                size = 0
                while self._queue and len(flight) < self.round_records:
                    size += len(self._queue[0].rec.value)
                    if flight and size > self.round_bytes:
                        break
                    flight.append(self._queue.popleft())
                self._flight, self._flight_spooled = flight, False
                results = await self._send_round([it.rec for it in flight])
                self._flight = None
                if self._flight_spooled:
                    continue  # spilled meanwhile: the spool resends it (a duplicate at worst)
                if results is None:
                    self._spill([])  # the queue behind this round ...
                    self._to_spool[:0] = flight  # ... and the round itself first: oldest
                    continue
                for it, res in zip(flight, results, strict=True):
                    if not it.fut.done():
                        it.fut.set_result(res)
            else:
                self._wake.clear()
                await self._wake.wait()

    async def flush(self) -> None:
        """Return once every hit sent so far is acknowledged or on disk (the spool is drained
        too, unless the bus is down: then its records wait for the next start)."""
        while self._pump is not None and not self._pump.done() and not self._is_settled():
            self._settled.clear()
            self._wake.set()
            await self._settled.wait()

    async def stop(self) -> None:
        self._closing = True
        if self._pump is not None:
            await self.flush()
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
            self._pump = None
        if self._to_spool:
            self._write_spool()
        self.spool.close()
        if self.spool.depth_records:
            log.warning(
                "spool %s: %d hits (%d bytes) not yet acknowledged; they are sent when the "
                "sensor starts again",
                self.spool.dir,
                self.spool.depth_records,
                self.spool.depth_bytes,
            )
        if self._inner_ok:
            try:
                async with asyncio.timeout(self.limit_s):  # a stuck client must not hang exit
                    await self.inner.stop()
            except TimeoutError:
                log.warning("bus client did not stop within %.0f s; leaving it", self.limit_s)
