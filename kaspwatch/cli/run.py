"""``kaspwatch run``: the embedded mode, sensor and consumers in one process on the
in-process bus; alerts, metrics, an end-of-run summary and optionally the store."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from prometheus_client import start_http_server, write_to_textfile

from consumers.alerts.collector import DeliveryCollector
from consumers.alerts.engine import render_json, render_text
from consumers.alerts.sinks.ecs import render_ecs
from consumers.identity import parse_with_identities
from consumers.loop import ConsumerHealth, DeadLetters, consume
from consumers.metrics import HitMetrics
from consumers.store import open_store
from consumers.summary import Summary
from kaspwatch.bus import open_publisher, open_subscriber
from kaspwatch.cli.alerting import add_alert_options, build_sinks, open_delivery
from kaspwatch.cli.capture import (
    add_source_options,
    counts_word,
    finish,
    nothing_read,
    open_sources,
)
from kaspwatch.cli.metrics import known_pairs
from kaspwatch.cli.options import add_metrics_addr, add_sensor_options, build_sensor
from kaspwatch.cli.process import Stopper
from kaspwatch.event import HITS_TOPIC
from kaspwatch.identity import IDENTITY_TOPIC
from sensor.health import register_sensor
from sensor.publish import PublishStats, run_sensor

log = logging.getLogger("kaspwatch")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_source_options(p)
    add_sensor_options(p)
    add_alert_options(p, state_default=False)
    p.add_argument(
        "--db",
        metavar="URL",
        help="also keep every hit in the incident-response store (sqlite:///PATH or postgresql://...)",
    )
    add_metrics_addr(p, "serve metrics while running (e.g. 127.0.0.1:9108)")
    p.add_argument(
        "--metrics-textfile",
        metavar="PATH",
        help="write final metrics here (node_exporter textfile format)",
    )
    p.add_argument(
        "--format",
        choices=("text", "ndjson", "ecs"),
        default="text",
        help="alert output format (ecs: Elastic Common Schema 8.11 documents, one a line)",
    )


def run(args: argparse.Namespace) -> int:
    sensor, reloader = build_sensor(args)
    sources = open_sources(args, sensor)
    publish = PublishStats()
    render = {"text": render_text, "ndjson": render_json, "ecs": render_ecs}[args.format]
    delivery, assets = open_delivery(args, build_sinks(args, None, render), None)
    metrics = HitMetrics(assets=assets, known=known_pairs(sensor.rules.matcher.indicators.values()))
    register_sensor(metrics.registry, sensor, publish, reloader, sources)
    metrics.registry.register(DeliveryCollector(delivery))
    if args.metrics_addr:
        start_http_server(args.metrics_addr[1], args.metrics_addr[0], registry=metrics.registry)
        log.info("serving metrics on http://%s:%d/metrics", *args.metrics_addr)
    bus_url = f"memory://run-{id(sensor)}"
    engine = delivery.engine
    summary = Summary()
    store = open_store(args.db) if args.db else None

    stopper = Stopper(reloader.request)

    async def main() -> None:
        stopper.install()
        publisher = open_publisher(bus_url)
        # identities first: a batch's DHCP/ARP records reach the book before its hits
        alerts_sub = open_subscriber(bus_url, [IDENTITY_TOPIC, HITS_TOPIC], "kaspwatch-alerts")
        metrics_sub = open_subscriber(bus_url, [HITS_TOPIC], "kaspwatch-metrics")
        store_sub = open_subscriber(bus_url, [IDENTITY_TOPIC, HITS_TOPIC], "kaspwatch-store")
        for part in (publisher, alerts_sub, metrics_sub, store_sub):
            await part.start()
        sensing_done = asyncio.Event()
        on_invalid = DeadLetters(metrics.invalid)
        for sink in delivery.sinks:
            await sink.start()

        async def sense() -> None:
            try:
                await run_sensor(
                    sources, sensor, publisher, publish, stopper.halt, reloader=reloader
                )
            finally:
                sensing_done.set()

        # Consumers keep up while the sensor runs; once it ends (end of capture, or a
        # signal) they drain everything it published, so no accepted hit goes unreported.
        # A second signal ends the drain too (a sink that stays down must not hold the run).
        health = ConsumerHealth(metrics.registry)
        done = sensing_done.is_set
        abort = stopper.again
        await asyncio.gather(
            sense(),
            consume(
                alerts_sub,
                [delivery, summary],
                abort,
                on_invalid,
                done,
                parse_with_identities(IDENTITY_TOPIC),
                health=health.group("kaspwatch-alerts"),
            ),
            consume(
                metrics_sub,
                [metrics],
                abort,
                on_invalid,
                done,
                health=health.group("kaspwatch-metrics"),
            ),
            *(
                [
                    consume(
                        store_sub,
                        [store],
                        abort,
                        on_invalid,
                        done,
                        parse_with_identities(IDENTITY_TOPIC),
                        health=health.group("kaspwatch-store"),
                    )
                ]
                if store is not None
                else []
            ),
        )
        await delivery.flush_groups(everything=True)  # the capture ended: send what is held
        for sink in delivery.sinks:
            await sink.stop()

    asyncio.run(main())
    if store is not None:
        store.close()
    if nothing_read(sources):
        return finish(sources, stopper)
    summary.print(sys.stdout)
    s = sensor.stats
    log.info(
        "%d %s, %d hits, %d alerts (%d suppressed), %d decode errors",
        s.packets + s.records,
        counts_word(sources),
        s.hits,
        engine.alerts,
        engine.suppressed,
        s.decode_errors,
    )
    if args.metrics_textfile:
        write_to_textfile(args.metrics_textfile, metrics.registry)
    return finish(sources, stopper)
