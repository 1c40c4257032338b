"""The publish stage: read sources in batches off the event loop, run each frame through
the sensor, publish its events to the bus keyed by host; and the sensor's heartbeats.

``PublishStats`` counts what the bus acknowledged (and, with a spool, what waits on disk
or was lost); ``heartbeats`` publishes the sensor's health so consumers can turn silence
into "sensor down".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from typing import Any

from kaspwatch.bus import Publisher
from kaspwatch.bus.spool import DROPPED, SPOOLED
from kaspwatch.bus.spooling_publisher import SpoolingPublisher
from kaspwatch.event import HEARTBEATS_TOPIC, HITS_TOPIC, format_ts
from kaspwatch.identity import IDENTITY_TOPIC
from sensor.pipeline import Sensor
from sensor.rules.ruleset import Reloader
from sensor.sources.base import Frame, PeerRecord, Source

log = logging.getLogger("kaspwatch")
BATCH = 512


def _batches(frames: Iterator[Frame | PeerRecord | None]) -> list[Frame | PeerRecord] | None:
    """Up to BATCH frames (or peer records), fewer if the source goes quiet; None when it
    is exhausted."""
    out: list[Frame | PeerRecord] = []
    for frame in islice(frames, BATCH):
        if frame is None:
            return out
        out.append(frame)
    return out if out else None


async def _next_batch(
    source: Source, frames: Iterator[Frame | PeerRecord | None], stop: threading.Event | None
) -> list[Frame | PeerRecord] | None:
    """The next batch, read off the event loop. A reader waiting for input (a quiet
    stdin pipe, a live wire) is told to stop as soon as ``stop`` is set, so a signal ends
    it within a moment, not when more packets come."""
    read = asyncio.ensure_future(asyncio.to_thread(_batches, frames))
    while stop is not None and not read.done():
        await asyncio.wait({read}, timeout=0.2)
        if stop.is_set():
            source.stop()
    return await read


class PublishStats:
    """What the bus acknowledged; with a spool, also what waits on disk or was lost."""

    def __init__(self) -> None:
        self.published = 0
        self.failures = 0
        self.spooling: SpoolingPublisher | None = None

    @property
    def acknowledged(self) -> int:
        """Hits the bus took: straight away, or replayed from the spool."""
        return self.published + (self.spooling.stats.replayed if self.spooling else 0)

    @property
    def spool_depth(self) -> int:
        return self.spooling.spool.depth_records if self.spooling else 0

    @property
    def lost(self) -> int:
        """Hits that will never reach the bus: failed sends and spool drops."""
        dropped = sum(self.spooling.stats.dropped.values()) if self.spooling else 0
        return self.failures + dropped


async def run_sensor(
    sources: Iterable[Source],
    sensor: Sensor,
    publisher: Publisher,
    stats: PublishStats,
    stop: threading.Event | None = None,
    topic: str = HITS_TOPIC,
    reloader: Reloader | None = None,
    identity_topic: str = IDENTITY_TOPIC,
) -> None:
    """Read every source to its end (or until ``stop``), publishing each event keyed by its
    host, and each identity observation (DHCP, ARP) to ``identity_topic`` keyed by address."""
    pending: set[asyncio.Future[Any]] = set()

    def done(fut: asyncio.Future[Any]) -> None:
        pending.discard(fut)
        if fut.cancelled() or fut.exception() is not None:
            stats.failures += 1
            log.error("publish failed: %s", fut.exception() if not fut.cancelled() else "cancelled")
        elif fut.result() not in (SPOOLED, DROPPED):  # the spool counts those itself
            stats.published += 1

    for source in sources:
        frames = iter(source)
        while True:
            if stop is not None and stop.is_set():
                if not source.live:
                    break  # a file: stop where we are
                source.stop()  # a live source reads out what the kernel holds, then ends
            batch = await _next_batch(source, frames, stop)
            if batch is None:
                break
            if reloader is not None and reloader.maybe_reload():
                sensor.rules = reloader.rules  # whole-set swap between batches
            for frame in batch:
                for ev in sensor.process_item(frame):
                    fut = await publisher.send(topic, ev.to_json(), ev.host.encode())
                    pending.add(fut)
                    fut.add_done_callback(done)
                if sensor.identity.pending:
                    for ident in sensor.identity.drain():
                        fut = await publisher.send(
                            identity_topic, ident.to_json(), ident.address.encode()
                        )
                        pending.add(fut)
                        fut.add_done_callback(pending.discard)
        if source.stats.truncated:
            log.warning("%s", source.stats.note)  # file, byte and packets kept, as scan says
    await publisher.flush()
    if pending:
        await asyncio.wait(list(pending))


def heartbeat(
    sensor: Sensor, publish: PublishStats, kernel_drops: int, interval_s: float
) -> dict[str, Any]:
    s = sensor.stats
    return {
        "schema": 1,
        "type": "heartbeat",
        "sensor": sensor.sensor_name,
        "ts": format_ts(time.time_ns()),
        "interval_s": interval_s,
        "packets": s.packets,
        "hits": s.hits,
        "decode_errors": s.decode_errors,
        "kernel_drops": kernel_drops,
        "published": publish.acknowledged,
        "publish_failures": publish.lost,
        "spool_depth": publish.spool_depth,
        "pack_version": sensor.rules.matcher.version,
    }


async def heartbeats(
    sensor: Sensor,
    publish: PublishStats,
    publisher: Publisher,
    sources: list[Source],
    stop: asyncio.Event,
    interval_s: float = 15.0,
    topic: str = HEARTBEATS_TOPIC,
    finished: Callable[[], bool] | None = None,
) -> None:
    """Publish the sensor's health every ``interval_s`` until ``stop`` (and once more then):
    the consumers turn silence into 'sensor down'. That last beat says ``final: true`` when
    ``finished()`` does (every capture file read to its end): silence after it is not an
    outage."""
    while True:
        doc = heartbeat(sensor, publish, sum(src.kernel_drops() for src in sources), interval_s)
        if stop.is_set() and finished is not None and finished():
            doc["final"] = True
        try:
            fut = await publisher.send(topic, json.dumps(doc).encode(), sensor.sensor_name.encode())
            # shielded: the bus client sets its own futures; a hung one must not stop the beat
            await asyncio.wait_for(asyncio.shield(fut), max(interval_s, 10.0))
        except Exception as exc:  # a heartbeat lost is visible as silence; keep sensing
            log.warning("heartbeat not published: %s", exc)
        if stop.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
