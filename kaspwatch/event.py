"""Event contract v1: the one shape every hit and observation takes on the bus.

Sensors build events here; consumers parse them here. The JSON Schema in
``kaspwatch/schema/event.v1.schema.json`` is the published form of this module.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

SCHEMA_VERSION: Final = 1
HITS_TOPIC: Final = "kaspwatch.hits.v1"
ALERTS_TOPIC: Final = "kaspwatch.alerts.v1"
DEAD_LETTER_TOPIC: Final = "kaspwatch.hits.dlq.v1"
HEARTBEATS_TOPIC: Final = "kaspwatch.heartbeats.v1"
HEARTBEAT_FIELDS: Final = (
    "packets", "hits", "decode_errors", "kernel_drops", "published", "publish_failures",
    "spool_depth",
)  # fmt: skip

KINDS: Final = frozenset(
    {
        "dns_query", "dns_answer", "tls_sni", "quic_sni", "http_host", "http_connect", "ip_flow",
        "http_request",  # content signal: an updater's request path or User-Agent
        "file_magic",  # content signal: an update file's first bytes in an HTTP answer
    }
)  # fmt: skip
TRANSPORTS: Final = frozenset({"udp", "tcp"})
CATEGORIES: Final = (
    "update",
    "telemetry",
    "activation",
    "management",
    "portal",
    "oem",
    "infrastructure",
    "canary",  # the self-test indicator: proves the pipeline, never a finding
)
SEVERITIES: Final = ("critical", "high", "medium", "low", "info")
# what a hit says about the host (an indicator's ``evidence``): a product installed there,
# a management server, an OEM engine, a web artefact (a page's script tag, a bank's fraud
# prevention, shop images), someone browsing a Kaspersky site, Kaspersky infrastructure
EVIDENCE: Final = ("install", "management", "oem", "web", "portal", "infrastructure", "canary")
EVIDENCE_BY_CATEGORY: Final = {
    "update": "install",
    "telemetry": "install",
    "activation": "install",
    "management": "management",
    "oem": "oem",
    "portal": "portal",
    "infrastructure": "infrastructure",
    "canary": "canary",
}


class EventError(ValueError):
    """A message on the bus is not a valid v1 event."""


@dataclass(frozen=True, slots=True)
class IndicatorRef:
    """The part of an indicator an event carries: enough to act on without the pack.

    ``description``, ``remediation`` (what to do next) and ``sources`` are optional: the
    sensor copies them from its pack so an alert consumer can guide the analyst without a
    pack of its own; an older sensor leaves them out."""

    id: str
    pattern: str
    match: str
    category: str
    severity: str
    confidence: str
    evidence: str = ""  # optional on the bus: older sensors send none (see ``role``)
    description: str = ""
    remediation: str = ""
    sources: tuple[str, ...] = ()

    @property
    def role(self) -> str:
        """The evidence role, derived from the category when the sensor sent none."""
        return self.evidence or EVIDENCE_BY_CATEGORY.get(self.category, "infrastructure")

    def core(self) -> dict[str, str]:
        """The required fields: what identifies the indicator."""
        return {
            "id": self.id,
            "pattern": self.pattern,
            "match": self.match,
            "category": self.category,
            "severity": self.severity,
            "confidence": self.confidence,
        }

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = self.core()
        if self.evidence:
            out["evidence"] = self.evidence
        if self.description:
            out["description"] = self.description
        if self.remediation:
            out["remediation"] = self.remediation
        if self.sources:
            out["sources"] = list(self.sources)
        return out


@dataclass(frozen=True, slots=True)
class Event:
    """A hit (``indicator`` set) or an observation (``indicator`` is None)."""

    event_id: str
    ts: str
    sensor: str
    kind: str
    name: str
    src_ip: str
    src_port: int
    dst_ip: str
    dst_port: int
    transport: str
    indicator: IndicatorRef | None
    query: str | None = None
    answers: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)
    # the packet the name came from, the same whichever sensor saw it (``make_packet_id``):
    # consumers count a packet once however many sensors report it
    packet_id: str | None = None
    source: str | None = None  # the peer sensor's log it came from ("suricata-eve", "zeek")

    @property
    def is_hit(self) -> bool:
        return self.indicator is not None

    @property
    def host(self) -> str:
        """The machine that reached for the name: the client. For a DNS answer that is the
        destination (the source is the resolver); for everything else the source."""
        return self.dst_ip if self.kind == "dns_answer" else self.src_ip

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schema": SCHEMA_VERSION,
            "event_id": self.event_id,
            "ts": self.ts,
            "sensor": self.sensor,
            "kind": self.kind,
            "name": self.name,
            "src_ip": self.src_ip,
            "src_port": self.src_port,
            "dst_ip": self.dst_ip,
            "dst_port": self.dst_port,
            "transport": self.transport,
            "host": self.host,
            "indicator": self.indicator.to_dict() if self.indicator else None,
        }
        if self.source is not None:
            out["source"] = self.source
        if self.query is not None:
            out["query"] = self.query
        if self.answers:
            out["answers"] = list(self.answers)
        if self.packet_id is not None:
            out["packet_id"] = self.packet_id
        out.update(self.extra)
        return out

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=False).encode()


def format_ts(epoch_ns: int) -> str:
    """RFC 3339 UTC with microseconds, e.g. ``2026-11-27T18:00:12.123456Z``."""
    secs, ns = divmod(epoch_ns, 1_000_000_000)
    dt = datetime.fromtimestamp(secs, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{ns // 1000:06d}Z"


_TS_SHAPE: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{1,6}Z")


def parse_ts(ts: str) -> datetime:
    """The inverse of ``format_ts`` (1-6 fraction digits), strict on the shape; ValueError
    otherwise. fromisoformat after a shape check: strptime was a fifth of the alerts
    consumer's time."""
    if not _TS_SHAPE.fullmatch(ts):
        raise ValueError(f"time {ts!r} is not YYYY-MM-DDTHH:MM:SS.ffffffZ")
    return datetime.fromisoformat(ts)


def make_event_id(
    sensor: str,
    ts_ns: int,
    src_ip: str,
    src_port: int,
    dst_ip: str,
    dst_port: int,
    transport: str,
    kind: str,
    name: str,
) -> str:
    """Deterministic id: the same packet seen again (retry, replay of a capture) keeps its id.

    Consumers deduplicate on it, so it covers everything that makes an event unique
    and nothing that varies between replays (wall clock, pack version).
    """
    key = f"{sensor}|{ts_ns}|{src_ip}|{src_port}|{dst_ip}|{dst_port}|{transport}|{kind}|{name}"
    return hashlib.blake2b(key.encode(), digest_size=16).hexdigest()


def make_packet_id(
    src: bytes,
    dst: bytes,
    proto: int,
    sport: int,
    dport: int,
    seq: int,
    payload: bytes,
    kind: str,
    name: str,
) -> str:
    """The identity of the packet a name came from, the same at every sensor that saw it:
    addresses, ports, TCP sequence number and the payload bytes (DNS ids and source ports,
    QUIC connection ids, TCP initial sequence numbers make them unique), and the kind and
    name of the hit (one packet can carry several). Nothing a sensor adds: no time, no sensor name."""
    h = hashlib.blake2b(digest_size=16)
    h.update(src + dst + proto.to_bytes(1) + sport.to_bytes(2) + dport.to_bytes(2))
    h.update(seq.to_bytes(4) + payload + f"{kind}|{name}".encode())
    return h.hexdigest()


_REQUIRED: Final = (
    ("event_id", str),
    ("ts", str),
    ("sensor", str),
    ("kind", str),
    ("name", str),
    ("src_ip", str),
    ("src_port", int),
    ("dst_ip", str),
    ("dst_port", int),
    ("transport", str),
)
_CORE: Final = frozenset(k for k, _ in _REQUIRED) | {
    "schema",
    "indicator",
    "query",
    "answers",
    "host",
    "packet_id",
    "source",
}


# What a message may be, beyond its types: whatever passes these stays small and sane in
# every consumer (alerts, metrics labels, store rows, the dead-letter envelope).
MAX_EVENT_BYTES: Final = 64 * 1024
MAX_NAME: Final = 255  # the schema's name, query and indicator pattern limit
MAX_SENSOR: Final = 128
MAX_ANSWERS: Final = 256
EARLIEST_TS: Final = datetime(1990, 1, 1, tzinfo=UTC)
MAX_FUTURE_S: Final = 86_400  # a packet time more than a day ahead of this clock is forged
_EVENT_ID: Final = re.compile(r"[0-9a-f]{32}")
_NAME: Final = re.compile(r"[^A-Z\s]*[^A-Z.\s]")
_IND_ID: Final = re.compile(r"[a-z0-9][a-z0-9-]{0,79}")
MATCHES: Final = frozenset(
    {"exact", "suffix", "wildcard", "range", "cidr", "path", "user_agent", "magic"}
)
MAX_TEXT: Final = 4096  # an indicator's description or remediation
MAX_SOURCES: Final = 32  # an indicator's sources, each at most MAX_TEXT
CONFIDENCES: Final = frozenset({"high", "medium", "low"})


def show(value: object, limit: int = 60) -> str:
    """A value for an error message, cut: a reason must never carry a forged megabyte."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


def _check_address(key: str, value: str) -> None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise EventError(f"field {key!r} is not an IP address: {show(value)}") from None


def check_ts(ts: str, now: float | None = None) -> datetime:
    """The packet time, or EventError if it is malformed or outside 1990..now + 1 day."""
    try:
        when = parse_ts(ts)
    except ValueError:
        raise EventError(f"bad ts {show(ts)}") from None
    latest = (time.time() if now is None else now) + MAX_FUTURE_S
    if not EARLIEST_TS <= when <= datetime.fromtimestamp(latest, UTC):
        raise EventError(f"ts {ts} is outside 1990-01-01 .. a day from now")
    return when


def _check_indicator(ind: object) -> IndicatorRef:
    if not isinstance(ind, dict):
        raise EventError("field 'indicator' is not an object or null")
    ref = _indicator_ref(ind)
    # the schema's enums: these become metric labels, so nothing else may pass
    if ref.category not in CATEGORIES:
        raise EventError(f"unknown indicator category {show(ref.category)}")
    if ref.severity not in SEVERITIES:
        raise EventError(f"unknown indicator severity {show(ref.severity)}")
    if ref.evidence and ref.evidence not in EVIDENCE:
        raise EventError(f"unknown indicator evidence {show(ref.evidence)}")
    if ref.match not in MATCHES or ref.confidence not in CONFIDENCES:
        raise EventError(f"bad indicator match/confidence {show((ref.match, ref.confidence))}")
    if not _IND_ID.fullmatch(ref.id) or not 0 < len(ref.pattern) <= MAX_NAME:
        raise EventError(f"bad indicator id or pattern {show((ref.id, ref.pattern))}")
    return ref


def _check_fields(doc: dict[str, Any]) -> None:
    """The schema's limits on the required fields, and address syntax."""
    for key, typ in _REQUIRED:
        value = doc.get(key)
        if not isinstance(value, typ) or isinstance(value, bool):
            raise EventError(f"field {key!r} missing or not {typ.__name__}")
    if doc["kind"] not in KINDS:
        raise EventError(f"unknown kind {show(doc['kind'])}")
    if doc["transport"] not in TRANSPORTS:
        raise EventError(f"unknown transport {show(doc['transport'])}")
    if not _EVENT_ID.fullmatch(doc["event_id"]):
        raise EventError(f"bad event_id {show(doc['event_id'])}")
    if not 0 < len(doc["sensor"]) <= MAX_SENSOR:
        raise EventError(f"field 'sensor' is empty or over {MAX_SENSOR} characters")
    name = doc["name"]
    if len(name) > MAX_NAME or not _NAME.fullmatch(name):
        raise EventError(f"bad name {show(name)} (lowercase, no spaces, at most {MAX_NAME})")
    for key in ("src_port", "dst_port"):
        if not 0 <= doc[key] <= 65535:
            raise EventError(f"field {key!r} out of range: {show(doc[key])}")
    for key in ("src_ip", "dst_ip"):
        _check_address(key, doc[key])
    query = doc.get("query")
    if query is not None and (not isinstance(query, str) or len(query) > MAX_NAME):
        raise EventError(f"bad query {show(query)}")
    answers = doc.get("answers")
    if answers is not None:
        if not isinstance(answers, list) or len(answers) > MAX_ANSWERS:
            raise EventError(f"field 'answers' is not a list of at most {MAX_ANSWERS}")
        for a in answers:
            if not isinstance(a, str):
                raise EventError(f"answer {show(a)} is not a string")
            _check_address("answers", a)


def event_from_json(raw: bytes, now: float | None = None) -> Event:
    """Parse and check a bus message against the contract (types, the schema's sizes and
    enums, address syntax, a packet time between 1990 and a day from ``now``); raise
    EventError saying what is wrong."""
    if len(raw) > MAX_EVENT_BYTES:
        raise EventError(f"message of {len(raw)} bytes, over {MAX_EVENT_BYTES}")
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise EventError(f"not JSON: {show(str(exc), 120)}") from None
    if not isinstance(doc, dict):
        raise EventError("not a JSON object")
    if doc.get("schema") != SCHEMA_VERSION:
        raise EventError(
            f"unsupported schema {show(doc.get('schema'))} (expected {SCHEMA_VERSION})"
        )
    _check_fields(doc)
    check_ts(doc["ts"], now)
    ind = doc.get("indicator")
    ref = _check_indicator(ind) if ind is not None else None
    answers = doc.get("answers") or []
    packet_id = doc.get("packet_id")
    if packet_id is not None and not (isinstance(packet_id, str) and len(packet_id) <= 64):
        raise EventError("field 'packet_id' is not a string of at most 64")
    source = doc.get("source")
    if source is not None and not (isinstance(source, str) and len(source) <= 32):
        raise EventError("field 'source' is not a string of at most 32")
    return Event(
        event_id=doc["event_id"],
        ts=doc["ts"],
        sensor=doc["sensor"],
        kind=doc["kind"],
        name=doc["name"],
        src_ip=doc["src_ip"],
        src_port=doc["src_port"],
        dst_ip=doc["dst_ip"],
        dst_port=doc["dst_port"],
        transport=doc["transport"],
        indicator=ref,
        query=doc.get("query"),
        answers=tuple(str(a) for a in answers),
        extra={k: v for k, v in doc.items() if k not in _CORE},
        packet_id=packet_id,
        source=source,
    )


_REF_REQUIRED: Final = ("id", "pattern", "match", "category", "severity", "confidence")


def _indicator_ref(ind: dict[str, Any]) -> IndicatorRef:
    core = {}
    for key in _REF_REQUIRED:
        value = ind.get(key)
        if not isinstance(value, str):
            raise EventError(f"indicator lacks {key!r} (a string)")
        core[key] = value
    texts = {}
    for key in ("evidence", "description", "remediation"):
        value = ind.get(key, "")
        if not isinstance(value, str) or len(value) > MAX_TEXT:
            raise EventError(f"indicator field {key!r} is not a string of at most {MAX_TEXT}")
        texts[key] = value
    sources = ind.get("sources", [])
    if (
        not isinstance(sources, list)
        or len(sources) > MAX_SOURCES
        or not all(isinstance(x, str) and len(x) <= MAX_TEXT for x in sources)
    ):
        raise EventError(f"indicator field 'sources' is not a list of at most {MAX_SOURCES} texts")
    return IndicatorRef(**core, **texts, sources=tuple(sources))


def heartbeat_from_json(raw: bytes) -> dict[str, Any]:
    """A sensor heartbeat (``type: heartbeat``): its counters, for the health metrics.

    ``ts`` is when the sensor sent it (the consumers' "last heartbeat" time). Optional
    ``final: true`` marks the last beat of a sensor that finished its capture files (not
    one that was stopped or died): offline work is done, its silence is not an outage."""
    if len(raw) > MAX_EVENT_BYTES:
        raise EventError(f"message of {len(raw)} bytes, over {MAX_EVENT_BYTES}")
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EventError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("type") != "heartbeat" or doc.get("schema") != 1:
        raise EventError("not a v1 heartbeat")
    if not isinstance(doc.get("sensor"), str) or not isinstance(doc.get("interval_s"), int | float):
        raise EventError("heartbeat lacks sensor or interval_s")
    if not 0 < len(doc["sensor"]) <= MAX_SENSOR:
        raise EventError(f"heartbeat sensor is empty or over {MAX_SENSOR} characters")
    for key in HEARTBEAT_FIELDS:
        if not isinstance(doc.get(key), int) or isinstance(doc.get(key), bool):
            raise EventError(f"heartbeat field {key!r} missing or not an integer")
    if not isinstance(doc.get("final", False), bool):
        raise EventError("heartbeat field 'final' is not true or false")
    return doc
