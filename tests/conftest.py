"""Shared fixtures: the shipped pack, the corpus, and the real Kafka broker.

The broker is the one ``deploy/kafka/kafka-local.sh`` runs (KRaft, single node, loopback),
or an existing one named by ``KASPWATCH_KAFKA_BOOTSTRAP``. Missing Java or Maven make the
Kafka tests fail with a message saying so; they never skip.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from sensor.rules.indicators import Pack, load_pack
from sensor.rules.match import Matcher
from tests import tiers
from tests.testenv import CORPUS, KAFKA_SH, SCHEMA, free_port, kafka_jars


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark by fixture: whatever uses a broker fixture is in the ``kafka`` tier."""
    for item in items:
        if tiers.KAFKA_FIXTURES.intersection(item.fixturenames):
            item.add_marker(tiers.KAFKA)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[object]:
    """Let ``tiers.require`` see the test whose setup, call or teardown is running."""
    tiers.current = item
    try:
        return (yield)
    finally:
        tiers.current = None


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


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tiers.require(tiers.KAFKA, "uses the Kafka broker")  # also via request.getfixturevalue
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


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A server certificate for the live lab's names (tests/livelab.py)."""
    from tests.livelab import make_cert  # the live tier only: openssl, namespaces

    return make_cert(tmp_path_factory.mktemp("cert"))
