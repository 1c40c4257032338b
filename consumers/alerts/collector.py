"""The delivery's counters as Prometheus metrics, read at scrape time.

Every counter exists at zero for each of its known label values before the first event:
``increase()`` (dashboards, rules) cannot see a series' first value, so a counter born at 1
would hide the first alert of each kind.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from consumers.alerts.delivery import AlertDelivery
from consumers.alerts.engine import STAGES
from kaspwatch.event import CATEGORIES, SEVERITIES

ALERT_KEYS = tuple(itertools.product(CATEGORIES, STAGES, SEVERITIES))


class DeliveryCollector(Collector):
    def __init__(self, delivery: AlertDelivery) -> None:
        self.delivery = delivery

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        st = self.delivery.stats
        alerts = CounterMetricFamily(
            "kaspwatch_alerts", "Alerts raised.", labels=["category", "stage", "severity"]
        )
        for cat, stage, sev in sorted(set(ALERT_KEYS) | set(st.alerts)):
            alerts.add_metric([cat, stage, sev], st.alerts.get((cat, stage, sev), 0))
        yield alerts
        for name, table, text in (
            ("kaspwatch_alert_deliveries", st.sent, "Alerts a sink accepted."),
            ("kaspwatch_alert_sink_failures", st.failures, "Batches a sink gave up on."),
            (
                "kaspwatch_alert_sink_dropped",
                st.dropped,
                "Alerts dropped after a sink gave up (policy drop).",
            ),
            (
                "kaspwatch_alert_read_back",
                st.found,
                "Alerts found on the receiver by a read-back (after a crash or a failed send), "
                "recorded and not sent again: rewrites avoided.",
            ),
            (
                "kaspwatch_alert_read_backs",
                st.read_backs,
                "Read-backs of the receiver (after a start, a failed send, or taking over "
                "hits partitions).",
            ),
        ):
            fam = CounterMetricFamily(name, text, labels=["sink"])
            for sink in self.delivery.sinks:
                fam.add_metric([sink.name], table.get(sink.name, 0))
            yield fam
        state = self.delivery.state
        restores = CounterMetricFamily(
            "kaspwatch_alert_state_takeovers",
            "Hits partitions taken over in a rebalance: their state read from the changelog "
            "(restored), or still current here (kept).",
            labels=["outcome"],
        )
        restores.add_metric(["restored"], getattr(state, "restores", 0))
        restores.add_metric(["kept"], getattr(state, "kept", 0))
        yield restores
        yield CounterMetricFamily(
            "kaspwatch_alert_state_restored_records",
            "Changelog records read to restore hits partitions' alert state.",
            value=getattr(state, "restored_records", 0),
        )
        yield GaugeMetricFamily(
            "kaspwatch_alert_state_partitions",
            "Hits partitions whose alert state this instance holds (0: a single-process store).",
            value=len(getattr(state, "parts", {})),
        )
        yield CounterMetricFamily(
            "kaspwatch_alert_hits_skipped",
            "Hits read again after a rebalance whose effects the partition's state already held.",
            value=self.delivery.stats.skipped,
        )
        engine = self.delivery.engine
        yield CounterMetricFamily(
            "kaspwatch_alerts_suppressed", "Hits inside an open window.", value=engine.suppressed
        )
        yield CounterMetricFamily(
            "kaspwatch_alerts_allowlisted", "Hits an allowlist covered.", value=engine.allowlisted
        )
        firing = CounterMetricFamily(
            "kaspwatch_alert_sink_evictions",
            "Firing alerts a sink stopped re-sending because its bounded table was full.",
            labels=["sink"],
        )
        for sink in self.delivery.sinks:
            firing.add_metric([sink.name], getattr(sink, "evicted", 0))
        yield firing
        book = engine.identities
        evicted = CounterMetricFamily(
            "kaspwatch_identity_evictions",
            "Identity history dropped because its bounded table was full: whole addresses "
            "(table=addresses) or an address's oldest observations (table=observations).",
            labels=["table"],
        )
        evicted.add_metric(["addresses"], book.evicted)
        evicted.add_metric(["observations"], book.dropped)
        yield evicted
        yield GaugeMetricFamily(
            "kaspwatch_identity_addresses",
            f"Addresses whose identity history this instance holds (at most {book.max_addresses}).",
            value=len(book),
        )
        yield CounterMetricFamily(
            "kaspwatch_alert_windows_evictions",
            f"(host, category) windows dropped because more than {engine.max_windows} were open.",
            value=engine.evicted,
        )
