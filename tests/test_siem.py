"""SIEM formats (issue 17, item 4): ECS documents checked against Elastic's own field
definitions (tests/ecs/ecs_flat.json from npm @elastic/ecs 8.11.5, see tests/ecs/MANIFEST):
every field exists, with its type; ECS on stdout (``run --format ecs``) and on the Kafka
alerts topic (read back for exactly-once); OCSF's destination is the Kaspersky endpoint,
never the DNS resolver."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from consumers.alerts.engine import Alert, AlertEngine
from consumers.alerts.links import Links
from consumers.alerts.sinks.ecs import ECS_VERSION, to_ecs
from consumers.alerts.sinks.ocsf import KafkaTopicSink, to_ocsf
from consumers.assets import Asset, AssetMap
from kaspwatch.bus import open_publisher, open_reader
from kaspwatch.event import Event, IndicatorRef, format_ts, make_event_id
from tests.kafkautil import create_topics, read_topic
from tests.testenv import KASPWATCH, SAMPLE

pytestmark = pytest.mark.timeout(60)
ECS_FLAT: dict[str, dict[str, Any]] = json.loads(
    (Path(__file__).parent / "ecs" / "ecs_flat.json").read_text()
)
OBJECT_TYPES = {"object", "flattened", "nested"}
STRINGS = {"keyword", "constant_keyword", "wildcard", "text", "match_only_text"}
IND = IndicatorRef(
    "kw-update-snn", "s{00..19}.upd.kaspersky.com", "range", "update", "high", "high",
    description="Kaspersky update servers.", remediation="Removal. Uninstall it.",
    sources=("https://support.kaspersky.com/KESWin/11.6.0/de-DE/202507.htm (KES)", "a list"),
)  # fmt: skip
IP_IND = IndicatorRef("kw-infra-x", "77.74.176.0/22", "cidr", "infrastructure", "medium", "low")
PLANT = AssetMap([(ipaddress.ip_network("10.9.0.0/16"), Asset("plant-a", "ot", "ops", "high"))])


def _check_value(path: str, typ: str, v: Any) -> None:
    if typ in STRINGS:
        assert isinstance(v, str), (path, v)
    elif typ in ("long", "integer", "short", "byte", "unsigned_long"):
        assert isinstance(v, int) and not isinstance(v, bool), (path, v)
    elif typ in ("float", "double", "scaled_float", "half_float"):
        assert isinstance(v, int | float) and not isinstance(v, bool), (path, v)
    elif typ == "boolean":
        assert isinstance(v, bool), (path, v)
    elif typ == "ip":
        ipaddress.ip_address(v)
    elif typ == "date":
        assert isinstance(v, str), (path, v)
        datetime.fromisoformat(v)
    else:
        raise AssertionError(f"{path}: no check for ECS type {typ}")


def ecs_violations(doc: dict[str, Any], prefix: str = "") -> list[str]:
    """Every leaf of ``doc`` must be an ECS field with a value of its type (and an allowed
    or expected value where ECS lists them); arrays where ECS normalizes to an array."""
    bad: list[str] = []
    for key, value in doc.items():
        path = prefix + key
        spec = ECS_FLAT.get(path)
        if spec is None:
            if isinstance(value, dict) and any(f.startswith(path + ".") for f in ECS_FLAT):
                bad += ecs_violations(value, path + ".")
            else:
                bad.append(f"{path}: not an ECS field")
            continue
        if spec["type"] in OBJECT_TYPES:  # labels: keyword values
            if not isinstance(value, dict) or not all(isinstance(x, str) for x in value.values()):
                bad.append(f"{path}: {spec['type']} of strings expected, got {value!r}")
            continue
        if "array" in spec.get("normalize", []) and not isinstance(value, list):
            bad.append(f"{path}: ECS normalizes it to an array, got {value!r}")
        for item in value if isinstance(value, list) else [value]:
            try:
                _check_value(path, spec["type"], item)
            except (AssertionError, ValueError) as exc:
                bad.append(f"{path}: not a {spec['type']}: {item!r} ({exc})")
            allowed = spec.get("allowed_values") or spec.get("expected_values")
            if allowed and item not in allowed:
                bad.append(f"{path}: {item!r} not one of {allowed}")
    return bad


def event(kind: str, host: str = "10.9.3.4", name: str = "s07.upd.kaspersky.com") -> Event:
    ts_ns = 1_800_000_000 * 10**9
    ind, peer = IND, ("10.0.0.53", 53, "udp")
    if kind in ("tls_sni", "quic_sni", "http_host", "http_connect"):
        peer = ("77.74.177.5", 443, "udp" if kind == "quic_sni" else "tcp")
    if kind == "ip_flow":
        ind, name, peer = IP_IND, "77.74.177.5", ("77.74.177.5", 443, "tcp")
    src, sport, dst, dport = host, 40000, peer[0], peer[1]
    if kind == "dns_answer":
        src, sport, dst, dport = peer[0], peer[1], host, 40000
    return Event(
        make_event_id("edge-1", ts_ns, src, sport, dst, dport, peer[2], kind, name),
        format_ts(ts_ns), "edge-1", kind, name, src, sport, dst, dport, peer[2], ind,
        query="av-updates.example.net" if kind == "dns_answer" else None,
        answers=("77.74.177.9",) if kind == "dns_answer" else (),
    )  # fmt: skip


def alert_for(kind: str, host: str = "10.9.3.4") -> Alert:
    links = Links("https://wiki.example/kw/{category}", "https://graf.example/d?h={host}")
    [a] = AlertEngine(assets=PLANT, links=links).feed(event(kind, host))
    return a


KINDS = ["dns_query", "dns_answer", "tls_sni", "quic_sni", "http_host", "http_connect", "ip_flow"]


@pytest.mark.parametrize("kind", KINDS)
def test_ecs_document_is_valid_ecs(kind: str) -> None:
    doc = to_ecs(alert_for(kind))
    assert ecs_violations(doc) == []
    assert doc["ecs"]["version"] == ECS_VERSION and ECS_VERSION.startswith("8.")
    assert (doc["event"]["kind"], doc["event"]["category"]) == ("alert", ["network"])
    assert doc["source"]["ip"] == "10.9.3.4" and doc["@timestamp"] == "2027-01-15T08:00:00.000000Z"
    assert doc["rule"]["id"] == ("kw-infra-x" if kind == "ip_flow" else "kw-update-snn")
    assert doc["labels"]["owner"] == "ops" and doc["labels"]["criticality"] == "high"


def test_ecs_places_the_name_by_kind_and_never_makes_the_resolver_the_destination() -> None:
    q, a = to_ecs(alert_for("dns_query")), to_ecs(alert_for("dns_answer"))
    assert q["dns"]["question"]["name"] == "s07.upd.kaspersky.com"
    assert q["destination"] == {"domain": "s07.upd.kaspersky.com"}  # no answer yet: no ip
    assert q["server"] == {"ip": "10.0.0.53", "port": 53}
    assert a["dns"]["question"]["name"] == "av-updates.example.net"  # asked; the chain led on
    assert a["destination"] == {"domain": "s07.upd.kaspersky.com", "ip": "77.74.177.9"}
    assert a["source"]["ip"] == "10.9.3.4"  # the client, not the resolver that answered
    assert to_ecs(alert_for("tls_sni"))["tls"]["client"]["server_name"] == "s07.upd.kaspersky.com"
    assert to_ecs(alert_for("http_host"))["url"]["domain"] == "s07.upd.kaspersky.com"
    flow = to_ecs(alert_for("ip_flow"))
    assert flow["threat"]["indicator"]["type"] == "ipv4-addr"
    assert flow["destination"] == {"ip": "77.74.177.5", "port": 443}
    guided = to_ecs(alert_for("tls_sni"))
    assert guided["rule"]["reference"] == "https://wiki.example/kw/update"
    assert guided["rule"]["description"] == "Kaspersky update servers."
    assert guided["labels"]["remediation"] == "Removal. Uninstall it."
    assert guided["threat"]["indicator"]["reference"].startswith("https://support.kaspersky")
    assert guided["event"]["url"] == "https://graf.example/d?h=10.9.3.4"


def test_the_validator_catches_what_is_not_ecs() -> None:
    doc = to_ecs(alert_for("dns_query"))
    doc["event"]["category"] = "network"  # ECS wants an array
    doc["source"]["ip"] = "not-an-ip"
    doc["kaspwatch"] = {"stage": "x"}
    doc["threat"]["indicator"]["confidence"] = "high"  # ECS expects "High"
    assert len(ecs_violations(doc)) == 4


@pytest.mark.parametrize("kind", ["dns_query", "dns_answer"])
def test_ocsf_destination_is_the_kaspersky_endpoint_not_the_resolver(kind: str) -> None:
    doc = to_ocsf(alert_for(kind))
    want = {"hostname": "s07.upd.kaspersky.com"}
    if kind == "dns_answer":
        want["ip"] = "77.74.177.9"
    assert doc["dst_endpoint"] == want
    assert doc["unmapped"]["resolver"] == {"ip": "10.0.0.53", "port": 53}
    assert doc["unmapped"]["remediation"] == "Removal. Uninstall it."


def test_ocsf_tls_destination_is_the_server() -> None:
    doc = to_ocsf(alert_for("tls_sni"))
    assert doc["dst_endpoint"] == {"hostname": "s07.upd.kaspersky.com", "ip": "77.74.177.5",
                                   "port": 443}  # fmt: skip
    assert "resolver" not in doc["unmapped"]


def test_run_format_ecs_prints_valid_ecs() -> None:
    proc = subprocess.run(
        [*KASPWATCH, "run", "--pcap", str(SAMPLE), "--format", "ecs"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    docs = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    assert len(docs) == 3
    for doc in docs:
        assert ecs_violations(doc) == [], doc
        assert doc["labels"]["remediation"]


@pytest.mark.kafka
async def test_alerts_topic_in_ecs_is_read_back(kafka_bootstrap: str) -> None:
    topic = f"alerts-ecs-{uuid.uuid4().hex[:8]}"
    await create_topics(kafka_bootstrap, (topic, 1))
    publisher = open_publisher(f"kafka://{kafka_bootstrap}", client_id="t")
    reader = open_reader(f"kafka://{kafka_bootstrap}", client_id="t")
    await publisher.start()
    try:
        sink = KafkaTopicSink(publisher, topic, reader, "ecs")
        alerts = [alert_for("dns_query", f"10.9.0.{i}") for i in range(1, 4)]
        await sink.send(alerts)
        found, ends = await sink.read_back({0: 0})
    finally:
        await publisher.stop()
    assert found == {a.alert_id for a in alerts} and ends == {0: 3}
    records = await read_topic(kafka_bootstrap, topic, 3)
    assert [k for k, _ in records] == [a.event.host.encode() for a in alerts]
    for _, value in records:
        assert ecs_violations(json.loads(value)) == []
