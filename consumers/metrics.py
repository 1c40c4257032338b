"""Prometheus metrics from hit events and sensor heartbeats.

Labels are bounded: category, kind, severity (enums the event parser enforces), site
(from the asset map), sensor (the deployment's sensors, at most MAX_SENSORS), window;
never an address or a domain. Every known
(category, kind, severity, site) series is exported from the start, at zero, so a
dashboard shows "nothing yet" instead of "no data".

Times are the events' own (a hit's or heartbeat's ``ts``), never the time this consumer read
them: after a backlog, a sensor whose last beat is ten minutes old says so. A time in the
future (a sensor's clock ahead) counts as now.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Info, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from consumers.assets import AssetMap
from kaspwatch import __version__
from kaspwatch.bus import Partition, Record, parse_bus_url
from kaspwatch.bus.security import PLAINTEXT, KafkaSecurity
from kaspwatch.event import HEARTBEAT_FIELDS, KINDS, Event, parse_ts

# *_created series double every counter for no use on a dashboard
disable_created_metrics()  # type: ignore[no-untyped-call]

WINDOWS: Final = {"5m": 300.0, "1h": 3600.0, "24h": 86400.0}
MAX_HOSTS_TRACKED: Final = 200_000  # active-host bookkeeping is bounded too
MAX_SENSORS: Final = 1024  # heartbeating sensors tracked (each has its own series)
log = logging.getLogger("kaspwatch.metrics")


def event_time(ts: object, now: float) -> float:
    """An event's own time (epoch seconds), at most ``now``; ``now`` when it has none."""
    try:
        return min(parse_ts(ts).timestamp(), now) if isinstance(ts, str) else now
    except ValueError:
        return now


class ActiveHosts(Collector):
    """Distinct hosts per (category, site) with a hit (by the hit's own time) within sliding
    windows ending now."""

    def __init__(
        self,
        keys: set[tuple[str, str]],
        max_hosts: int = MAX_HOSTS_TRACKED,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.last_seen: dict[tuple[str, str], dict[str, float]] = {k: {} for k in keys}
        self.max_hosts = max_hosts
        self.clock = clock
        self.evicted = 0

    def see(self, category: str, site: str, host: str, ts: float | None = None) -> None:
        """``ts``: the hit's time (epoch seconds; later than now counts as now)."""
        now = self.clock()
        hosts = self.last_seen.setdefault((category, site), {})
        before = hosts.pop(host, None)  # re-inserted: the dict stays in last-seen order
        hosts[host] = max(min(now if ts is None else ts, now), before or 0.0)
        if len(hosts) > self.max_hosts:
            del hosts[next(iter(hosts))]  # the least recently seen, in O(1)
            self.evicted += 1

    def forget(self, hosts: set[str]) -> None:
        """These hosts' partitions went to another instance: that one counts them now."""
        for table in self.last_seen.values():
            for host in hosts & table.keys():
                del table[host]

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        now = self.clock()
        yield CounterMetricFamily(
            "kaspwatch_active_hosts_evictions",
            f"Hosts dropped from the active-host table (at most {self.max_hosts} per category and site).",
            value=self.evicted,
        )
        fam = GaugeMetricFamily(
            "kaspwatch_active_hosts",
            "Distinct hosts with a hit in the window, per category and site.",
            labels=["category", "site", "window"],
        )
        for (cat, site), hosts in sorted(self.last_seen.items()):
            for old in [h for h, t in hosts.items() if now - t > WINDOWS["24h"]]:
                del hosts[old]
            for window, span in WINDOWS.items():
                fam.add_metric(
                    [cat, site, window], sum(1 for t in hosts.values() if now - t <= span)
                )
        yield fam


class SensorHealth(Collector):
    """Sensor health from heartbeats on Kafka: a sensor whose last beat (by the beat's own
    ``ts``) is more than three intervals old is down; one whose last beat was ``final``
    finished its capture files (``kaspwatch_sensor_finished``), which is not silence."""

    def __init__(
        self, max_sensors: int = MAX_SENSORS, clock: Callable[[], float] = time.time
    ) -> None:
        self.beats: dict[str, dict[str, Any]] = {}  # least recently heard first
        self.max_sensors = max_sensors
        self.clock = clock
        self.evicted = 0

    async def handle(self, docs: list[dict[str, Any]]) -> None:
        now = self.clock()
        for doc in docs:
            self.beats.pop(doc["sensor"], None)
            self.beats[doc["sensor"]] = {**doc, "beat_at": event_time(doc.get("ts"), now)}
            if len(self.beats) > self.max_sensors:  # sensor names label series: bounded
                del self.beats[next(iter(self.beats))]
                self.evicted += 1

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        now = self.clock()
        up = GaugeMetricFamily(
            "kaspwatch_sensor_up",
            "1 while heartbeats arrive (the last within three intervals, by its own time).",
            labels=["sensor"],
        )
        seen = GaugeMetricFamily(
            "kaspwatch_sensor_heartbeat_timestamp_seconds",
            "Time of the last heartbeat, as the sensor stamped it (at most now).",
            labels=["sensor"],
        )
        finished = GaugeMetricFamily(
            "kaspwatch_sensor_finished",
            "1 when the sensor's last heartbeat said it finished its capture files.",
            labels=["sensor"],
        )
        pack = GaugeMetricFamily(
            "kaspwatch_sensor_pack_info",
            "Pack version a sensor runs.",
            labels=["sensor", "version"],
        )
        fams = {
            key: (GaugeMetricFamily if key == "spool_depth" else CounterMetricFamily)(
                f"kaspwatch_fleet_sensor_{key}",
                f"Sensor-reported {key.replace('_', ' ')}.",
                labels=["sensor"],
            )
            for key in HEARTBEAT_FIELDS
        }
        for name, b in sorted(self.beats.items()):
            done = b.get("final") is True
            alive = not done and now - b["beat_at"] <= 3 * float(b["interval_s"])
            up.add_metric([name], 1.0 if alive else 0.0)
            seen.add_metric([name], b["beat_at"])
            finished.add_metric([name], 1.0 if done else 0.0)
            pack.add_metric([name, str(b.get("pack_version", ""))], 1)
            for key, fam in fams.items():
                fam.add_metric([name], b[key])
        evicted = CounterMetricFamily(
            "kaspwatch_sensor_health_evictions",
            f"Sensors forgotten because more than {self.max_sensors} sent heartbeats.",
            value=self.evicted,
        )
        yield from (up, seen, finished, pack, *fams.values(), evicted)


class HitMetrics:
    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        assets: AssetMap | None = None,
        known: set[tuple[str, str]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``known``: (category, severity) pairs of the packs, exported at zero."""
        self.clock = clock
        self.registry = registry or CollectorRegistry()
        self.assets = assets or AssetMap([])
        r = self.registry
        self.hits = Counter(
            "kaspwatch_hits",
            "Events that matched a Kaspersky indicator.",
            ["category", "kind", "severity", "site"],
            registry=r,
        )
        self.allowlisted = Counter(
            "kaspwatch_allowlisted_hits",
            "Hits an allowlist entry covers: counted here, never alerted.",
            ["category"],
            registry=r,
        )
        self.observations = Counter(
            "kaspwatch_observations", "Decoded names that matched nothing.", ["kind"], registry=r
        )
        self.invalid = Counter(
            "kaspwatch_invalid_messages", "Bus messages that were not valid events.", registry=r
        )
        self._last_hit: dict[str, float] = {}
        self.host_part: dict[str, Partition] = {}  # host -> the hits partition it is on
        sites = sorted(self.assets.sites | {"unknown"})
        for cat, sev in known or set():
            for kind in sorted(KINDS):
                for site in sites:
                    self.hits.labels(cat, kind, sev, site)
        self.active = ActiveHosts(
            {(cat, site) for cat, _ in known or set() for site in sites}, clock=clock
        )
        r.register(self.active)
        r.register(_LastHit(self._last_hit))
        Info("kaspwatch_build", "kaspwatch build information.", registry=r).info(
            {"version": __version__}
        )

    async def handle_located(self, located: list[tuple[Record, Event]]) -> None:
        """Hits with their records: which partition each host is on (a revocation of the
        partition takes its hosts out of the active-host gauges)."""
        for rec, ev in located:
            self.host_part.pop(ev.host, None)  # re-inserted: least recently seen first
            self.host_part[ev.host] = (rec.topic, rec.partition)
            if len(self.host_part) > MAX_HOSTS_TRACKED:
                del self.host_part[next(iter(self.host_part))]
        await self.handle([ev for _, ev in located])

    async def assigned(self, partitions: list[Partition]) -> str | None:
        return None

    async def revoked(self, partitions: list[Partition]) -> str | None:
        """Gauges of hosts on partitions this instance no longer reads leave it: the
        instance that reads them now reports them (a sum over instances counts each once)."""
        gone = set(partitions)
        hosts = {h for h, tp in self.host_part.items() if tp in gone}
        self.active.forget(hosts)
        for h in hosts:
            del self.host_part[h]
        return f"{len(hosts)} hosts left the active-host gauges"

    async def handle(self, events: list[Event]) -> None:
        for ev in events:
            ind = ev.indicator
            if ind is None:
                self.observations.labels(ev.kind).inc()
                continue
            if ev.extra.get("allowlisted"):
                self.allowlisted.labels(ind.category).inc()
                continue
            site = self.assets.lookup(ev.host).site
            self.hits.labels(ind.category, ev.kind, ind.severity, site).inc()
            ts = event_time(ev.ts, self.clock())
            self.active.see(ind.category, site, ev.host, ts)
            if ts > self._last_hit.get(site, 0.0):
                self._last_hit[site] = ts


class _LastHit(Collector):
    def __init__(self, last: dict[str, float]) -> None:
        self.last = last

    def collect(self) -> Iterator[GaugeMetricFamily]:
        fam = GaugeMetricFamily(
            "kaspwatch_last_hit_timestamp_seconds",
            "Event time of the newest hit, per site.",
            labels=["site"],
        )
        for site, ts in sorted(self.last.items()):
            fam.add_metric([site], ts)
        yield fam


class LagCollector(Collector):
    """Consumer lag per group and partition, refreshed from Kafka in the background."""

    def __init__(self) -> None:
        self.lag: dict[tuple[str, str, int], int] = {}

    async def refresh(
        self,
        bus: str,
        groups: list[str],
        stop: asyncio.Event,
        every_s: float = 15.0,
        security: KafkaSecurity | None = None,
    ) -> None:
        scheme, where = parse_bus_url(bus)
        if scheme != "kafka" or not groups:
            return
        from kaspwatch.bus.kafka_admin import group_lag  # aiokafka only when lag is read

        while not stop.is_set():
            try:
                self.lag = await group_lag(where, groups, security or PLAINTEXT)
            except Exception as exc:  # lag is best effort: never stop consuming for it
                log.warning("consumer lag not read: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        fam = GaugeMetricFamily(
            "kaspwatch_consumer_lag",
            "Records not yet committed.",
            labels=["group", "topic", "partition"],
        )
        for (group, topic, part), n in sorted(self.lag.items()):
            fam.add_metric([group, topic, str(part)], n)
        yield fam
