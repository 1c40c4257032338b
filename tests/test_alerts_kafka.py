"""``kaspwatch alerts`` on the real broker: to a real Alertmanager, through two SIGKILLs (one
after the alerts topic acknowledged a batch and before its record, one inside a webhook POST)
with a webhook receiver counting every delivery, and past poison messages to the dead-letter
topic.

Every process is the real CLI; the broker is the real Apache Kafka from ``deploy/kafka``.
Each test uses its own topics and consumer group, so tests never see each other's data.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from consumers.alerts.delivery import FAULT_ENV
from consumers.alerts.sinks.ocsf import finding_uid
from tests import cliprocs, hitstream
from tests.alertmanager import am_alerts, running_alertmanager
from tests.cliprocs import Procs, cli_env, wait_for
from tests.hitstream import first_contacts, synthetic_hits
from tests.httpserve import serving
from tests.kafkautil import (
    produce,
    producer,
    read_topic,
    standard_topics,
    wait_committed,
    wait_metrics,
)
from tests.testenv import KASPWATCH, SAMPLE, free_port

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(75)]

SECRET = b"kaspwatch webhook test secret"
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy
procs = cliprocs.procs  # fixtures
sample_hits = hitstream.sample_hits


# ---------------------------------------------------------------- helpers


def alerts_cmd(bootstrap: str, names: dict[str, str], *extra: str) -> list[str]:
    return [
        *KASPWATCH,
        "alerts",
        "--bus",
        f"kafka://{bootstrap}",
        "--topic",
        names["hits"],
        "--alerts-topic",
        names["alerts"],
        "--dead-letter-topic",
        names["dlq"],
        "--group",
        names["group"],
        *extra,
    ]


# ---------------------------------------------------------------- 1. to Alertmanager


async def test_capture_to_alertmanager_through_kafka(
    kafka_bootstrap: str, sample_hits: list[dict[str, Any]], procs: Procs, tmp_path: Path
) -> None:
    want = first_contacts(sample_hits)
    assert len(want) >= 2
    names = await standard_topics(kafka_bootstrap, hits_partitions=3)

    sense = subprocess.run(
        [
            *KASPWATCH,
            "sense",
            "--pcap",
            str(SAMPLE),
            "--bus",
            f"kafka://{kafka_bootstrap}",
            "--topic",
            names["hits"],
            "--sensor",
            "e2e",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=cli_env(tmp_path),
    )
    assert sense.returncode == 0, sense.stderr
    assert f"{len(sample_hits)} published, 0 publish failures" in sense.stderr

    with running_alertmanager(tmp_path / "alertmanager") as am:
        metrics_port = free_port()
        alerts = procs.start(
            "alerts",
            alerts_cmd(
                kafka_bootstrap,
                names,
                "--alertmanager",
                am,
                "--no-stdout",
                "--state",
                str(tmp_path / "s.sqlite"),
                "--metrics-addr",
                f"127.0.0.1:{metrics_port}",
            ),
        )

        got: list[dict[str, Any]] = []

        def arrived() -> bool:
            nonlocal got
            got = am_alerts(am, alertname="KasperskyTraffic")
            return len(got) >= len(want)

        await wait_for(arrived, 30, f"{len(want)} alerts in Alertmanager", alerts)
        await asyncio.sleep(1.0)  # anything extra (a duplicate, a second stage) shows up too
        got = am_alerts(am)
        by_key = {(a["labels"]["host"], a["labels"]["category"]): a for a in got}
        assert set(by_key) == set(want), [a["labels"] for a in got]
        assert len(got) == len(want)

        for key, first in want.items():
            a = by_key[key]
            labels, ann = a["labels"], a["annotations"]
            assert set(labels) == {
                "alertname",
                "severity",
                "category",
                "stage",
                "site",
                "zone",
                "host",
            }
            assert labels["alertname"] == "KasperskyTraffic"
            assert labels["stage"] == "first_contact"
            assert (labels["host"], labels["category"]) == key
            assert labels["severity"] == first["indicator"]["severity"]  # no OT zone: as is
            assert (labels["site"], labels["zone"]) == ("unknown", "unknown")  # no asset map
            assert re.fullmatch(r"[0-9a-f]{32}", ann["alert_id"]), ann
            # the hit that opened the window: per host, the topic keeps capture order
            assert ann["name"] == first["name"]
            assert ann["event_id"] == first["event_id"]
            assert a["status"]["state"] == "active"
        assert len({a["annotations"]["alert_id"] for a in got}) == len(want)

        n = float(len(want))
        deliveries = 'kaspwatch_alert_deliveries_total{sink="alertmanager"}'
        failures = 'kaspwatch_alert_sink_failures_total{sink="alertmanager"}'
        metrics = await wait_metrics(metrics_port, lambda m: m.get(deliveries) == n)
        assert metrics.get(deliveries) == n, {k: v for k, v in metrics.items() if "alert" in k}
        assert metrics.get(failures) == 0.0
        assert metrics.get('kaspwatch_alert_deliveries_total{sink="kafka"}') == n

        await wait_committed(kafka_bootstrap, names["group"], names["hits"])
        assert Procs.terminate(alerts) == 0, alerts.stderr()
        assert alerts.stdout() == ""  # --no-stdout


# ---------------------------------------------------------------- 2. SIGKILL mid-stream


def delivered_ids(state: Path, sink: str) -> set[str]:
    """The alert ids the state file records as delivered to ``sink`` (read-only)."""
    db = sqlite3.connect(f"file:{state}?mode=ro", uri=True)
    try:
        return {r[0] for r in db.execute("SELECT alert_id FROM delivered WHERE sink = ?", (sink,))}
    finally:
        db.close()


@dataclass
class Delivery:
    key: str  # Idempotency-Key
    alerts: list[dict[str, Any]]

    @property
    def alert_ids(self) -> list[str]:
        return [a["alert_id"] for a in self.alerts]


@dataclass
class Receiver:
    """A webhook receiver that checks the HMAC and records every accepted delivery."""

    delay_s: float
    url: str = ""
    deliveries: list[Delivery] = field(default_factory=list)
    refused: int = 0
    in_flight: int = 0  # signed requests read, not yet answered
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ids(self) -> set[str]:
        with self.lock:
            return {i for d in self.deliveries for i in d.alert_ids}


@contextmanager
def webhook_receiver(delay_s: float) -> Iterator[Receiver]:
    rec = Receiver(delay_s)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            want = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
            if not hmac.compare_digest(self.headers.get("X-Kaspwatch-Signature", ""), want):
                with rec.lock:
                    rec.refused += 1
                self._reply(401)
                return
            with rec.lock:
                rec.in_flight += 1
            time.sleep(rec.delay_s)  # a slow receiver: delivery takes seconds
            alerts = json.loads(body)["alerts"]
            key = self.headers.get("Idempotency-Key", "")
            with rec.lock:  # accepted: whatever happens to the sender now
                rec.deliveries.append(Delivery(key, alerts))
                rec.in_flight -= 1
            self._reply(200)

        def _reply(self, status: int) -> None:
            with suppress(OSError):  # the sender may be dead by now
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    with serving(Handler) as port:
        rec.url = f"http://127.0.0.1:{port}/hooks/kaspwatch"
        yield rec


@pytest.mark.timeout(150)
async def test_alerts_consumer_killed_mid_stream_loses_and_duplicates_nothing(
    kafka_bootstrap: str,
    sample_hits: list[dict[str, Any]],
    event_schema: dict[str, Any],
    procs: Procs,
    tmp_path: Path,
) -> None:
    hits = synthetic_hits(sample_hits, 300)
    for doc in hits[:: len(sample_hits)] + hits[-len(sample_hits) :]:
        jsonschema.validate(doc, event_schema)
    assert len({h["event_id"] for h in hits}) == len(hits)
    want_keys = set(first_contacts(hits))  # (host, category)
    names = await standard_topics(kafka_bootstrap, hits_partitions=3)
    where = await produce(kafka_bootstrap, names["hits"], hits)

    secret = tmp_path / "webhook.secret"
    secret.write_bytes(SECRET + b"\n")
    secret.chmod(0o600)
    state = tmp_path / "s.sqlite"

    with webhook_receiver(delay_s=0.15) as rec:
        cmd = alerts_cmd(
            kafka_bootstrap,
            names,
            "--webhook",
            rec.url,
            "--webhook-secret-file",
            str(secret),
            "--state",
            str(state),
            "--no-stdout",
            "--group-wait",  # this test pins per-batch delivery; test_grouping the outbox
            "0",
        )
        # Kill 1, the worst moment for the alerts topic: the broker acknowledged a batch of
        # alerts, their delivery is not recorded yet. The fault hook makes the consumer stop
        # itself right there once the kafka sink took a third of the alerts; the test checks
        # the topic holds alerts the state does not record, and SIGKILLs it.
        third = len(want_keys) // 3
        first = procs.start("alerts-1", cmd, env={FAULT_ENV: f"kafka:{third}"})
        await wait_for(first.stopped, 30, f"alerts-1 to stop after {third} alerts", first)
        assert "fault injection: sink kafka accepted" in first.stderr()
        on_topic = [finding_uid(v) for _, v in await read_topic(kafka_bootstrap, names["alerts"], third)]  # fmt: skip
        recorded = delivered_ids(state, "kafka")
        ahead = set(on_topic) - recorded
        first.popen.send_signal(signal.SIGKILL)
        first.popen.wait(10)
        kill1 = (
            f"kill 1 (stopped after the topic's ack): {len(on_topic)} alerts on the topic, "
            f"{len(recorded)} recorded, {len(ahead)} ahead of the record"
        )
        assert ahead and len(on_topic) == len(set(on_topic)) >= third, kill1
        assert recorded < set(on_topic), kill1
        assert rec.in_flight == 0  # the webhook had not been sent that batch yet

        # Kill 2: while a webhook delivery is in flight, past two thirds: the receiver
        # accepts that batch after the sender died, so the state never recorded it.
        second = procs.start("alerts-2", cmd)
        await wait_for(
            lambda: len(rec.ids()) >= 2 * third and rec.in_flight > 0,
            45,
            "two thirds of the alerts and a delivery in flight",
            second,
        )
        second.popen.send_signal(signal.SIGKILL)
        second.popen.wait(10)
        read_back = re.search(r"sink kafka: (\d+) alerts already there", second.stderr())
        await wait_for(lambda: rec.in_flight == 0, 5, "the in-flight delivery to finish")
        before_kill = rec.ids()
        accepted_at_kill = len(rec.deliveries)
        assert len(before_kill) < len(want_keys), "the kill came too late: all delivered"

        last = procs.start("alerts-3", cmd)
        await wait_for(
            lambda: len(rec.ids()) >= len(want_keys), 45, "every alert after restart", last
        )
        await wait_committed(kafka_bootstrap, names["group"], names["hits"])
        await asyncio.sleep(1.0)  # late duplicates would arrive now
        assert Procs.terminate(last) == 0, last.stderr()
        assert "alerts already there" not in last.stderr()  # kill 2 left the topic recorded
        with rec.lock:
            deliveries = list(rec.deliveries)
        assert rec.refused == 0

    # exactly one first_contact alert per (host, category), raised on the hit that opened
    # its window; the same id whenever it is delivered again
    got = {
        a["alert_id"]: ((a["host"], a["category"]), a["stage"], a["event_id"])
        for d in deliveries
        for a in d.alerts
    }
    want = {k: ("first_contact", h["event_id"]) for k, h in first_contacts(hits).items()}
    assert {k: (stage, ev) for k, stage, ev in got.values()} == want
    assert len(got) == len(want)
    # the alerts topic holds every alert exactly once: kill 1 left a batch on it that the
    # state did not record, and the restart read it back instead of writing it again
    findings = [finding_uid(v) for _, v in await read_topic(kafka_bootstrap, names["alerts"], len(want))]  # fmt: skip
    topic = (
        f"{kill1}; the restart read back {read_back[1] if read_back else 'nothing'}; alerts "
        f"topic: {len(findings)} records, {len(set(findings))} distinct alert ids, "
        f"{len(got)} expected"
    )
    sys.stderr.write(f"\nalerts topic across kills: {topic}\n")
    assert sorted(findings) == sorted(got), topic  # hence none twice
    assert read_back is not None and int(read_back[1]) == len(ahead), topic

    def describe(d: Delivery) -> str:
        parts = sorted({where[a["event_id"]][0] for a in d.alerts})
        return f"{len(d.alert_ids)} alerts from partitions {parts}, key {d.key[:8]}"

    orphan = deliveries[accepted_at_kill - 1]  # in flight at kill 2, accepted after it
    first_seen: dict[str, int] = {}
    redelivery: dict[int, list[str]] = {}  # delivery index -> ids it delivered again
    for n, d in enumerate(deliveries):
        for i in d.alert_ids:
            if i in first_seen:
                redelivery.setdefault(n, []).append(i)
            else:
                first_seen[i] = n
    dup_ids = [i for ids in redelivery.values() for i in ids]
    other_key = [i for n, ids in redelivery.items() for i in ids
                 if deliveries[n].key != deliveries[first_seen[i]].key]  # fmt: skip
    report = (
        f"{len(deliveries)} deliveries, {len(got)} alerts, {len(before_kill)} before "
        f"kill 2; in flight at kill 2: {describe(orphan)}; {len(dup_ids)} alert ids "
        f"delivered twice, in {len(redelivery)} later deliveries "
        f"[{'; '.join(describe(deliveries[n]) for n in redelivery)}]; "
        f"{len(other_key)} of them under another Idempotency-Key"
    )
    sys.stderr.write(f"\nwebhook across kills: {report}\n")
    # At least once: the batch the receiver accepted after the kill (the state never
    # recorded its delivery) is sent again after the restart, and nothing else is: one
    # kill, one batch at most. Nothing arrives three times.
    assert set(dup_ids) <= set(orphan.alert_ids), report
    assert len(dup_ids) == len(set(dup_ids)), report
    # A receiver drops the re-sent alerts by their alert_id, which a replay keeps. (The
    # Idempotency-Key header names one POST and its retries; after a restart the same
    # alerts may be grouped into other POSTs, so it is not the key to deduplicate on.)
    for n, ids in redelivery.items():
        for alert in deliveries[n].alerts:
            if alert["alert_id"] in ids:
                first = next(
                    a
                    for a in deliveries[first_seen[alert["alert_id"]]].alerts
                    if a["alert_id"] == alert["alert_id"]
                )
                assert (alert["stage"], alert["event_id"], alert["host"]) == (
                    first["stage"],
                    first["event_id"],
                    first["host"],
                ), report


# ---------------------------------------------------------------- 3. poison messages


async def test_poison_message_goes_to_dead_letter_and_processing_goes_on(
    kafka_bootstrap: str, sample_hits: list[dict[str, Any]], procs: Procs, tmp_path: Path
) -> None:
    firsts = list(first_contacts(sample_hits).values())
    good1, good2 = firsts[0], firsts[-1]
    assert (good1["host"], good1["indicator"]["category"]) != (
        good2["host"],
        good2["indicator"]["category"],
    )
    not_json = b"{not json"
    schema2 = json.dumps({**good1, "schema": 2, "event_id": uuid.uuid4().hex}).encode()
    names = await standard_topics(kafka_bootstrap, hits_partitions=3)
    sent = []
    async with producer(kafka_bootstrap) as prod:
        for value, key in (
            (json.dumps(good1).encode(), good1["host"].encode()),
            (not_json, b"poison-1"),
            (schema2, b"poison-2"),
            (json.dumps(good2).encode(), good2["host"].encode()),
        ):
            md = await prod.send_and_wait(names["hits"], value, key=key)
            sent.append((value, key, md.partition, md.offset))

    metrics_port = free_port()
    alerts = procs.start(
        "alerts",
        alerts_cmd(
            kafka_bootstrap,
            names,
            "--state",
            str(tmp_path / "s.sqlite"),
            "--metrics-addr",
            f"127.0.0.1:{metrics_port}",
        ),
    )

    dead = [json.loads(v) for _, v in await read_topic(kafka_bootstrap, names["dlq"], 2)]
    assert len(dead) == 2, alerts.stderr()
    by_value = {base64.b64decode(d["value"]): d for d in dead}
    assert set(by_value) == {not_json, schema2}
    for value, key, partition, offset in sent[1:3]:
        env = by_value[value]
        assert (env["topic"], env["partition"], env["offset"]) == (
            names["hits"],
            partition,
            offset,
        )
        assert base64.b64decode(env["key"]) == key
    assert by_value[not_json]["reason"].startswith("not JSON")
    assert by_value[schema2]["reason"].startswith("unsupported schema 2")

    findings = [json.loads(v) for _, v in await read_topic(kafka_bootstrap, names["alerts"], 2)]
    want = {(g["host"], g["indicator"]["category"], g["event_id"]) for g in (good1, good2)}
    assert {
        (
            f["device"]["ip"],
            f["finding_info"]["types"][0],
            f["finding_info"]["related_events"][0]["uid"],
        )
        for f in findings
    } == want
    assert len(findings) == 2

    invalid = "kaspwatch_invalid_messages_total"
    metrics = await wait_metrics(metrics_port, lambda m: m.get(invalid) == 2.0)
    assert metrics.get(invalid) == 2.0
    await wait_committed(kafka_bootstrap, names["group"], names["hits"])

    assert Procs.terminate(alerts) == 0, alerts.stderr()
    printed = [json.loads(line) for line in alerts.stdout().splitlines()]
    assert {(a["host"], a["category"], a["event_id"]) for a in printed} == want
    assert sorted(a["alert_id"] for a in printed) == sorted(
        f["finding_info"]["uid"] for f in findings
    )
    err = alerts.stderr()
    assert "not JSON" in err and "unsupported schema" in err  # logged with where it was
