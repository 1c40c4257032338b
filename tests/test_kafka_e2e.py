"""End to end on the real broker: capture -> ``sense`` -> Kafka -> ``alerts`` and ``metrics``.

Every process is the real CLI; the broker is the real Apache Kafka from ``deploy/kafka``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest

from kaspwatch.cli import main
from tests.kafkautil import committed_everything, create_topics, read_topic, wait_metrics
from tests.testenv import KASPWATCH, SAMPLE, free_port

pytestmark = pytest.mark.kafka


def scan_sample(capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    assert main(["scan", "--sensor", "e2e", str(SAMPLE)]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait(10)


async def test_capture_to_alerts_and_metrics_through_kafka(
    kafka_bootstrap: str,
    capsys: pytest.CaptureFixture[str],
    procs: list[subprocess.Popen[str]],
    event_schema: dict[str, object],
    tmp_path: Path,
) -> None:
    expected = scan_sample(capsys)
    assert len(expected) >= 10
    run = uuid.uuid4().hex[:8]
    hits_topic, alerts_topic = f"hits-{run}", f"alerts-{run}"
    await create_topics(kafka_bootstrap, (hits_topic, 3), (alerts_topic, 1))
    bus = f"kafka://{kafka_bootstrap}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "KASPWATCH_STATE_DIR": str(tmp_path)}

    sense = subprocess.run(
        [
            *KASPWATCH,
            "sense",
            "--pcap",
            str(SAMPLE),
            "--bus",
            bus,
            "--topic",
            hits_topic,
            "--sensor",
            "e2e",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert sense.returncode == 0, sense.stderr
    assert f"{len(expected)} published, 0 publish failures" in sense.stderr

    # hits on Kafka: exactly the events scan finds, schema-valid, keyed by host
    hits = await read_topic(kafka_bootstrap, hits_topic, len(expected))
    docs = [json.loads(v) for _, v in hits]
    for doc in docs:
        jsonschema.validate(doc, event_schema)
    assert sorted(d["event_id"] for d in docs) == sorted(str(e["event_id"]) for e in expected)
    assert all(k == d["host"].encode() for (k, _), d in zip(hits, docs, strict=True))

    metrics_port = free_port()
    alerts = subprocess.Popen(
        [
            *KASPWATCH,
            "alerts",
            "--bus",
            bus,
            "--topic",
            hits_topic,
            "--alerts-topic",
            alerts_topic,
            "--group",
            f"alerts-{run}",
            "--window",
            "3600",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    metrics = subprocess.Popen(
        [
            *KASPWATCH,
            "metrics",
            "--bus",
            bus,
            "--topic",
            hits_topic,
            "--group",
            f"metrics-{run}",
            "--listen",
            f"127.0.0.1:{metrics_port}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    procs.extend([alerts, metrics])

    # one alert per (host, category): the sample's hits, grouped
    want_alerts = {(str(e["host"]), e["indicator"]["category"]) for e in expected}  # type: ignore[index]
    findings = [
        json.loads(v) for _, v in await read_topic(kafka_bootstrap, alerts_topic, len(want_alerts))
    ]
    # the alerts topic carries OCSF Detection Findings (class 2004)
    assert {f["class_uid"] for f in findings} == {2004}
    assert {(f["device"]["ip"], f["finding_info"]["types"][0]) for f in findings} == want_alerts
    assert len(findings) == len(want_alerts)  # no duplicates

    # metrics: kaspwatch_hits_total per (category, kind, severity) equals the scan's counts
    want_counts: dict[str, float] = {}
    for e in expected:
        ind: dict[str, str] = e["indicator"]  # type: ignore[assignment]
        labels = f'category="{ind["category"]}",kind="{e["kind"]}",severity="{ind["severity"]}",site="unknown"'
        key = f"kaspwatch_hits_total{{{labels}}}"
        want_counts[key] = want_counts.get(key, 0) + 1

    def hit_counts(scraped: dict[str, float]) -> dict[str, float]:
        # known series start at zero: only the ones with hits
        return {k: v for k, v in scraped.items() if k.startswith("kaspwatch_hits_total{") and v}

    got = hit_counts(
        await wait_metrics(metrics_port, lambda m: hit_counts(m) == want_counts, timeout=60)
    )
    assert got == want_counts
    assert not any("10.77." in k or "kaspersky" in k for k in got)  # bounded labels only

    # both groups committed everything, and only after their side effects
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if await committed_everything(
            kafka_bootstrap, f"alerts-{run}", hits_topic
        ) and await committed_everything(kafka_bootstrap, f"metrics-{run}", hits_topic):
            break
        await asyncio.sleep(0.5)
    else:
        pytest.fail("consumer groups did not commit every offset")

    for p in (alerts, metrics):
        p.send_signal(signal.SIGTERM)
    out, err = alerts.communicate(timeout=30)
    metrics.communicate(timeout=30)
    assert alerts.returncode == 0 and metrics.returncode == 0, err
    printed = [json.loads(line) for line in out.splitlines()]
    assert sorted(a["alert_id"] for a in printed) == sorted(
        f["finding_info"]["uid"] for f in findings
    )
