"""``SpoolingPublisher`` wraps a ``Publisher``. While the bus acknowledges, hits go straight
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
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from kaspwatch.bus import BusError, BusUnreachable, Publisher
from kaspwatch.bus.spool import DROPPED, SPOOLED, Spool, SpoolRecord, SpoolStats

log = logging.getLogger("kaspwatch.spool")


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
        topics: tuple[str, ...] | None = None,
        on_connect: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """``on_connect``: run once, when a client first connects (at ``start``, or later
        when the bus was down then), before anything is sent: e.g. creating the topics, so
        that the broker does not auto-create them with its own defaults on the first send."""
        self._connect = connect
        self._on_connect = on_connect
        self.inner = connect()
        self._inner_ok = False
        self._abandoned: set[asyncio.Task[None]] = set()
        self.passthrough = passthrough  # topics sent straight to the bus, never spooled
        # the topics a spooled record may be replayed to: the topic is stored per record, and
        # a record for any other was not written by this sensor (counted, logged, dropped)
        self.topics = frozenset(topics) if topics is not None else None
        self.foreign = 0
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
            await self._connected()
        except BusUnreachable as exc:
            self._note_down(exc)
        except BaseException:
            await self.inner.stop()
            raise
        else:
            self._inner_ok = True
        self._pump = asyncio.create_task(self._run())

    async def _connected(self) -> None:
        if self._on_connect is not None:
            await self._on_connect()
            self._on_connect = None

    async def prepare(self, topics: list[str]) -> None:
        if self._inner_ok:  # else the first round after connecting finds the leaders
            await self.inner.prepare(topics)

    async def send(
        self, topic: str, value: bytes, key: bytes | None = None, partition: int | None = None
    ) -> asyncio.Future[Any]:
        """``partition`` holds for a passthrough topic; a spooled record goes by its key."""
        if topic in self.passthrough:  # e.g. heartbeats: one lost in an outage shows as silence
            if not self._inner_ok:
                raise BusError("bus down: not sent")
            return await self.inner.send(topic, value, key, partition)
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
        try:
            async with asyncio.timeout(self.limit_s):
                await self._connected()
        except (BusUnreachable, TimeoutError) as exc:
            await fresh.stop()
            self._note_down(exc)
            return False
        except BusError as exc:  # the bus refused (e.g. a topic): send all the same
            self._on_connect = None
            log.warning("connected, but %s", exc)
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

    def _configured(self, recs: list[SpoolRecord]) -> list[SpoolRecord]:
        if self.topics is None:
            return recs
        mine = [r for r in recs if r.topic in self.topics]
        if len(mine) < len(recs):
            self.foreign += len(recs) - len(mine)
            log.error(
                "spool %s: %d records for topics this sensor does not publish to (%s): "
                "not replayed",
                self.spool.dir,
                len(recs) - len(mine),
                ", ".join(sorted({repr(r.topic[:80]) for r in recs if r.topic not in self.topics})),
            )
        return mine

    async def _run(self) -> None:
        while True:
            if self._is_settled():
                self._settled.set()
                if self._closing:
                    return
            if self.spool.depth_records:
                recs, pos = self.spool.peek(self.round_records, self.round_bytes)
                mine = self._configured(recs)
                if not mine or await self._send_round(mine) is not None:
                    self.spool.ack(pos, len(recs))
                    self.stats.replayed += len(mine)
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
