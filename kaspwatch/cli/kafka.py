"""Kafka connection options shared by every command that talks to Kafka (sense, alerts,
metrics, store): flags, then the config file's ``kafka:`` section, then the environment.

There is deliberately no flag for the password itself: argv is world-readable in /proc.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping

from kaspwatch.bus.security import (
    DEFAULT_PASSWORD_ENV,
    MECHANISMS,
    PROTOCOLS,
    KafkaSecurity,
    KafkaSettings,
    resolve,
)

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
