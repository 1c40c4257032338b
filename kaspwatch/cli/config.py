"""The optional configuration file (``--config PATH`` or ``KASPWATCH_CONFIG``).

```yaml
sensor: edge-substation-3          # name carried on events (default: host name)
bus: kafka://10.1.2.3:9092         # default for sense/alerts/metrics
packs: [/etc/kaspwatch/site.yaml]  # site packs, layered over the shipped pack
allowlist: /etc/kaspwatch/allowlist.yaml
window: 3600                       # alert suppression window, seconds
kafka:                             # how every Kafka client connects (default PLAINTEXT)
  security_protocol: SASL_SSL      # PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL
  sasl_mechanism: SCRAM-SHA-512    # SCRAM-SHA-256 | SCRAM-SHA-512 | PLAIN (TLS only)
  username: kaspwatch-sensor
  password_file: /run/credentials/kaspwatch/kafka-password   # or:
  password_env: KASPWATCH_KAFKA_PASSWORD                     # (the default)
  ca_file: /etc/kaspwatch/kafka-ca.pem
  cert_file: /etc/kaspwatch/kafka-client.pem   # mutual TLS, optional, with key_file
  key_file: /etc/kaspwatch/kafka-client.key
spool_dir: /var/lib/kaspwatch/spool  # sense: hits wait here while the bus is down
spool_max_bytes: 512M              # sense: spool bound (K, M, G suffixes)
spool_policy: drop-oldest          # sense: which hit a full spool loses (or drop-newest)
topics:                            # topics a command creates when they do not exist yet
  partitions: 12                   # the most consumers of one group that get records
  replication: auto                # auto: min(3, brokers); or a number
group:                             # alerts/metrics/store: the consumer group's timeouts, seconds
  session_timeout: 10              # an instance silent this long loses its partitions
  heartbeat_interval: 3            # default: a third of session_timeout, at most 3
  max_poll_interval: 300           # an instance that reads nothing this long leaves the group
  rebalance_timeout: 10            # default: session_timeout
alerts:                            # kaspwatch alerts
  state_store: changelog           # sqlite (default) | changelog (README "Scaling out")
  state_topic: kaspwatch.alerts-state.v1   # the changelog topic (the default)
```
A password itself is refused here: the file would be one more copy of it.
Command-line flags override the file. Relative paths are relative to the file.
Errors name the file and line.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kaspwatch.bus import BusError, parse_bus_url
from kaspwatch.bus.security import KafkaSettings
from kaspwatch.bus.spool import POLICIES as SPOOL_POLICIES
from kaspwatch.cli.kafka import group_settings, kafka_security, topic_plan
from kaspwatch.yamlfile import YamlError, load_yaml

log = logging.getLogger("kaspwatch")

KEYS = {
    "sensor", "bus", "packs", "allowlist", "window", "kafka",
    "spool_dir", "spool_max_bytes", "spool_policy", "topics", "group", "alerts",
}  # fmt: skip
# sections of plain settings whose values kaspwatch.cli.kafka (alerts: kaspwatch.cli.alerting)
# checks (each with its place)
SECTIONS = {
    "topics": ("partitions", "replication"),
    "group": ("session_timeout", "heartbeat_interval", "max_poll_interval", "rebalance_timeout"),
    "alerts": ("state_store", "state_topic"),
}
KAFKA_KEYS = {
    "security_protocol",
    "sasl_mechanism",
    "username",
    "password_file",
    "password_env",
    "ca_file",
    "cert_file",
    "key_file",
}
KAFKA_PATHS = {"password_file", "ca_file", "cert_file", "key_file"}


class ConfigError(YamlError):
    """The configuration file is invalid; ``str()`` is ``file:line: message``."""


@dataclass(frozen=True)
class Config:
    sensor: str | None = None
    bus: str | None = None
    packs: tuple[str, ...] = ()
    allowlist: str | None = None
    window: float | None = None
    path: str | None = None
    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    spool_dir: str | None = None
    spool_max_bytes: int | None = None
    spool_policy: str | None = None
    # section -> key -> (value, "file:line: section.key"), e.g. topics.partitions
    sections: dict[str, dict[str, tuple[object, str]]] = field(default_factory=dict)


def parse_size(text: str) -> int:
    """``512M``, ``2G``, ``65536``: a size in bytes (K, M, G are powers of 1024)."""
    t = str(text).strip().upper().removesuffix("B")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(t[-1:], 1)
    digits = t[:-1] if mult > 1 else t
    if not digits.isdigit() or int(digits) == 0:
        raise ValueError(f"size {text!r}: expected a positive number of bytes, e.g. 512M")
    return int(digits) * mult


def load_config(path: str | None) -> Config:
    if not path:
        return Config()
    where = path
    doc, text = load_yaml(path, ConfigError)
    if doc is None:
        return Config(path=path)
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}:1: the configuration is a mapping of settings")
    lines = _key_lines(text)

    def at(key: str) -> str:
        return f"{where}:{lines.get(key, lines.get(key.split('.')[0], 1))}"

    for key in doc:
        if key not in KEYS and key != "__line__":
            raise ConfigError(
                f"{at(key)}: unknown setting {key!r}; known: {', '.join(sorted(KEYS))}"
            )
    base = Path(path).parent

    def rel(p: object, key: str) -> str:
        if not isinstance(p, str) or not p:
            raise ConfigError(f"{at(key)}: {key} must be a path")
        return str(base / p)

    packs = doc.get("packs") or []
    if not isinstance(packs, list):
        raise ConfigError(f"{at('packs')}: packs must be a list of files")
    window = doc.get("window")
    if window is not None and (
        isinstance(window, bool) or not isinstance(window, int | float) or window <= 0
    ):
        raise ConfigError(f"{at('window')}: window must be a positive number of seconds")
    for key in ("sensor", "bus"):
        if key in doc and not isinstance(doc[key], str):
            raise ConfigError(f"{at(key)}: {key} must be a string")
    kafka = _kafka_settings(doc.get("kafka"), at, base)
    size = doc.get("spool_max_bytes")
    try:
        max_bytes = parse_size(size) if size is not None else None
    except ValueError as exc:
        raise ConfigError(f"{at('spool_max_bytes')}: {exc}") from None
    policy = doc.get("spool_policy")
    if policy is not None and policy not in SPOOL_POLICIES:
        raise ConfigError(
            f"{at('spool_policy')}: spool_policy must be one of {', '.join(SPOOL_POLICIES)}"
        )
    return Config(
        sections={name: _section(doc.get(name), name, at) for name in SECTIONS},
        kafka=kafka,
        spool_dir=rel(doc["spool_dir"], "spool_dir") if doc.get("spool_dir") else None,
        spool_max_bytes=max_bytes,
        spool_policy=policy,
        sensor=doc.get("sensor"),
        bus=doc.get("bus"),
        packs=tuple(rel(p, "packs") for p in packs),
        allowlist=rel(doc["allowlist"], "allowlist") if doc.get("allowlist") else None,
        window=float(window) if window is not None else None,
        path=path,
    )


def _kafka_settings(section: object, at: Callable[[str], str], base: Path) -> KafkaSettings:
    """The ``kafka:`` section; every value's origin is its ``file:line``."""
    if section is None:
        return KafkaSettings()
    if not isinstance(section, dict):
        raise ConfigError(f"{at('kafka')}: kafka is a mapping of connection settings")
    values: dict[str, str] = {}
    origins: dict[str, str] = {}
    for key, value in section.items():
        if key == "__line__":
            continue
        where = at(f"kafka.{key}")
        if key in ("password", "sasl_plain_password"):
            raise ConfigError(
                f"{where}: kafka.{key}: a password is not accepted in the configuration "
                "file; put it in a file of its own (password_file, mode 0600) or in the "
                "environment (password_env)"
            )
        if key not in KAFKA_KEYS:
            raise ConfigError(
                f"{where}: unknown kafka setting {key!r}; known: {', '.join(sorted(KAFKA_KEYS))}"
            )
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where}: kafka.{key} must be a non-empty string")
        values[key] = str(base / value) if key in KAFKA_PATHS else value
        origins[key] = f"{where}: kafka.{key}"
    return KafkaSettings(**values, origins=origins)


def _section(section: object, name: str, at: Callable[[str], str]) -> dict[str, tuple[object, str]]:
    """A section of ``SECTIONS``: each value with its origin; its keys checked here, its
    values where they are used."""
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise ConfigError(f"{at(name)}: {name} is a mapping of settings")
    out: dict[str, tuple[object, str]] = {}
    for key, value in section.items():
        if key == "__line__":
            continue
        if key not in SECTIONS[name]:
            raise ConfigError(
                f"{at(f'{name}.{key}')}: unknown {name} setting {key!r}; known: "
                f"{', '.join(SECTIONS[name])}"
            )
        out[key] = (value, f"{at(f'{name}.{key}')}: {name}.{key}")
    return out


def _key_lines(text: str) -> dict[str, int]:
    """Line of each top-level key (and ``section.key`` one level down), for error messages."""
    import yaml  # here: only a configuration file needs it

    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return {}
    if not isinstance(node, yaml.MappingNode):
        return {}
    lines: dict[str, int] = {}
    for k, v in node.value:
        lines[str(k.value)] = k.start_mark.line + 1
        if isinstance(v, yaml.MappingNode):
            for kk, _ in v.value:
                lines[f"{k.value}.{kk.value}"] = kk.start_mark.line + 1
    return lines


def resolve(args: argparse.Namespace) -> None:
    """Fill every unset option from the configuration file, then the environment: the one
    place a command's settings are settled, before it runs."""
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
    if "partitions" in args:
        args.topic_plan = topic_plan(args, cfg.sections.get("topics", {}))
    if "session_timeout" in args:
        args.group_settings = group_settings(args, cfg.sections.get("group", {}))
    if "state_store" in args:  # kaspwatch alerts
        from kaspwatch.cli.alerting import state_store_settings

        state_store_settings(args, cfg.sections.get("alerts", {}))
    if "bus" in args:
        origin = (
            "--bus" if args.bus else "'bus:' in the config file" if cfg.bus else "KASPWATCH_BUS"
        )
        args.bus = args.bus or cfg.bus or os.environ.get("KASPWATCH_BUS")
        if not args.bus:
            raise BusError("no bus: give --bus, set KASPWATCH_BUS, or 'bus:' in the config file")
        args.kafka = None
        try:
            scheme = parse_bus_url(args.bus)[0]
        except BusError as exc:
            raise BusError(f"{origin}: {exc}") from None
        if scheme == "kafka":
            args.kafka = kafka_security(args, cfg.kafka)
            log.info("kafka %s: %s", args.bus, args.kafka.describe())
