"""Alert options shared by ``kaspwatch alerts`` and ``kaspwatch run``: the window, the asset
map, where the state lives, the failure policy; and every sink's own flags, which each
optional sink module declares and validates itself (``add_options`` / ``from_options``)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType

from consumers.alerts.changelog import CHANGELOG_TOPIC
from consumers.alerts.delivery import POLICIES, AlertDelivery
from consumers.alerts.engine import Alert, AlertEngine
from consumers.alerts.grouping import GROUP_WAIT_S
from consumers.alerts.links import FIELDS, LinkError, Links, check_template
from consumers.alerts.sinks import Sink, SinkOptionError, alertmanager, syslog, webhook
from consumers.alerts.sinks.ocsf import KafkaTopicSink
from consumers.alerts.sinks.stdout import StdoutSink
from consumers.alerts.state import AlertState
from consumers.assets import AssetMap, load_assets
from kaspwatch.bus import Publisher, TopicReader
from kaspwatch.event import ALERTS_TOPIC
from kaspwatch.secretfile import private_dir

DEFAULT_WINDOW = 3600.0
# sinks switched on by their own flags, in the order they get each alert
OPTIONAL_SINKS: tuple[ModuleType, ...] = (alertmanager, webhook, syslog)


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
    for flag, what in (("--runbook-url", "runbook"), ("--dashboard-url", "dashboard")):
        p.add_argument(
            flag,
            metavar="TEMPLATE",
            help=f"link every alert to its {what}: an http(s) URL with placeholders "
            f"{', '.join('{' + f + '}' for f in FIELDS[:4])}... (values percent-encoded)"
            + ("; Alertmanager's generatorURL" if what == "dashboard" else ""),
        )
    p.add_argument(
        "--group-wait",
        type=float,
        default=GROUP_WAIT_S,
        metavar="SECONDS",
        help="webhook and syslog: one message per host listing its alerts of this long "
        f"(default {GROUP_WAIT_S:g}; 0: every alert as it comes)",
    )
    for sink in OPTIONAL_SINKS:
        sink.add_options(p)
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
    """``reader`` (of the publisher's bus) lets the alerts-topic sink read back what it wrote.
    A sink's bad flags raise ``SinkOptionError`` naming the flag."""
    sinks: list[Sink] = []
    if not args.no_stdout:
        sinks.append(StdoutSink(render))
    if publisher is not None:
        topic = getattr(args, "alerts_topic", ALERTS_TOPIC)
        fmt = getattr(args, "alerts_format", "ocsf")
        sinks.append(KafkaTopicSink(publisher, topic, reader, fmt))
    for module in OPTIONAL_SINKS:
        sink = module.from_options(args)
        if sink is not None:
            sinks.append(sink)
    return sinks


def links_from_options(args: argparse.Namespace) -> Links:
    """``--runbook-url`` / ``--dashboard-url``, checked (SinkOptionError naming the flag)."""
    try:
        return Links(
            check_template(args.runbook_url, "--runbook-url") if args.runbook_url else None,
            check_template(args.dashboard_url, "--dashboard-url") if args.dashboard_url else None,
        )
    except LinkError as exc:
        raise SinkOptionError(str(exc)) from None


def state_path(args: argparse.Namespace, group: str | None) -> str | None:
    """``--state``, whose folder must exist (a typo is an error, not a new empty state), or
    the default in the state directory, which is made when missing."""
    if args.state:
        folder = Path(args.state).parent
        if not folder.is_dir():
            raise SinkOptionError(
                f"--state {args.state}: folder {folder} does not exist; create it, or fix the path"
            )
        return str(args.state)
    if group is None:
        return None
    base = private_dir(os.environ.get("KASPWATCH_STATE_DIR", ".kaspwatch"))
    return str(base / f"alerts-{group}.sqlite")


def open_delivery(
    args: argparse.Namespace,
    sinks: list[Sink],
    group: str | None,
    state: AlertState | None = None,
) -> tuple[AlertDelivery, AssetMap]:
    """``state``: where the state lives (default: the SQLite ``--state`` file)."""
    assets = load_assets(args.assets)
    window = args.window or args.config_loaded.window or DEFAULT_WINDOW
    engine = AlertEngine(window, assets, links=links_from_options(args))
    if not args.group_wait >= 0:
        raise SinkOptionError(f"--group-wait {args.group_wait:g}: give 0 or more seconds")
    if state is None:
        state = AlertState(state_path(args, group))
    delivery = AlertDelivery(
        engine, sinks, state, args.on_sink_failure, args.group_wait, tracebacks=args.verbose
    )
    return delivery, assets


STATE_STORES = ("sqlite", "changelog")


def state_store_settings(
    args: argparse.Namespace, section: Mapping[str, tuple[object, str]]
) -> None:
    """``--state-store``/``--state-topic`` over the config file's ``alerts:`` section
    (``state_store``, ``state_topic``), checked: a bad value names its file:line."""
    store, where = section.get("state_store", ("sqlite", "--state-store"))
    if args.state_store is not None:
        store = args.state_store
    elif store not in STATE_STORES:
        raise SinkOptionError(f"{where} {store!r}: give {' or '.join(STATE_STORES)}")
    topic, where = section.get("state_topic", (CHANGELOG_TOPIC, "--state-topic"))
    if args.state_topic is not None:
        topic = args.state_topic
    elif not isinstance(topic, str) or not topic.strip():
        raise SinkOptionError(f"{where} {topic!r}: give the changelog topic's name")
    args.state_store, args.state_topic = store, topic
