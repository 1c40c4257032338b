"""What tests and helpers share about their environment: where the repository, the sample
capture, the event schema and the corpus are, how to run the CLI, a free loopback port, and
the Kafka jars.

Test modules and helpers import these from here, never from ``conftest.py`` (pytest loads
that one itself; importing it as a module too runs it twice under two names).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
KAFKA_SH = REPO / "deploy" / "kafka" / "kafka-local.sh"
SAMPLE = REPO / "samples" / "sample.pcap"
SCHEMA = REPO / "kaspwatch" / "schema" / "event.v1.schema.json"
CORPUS = Path(os.environ.get("KASPWATCH_CORPUS", REPO / "tests" / "corpus"))
KASPWATCH = [sys.executable, "-m", "kaspwatch"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def kafka_jars(env: dict[str, str], hint: str = "") -> None:
    """Fail with the fix when Java or Maven is missing; fetch the jars when they are.
    Every broker a test starts comes through here, so this also checks the test's tier."""
    from tests import tiers

    tiers.require(tiers.KAFKA, "starts a Kafka broker")
    for tool, why in (("java", "to run the broker"), ("mvn", "to fetch the Kafka jars")):
        if shutil.which(tool) is None:
            pytest.fail(f"Kafka tests need {tool} {why}; install it (.ci/run does){hint}")
    if not any((KAFKA_SH.parent / "libs").glob("kafka_2.13-*.jar")):
        subprocess.run(["bash", str(KAFKA_SH), "fetch"], env=env, check=True, timeout=600)
