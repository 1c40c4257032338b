"""Alert options shared by ``kaspwatch alerts`` and ``kaspwatch run``: which sinks, which
asset map, where the state lives; and the metrics of delivery."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from consumers.alerts import Alert, AlertEngine
from consumers.assets import AssetMap, load_assets
from consumers.delivery import POLICIES, AlertDelivery
from consumers.sinks import Sink, SinkError
from consumers.sinks.ocsf import KafkaTopicSink
from consumers.sinks.stdout import StdoutSink
from consumers.state import AlertState
from kaspwatch.bus import Publisher, TopicReader, parse_bus_url
from kaspwatch.bus.security import KafkaSecurity
from kaspwatch.event import ALERTS_TOPIC

DEFAULT_WINDOW = 3600.0
log = logging.getLogger("kaspwatch.alerts")


def add_alert_options(p: argparse.ArgumentParser, state_default: bool) -> None:
    p.add_argument(
        "--window",
        type=float,
        metavar="SECONDS",
        help="suppression window per (host, category, stage), in event time (default 3600)",
    )
    p.add_argument(
        "--assets",
        metavar="FILE",
        help="asset map, YAML or CSV: cidr -> site, zone, owner, criticality",
    )
    p.add_argument(
        "--state",
        metavar="FILE",
        help="SQLite file keeping suppression windows and deliveries across restarts"
        + (" (default: .kaspwatch/alerts-GROUP.sqlite)" if state_default else " (default: memory)"),
    )
    p.add_argument(
        "--alertmanager",
        metavar="URL",
        action="append",
        default=[],
        help="Prometheus Alertmanager base URL (repeatable: every one gets every alert)",
    )
    p.add_argument("--webhook", metavar="URL", help="POST alerts as JSON here")
    p.add_argument(
        "--webhook-secret-file", metavar="PATH", help="HMAC-SHA256 key for X-Kaspwatch-Signature"
    )
    p.add_argument("--syslog", metavar="URL", help="udp://HOST:PORT or tcp://HOST:PORT")
    p.add_argument("--syslog-format", choices=("rfc5424", "cef"), default="rfc5424")
    p.add_argument(
        "--on-sink-failure",
        choices=POLICIES,
        default="retry",
        help="retry: keep the batch uncommitted and retry (default); drop: count, log, go on",
    )
    p.add_argument("--no-stdout", action="store_true", help="do not print alerts on stdout")


def build_sinks(
    args: argparse.Namespace,
    publisher: Publisher | None,
    render: Callable[[Alert], str],
    reader: TopicReader | None = None,
) -> list[Sink]:
    """``reader`` (of the publisher's bus) lets the alerts-topic sink read back what it wrote."""
    sinks: list[Sink] = []
    if not args.no_stdout:
        sinks.append(StdoutSink(render))
    if publisher is not None:
        topic = getattr(args, "alerts_topic", ALERTS_TOPIC)
        sinks.append(KafkaTopicSink(publisher, topic, reader))
    if args.alertmanager:
        from consumers.sinks.alertmanager import AlertmanagerSink

        sinks.append(AlertmanagerSink(args.alertmanager))
    if args.webhook:
        from consumers.sinks.webhook import WebhookSink, load_secret

        secret = load_secret(args.webhook_secret_file) if args.webhook_secret_file else None
        sinks.append(WebhookSink(args.webhook, secret))
    if args.syslog:
        from consumers.sinks.syslog import SyslogSink

        sinks.append(SyslogSink(args.syslog, args.syslog_format))
    return sinks


def state_path(args: argparse.Namespace, group: str | None) -> str | None:
    if args.state:
        return str(args.state)
    if group is None:
        return None
    base = Path(os.environ.get("KASPWATCH_STATE_DIR", ".kaspwatch"))
    return str(base / f"alerts-{group}.sqlite")


def open_delivery(
    args: argparse.Namespace, sinks: list[Sink], group: str | None
) -> tuple[AlertDelivery, AssetMap]:
    assets = load_assets(args.assets)
    window = args.window or args.config_loaded.window or DEFAULT_WINDOW
    engine = AlertEngine(window, assets)
    return AlertDelivery(
        engine, sinks, AlertState(state_path(args, group)), args.on_sink_failure
    ), assets


class DeliveryCollector(Collector):
    def __init__(self, delivery: AlertDelivery) -> None:
        self.delivery = delivery

    def collect(self) -> Iterator[CounterMetricFamily]:
        st = self.delivery.stats
        alerts = CounterMetricFamily(
            "kaspwatch_alerts", "Alerts raised.", labels=["category", "stage", "severity"]
        )
        for (cat, stage, sev), n in sorted(st.alerts.items()):
            alerts.add_metric([cat, stage, sev], n)
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
                "recorded and not sent again.",
            ),
        ):
            fam = CounterMetricFamily(name, text, labels=["sink"])
            for sink in self.delivery.sinks:
                fam.add_metric([sink.name], table.get(sink.name, 0))
            yield fam
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
        yield CounterMetricFamily(
            "kaspwatch_alert_windows_evictions",
            f"(host, category) windows dropped because more than {engine.max_windows} were open.",
            value=engine.evicted,
        )


async def resend_firing(sinks: list[Sink], stop: asyncio.Event, every_s: float = 30.0) -> None:
    """Alertmanager forgets an alert whose endsAt passes: re-send the firing ones."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)
        for sink in sinks:
            due = getattr(sink, "resend_due", None)
            if due is None:
                continue
            alerts = due(time.time())
            if not alerts:
                continue
            try:
                await sink.send(alerts)
            except SinkError as exc:
                log.warning("re-send to %s failed (will try again): %s", sink.name, exc)


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
        from kaspwatch.bus.kafka import group_lag
        from kaspwatch.bus.security import PLAINTEXT

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
