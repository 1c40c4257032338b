"""Event contract v1: schema validity, deterministic ids, strict parsing of bus messages."""

from __future__ import annotations

import json

import jsonschema
import pytest

from kaspwatch.event import EventError, event_from_json, format_ts, make_event_id


def test_ts_is_rfc3339_utc_microseconds() -> None:
    assert format_ts(1_700_000_000_123_456_789) == "2023-11-14T22:13:20.123456Z"
    assert format_ts(0) == "1970-01-01T00:00:00.000000Z"


def test_event_id_is_stable_and_distinguishes_packets() -> None:
    args = ("s1", 1, "10.0.0.1", 1234, "10.0.0.2", 53, "udp", "dns_query", "a.kaspersky.com")
    assert make_event_id(*args) == make_event_id(*args)
    assert make_event_id(*args) != make_event_id("s1", 2, *args[2:])
    assert len(make_event_id(*args)) == 32


GOOD = {
    "schema": 1,
    "event_id": "0" * 32,
    "ts": "2026-11-27T18:00:00.000001Z",
    "sensor": "s1",
    "kind": "dns_query",
    "name": "ds.kaspersky.com",
    "src_ip": "10.0.0.1",
    "src_port": 5353,
    "dst_ip": "10.0.0.2",
    "dst_port": 53,
    "transport": "udp",
    "host": "10.0.0.1",
    "indicator": {
        "id": "kw-update-ds",
        "pattern": "ds.kaspersky.com",
        "match": "exact",
        "category": "update",
        "severity": "high",
        "confidence": "medium",
    },
}


def test_round_trip_is_schema_valid(event_schema: dict[str, object]) -> None:
    ev = event_from_json(json.dumps(GOOD).encode())
    doc = json.loads(ev.to_json())
    jsonschema.validate(doc, event_schema)
    assert doc == GOOD


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\xff\xfe", "not JSON"),
        (b"[1]", "not a JSON object"),
        (json.dumps({**GOOD, "schema": 2}).encode(), "unsupported schema"),
        (json.dumps({**GOOD, "kind": "smtp"}).encode(), "unknown kind"),
        (json.dumps({**GOOD, "src_port": "53"}).encode(), "src_port"),
        (json.dumps({**GOOD, "ts": "yesterday"}).encode(), "bad ts"),
        (json.dumps({**GOOD, "indicator": {"id": "x"}}).encode(), "indicator lacks"),
    ],
)
def test_poison_messages_are_refused_with_a_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(EventError, match=reason):
        event_from_json(raw)


def test_host_is_the_client_even_for_dns_answers() -> None:
    answer = event_from_json(
        json.dumps(
            {**GOOD, "kind": "dns_answer", "src_ip": "10.0.0.53", "dst_ip": "10.0.0.7"}
        ).encode()
    )
    assert answer.host == "10.0.0.7"
    assert event_from_json(json.dumps(GOOD).encode()).host == "10.0.0.1"
