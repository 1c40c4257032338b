"""Shared fixtures: paths, the shipped pack, and the real Kafka broker.

The broker is the one ``deploy/kafka/kafka-local.sh`` runs (KRaft, single node, loopback),
or an existing one named by ``KASPWATCH_KAFKA_BOOTSTRAP``. Missing Java or Maven make the
Kafka tests fail with a message saying so; they never skip.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from sensor.rules.indicators import Pack, load_pack
from sensor.rules.match import Matcher

REPO = Path(__file__).resolve().parent.parent
KAFKA_SH = REPO / "deploy" / "kafka" / "kafka-local.sh"
SAMPLE = REPO / "samples" / "sample.pcap"
SCHEMA = REPO / "kaspwatch" / "schema" / "event.v1.schema.json"
CORPUS = Path(os.environ.get("KASPWATCH_CORPUS", REPO / "tests" / "corpus"))
KASPWATCH = [sys.executable, "-m", "kaspwatch"]


@pytest.fixture(scope="session")
def pack() -> Pack:
    return load_pack()


@pytest.fixture(scope="session")
def matcher(pack: Pack) -> Matcher:
    return Matcher(pack)


@pytest.fixture(scope="session")
def event_schema() -> dict[str, object]:
    return json.loads(SCHEMA.read_text())


@pytest.fixture(scope="session")
def corpus() -> Path:
    if not (CORPUS / "MANIFEST.tsv").exists():
        pytest.fail(f"capture corpus not found at {CORPUS} (set KASPWATCH_CORPUS)")
    return CORPUS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def kafka_jars(env: dict[str, str], hint: str = "") -> None:
    """Fail with the fix when Java or Maven is missing; fetch the jars when they are."""
    for tool, why in (("java", "to run the broker"), ("mvn", "to fetch the Kafka jars")):
        if shutil.which(tool) is None:
            pytest.fail(f"Kafka tests need {tool} {why}; install it (.ci/run does){hint}")
    if not any((KAFKA_SH.parent / "libs").glob("kafka_2.13-*.jar")):
        subprocess.run(["bash", str(KAFKA_SH), "fetch"], env=env, check=True, timeout=600)


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    existing = os.environ.get("KASPWATCH_KAFKA_BOOTSTRAP")
    if existing:
        yield existing
        return
    env = {
        **os.environ,
        "KAFKA_RUN_DIR": str(tmp_path_factory.mktemp("kafka")),
        "KAFKA_PORT": str(free_port()),
        "KAFKA_CONTROLLER_PORT": str(free_port()),
    }
    kafka_jars(env, " or set KASPWATCH_KAFKA_BOOTSTRAP to a running broker")
    started = time.monotonic()
    proc = subprocess.run(
        ["bash", str(KAFKA_SH), "start"], env=env, stdout=subprocess.PIPE, text=True, timeout=300
    )
    if proc.returncode != 0:
        pytest.fail(f"Kafka broker did not start (kafka-local.sh start exit {proc.returncode})")
    bootstrap = proc.stdout.strip().splitlines()[-1]
    sys.stderr.write(f"\nkafka broker {bootstrap} ready in {time.monotonic() - started:.1f}s\n")
    try:
        yield bootstrap
    finally:
        subprocess.run(["bash", str(KAFKA_SH), "stop"], env=env, timeout=120, check=False)


# Hypothesis: CI runs the small profile; `HYPOTHESIS_PROFILE=fuzz` runs the large one.
settings.register_profile(
    "ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "fuzz", max_examples=20_000, deadline=None, suppress_health_check=list(HealthCheck)
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
