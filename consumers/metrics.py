"""Prometheus metrics from hit events. Labels are bounded: never an address or a name."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Info, disable_created_metrics

from kaspwatch import __version__
from kaspwatch.event import Event, parse_ts

# *_created series double every counter for no use on a dashboard
disable_created_metrics()  # type: ignore[no-untyped-call]


class HitMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.hits = Counter(
            "kaspwatch_hits",
            "Events that matched a Kaspersky indicator.",
            ["category", "kind", "severity"],
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
        self.last_hit = Gauge(
            "kaspwatch_last_hit_timestamp_seconds",
            "Event time of the newest hit consumed.",
            registry=r,
        )
        self._newest = 0.0
        Info("kaspwatch_build", "kaspwatch build information.", registry=r).info(
            {"version": __version__}
        )

    async def handle(self, events: list[Event]) -> None:
        for ev in events:
            ind = ev.indicator
            if ind is None:
                self.observations.labels(ev.kind).inc()
                continue
            if ev.extra.get("allowlisted"):
                self.allowlisted.labels(ind.category).inc()
                continue
            self.hits.labels(ind.category, ev.kind, ind.severity).inc()
            ts = parse_ts(ev.ts).timestamp()
            if ts > self._newest:
                self._newest = ts
                self.last_hit.set(ts)
