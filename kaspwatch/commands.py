"""What each ``kaspwatch`` sub-command does, once its arguments are parsed."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, start_http_server, write_to_textfile

from consumers.alerts import render_json, render_text
from consumers.assets import load_assets
from consumers.loop import DeadLetters, consume, parse_with
from consumers.metrics import HitMetrics, SensorHealth
from consumers.store import open_store
from consumers.summary import Summary
from kaspwatch.alerting import (
    DeliveryCollector,
    LagCollector,
    build_sinks,
    open_delivery,
    resend_firing,
)
from kaspwatch.bus import Publisher, open_publisher, open_reader, open_subscriber
from kaspwatch.bus.spool import Spool
from kaspwatch.bus.spooling import SpoolingPublisher
from kaspwatch.event import HITS_TOPIC, heartbeat_from_json
from kaspwatch.indicator_commands import cmd_indicators
from kaspwatch.runtime import PublishStats, heartbeats, register_sensor, run_sensor
from kaspwatch.scan import scan
from kaspwatch.store_commands import dispatch_store
from sensor.capture import BPF_FILTER, CaptureError, Frame, LiveCapture, MergedLive
from sensor.indicators import Indicator, load_pack, shipped_pack_paths
from sensor.pipeline import Sensor
from sensor.prefilter import PrefilteredFile, open_capture
from sensor.rules import Reloader, RuleSource, source_from

log = logging.getLogger("kaspwatch")


def dispatch(args: argparse.Namespace) -> int:
    handler = {
        "scan": cmd_scan,
        "sense": cmd_sense,
        "alerts": cmd_alerts,
        "metrics": cmd_metrics,
        "run": cmd_run,
        "indicators": cmd_indicators,
        "store": dispatch_store,
        "query": dispatch_store,
        "api": dispatch_store,
    }[args.command]
    return handler(args)


def _rule_source(args: argparse.Namespace) -> RuleSource:
    cfg = args.config_loaded
    packs = list(cfg.packs) + list(args.pack or [])
    return source_from(packs, args.allowlist or cfg.allowlist, shipped=not args.no_shipped_pack)


def _sensor(args: argparse.Namespace, observations: bool = False) -> tuple[Sensor, Reloader]:
    source = _rule_source(args)
    rules = source.load()
    return Sensor(rules, args.sensor, observations=observations), Reloader(source, rules)


def cmd_scan(args: argparse.Namespace) -> int:
    sensor, _ = _sensor(args, observations=args.observations)
    warnings, errors = scan(args.pcap, sensor, args.format, prefilter=not args.no_prefilter)
    for warning in warnings:
        log.warning("%s", warning)
    for error in errors:
        print(f"kaspwatch: error: {error}", file=sys.stderr)
    return 2 if errors else 0


def _open_sources(args: argparse.Namespace, sensor: Sensor) -> list[Iterable[Frame | None]]:
    """Open every source up front so a bad file fails before anything runs. Files go
    through the libpcap prefilter (as with ``scan``), its watched networks taken from the
    rules loaded at start: a reload's new networks still match every flow start (SYNs and
    UDP always pass), only flows already under way are not widened."""
    if args.pcap:
        cidrs = sensor.rules.matcher.cidrs()
        return [open_capture(p, prefilter=True, cidrs=cidrs) for p in args.pcap]
    bpf = BPF_FILTER if args.bpf is None else args.bpf
    if args.fanout is not None and len(args.interface) > 1:
        raise CaptureError("--fanout takes one --interface: run one fanout group per interface")
    live = MergedLive([LiveCapture(i, bpf=bpf or None, fanout=args.fanout) for i in args.interface])
    if args.user:
        drop_privileges(args.user)
    log.info(
        "capturing on %s (%s%s)",
        ", ".join(args.interface),
        "filtered" if bpf else "unfiltered",
        "" if args.fanout is None else f", fanout group {args.fanout}",
    )
    return [live]


def _packets_word(sources: list[Iterable[Frame | None]]) -> str:
    """What the sensor's packet count counts: libpcap skips the rest of a file uncounted."""
    return (
        "packets past the prefilter"
        if any(isinstance(s, PrefilteredFile) for s in sources)
        else "packets"
    )


def drop_privileges(user: str) -> None:
    """Become ``user`` for good: the open capture sockets keep working, nothing else of
    root's remains (supplementary groups cleared, gid before uid, no way back)."""
    import concurrent.futures.thread  # noqa: F401 - asyncio's executor, imported lazily
    import pwd

    from kaspwatch.event import parse_ts

    # Warm what Python loads lazily on first use, while the interpreter's files can still
    # be read (a Python under /root cannot be read by the user we become).
    parse_ts("2000-01-01T00:00:00.000000Z")  # _strptime
    "bücher.example".encode("idna")  # encodings.idna, stringprep

    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise CaptureError(f"--user {user}: no such user") from None
    if os.getuid() != 0:
        raise CaptureError(f"--user {user}: only root can switch user; run as root or drop --user")
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    if os.getuid() != entry.pw_uid or os.geteuid() != entry.pw_uid:
        raise CaptureError(f"--user {user}: could not drop root")
    log.info("running as %s (uid %d) from now on", user, entry.pw_uid)


class _Stopper:
    """SIGINT/SIGTERM stop the async loop and the capture thread; SIGHUP reloads rules."""

    def __init__(self, reloader: Reloader | None = None) -> None:
        self.halt = threading.Event()
        self.stop = asyncio.Event()
        self.reloader = reloader

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.trigger)
        if self.reloader is not None:
            loop.add_signal_handler(signal.SIGHUP, self.reloader.request)

    def trigger(self) -> None:
        self.halt.set()
        self.stop.set()


def cmd_sense(args: argparse.Namespace) -> int:
    sensor, reloader = _sensor(args, observations=args.observations)
    sources = _open_sources(args, sensor)
    spool = Spool(args.spool_dir, args.spool_max_bytes, policy=args.spool_policy)
    publish = PublishStats()
    if args.metrics_addr:
        registry = CollectorRegistry()
        register_sensor(registry, sensor, publish, reloader, sources)
        start_http_server(args.metrics_addr[1], args.metrics_addr[0], registry=registry)

    async def main() -> None:
        stopper = _Stopper(reloader)
        stopper.install()

        def connect() -> Publisher:
            return open_publisher(
                args.bus,
                client_id=f"kaspwatch-sensor-{args.sensor}",
                security=args.kafka,
                delivery_timeout=args.delivery_timeout,
            )

        publisher = publish.spool = SpoolingPublisher(
            connect, spool, args.delivery_timeout, passthrough=(args.heartbeats_topic,)
        )
        await publisher.start()
        await publisher.prepare([args.topic, args.heartbeats_topic])
        sensed = asyncio.Event()
        beat = asyncio.create_task(
            heartbeats(
                sensor,
                publish,
                publisher,  # heartbeats pass straight through, never spooled
                sources,
                sensed,
                args.heartbeat_interval,
                args.heartbeats_topic,
            )
        )
        try:
            await run_sensor(
                sources, sensor, publisher, publish, stopper.halt, args.topic, reloader
            )
        finally:
            sensed.set()
            await beat
            await publisher.stop()

    asyncio.run(main())
    s = sensor.stats
    drops = [src.kernel_drops() for src in sources if isinstance(src, MergedLive)]
    st = publish.spool.stats if publish.spool else None
    log.info(
        "sensor %s: %d %s, %d hits, %d published, %d publish failures, %d decode errors, "
        "%d kernel drops; spool: %d spooled, %d replayed, %d dropped, %d waiting",
        args.sensor,
        s.packets,
        _packets_word(sources),
        s.hits,
        publish.acknowledged,
        publish.lost,
        s.decode_errors,
        sum(drops),
        st.spooled if st else 0,
        st.replayed if st else 0,
        sum(st.dropped.values()) if st else 0,
        publish.spool_depth,
    )
    return 1 if publish.lost or publish.spool_depth else 0


def cmd_alerts(args: argparse.Namespace) -> int:
    render = render_json
    metrics = HitMetrics()

    async def main() -> None:
        stopper = _Stopper()
        stopper.install()
        publisher = open_publisher(args.bus, client_id="kaspwatch-alerts", security=args.kafka)
        sub = open_subscriber(
            args.bus, [args.topic], args.group, client_id="kaspwatch-alerts", security=args.kafka
        )
        await publisher.start()
        await publisher.prepare([args.alerts_topic, args.dead_letter_topic])
        reader = open_reader(args.bus, client_id="kaspwatch-alerts", security=args.kafka)
        sinks = build_sinks(args, publisher, render, reader)
        delivery, _ = open_delivery(args, sinks, args.group)
        metrics.registry.register(DeliveryCollector(delivery))
        if args.metrics_addr:
            start_http_server(args.metrics_addr[1], args.metrics_addr[0], registry=metrics.registry)
        for sink in delivery.sinks:
            await sink.start()
        await sub.start()
        dead = DeadLetters(metrics.invalid, publisher, args.dead_letter_topic)
        try:
            await asyncio.gather(
                consume(sub, [delivery], stopper.stop, dead),
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


def _known_pairs(indicators: Iterable[Indicator] | None = None) -> set[tuple[str, str]]:
    """(category, severity) pairs of the packs in force (default: the shipped ones):
    their series start at zero."""
    if indicators is None:
        indicators = [i for p in shipped_pack_paths() for i in load_pack(p).indicators]
    return {(i.category, i.severity) for i in indicators}


def cmd_metrics(args: argparse.Namespace) -> int:
    metrics = HitMetrics(assets=load_assets(args.assets), known=_known_pairs())
    health = SensorHealth()
    lag = LagCollector()
    for collector in (health, lag):
        metrics.registry.register(collector)
    host, port = args.listen
    start_http_server(port, host, registry=metrics.registry)
    log.info("serving metrics on http://%s:%d/metrics", host, port)

    async def main() -> None:
        stopper = _Stopper()
        stopper.install()
        sub = open_subscriber(
            args.bus, [args.topic], args.group, client_id="kaspwatch-metrics", security=args.kafka
        )
        beats = open_subscriber(
            args.bus,
            [args.heartbeats_topic],
            f"{args.group}-heartbeats",
            client_id="kaspwatch-metrics",
            security=args.kafka,
        )
        await sub.start()
        await beats.start()
        groups = [g for g in args.lag_groups.split(",") if g]
        try:
            await asyncio.gather(
                consume(sub, [metrics], stopper.stop, DeadLetters(metrics.invalid)),
                consume(
                    beats,
                    [health],
                    stopper.stop,
                    DeadLetters(metrics.invalid),
                    parse=parse_with(heartbeat_from_json),
                ),
                lag.refresh(args.bus, groups, stopper.stop, security=args.kafka),
            )
        finally:
            await sub.stop()
            await beats.stop()

    asyncio.run(main())
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    sensor, reloader = _sensor(args)
    sources = _open_sources(args, sensor)
    publish = PublishStats()
    render = render_text if args.format == "text" else render_json
    delivery, assets = open_delivery(args, build_sinks(args, None, render), None)
    metrics = HitMetrics(
        assets=assets, known=_known_pairs(sensor.rules.matcher.indicators.values())
    )
    register_sensor(metrics.registry, sensor, publish, reloader, sources)
    metrics.registry.register(DeliveryCollector(delivery))
    if args.metrics_addr:
        start_http_server(args.metrics_addr[1], args.metrics_addr[0], registry=metrics.registry)
        log.info("serving metrics on http://%s:%d/metrics", *args.metrics_addr)
    bus_url = f"memory://run-{id(sensor)}"
    engine = delivery.engine
    summary = Summary()
    store = open_store(args.db) if args.db else None

    async def main() -> None:
        stopper = _Stopper(reloader)
        stopper.install()
        publisher = open_publisher(bus_url)
        alerts_sub = open_subscriber(bus_url, [HITS_TOPIC], "kaspwatch-alerts")
        metrics_sub = open_subscriber(bus_url, [HITS_TOPIC], "kaspwatch-metrics")
        store_sub = open_subscriber(bus_url, [HITS_TOPIC], "kaspwatch-store")
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
        never = asyncio.Event()
        await asyncio.gather(
            sense(),
            consume(alerts_sub, [delivery, summary], never, on_invalid, sensing_done.is_set),
            consume(metrics_sub, [metrics], never, on_invalid, sensing_done.is_set),
            *(
                [consume(store_sub, [store], never, on_invalid, sensing_done.is_set)]
                if store is not None
                else []
            ),
        )
        for sink in delivery.sinks:
            await sink.stop()

    asyncio.run(main())
    if store is not None:
        store.close()
    summary.print(sys.stdout)
    s = sensor.stats
    log.info(
        "%d %s, %d hits, %d alerts (%d suppressed), %d decode errors",
        s.packets,
        _packets_word(sources),
        s.hits,
        engine.alerts,
        engine.suppressed,
        s.decode_errors,
    )
    if args.metrics_textfile:
        write_to_textfile(args.metrics_textfile, metrics.registry)
    return 0
