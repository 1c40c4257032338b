"""Option groups and argument types more than one command shares: each defined once."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from kaspwatch.bus.spool import POLICIES as SPOOL_POLICIES
from kaspwatch.cli.config import parse_size
from kaspwatch.secretfile import private_dir
from sensor.rules.ruleset import Reloader, RuleSource, source_from

if TYPE_CHECKING:  # the store, the verifier and the pipeline load where they are used
    from kaspwatch.event import Event
    from sensor.pipeline import Sensor
    from sensor.rules.match import Matcher


def listen_addr(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) for a listening socket; an empty host is loopback."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT, e.g. 127.0.0.1:9108")
    return host.strip("[]") or "127.0.0.1", int(port)


def size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_bus_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bus", help="kafka://HOST:PORT[,HOST:PORT] (config 'bus', env KASPWATCH_BUS)")


def add_metrics_addr(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--metrics-addr", type=listen_addr, metavar="HOST:PORT", help=what)


def add_rule_options(p: argparse.ArgumentParser) -> None:
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


def add_peer_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--eve",
        metavar="FILE",
        nargs="+",
        help="Suricata EVE JSON file(s) (gzip ok, - for stdin) or kafka://HOST:PORT/TOPIC",
    )
    p.add_argument(
        "--zeek",
        metavar="DIR|FILE",
        nargs="+",
        help="Zeek log folder(s) or dns/ssl/http/quic/conn.log file(s), TSV or JSON, gzip ok, "
        "- for stdin",
    )


def add_sensor_options(p: argparse.ArgumentParser) -> None:
    add_rule_options(p)
    p.add_argument(
        "--sensor",
        help="sensor name carried on every event (config 'sensor', env KASPWATCH_SENSOR; "
        "default: host name)",
    )


def add_spool_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--spool-dir",
        metavar="DIR",
        help="hits wait here while the bus is down (config 'spool_dir'; default "
        "$KASPWATCH_STATE_DIR/spool-SENSOR, else .kaspwatch/spool-SENSOR)",
    )
    p.add_argument(
        "--spool-max-bytes",
        type=size,
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


def rule_source(args: argparse.Namespace) -> RuleSource:
    cfg = args.config_loaded
    packs = list(cfg.packs) + list(args.pack or [])
    return source_from(packs, args.allowlist or cfg.allowlist, shipped=not args.no_shipped_pack)


def build_sensor(args: argparse.Namespace, observations: bool = False) -> tuple[Sensor, Reloader]:
    from sensor.pipeline import Sensor

    source = rule_source(args)
    rules = source.load()
    return Sensor(rules, args.sensor, observations=observations), Reloader(source, rules)


def add_db_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--db",
        metavar="URL",
        help="sqlite:///PATH or postgresql://USER@HOST[:PORT]/DB (env KASPWATCH_DB; "
        "default sqlite:///$KASPWATCH_STATE_DIR/store.sqlite)",
    )


def db_url(args: argparse.Namespace, create_default: bool = False) -> str:
    """``--db``, else ``$KASPWATCH_DB``, else SQLite in the state directory. With
    ``create_default`` the state directory of that last default is made; the folder of a
    URL the user gave never is (a typo must be an error, not a new empty store)."""
    from consumers.store.base import default_db_url

    if args.db:
        return str(args.db)
    url = default_db_url()
    if create_default and not os.environ.get("KASPWATCH_DB"):
        private_dir(os.environ.get("KASPWATCH_STATE_DIR", ".kaspwatch"))
    return url


def add_assets_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--assets", metavar="FILE", help="asset map (YAML or CSV): adds the site")


def verified_hit(args: argparse.Namespace) -> Callable[[bytes], Event]:
    """The record parser of a consumer that decides on hits: the contract check, then the
    hit re-matched against this consumer's own pack (``--pack``, the config's
    packs, the shipped pack; reloaded when a file changes). A hit it does not match is
    dead-lettered; see ``sensor.verify``."""
    from kaspwatch.event import event_from_json
    from sensor.verify import hit_verifier

    source = rule_source(args)
    reloader = Reloader(source, source.load())

    def matcher() -> Matcher:
        reloader.maybe_reload()
        return reloader.rules.matcher

    verify = hit_verifier(matcher)
    return lambda raw: verify(event_from_json(raw))
