"""Async wiring of the long-running jobs: ``sense``, ``alerts``, ``metrics`` and embedded ``run``.

Sources feed the sensor, the sensor publishes to the bus, consumers read the bus.
This is the one place these parts are composed.
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

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from kaspwatch.bus import Publisher
from kaspwatch.bus.spool import DROPPED, POLICIES, SPOOLED
from kaspwatch.bus.spooling import SpoolingPublisher
from kaspwatch.event import HEARTBEATS_TOPIC, HITS_TOPIC, format_ts
from sensor.capture import CaptureFile, Frame
from sensor.pipeline import Sensor
from sensor.prefilter import PrefilteredFile
from sensor.rules import Reloader

log = logging.getLogger("kaspwatch")
BATCH = 512


def _batches(frames: Iterator[Frame | None]) -> list[Frame] | None:
    """Up to BATCH frames, fewer if the source goes quiet; None when it is exhausted."""
    out: list[Frame] = []
    for frame in islice(frames, BATCH):
        if frame is None:
            return out
        out.append(frame)
    return out if out else None


class PublishStats:
    """What the bus acknowledged; with a spool, also what waits on disk or was lost."""

    def __init__(self) -> None:
        self.published = 0
        self.failures = 0
        self.spool: SpoolingPublisher | None = None

    @property
    def acknowledged(self) -> int:
        """Hits the bus took: straight away, or replayed from the spool."""
        return self.published + (self.spool.stats.replayed if self.spool else 0)

    @property
    def spool_depth(self) -> int:
        return self.spool.spool.depth_records if self.spool else 0

    @property
    def lost(self) -> int:
        """Hits that will never reach the bus: failed sends and spool drops."""
        return self.failures + (sum(self.spool.stats.dropped.values()) if self.spool else 0)


async def run_sensor(
    sources: Iterable[Iterable[Frame | None]],
    sensor: Sensor,
    publisher: Publisher,
    stats: PublishStats,
    stop: threading.Event | None = None,
    topic: str = HITS_TOPIC,
    reloader: Reloader | None = None,
) -> None:
    """Read every source to its end (or until ``stop``), publishing each event keyed by its host."""
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
                halt = getattr(source, "stop", None)
                if halt is None:
                    break  # a file: stop where we are
                halt()  # a live source reads out what the kernel holds, then ends
            batch = await asyncio.to_thread(_batches, frames)
            if batch is None:
                break
            if reloader is not None and reloader.maybe_reload():
                sensor.rules = reloader.rules  # whole-set swap between batches
            for frame in batch:
                for ev in sensor.process_frame(*frame):
                    fut = await publisher.send(topic, ev.to_json(), ev.host.encode())
                    pending.add(fut)
                    fut.add_done_callback(done)
        if isinstance(source, CaptureFile | PrefilteredFile) and source.stats.truncated:
            log.warning("%s", source.stats.note)  # file, byte and packets kept, as scan says
    await publisher.flush()
    if pending:
        await asyncio.wait(list(pending))


class SensorCollector(Collector):
    """Exports the sensor's own counters at scrape time (no work on the packet path)."""

    def __init__(
        self,
        sensor: Sensor,
        publish: PublishStats,
        reloader: Reloader | None = None,
        kernel_drops: Callable[[], int] | None = None,
    ) -> None:
        self.sensor = sensor
        self.publish = publish
        self.reloader = reloader
        self.kernel_drops = kernel_drops

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        s = self.sensor.stats
        yield CounterMetricFamily(
            "kaspwatch_sensor_packets", "Packets the sensor read.", value=s.packets
        )
        yield CounterMetricFamily(
            "kaspwatch_sensor_decode_errors",
            "Malformed packets or messages.",
            value=s.decode_errors,
        )
        yield CounterMetricFamily(
            "kaspwatch_sensor_kernel_drops",
            "Packets the kernel dropped before the sensor read them (live capture).",
            value=self.kernel_drops() if self.kernel_drops else 0,
        )
        evictions = CounterMetricFamily(
            "kaspwatch_sensor_state_evictions",
            "Entries evicted from a bounded state table because it was full.",
            labels=["table"],
        )
        for table, n in self.sensor.evictions().items():
            evictions.add_metric([table], n)
        yield evictions
        yield CounterMetricFamily(
            "kaspwatch_sensor_hits", "Events that matched an indicator.", value=s.hits
        )
        yield CounterMetricFamily(
            "kaspwatch_sensor_published",
            "Events the bus acknowledged (straight away or replayed from the spool).",
            value=self.publish.acknowledged,
        )
        yield CounterMetricFamily(
            "kaspwatch_sensor_publish_failures",
            "Events the bus did not accept.",
            value=self.publish.failures,
        )
        yield from spool_metrics(self.publish.spool)
        yield CounterMetricFamily(
            "kaspwatch_sensor_allowlisted",
            "Hits an allowlist entry covers (published, never alerted).",
            value=s.allowlisted,
        )
        rules = self.sensor.rules
        pack = GaugeMetricFamily(
            "kaspwatch_indicator_pack_info", "Loaded indicator packs.", labels=["name", "version"]
        )
        for p in rules.matcher.packs:
            pack.add_metric([p.name, p.version], 1)
        yield pack
        yield GaugeMetricFamily(
            "kaspwatch_indicators", "Indicators in force.", value=len(rules.matcher.indicators)
        )
        yield GaugeMetricFamily(
            "kaspwatch_indicator_pack_last_reload_success_timestamp_seconds",
            "When the rules in force were loaded.",
            value=rules.loaded_at,
        )
        yield CounterMetricFamily(
            "kaspwatch_indicator_pack_reload_failures",
            "Reloads refused because a pack or allowlist was invalid.",
            value=self.reloader.failures if self.reloader else 0,
        )


def spool_metrics(
    spool: SpoolingPublisher | None,
) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
    """The spool's depth and flows; zero series without a spool, so alerts and graphs work."""
    st = spool.stats if spool else None
    q = spool.spool if spool else None
    yield GaugeMetricFamily(
        "kaspwatch_sensor_spool_depth_records",
        "Hits waiting in the on-disk spool for the bus.",
        value=q.depth_records if q else 0,
    )
    yield GaugeMetricFamily(
        "kaspwatch_sensor_spool_depth_bytes",
        "Bytes of hits waiting in the on-disk spool.",
        value=q.depth_bytes if q else 0,
    )
    yield CounterMetricFamily(
        "kaspwatch_sensor_spooled",
        "Hits written to the spool because the bus did not acknowledge them.",
        value=st.spooled if st else 0,
    )
    yield CounterMetricFamily(
        "kaspwatch_sensor_spool_replayed",
        "Spooled hits the bus acknowledged later.",
        value=st.replayed if st else 0,
    )
    dropped = CounterMetricFamily(
        "kaspwatch_sensor_spool_dropped",
        "Hits lost because the spool was full, by the policy that chose them.",
        labels=["policy"],
    )
    for policy in POLICIES:
        dropped.add_metric([policy], st.dropped[policy] if st else 0)
    yield dropped
    yield CounterMetricFamily(
        "kaspwatch_sensor_spool_corrupt",
        "Corrupt or cut-off spool regions skipped on start (logged with file and offset).",
        value=st.corrupt if st else 0,
    )


def register_sensor(
    registry: CollectorRegistry,
    sensor: Sensor,
    publish: PublishStats,
    reloader: Reloader | None = None,
    sources: list[Any] | None = None,
) -> None:
    drops = [s.kernel_drops for s in sources or [] if hasattr(s, "kernel_drops")]
    registry.register(SensorCollector(sensor, publish, reloader, lambda: sum(d() for d in drops)))


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
    sources: list[Any],
    stop: asyncio.Event,
    interval_s: float = 15.0,
    topic: str = HEARTBEATS_TOPIC,
) -> None:
    """Publish the sensor's health every ``interval_s`` until ``stop`` (and once more then):
    the consumers turn silence into 'sensor down'."""
    drops = [src.kernel_drops for src in sources if hasattr(src, "kernel_drops")]
    while True:
        doc = heartbeat(sensor, publish, sum(d() for d in drops), interval_s)
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
