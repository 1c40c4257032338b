"""The sensor's own counters as Prometheus metrics, read at scrape time (no work on the
packet path): packets, decode errors, kernel drops, hits, publishing, the spool, the rules."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from kaspwatch.bus.spool import POLICIES
from kaspwatch.bus.spooling_publisher import SpoolingPublisher
from sensor.pipeline import Sensor
from sensor.publish import PublishStats
from sensor.rules.ruleset import Reloader
from sensor.sources.base import Source


class SensorCollector(Collector):
    """Exports the sensor's own counters at scrape time (no work on the packet path)."""

    def __init__(
        self,
        sensor: Sensor,
        publish: PublishStats,
        reloader: Reloader | None = None,
        kernel_drops: Callable[[], int] | None = None,
        bad_lines: Callable[[], int] | None = None,
    ) -> None:
        self.sensor = sensor
        self.publish = publish
        self.reloader = reloader
        self.kernel_drops = kernel_drops
        self.bad_lines = bad_lines

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        s = self.sensor.stats
        yield CounterMetricFamily(
            "kaspwatch_sensor_packets", "Packets the sensor read.", value=s.packets
        )
        yield CounterMetricFamily(
            "kaspwatch_sensor_peer_records",
            "Names and flow starts read from a peer sensor's log (Suricata EVE, Zeek).",
            value=s.records,
        )
        yield CounterMetricFamily(
            "kaspwatch_sensor_peer_bad_lines",
            "Lines of a peer sensor's log that could not be read (skipped, warned with file:line).",
            value=self.bad_lines() if self.bad_lines else 0,
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
        yield from spool_metrics(self.publish.spooling)
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
    sources: list[Source] | None = None,
) -> None:
    kept = list(sources or [])
    registry.register(
        SensorCollector(
            sensor,
            publish,
            reloader,
            lambda: sum(s.kernel_drops() for s in kept),
            # only peer log sources (sensor.peers) count bad lines; capture sources have none
            lambda: sum(getattr(s, "bad", 0) for s in kept),
        )
    )
