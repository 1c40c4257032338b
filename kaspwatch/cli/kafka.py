"""Kafka connection options shared by every command that talks to Kafka (sense, alerts,
metrics, store): flags, then the config file's ``kafka:`` section, then the environment.

There is deliberately no flag for the password itself: argv is world-readable in /proc.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from kaspwatch.bus import BusError, GroupSettings, parse_bus_url
from kaspwatch.bus.security import (
    DEFAULT_PASSWORD_ENV,
    MECHANISMS,
    PLAINTEXT,
    PROTOCOLS,
    KafkaSecurity,
    KafkaSettings,
    resolve,
)
from kaspwatch.bus.topics import DEFAULT_PARTITIONS, MAX_AUTO_REPLICATION, TopicSpec

# flag -> KafkaSettings field
FLAGS = {
    "--kafka-security-protocol": "security_protocol",
    "--kafka-sasl-mechanism": "sasl_mechanism",
    "--kafka-user": "username",
    "--kafka-password-file": "password_file",
    "--kafka-password-env": "password_env",
    "--kafka-ca": "ca_file",
    "--kafka-cert": "cert_file",
    "--kafka-key": "key_file",
}
# settings that may also come from the environment (after flags and the config file)
ENV = {
    "security_protocol": "KASPWATCH_KAFKA_SECURITY_PROTOCOL",
    "sasl_mechanism": "KASPWATCH_KAFKA_SASL_MECHANISM",
    "username": "KASPWATCH_KAFKA_USER",
    "password_file": "KASPWATCH_KAFKA_PASSWORD_FILE",
    "ca_file": "KASPWATCH_KAFKA_CA",
    "cert_file": "KASPWATCH_KAFKA_CERT",
    "key_file": "KASPWATCH_KAFKA_KEY",
}


@dataclass(frozen=True)
class TopicPlan:
    """How this command creates a missing topic: ``replication`` None is "auto"."""

    partitions: int = DEFAULT_PARTITIONS
    replication: int | None = None


def add_kafka_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "Kafka connection (config 'kafka:' section; the password only from a file or the "
        "environment)"
    )
    g.add_argument(
        "--kafka-security-protocol",
        type=str.upper,
        choices=PROTOCOLS,
        metavar="PROTO",
        help=f"{' | '.join(PROTOCOLS)} (default PLAINTEXT; env {ENV['security_protocol']})",
    )
    g.add_argument(
        "--kafka-sasl-mechanism",
        type=str.upper,
        choices=MECHANISMS,
        metavar="MECH",
        help="SCRAM-SHA-512 (default) | SCRAM-SHA-256 | PLAIN (only over SASL_SSL)",
    )
    g.add_argument("--kafka-user", metavar="NAME", help=f"SASL user (env {ENV['username']})")
    g.add_argument(
        "--kafka-password-file",
        metavar="FILE",
        help="SASL password in this file, not world-readable (e.g. a systemd credential)",
    )
    g.add_argument(
        "--kafka-password-env",
        metavar="VAR",
        help=f"or in this environment variable (default {DEFAULT_PASSWORD_ENV})",
    )
    g.add_argument(
        "--kafka-ca", metavar="FILE", help="PEM CA certificate(s) the broker's must chain to"
    )
    g.add_argument(
        "--kafka-cert", metavar="FILE", help="mutual TLS: PEM client certificate (with --kafka-key)"
    )
    g.add_argument("--kafka-key", metavar="FILE", help="mutual TLS: PEM private key, unencrypted")


def settings_from(
    args: argparse.Namespace, config: KafkaSettings, environ: Mapping[str, str] | None = None
) -> KafkaSettings:
    """Merge flags over the config file's section over the environment, keeping origins."""
    env = os.environ if environ is None else environ
    values: dict[str, str] = {}
    origins: dict[str, str] = {}
    for flag, key in FLAGS.items():
        flag_value = getattr(args, key_attr(flag), None)
        if flag_value:
            values[key], origins[key] = flag_value, flag
        elif getattr(config, key):
            values[key], origins[key] = getattr(config, key), config.where(key)
        elif key in ENV and env.get(ENV[key]):
            values[key], origins[key] = env[ENV[key]], f"${ENV[key]}"
    return KafkaSettings(**values, origins=origins)


def key_attr(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def kafka_security(
    args: argparse.Namespace, config: KafkaSettings, environ: Mapping[str, str] | None = None
) -> KafkaSecurity:
    """Checked connection settings for this command (``KafkaConfigError`` when wrong)."""
    return resolve(settings_from(args, config, environ), environ)


# ---------------------------------------------------------------- topics and consumer groups

TOPIC_FLAGS = {"--partitions": "partitions", "--replication": "replication"}  # config 'topics:'
GROUP_FLAGS = {  # config 'group:'
    "--session-timeout": "session_timeout",
    "--group-heartbeat-interval": "heartbeat_interval",
    "--max-poll-interval": "max_poll_interval",
    "--rebalance-timeout": "rebalance_timeout",
}
INSTANCE_ENV = "KASPWATCH_GROUP_INSTANCE_ID"


def add_topic_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "Topics this command creates when they do not exist (config 'topics:' section); "
        "an existing topic is never altered"
    )
    g.add_argument(
        "--partitions",
        metavar="N",
        help=f"partitions of each (default {DEFAULT_PARTITIONS}: up to that many consumers "
        "of one group share the work)",
    )
    g.add_argument(
        "--replication",
        metavar="auto|N",
        help=f"replicas of each partition (default auto: {MAX_AUTO_REPLICATION} on a cluster, "
        "as many as there are brokers below that)",
    )


def add_group_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("Consumer group (config 'group:' section; seconds)")
    g.add_argument(
        "--session-timeout",
        metavar="S",
        help="an instance not heard from this long loses its partitions to the others "
        "(default 10; the broker allows 6 to 1800 unless configured otherwise)",
    )
    g.add_argument(
        "--group-heartbeat-interval",
        metavar="S",
        help="how often an instance tells the group it is alive (default a third of the "
        "session timeout, at most 3)",
    )
    g.add_argument(
        "--max-poll-interval",
        metavar="S",
        help="an instance that reads nothing this long leaves the group (default 300)",
    )
    g.add_argument(
        "--rebalance-timeout",
        metavar="S",
        help="how long a rebalance waits for every instance to rejoin (default: the "
        "session timeout)",
    )
    g.add_argument(
        "--group-instance-id",
        metavar="NAME",
        help=f"static membership: a name unique to this instance (e.g. the pod name of a "
        f"StatefulSet; env {INSTANCE_ENV}); restarted within the session timeout, it keeps "
        "its partitions without a rebalance",
    )


def _settings(
    args: argparse.Namespace, flags: Mapping[str, str], section: Mapping[str, tuple[object, str]]
) -> dict[str, tuple[object, str]]:
    """Each setting given, by flag over the config file's section: (value, where)."""
    out = dict(section)
    for flag, key in flags.items():
        value = getattr(args, key_attr(flag), None)
        if value is not None:
            out[key] = (value, flag)
    return out


def _seconds(value: object, where: str) -> float:
    try:
        if isinstance(value, bool):
            raise ValueError
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        seconds = float("nan")
    if not 0 < seconds < 1e6:
        raise BusError(f"{where} {value!r}: give a positive number of seconds, e.g. 10")
    return seconds


def topic_plan(args: argparse.Namespace, section: Mapping[str, tuple[object, str]]) -> TopicPlan:
    """``--partitions``/``--replication`` over the config file's ``topics:``, checked."""
    given = _settings(args, TOPIC_FLAGS, section)
    plan = TopicPlan()
    if "partitions" in given:
        value, where = given["partitions"]
        text = str(value).strip()
        if isinstance(value, bool) or not text.isdigit() or int(text) < 1:
            raise BusError(f"{where} {value!r}: give a whole number of partitions, 1 or more")
        plan = TopicPlan(int(text), plan.replication)
    if "replication" in given:
        value, where = given["replication"]
        text = str(value).strip().lower()
        if text != "auto" and (isinstance(value, bool) or not text.isdigit() or int(text) < 1):
            raise BusError(
                f"{where} {value!r}: give auto, or a whole number of replicas, 1 or more"
            )
        plan = TopicPlan(plan.partitions, None if text == "auto" else int(text))
    return plan


def group_settings(
    args: argparse.Namespace,
    section: Mapping[str, tuple[object, str]],
    environ: Mapping[str, str] | None = None,
) -> GroupSettings:
    """The consumer group options over the config file's ``group:``, checked."""
    env = os.environ if environ is None else environ
    given = {k: _seconds(*v) for k, v in _settings(args, GROUP_FLAGS, section).items()}
    session = given.get("session_timeout", GroupSettings.session_timeout_s)
    beat = given.get("heartbeat_interval")
    if beat is not None and beat >= session:
        where = "--group-heartbeat-interval" if args.group_heartbeat_interval else (
            section["heartbeat_interval"][1])  # fmt: skip
        raise BusError(
            f"{where} {beat:g}: must be shorter than the session timeout ({session:g} s); "
            "a third of it is usual"
        )
    instance = args.group_instance_id or env.get(INSTANCE_ENV) or None
    return GroupSettings(
        session_timeout_s=session,
        heartbeat_interval_s=beat,
        max_poll_interval_s=given.get("max_poll_interval", GroupSettings.max_poll_interval_s),
        rebalance_timeout_s=given.get("rebalance_timeout"),
        instance_id=instance,
    )


async def create_topics(
    args: argparse.Namespace,
    topics: Iterable[str],
    compacted: Iterable[str] = (),
    group: GroupSettings | None = None,
) -> None:
    """Create this command's topics that do not exist yet (``args.topic_plan``; on a
    ``memory://`` bus, nothing to do). ``compacted``: those keyed topics kept by key (the
    identity records), not by age. ``group``: a consumer's settings, checked against the
    broker's limits."""
    scheme, bootstrap = parse_bus_url(args.bus)
    if scheme != "kafka":
        return
    from kaspwatch.bus.topics import admin_client, check_session_timeout, ensure_topics

    plan: TopicPlan = args.topic_plan
    keep = set(compacted)
    specs = [
        TopicSpec(
            name,
            plan.partitions,
            plan.replication,
            {"cleanup.policy": "compact"} if name in keep else {},
        )
        for name in dict.fromkeys(topics)
        if name
    ]
    where = f"kafka {bootstrap}"
    async with admin_client(bootstrap, args.kafka or PLAINTEXT) as admin:
        await ensure_topics(admin, specs, where=where)
        if group is not None:
            await check_session_timeout(admin, group, where)
