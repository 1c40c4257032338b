"""The sensor's composition: frame -> segment -> sightings -> matched events.

One visible place wires the decoders to the matcher; nothing here does I/O. A peer
sensor's log (``PeerRecord``: Suricata EVE, Zeek) enters after decoding, as a segment
and a sighting, and takes the same matching, DNS attribution, allowlist and event
building (``process_record``).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Final

from kaspwatch.event import Event, format_ts, make_event_id, make_packet_id
from sensor.content import ContentWatch, content_hit
from sensor.decode import NOT_HOST, DecodeError, Sighting
from sensor.decode.dhcp import DHCP_PORTS
from sensor.decode.dhcpv6 import DHCPV6_PORTS
from sensor.decode.kerberos import AS_REQ, KERBEROS_PORT
from sensor.decode.native import decoders, notice
from sensor.decode.netbios import NETBIOS_NS_PORT
from sensor.decode.packet import PROTO_TCP, PROTO_UDP, PacketDecoder, Segment, tcp_data_head
from sensor.decode.stream import DNS_FIRST_MAX, STREAM_STARTS, StreamTable
from sensor.flows import FlowWatch
from sensor.identity import IdentityWatch
from sensor.resolvers import PUBLIC_RESOLVERS
from sensor.rules.allowlist import Allowlist
from sensor.rules.indicators import Indicator
from sensor.rules.match import Matcher
from sensor.rules.ruleset import Rules
from sensor.sources.base import Frame, PeerRecord

if TYPE_CHECKING:  # QUIC's decoder (and cryptography) load with the first long header
    from sensor.decode.quic import QuicInitialTracker
    from sensor.shard import Shard

log = logging.getLogger("kaspwatch.sensor")

TCP_FIN_RST: Final = 0x05
TCP_SYN: Final = 0x02
TCP_SYN_ACK: Final = 0x12
DNS_PORTS: Final = frozenset({53, 5353, 5355})
CONTENT_KINDS: Final = frozenset({"http_request", "file_magic"})
NAME_PORTS: Final = frozenset({5353, 5355})  # mDNS, LLMNR


@dataclass
class SensorStats:
    packets: int = 0
    records: int = 0  # names and flow starts read from a peer sensor's log (EVE, Zeek)
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
        self,
        rules: Rules | Matcher,
        sensor_name: str,
        observations: bool = False,
        strict: bool = False,
        pure: bool = False,
    ) -> None:
        """``strict``: a decoder bug (any exception but ``DecodeError``) propagates, for the
        fuzzer and tests; otherwise the frame is counted under the ``bug`` layer and logged,
        and the sensor goes on: one crafted packet must not blind a site's only sensor.
        ``pure``: the pure-Python decoders even when the compiled ones are built (tests
        compare the two; ``KASPWATCH_PURE=1`` chooses them for a whole process)."""
        notice(log)
        self.strict = strict
        self._decode = decoders(pure)
        # Swapped whole by a reload between batches: a packet sees one rule set.
        self.rules = rules if isinstance(rules, Rules) else Rules(rules, Allowlist())
        self.sensor_name = sensor_name
        self.observations = observations
        self.stats = SensorStats()
        # per-connection state, each table bounded
        self.decoder = PacketDecoder()
        self.streams = StreamTable(pure=pure)
        self._pure = pure
        self._quic: QuicInitialTracker | None = None
        self.flows = FlowWatch()
        self.content = ContentWatch()
        self.identity = IdentityWatch(sensor_name)  # DHCP/ARP: drained by the publisher
        # ``scan --workers``: this sensor reports only its share of the flows (sensor/shard.py)
        self.shard: Shard | None = None

    @property
    def quic(self) -> QuicInitialTracker:
        """The QUIC Initial tracker, made (and ``cryptography`` imported, ≈ 15 ms) with the
        first UDP long header: a capture without QUIC never pays for it."""
        if self._quic is None:
            from sensor.decode.quic import QuicInitialTracker

            self._quic = QuicInitialTracker(pure=self._pure)
        return self._quic

    def evictions(self) -> dict[str, int]:
        """Entries each bounded state table has had to evict."""
        quic = self._quic
        return {
            "fragments": self.decoder.fragments_evicted,
            "tcp_streams": self.streams.evicted,
            "quic_connections": quic.evicted if quic else 0,
            "quic_keys": quic.keys_evicted if quic else 0,
            "flows": self.flows.evicted,
            "http_responses": self.content.evicted,
            "identity_clients": self.identity.clients_evicted,
            "identity_bindings": self.identity.bindings_evicted,
        }

    def process(self, frames: Iterable[Frame]) -> Iterator[Event]:
        for frame in frames:
            yield from self.process_frame(*frame)

    def process_item(self, item: Frame | PeerRecord) -> list[Event]:
        """A frame from a capture, or a record from a peer sensor's log."""
        if isinstance(item, PeerRecord):
            return self.process_record(item)
        return self.process_frame(*item)

    def process_record(self, rec: PeerRecord) -> list[Event]:
        """A name (or flow start) another sensor decoded: from here on, exactly the path
        of a frame's sightings. An address that does not parse is a ``peer`` error."""
        self.stats.records += 1
        if rec.kind == "dhcp":  # the peer's DHCP log: an identity, not a name to match
            x = rec.extra
            self.identity.peer_dhcp(rec.ts_ns, x["mac"], rec.src, rec.name, x.get("fqdn", ""),
                                    x.get("lease_s"))  # fmt: skip
            return []
        try:
            src = ipaddress.ip_address(rec.src).packed
            dst = ipaddress.ip_address(rec.dst).packed
        except ValueError:
            self._error("peer")
            return []
        proto = PROTO_TCP if rec.transport == "tcp" else PROTO_UDP
        if rec.kind == "ip_flow":
            seg = Segment(src, dst, proto, rec.sport, rec.dport, TCP_SYN, b"")
            flow = self._flow_event(rec.ts_ns, seg, rec.source)
            return [flow] if flow is not None else []
        seg = Segment(src, dst, proto, rec.sport, rec.dport, 0, b"")
        s = Sighting(rec.kind, rec.name, rec.chain, rec.answers, rec.extra, rec.path, rec.ttl)
        found = [s]
        if rec.kind == "http_host":  # the request's path and User-Agent: content signals
            path = rec.path or "/"
            found.append(Sighting("http_request", rec.name, path=path, user_agent=rec.user_agent))
        events = [self._event(rec.ts_ns, seg, f, rec.source) for f in found]
        return [e for e in events if e is not None]

    def process_frame(self, ts_ns: int, linktype: int, data: bytes) -> list[Event]:
        self.stats.packets += 1
        if linktype == 1 and self._mid_stream(data):
            return []
        try:
            seg = self.decoder.decode(linktype, data, ts_ns)
            if self.shard is not None and not self.shard.owns(linktype, data, seg):
                return self._elsewhere(seg, ts_ns)
            if seg is None:
                self.identity.frame(linktype, data, ts_ns)  # ARP
                return []
            sightings = self._sightings(seg, ts_ns)
        except DecodeError as exc:
            self._error(str(exc).split(" ", 1)[0])
            return []
        except Exception as exc:
            if self.strict:
                raise
            self._bug(exc)
            return []
        events = (
            [e for s in sightings if (e := self._event(ts_ns, seg, s)) is not None]
            if sightings
            else []
        )
        # only a SYN or a non-DNS UDP datagram can start a watched flow (FlowWatch says
        # so too): skip the lookup for everything else
        if (
            seg.tcp_flags & TCP_SYN_ACK == TCP_SYN
            if seg.proto == PROTO_TCP
            else seg.sport not in DNS_PORTS and seg.dport not in DNS_PORTS
        ):
            flow = self._flow_event(ts_ns, seg)
            if flow is not None:
                events.append(flow)
        return events

    def _elsewhere(self, seg: Segment | None, ts_ns: int) -> list[Event]:
        """A frame another worker reports on (``self.shard``). A DNS answer is still read,
        for the addresses it attributes to a Kaspersky name (any host's later flows to them
        are hits), but nothing is reported or counted: its owner does both."""
        self.stats.packets -= 1
        if seg is None or seg.sport not in DNS_PORTS:
            return []
        kept = replace(self.stats, errors_by_layer=dict(self.stats.errors_by_layer))
        for s in self._sightings(seg, ts_ns):
            self._event(ts_ns, seg, s)
        self.stats = kept
        return []

    def _mid_stream(self, data: bytes) -> bool:
        """A plain TCP segment (no SYN: no flow start) the full decode would read nothing
        from: without payload, or not DNS and starting with a byte no ClientHello, request
        line or DNS message length starts with on a flow with no head in progress
        (StreamTable.feed's own first test). A FIN or RST still ends the flow's stream. Most upload and
        mid-stream data ends here, read at fixed offsets; anything unusual takes the full
        path."""
        head = tcp_data_head(data)
        if head is None:
            return False
        src, sport, dst, dport, flags, first = head
        key = (src, sport, dst, dport)
        if first < 0:
            if flags & TCP_FIN_RST:
                self.streams.close(key)
                self.content.close(key)
            return True
        if sport == 80 and dport >= 1024:  # an HTTP answer: read only when one is followed
            return key not in self.content
        return (
            first not in STREAM_STARTS
            and first > DNS_FIRST_MAX  # may start DNS over TCP on a port of its own
            and sport != 53
            and dport not in (53, KERBEROS_PORT)  # a Kerberos record starts with its length
            and key not in self.streams
            and key not in self.content  # an HTTP answer being read (sensor/content.py)
        )

    def _bug(self, exc: Exception) -> None:
        """A decoder raised what it never should: count it, log where (never the packet's
        bytes) for the first and then every 1000th, and keep sensing."""
        self._error("bug")
        n = self.stats.errors_by_layer["bug"]
        if n == 1 or n % 1000 == 0:
            tb = exc.__traceback__
            while tb is not None and tb.tb_next is not None:
                tb = tb.tb_next
            where = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb else "?"
            log.error(
                "decoder bug on packet %d (%s at %s); %d so far; please report it",
                self.stats.packets, type(exc).__name__, where, n,
            )  # fmt: skip

    def _error(self, layer: str) -> None:
        self.stats.decode_errors += 1
        self.stats.errors_by_layer[layer] = self.stats.errors_by_layer.get(layer, 0) + 1

    def _sightings(self, seg: Segment, ts_ns: int) -> list[Sighting]:
        payload = seg.payload
        if seg.proto == PROTO_UDP:
            if not payload:
                return []
            if seg.sport in DHCP_PORTS and seg.dport in DHCP_PORTS:
                self.identity.dhcp(payload, ts_ns)
                return []
            if seg.dport == KERBEROS_PORT and payload[0] == AS_REQ:  # names a machine account
                self.identity.kerberos(payload, seg.src, ts_ns)
                return []
            if seg.sport in DHCPV6_PORTS and seg.dport in DHCPV6_PORTS:
                self.identity.dhcpv6(payload, ts_ns)
                return []
            if seg.sport == NETBIOS_NS_PORT:  # registrations and answers name their sender
                self.identity.netbios(payload, seg.src, ts_ns)
                return []
            if seg.sport in DNS_PORTS or seg.dport in DNS_PORTS:
                if seg.sport in NAME_PORTS:  # mDNS/LLMNR responses name their sender
                    self.identity.announce(payload, seg.sport, seg.src, ts_ns)
                return self._decode.decode_dns(payload)
            if len(payload) > 6 and payload[0] & 0xC0 == 0xC0 and _looks_initial(payload):
                flow = (seg.src, seg.sport, seg.dst, seg.dport)
                hello = self.quic.feed(flow, payload, ts_ns / 1e9)
                return [hello] if hello else []
            if self._decode.looks_like_dns(payload):  # DNS on a port of its own (e.g. 8053)
                return self._decode.decode_dns(payload)
            return []
        key = (seg.src, seg.sport, seg.dst, seg.dport)
        try:
            if not payload:
                return []
            if seg.dport == KERBEROS_PORT and payload[4:5] == bytes([AS_REQ]):
                self.identity.kerberos(payload, seg.src, ts_ns, tcp=True)
                return []
            if key in self.content:
                return self.content.response(key, seg.seq, payload)
            found = self.streams.feed(key, seg.seq, payload, 53 in (seg.sport, seg.dport))
            if found and self.rules.matcher.reads_content:
                return self.content.requests(key, found, self.rules.matcher)
            return found
        finally:
            if seg.tcp_flags & TCP_FIN_RST:
                self.streams.close(key)
                self.content.close(key)

    def _event(
        self, ts_ns: int, seg: Segment, s: Sighting, source: str | None = None
    ) -> Event | None:
        self.stats.sightings += 1
        if s.kind in CONTENT_KINDS:
            return self._content_event(ts_ns, seg, s, source)
        matcher = self.rules.matcher
        hit_name, ind = s.name, None
        if NOT_HOST not in s.extra:  # a value that is not a host name is only observed
            ind = matcher.match_name(s.name, s.kind, s.path)
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
            return self._build(ts_ns, seg, s.kind, hit_name, None, s, source)
        self.stats.hits += 1
        event = self._build(ts_ns, seg, s.kind, hit_name, ind, s, source)
        if s.kind in ("dns_query", "dns_answer"):
            resolver = seg.dst if s.kind == "dns_query" else seg.src
            if resolver in PUBLIC_RESOLVERS:
                event.extra["resolver_bypass"] = True
            if s.answers:
                self.flows.attribute(s.answers, hit_name, ind, s.ttl, ts_ns, (s.name,))
        return event

    def _content_event(
        self, ts_ns: int, seg: Segment, s: Sighting, source: str | None = None
    ) -> Event | None:
        """A request path or User-Agent of an updater, or an update file's magic."""
        found = content_hit(self.rules.matcher, s)
        if found is None:
            return None
        ind, extra = found
        self.stats.hits += 1
        if s.kind == "file_magic":  # published as the request's flow: the host is the client
            seg = seg._replace(src=seg.dst, dst=seg.src, sport=seg.dport, dport=seg.sport)
        return self._build(ts_ns, seg, s.kind, s.name, ind, s._replace(extra=extra), source)

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
        source: str | None = None,
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
            # a peer's log record carries no packet bytes: no identity that tells two
            # packets of one flow apart, so none (counted as reported)
            packet_id=None
            if source is not None
            else make_packet_id(
                seg.src, seg.dst, seg.proto, seg.sport, seg.dport, seg.seq, seg.payload, kind, name
            ),
            source=source,
        )
        if ind is None:
            return event
        event.extra["backed_by"] = self._backed_by(ts_ns, seg, kind, name)
        return self._allowlist(event)

    def _backed_by(self, ts_ns: int, seg: Segment, kind: str, name: str) -> str:
        """What backs a hit: ``dns`` when a DNS answer the sensor saw pointed the name at
        the destination (a DNS hit is a lookup itself), ``prefix`` when the destination
        is in a Kaspersky prefix, else ``none`` (a name sent to an address nothing ties
        to it: a VPN's decoy SNI looks so)."""
        if kind in ("dns_query", "dns_answer"):
            return "dns"
        if self.flows.attributed(seg.dst, name, ts_ns):
            return "dns"
        return "prefix" if self.rules.matcher.match_ip(seg.dst) is not None else "none"

    def _flow_event(self, ts_ns: int, seg: Segment, source: str | None = None) -> Event | None:
        """A flow start to watched address space or to a DNS-attributed address."""
        found = self.flows.flow_start(seg, ts_ns, self.rules.matcher)
        if found is None:
            return None
        name, ind = found
        self.stats.hits += 1
        event = self._build(ts_ns, seg, "ip_flow", name or _ip(seg.dst), ind, None, source)
        if name is not None:
            event.extra["attributed_by"] = "dns"
        return event


def _looks_initial(payload: bytes) -> bool:
    """``sensor.decode.quic.looks_like_quic_initial``, imported on the first UDP payload with
    a long header (the cheap test above) rather than with the pipeline."""
    from sensor.decode.quic import looks_like_quic_initial

    return looks_like_quic_initial(payload)
