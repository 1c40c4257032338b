"""``kaspwatch alerts``: consume hits, raise alerts to every configured sink."""

from __future__ import annotations

import argparse
import asyncio

from prometheus_client import start_http_server

from consumers.alerts.collector import DeliveryCollector
from consumers.alerts.engine import render_json
from consumers.alerts.resend import resend_firing
from consumers.loop import ConsumerHealth, DeadLetters, consume
from consumers.metrics import HitMetrics
from kaspwatch.bus import open_publisher, open_reader, open_subscriber
from kaspwatch.cli.alerting import add_alert_options, build_sinks, open_delivery
from kaspwatch.cli.kafka import add_kafka_options
from kaspwatch.cli.options import add_bus_option, add_metrics_addr, add_rule_options, verified_hits
from kaspwatch.cli.process import Stopper
from kaspwatch.event import ALERTS_TOPIC, DEAD_LETTER_TOPIC, HITS_TOPIC


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_bus_option(p)
    p.add_argument("--group", default="kaspwatch-alerts", help="Kafka consumer group")
    p.add_argument("--topic", default=HITS_TOPIC)
    p.add_argument("--alerts-topic", default=ALERTS_TOPIC, help="OCSF Detection Findings go here")
    p.add_argument("--dead-letter-topic", default=DEAD_LETTER_TOPIC)
    add_metrics_addr(p, "serve this consumer's metrics (deliveries, sink failures, dead letters)")
    add_alert_options(p, state_default=True)
    add_rule_options(p)  # the pack hits are re-matched against: a hit's indicator is a claim
    add_kafka_options(p)


def run(args: argparse.Namespace) -> int:
    metrics = HitMetrics()
    parse = verified_hits(args)

    async def main() -> None:
        stopper = Stopper()
        stopper.install()
        publisher = open_publisher(args.bus, client_id="kaspwatch-alerts", security=args.kafka)
        sub = open_subscriber(
            args.bus, [args.topic], args.group, client_id="kaspwatch-alerts", security=args.kafka
        )
        await publisher.start()
        await publisher.prepare([args.alerts_topic, args.dead_letter_topic])
        reader = open_reader(args.bus, client_id="kaspwatch-alerts", security=args.kafka)
        sinks = build_sinks(args, publisher, render_json, reader)
        delivery, _ = open_delivery(args, sinks, args.group)
        metrics.registry.register(DeliveryCollector(delivery))
        if args.metrics_addr:
            start_http_server(args.metrics_addr[1], args.metrics_addr[0], registry=metrics.registry)
        for sink in delivery.sinks:
            await sink.start()
        await sub.start()
        dead = DeadLetters(metrics.invalid, publisher, args.dead_letter_topic)
        health = ConsumerHealth(metrics.registry).group(args.group)
        try:
            await asyncio.gather(
                consume(sub, [delivery], stopper.stop, dead, parse=parse, health=health),
                resend_firing(delivery.sinks, stopper.stop),
            )
        finally:
            await sub.stop()
            for sink in delivery.sinks:
                await sink.stop()
            await publisher.stop()
            delivery.state.close()

    asyncio.run(main())
    return 0
