"""The sensor's composition: frame -> segment -> sightings -> matched events.

One visible place wires the decoders to the matcher; nothing here does I/O.
"""

from __future__ import annotations

import socket
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Final

from kaspwatch.event import Event, format_ts, make_event_id
from sensor.allowlist import Allowlist
from sensor.capture import Frame
from sensor.decode import DecodeError, Sighting
from sensor.decode.dns import decode_dns
from sensor.decode.http import decode_http_request
from sensor.decode.packet import PROTO_TCP, PROTO_UDP, Segment, decode_frame
from sensor.decode.tls import decode_client_hello_record, looks_like_client_hello
from sensor.indicators import Indicator
from sensor.match import Matcher
from sensor.rules import Rules

DNS_PORTS: Final = frozenset({53, 5353, 5355})
TCP_SYN: Final = 0x02
TCP_ACK: Final = 0x10
FLOW_MEMORY: Final = 65536  # UDP flows to watched space remembered, so each alerts once


@dataclass
class SensorStats:
    packets: int = 0
    decode_errors: int = 0
    sightings: int = 0
    hits: int = 0
    allowlisted: int = 0
    excluded: int = 0
    errors_by_layer: dict[str, int] = field(default_factory=dict)


def _ip(addr: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(addr) == 4 else socket.AF_INET6, addr)


class Sensor:
    """Turns frames into events. ``observations=True`` also yields non-matching names."""

    def __init__(
        self, rules: Rules | Matcher, sensor_name: str, observations: bool = False
    ) -> None:
        # Swapped whole by a reload between batches: a packet sees one rule set.
        self.rules = rules if isinstance(rules, Rules) else Rules(rules, Allowlist())
        self.sensor_name = sensor_name
        self.observations = observations
        self.stats = SensorStats()
        self._udp_flows: OrderedDict[tuple[bytes, bytes, int], None] = OrderedDict()

    def process(self, frames: Iterable[Frame]) -> Iterator[Event]:
        for frame in frames:
            yield from self.process_frame(*frame)

    def process_frame(self, ts_ns: int, linktype: int, data: bytes) -> list[Event]:
        self.stats.packets += 1
        try:
            seg = decode_frame(linktype, data)
            if seg is None:
                return []
            sightings = self._sightings(seg)
        except DecodeError as exc:
            self._error(str(exc).split(" ", 1)[0])
            return []
        events = [e for s in sightings if (e := self._event(ts_ns, seg, s)) is not None]
        flow = self._flow_event(ts_ns, seg)
        if flow is not None:
            events.append(flow)
        return events

    def _error(self, layer: str) -> None:
        self.stats.decode_errors += 1
        self.stats.errors_by_layer[layer] = self.stats.errors_by_layer.get(layer, 0) + 1

    def _sightings(self, seg: Segment) -> list[Sighting]:
        payload = seg.payload
        if not payload:
            return []
        if seg.proto == PROTO_UDP:
            if seg.sport in DNS_PORTS or seg.dport in DNS_PORTS:
                return decode_dns(payload)
            return []
        if seg.sport == 53 or seg.dport == 53:
            return self._dns_over_tcp(payload)
        if looks_like_client_hello(payload):
            hello = decode_client_hello_record(payload)
            return [hello] if hello else []
        return decode_http_request(payload)

    def _dns_over_tcp(self, payload: bytes) -> list[Sighting]:
        """Length-prefixed messages wholly inside this segment (reassembly: a later issue)."""
        out: list[Sighting] = []
        pos = 0
        while pos + 2 <= len(payload):
            mlen = int.from_bytes(payload[pos : pos + 2], "big")
            msg = payload[pos + 2 : pos + 2 + mlen]
            if len(msg) < mlen or mlen < 12:
                break
            out.extend(decode_dns(msg))
            pos += 2 + mlen
        return out

    def _event(self, ts_ns: int, seg: Segment, s: Sighting) -> Event | None:
        self.stats.sightings += 1
        matcher = self.rules.matcher
        hit_name, ind = s.name, matcher.match_name(s.name, s.kind, s.path)
        if ind is None:
            for target in s.chain:  # an innocent name whose CNAME chain leads into Kaspersky
                ind = matcher.match_name(target, s.kind)
                if ind is not None:
                    hit_name = target
                    break
        if ind is None:
            if matcher.excluded(s.name):
                self.stats.excluded += 1
            if not self.observations:
                return None
        else:
            self.stats.hits += 1
        return self._build(ts_ns, seg, s.kind, hit_name, ind, s)

    def _allowlist(self, event: Event) -> Event:
        """Mark a hit a sanctioned exception covers: counted downstream, never alerted."""
        entry = self.rules.allowlist.find(event.host, event.name)
        if entry is None:
            return event
        self.stats.allowlisted += 1
        event.extra["allowlisted"] = entry.id
        return event

    def _build(
        self,
        ts_ns: int,
        seg: Segment,
        kind: str,
        name: str,
        ind: Indicator | None,
        s: Sighting | None,
    ) -> Event:
        src, dst = _ip(seg.src), _ip(seg.dst)
        transport = "tcp" if seg.proto == PROTO_TCP else "udp"
        indicator = ind.ref if ind is not None else None
        query = s.name if s is not None and s.kind == "dns_answer" and name != s.name else None
        event = Event(
            event_id=make_event_id(
                self.sensor_name, ts_ns, src, seg.sport, dst, seg.dport, transport, kind, name
            ),
            ts=format_ts(ts_ns),
            sensor=self.sensor_name,
            kind=kind,
            name=name,
            src_ip=src,
            src_port=seg.sport,
            dst_ip=dst,
            dst_port=seg.dport,
            transport=transport,
            indicator=indicator,
            query=query,
            answers=s.answers if s is not None else (),
            extra=dict(s.extra) if s is not None else {},
        )
        return self._allowlist(event) if ind is not None else event

    def _flow_event(self, ts_ns: int, seg: Segment) -> Event | None:
        """A flow start to watched address space: a TCP SYN, or a UDP flow's first packet."""
        if seg.proto == PROTO_TCP:
            if seg.tcp_flags & (TCP_SYN | TCP_ACK) != TCP_SYN:
                return None
        elif seg.sport in DNS_PORTS and seg.dport not in DNS_PORTS:
            return None  # DNS replies from a resolver are not flow starts
        ind = self.rules.matcher.match_ip(seg.dst)
        if ind is None:
            return None
        if seg.proto == PROTO_UDP:
            key = (seg.src, seg.dst, seg.dport)
            if key in self._udp_flows:
                self._udp_flows.move_to_end(key)
                return None
            self._udp_flows[key] = None
            if len(self._udp_flows) > FLOW_MEMORY:
                self._udp_flows.popitem(last=False)
        self.stats.hits += 1
        return self._build(ts_ns, seg, "ip_flow", _ip(seg.dst), ind, None)
