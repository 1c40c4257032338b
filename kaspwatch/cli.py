"""The ``kaspwatch`` command: scan, sense, alerts, metrics, run."""

from __future__ import annotations

import argparse
import logging
import os
import re
import socket
import sys
import time
from collections.abc import Sequence

from kaspwatch import __version__
from kaspwatch.alerting import add_alert_options
from kaspwatch.argtypes import listen_addr
from kaspwatch.bus import BusError, parse_bus_url
from kaspwatch.bus.security import RedactSecrets
from kaspwatch.bus.spool import POLICIES as SPOOL_POLICIES
from kaspwatch.bus.spool import SpoolError
from kaspwatch.config import load_config, parse_size
from kaspwatch.event import ALERTS_TOPIC, DEAD_LETTER_TOPIC, HEARTBEATS_TOPIC, HITS_TOPIC
from kaspwatch.kafka_options import add_kafka_options, kafka_security
from kaspwatch.store_commands import add_store_parsers
from sensor.capture import CaptureError
from sensor.indicators import PackError

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_USAGE = 2

log = logging.getLogger("kaspwatch")


def _add_rule_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--pack",
        metavar="FILE",
        action="append",
        help="site pack layered over the shipped Kaspersky pack (repeatable)",
    )
    p.add_argument(
        "--no-shipped-pack", action="store_true", help="use only the packs given with --pack"
    )
    p.add_argument(
        "--allowlist", metavar="FILE", help="sanctioned exceptions (counted, not alerted)"
    )


def _add_sensor_opts(p: argparse.ArgumentParser) -> None:
    _add_rule_opts(p)
    p.add_argument(
        "--sensor",
        help="sensor name carried on every event (config 'sensor', env KASPWATCH_SENSOR; "
        "default: host name)",
    )


def _add_source_opts(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--pcap", metavar="FILE", nargs="+", help="pcap/pcapng file(s), gzip ok, - for stdin"
    )
    src.add_argument("--interface", metavar="IF", nargs="+", help="live capture interface(s)")
    p.add_argument(
        "--user",
        metavar="NAME",
        help="live capture: drop root for this user once the capture sockets are open",
    )
    p.add_argument(
        "--fanout",
        type=int,
        metavar="GROUP",
        help="live capture: join PACKET_FANOUT group GROUP (0-65535, flow hash) so several "
        "sensor processes on one interface share its flows, each flow to one process",
    )
    p.add_argument(
        "--bpf",
        metavar="EXPR",
        help="live capture: kernel filter (default: packets that can carry a name or start "
        "a flow; see sensor/capture.py); --bpf '' keeps every packet",
    )


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_spool_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--spool-dir",
        metavar="DIR",
        help="hits wait here while the bus is down (config 'spool_dir'; default "
        "$KASPWATCH_STATE_DIR/spool-SENSOR, else .kaspwatch/spool-SENSOR)",
    )
    p.add_argument(
        "--spool-max-bytes",
        type=_size,
        metavar="SIZE",
        help="spool bound, e.g. 512M (config 'spool_max_bytes'; default 512M)",
    )
    p.add_argument(
        "--spool-policy",
        choices=SPOOL_POLICIES,
        help="which hit a full spool loses, counted and logged (config 'spool_policy'; "
        "default drop-oldest)",
    )
    p.add_argument(
        "--delivery-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="a send the bus has not acknowledged by then counts as failed: spool (default 10)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kaspwatch",
        description="Find machines still running Kaspersky software from their network traffic.",
    )
    parser.add_argument("--version", action="version", version=f"kaspwatch {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=os.environ.get("KASPWATCH_CONFIG"),
        help="configuration file (env KASPWATCH_CONFIG); flags override it",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("scan", help="scan captures offline and print hits as NDJSON or a table")
    p.add_argument(
        "pcap", nargs="+", metavar="PCAP", help="pcap/pcapng file(s), gzip ok, - for stdin"
    )
    p.add_argument(
        "--observations", action="store_true", help="also print names that matched nothing"
    )
    p.add_argument("--format", choices=("ndjson", "table"), default="ndjson")
    p.add_argument(
        "--no-prefilter",
        action="store_true",
        help="run every packet through Python (the reference path) instead of letting "
        "libpcap drop, in C, packets that cannot carry a name (sensor/prefilter.py)",
    )
    _add_sensor_opts(p)

    p = sub.add_parser("sense", help="run the sensor and publish hits to the bus")
    _add_source_opts(p)
    p.add_argument("--bus", help="kafka://HOST:PORT[,HOST:PORT] (config 'bus', env KASPWATCH_BUS)")
    p.add_argument("--topic", default=HITS_TOPIC)
    p.add_argument("--observations", action="store_true", help="also publish non-matching names")
    p.add_argument("--heartbeats-topic", default=HEARTBEATS_TOPIC)
    p.add_argument("--heartbeat-interval", type=float, default=15.0, metavar="SECONDS")
    p.add_argument(
        "--metrics-addr",
        type=listen_addr,
        metavar="HOST:PORT",
        help="serve the sensor's metrics here",
    )
    _add_spool_opts(p)
    _add_sensor_opts(p)
    add_kafka_options(p)

    p = sub.add_parser("alerts", help="consume hits, raise alerts to every configured sink")
    p.add_argument("--bus", help="kafka://HOST:PORT[,HOST:PORT] (config 'bus', env KASPWATCH_BUS)")
    p.add_argument("--group", default="kaspwatch-alerts", help="Kafka consumer group")
    p.add_argument("--topic", default=HITS_TOPIC)
    p.add_argument("--alerts-topic", default=ALERTS_TOPIC, help="OCSF Detection Findings go here")
    p.add_argument("--dead-letter-topic", default=DEAD_LETTER_TOPIC)
    p.add_argument(
        "--metrics-addr",
        type=listen_addr,
        metavar="HOST:PORT",
        help="serve this consumer's metrics (deliveries, sink failures, dead letters)",
    )
    add_alert_options(p, state_default=True)
    add_kafka_options(p)

    p = sub.add_parser("metrics", help="consume hits and serve Prometheus metrics")
    p.add_argument("--bus", help="kafka://HOST:PORT[,HOST:PORT] (config 'bus', env KASPWATCH_BUS)")
    p.add_argument("--group", default="kaspwatch-metrics", help="Kafka consumer group")
    p.add_argument("--topic", default=HITS_TOPIC)
    p.add_argument(
        "--listen",
        type=listen_addr,
        default=("127.0.0.1", 9108),
        metavar="HOST:PORT",
        help="where to serve /metrics (default 127.0.0.1:9108)",
    )
    p.add_argument("--heartbeats-topic", default=HEARTBEATS_TOPIC)
    p.add_argument("--assets", metavar="FILE", help="asset map: adds the site label")
    p.add_argument(
        "--lag-groups",
        default="kaspwatch-alerts,kaspwatch-metrics,kaspwatch-store",
        help="consumer groups whose lag to export, comma-separated",
    )
    add_kafka_options(p)

    p = sub.add_parser("run", help="embedded mode: sensor and consumers in one process")
    _add_source_opts(p)
    _add_sensor_opts(p)
    add_alert_options(p, state_default=False)
    p.add_argument(
        "--db",
        metavar="URL",
        help="also keep every hit in the incident-response store (sqlite:///PATH or postgresql://...)",
    )
    p.add_argument(
        "--metrics-addr",
        type=listen_addr,
        metavar="HOST:PORT",
        help="serve metrics while running (e.g. 127.0.0.1:9108)",
    )
    p.add_argument(
        "--metrics-textfile",
        metavar="PATH",
        help="write final metrics here (node_exporter textfile format)",
    )
    p.add_argument(
        "--format", choices=("text", "ndjson"), default="text", help="alert output format"
    )
    _add_indicator_parsers(sub)
    add_store_parsers(sub)
    return parser


def _add_indicator_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("indicators", help="check, explain and list indicator packs")
    isub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    c = isub.add_parser("check", help="validate packs (no FILE: shipped + configured site packs)")
    c.add_argument("files", nargs="*", metavar="FILE")
    _add_rule_opts(c)
    e = isub.add_parser("explain", help="which indicator matches a name or IP, and why")
    e.add_argument("target", metavar="NAME_OR_IP")
    e.add_argument("--kind", default=None, help="where it was seen (default: every kind)")
    e.add_argument("--format", choices=("text", "json"), default="text")
    _add_rule_opts(e)
    ls = isub.add_parser("list", help="every indicator with its fields")
    ls.add_argument("--format", choices=("table", "json"), default="table")
    _add_rule_opts(ls)


def _resolve(args: argparse.Namespace) -> None:
    """Fill unset options from the configuration file and the environment."""
    cfg = load_config(args.config)
    args.config_loaded = cfg
    if "sensor" in args:
        args.sensor = (
            args.sensor or cfg.sensor or os.environ.get("KASPWATCH_SENSOR") or socket.gethostname()
        )
    if "spool_dir" in args:
        base = os.environ.get("KASPWATCH_STATE_DIR", ".kaspwatch")
        args.spool_dir = (
            args.spool_dir
            or cfg.spool_dir
            or os.path.join(base, "spool-" + re.sub(r"[^A-Za-z0-9._-]", "_", args.sensor))
        )
        args.spool_max_bytes = args.spool_max_bytes or cfg.spool_max_bytes or 512 << 20
        args.spool_policy = args.spool_policy or cfg.spool_policy or "drop-oldest"
    if "bus" in args:
        args.bus = args.bus or cfg.bus or os.environ.get("KASPWATCH_BUS")
        if not args.bus:
            raise BusError("no bus: give --bus, set KASPWATCH_BUS, or 'bus:' in the config file")
        args.kafka = None
        if parse_bus_url(args.bus)[0] == "kafka":
            args.kafka = kafka_security(args, cfg.kafka)
            log.info("kafka %s: %s", args.bus, args.kafka.describe())


class _RateLimit(logging.Filter):
    """Each distinct message at most once per ``interval`` seconds: a client retrying an
    unreachable broker ten times a second must not flood the log (or block on a full pipe)."""

    def __init__(self, interval: float) -> None:
        super().__init__()
        self.interval = interval
        self.last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = str(record.msg)
        now = time.monotonic()
        if now - self.last.get(key, -self.interval) < self.interval:
            return False
        if len(self.last) > 1000:
            self.last.clear()
        self.last[key] = now
        return True


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="kaspwatch: %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactSecrets())  # a secret never reaches a log line
    logging.getLogger("aiokafka").setLevel(logging.DEBUG if args.verbose else logging.ERROR)
    if not args.verbose:
        logging.getLogger("aiokafka").addFilter(_RateLimit(30.0))
    from kaspwatch import commands

    try:
        _resolve(args)
        return commands.dispatch(args)
    except (CaptureError, PackError, BusError, SpoolError) as exc:
        print(f"kaspwatch: error: {RedactSecrets.scrub(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
