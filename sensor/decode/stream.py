"""TCP reassembly, just enough to read names: the head of client streams and DNS over TCP.

A ClientHello may arrive in many tiny segments (small MSS) or span segments (post-quantum
key shares); an HTTP request head may too; DNS over TCP carries several length-prefixed
messages per connection, split anywhere. Flows are keyed by direction
``(src, sport, dst, dport)``; state is created only for streams whose first bytes look
like TLS, HTTP or DNS, and every table and buffer is bounded (oldest evicted, counted).

DNS over TCP is read on port 53 and, on any other port, when a segment strictly looks
like the start of a DNS message (``looks_like_dns_tcp``). A query read expects its answer:
the reverse direction gets a flow that holds segments until the one starting the answer
comes, so an answer whose segments arrive out of order is still read from its start.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Final

from sensor.decode import DecodeError, Sighting
from sensor.decode.dns import looks_like_dns_tcp
from sensor.decode.native import decoders

FlowKey = tuple[bytes, int, bytes, int]

MAX_HEAD: Final = 16384  # bytes of a TLS/HTTP stream head kept while waiting for the end
MAX_DNS_BUFFER: Final = 2 + 65535
MAX_OUT_OF_ORDER: Final = 16  # segments held per flow while waiting for a gap to fill
MAX_BYTES: Final = 64 << 20  # bytes held by the whole table (heads, DNS buffers, held segments)
SEQ_MOD: Final = 1 << 32
# first bytes a stream worth state can start with: a TLS handshake record or a request
# line's upper-case method (see _could_be_client_hello and _starts_http)
STREAM_STARTS: Final = frozenset({0x16, *range(ord("A"), ord("Z") + 1)})
# DNS over TCP on a port of its own is guessed from segments starting with a length below
# 512 (a query, or a short answer seen alone; a longer answer is read after its query)
DNS_FIRST_MAX: Final = 1
DNS_STARTS_ALSO: Final = STREAM_STARTS | set(range(DNS_FIRST_MAX + 1))


@dataclass
class _Flow:
    kind: str  # "tls" | "http" | "dns"
    next_seq: int  # -1: a DNS stream whose first segment has not come (segments held)
    buf: bytearray = field(default_factory=bytearray)
    pending: dict[int, bytes] = field(default_factory=dict)
    held: int = 0  # bytes this flow was last counted for in StreamTable.bytes


def _prefilter_passes(key: FlowKey) -> bool:
    """Whether the file prefilter passes this direction's data (``sensor.sources.prefilter``:
    server data from a well-known port other than 53 to an ephemeral one is dropped there),
    so DNS is guessed alike by both readers."""
    return not (key[1] < 1024 and key[1] != 53 and key[3] >= 1024)


def _could_be_client_hello(payload: bytes) -> bool:
    """The first bytes of a TLS handshake record holding a ClientHello, as far as they go
    (a hello cut at one byte per segment must still start a flow)."""
    head = payload[:6]
    return head[:1] == b"\x16" and head[1:2] in (b"", b"\x03") and head[5:6] in (b"", b"\x01")


# a method token (RFC 9110 tchar) starting with a capital, then the space before the
# target, within the first 24 bytes; a response (``HTTP/1.1 200``) has a "/" in its first word
_REQUEST_LINE: Final = re.compile(rb"[A-Z][!#$%&'*+.^_`|~0-9A-Za-z-]{0,22} ")
_METHOD_PREFIX: Final = re.compile(rb"[A-Z]{1,19}")


def _starts_http(payload: bytes) -> bool:
    """A request line's start (``GET /``, ``CONNECT h:443``), not a response (``HTTP/1.1``)
    nor bulk data that happens to start with a capital letter (it would hold a stream
    buffer until MAX_HEAD for nothing); or a short segment holding only the first letters
    of a method (a head cut inside its first word must still start a flow, as a
    ClientHello cut at one byte does: else a client could hide its Host that way)."""
    return _REQUEST_LINE.match(payload) is not None or _METHOD_PREFIX.fullmatch(payload) is not None


class StreamTable:
    """Bounded by flow count and by the bytes all flows hold (oldest flow evicted, counted)."""

    def __init__(
        self, max_flows: int = 65536, max_bytes: int = MAX_BYTES, pure: bool = False
    ) -> None:
        """``pure``: the pure-Python decoders even when the compiled ones are built."""
        self._decode = decoders(pure)
        self.max_flows = max_flows
        self.max_bytes = max_bytes
        self._flows: OrderedDict[FlowKey, _Flow] = OrderedDict()
        self.bytes = 0
        self.evicted = 0
        self.message_errors = 0  # DNS messages inside a stream that did not parse

    def __len__(self) -> int:
        return len(self._flows)

    def __contains__(self, key: FlowKey) -> bool:
        """Whether the flow has a head (or DNS stream) in progress."""
        return key in self._flows

    def close(self, key: FlowKey) -> None:
        flow = self._flows.pop(key, None)
        if flow is not None:
            self.bytes -= flow.held

    def feed(self, key: FlowKey, seq: int, payload: bytes, dns_port: bool) -> list[Sighting]:
        """Sightings completed by this segment (may be several for DNS)."""
        flow = self._flows.get(key)
        if flow is None:
            if not payload or (payload[0] not in DNS_STARTS_ALSO and not dns_port):
                return []  # mid-stream data (most segments): neither a hello nor a request
            return self._start(key, seq, payload, dns_port)
        if flow.next_seq < 0 and not self._anchor(flow, seq, payload):
            self._account(flow)
            return []
        data = self._in_order(flow, seq, payload)
        if data is None:
            self._account(flow)
            return []
        flow.buf += data
        found = self._advance(key, flow)
        if flow.held >= 0:  # still in the table
            self._account(flow)
        return found

    def _start(self, key: FlowKey, seq: int, payload: bytes, dns_port: bool) -> list[Sighting]:
        if dns_port or (
            payload[0] <= DNS_FIRST_MAX
            and _prefilter_passes(key)
            and looks_like_dns_tcp(payload, strict=True)
        ):
            kind = "dns"
            if len(payload) > 4 and not payload[4] & 0x80:  # a query: expect its answer
                self._expect_dns((key[2], key[3], key[0], key[1]))
            if not looks_like_dns_tcp(payload, strict=False):  # port 53, out of order
                flow = _Flow(kind, -1, pending={seq: payload})
                self._keep(key, flow)
                return []
        elif _could_be_client_hello(payload):
            kind = "tls"
        elif _starts_http(payload):
            kind = "http"
        else:
            return []
        flow = _Flow(kind, (seq + len(payload)) % SEQ_MOD, bytearray(payload))
        out = self._advance(key, flow, new=True)
        return out

    def _expect_dns(self, key: FlowKey) -> None:
        """A flow for the answer of a query just read, its start not yet known: segments
        that arrive before the answer's first are held (``_anchor``)."""
        if key not in self._flows and _prefilter_passes(key):
            self._keep(key, _Flow("dns", -1))

    def _anchor(self, flow: _Flow, seq: int, payload: bytes) -> bool:
        """Fix where a DNS stream starts at the first segment that starts a message; until
        then hold segments (bounded, as gaps are). Held segments from before the start go."""
        if not looks_like_dns_tcp(payload, strict=False):
            if len(flow.pending) < MAX_OUT_OF_ORDER:
                flow.pending[seq] = payload
            return False
        flow.next_seq = seq
        for held in [s for s in flow.pending if (s - seq) % SEQ_MOD >= SEQ_MOD // 2]:
            del flow.pending[held]
        return True

    def _in_order(self, flow: _Flow, seq: int, payload: bytes) -> bytes | None:
        """The bytes this segment adds at the stream's end, releasing held segments."""
        delta = (seq - flow.next_seq) % SEQ_MOD
        if delta >= SEQ_MOD // 2:  # starts before next_seq: retransmission or overlap
            skip = SEQ_MOD - delta
            if skip >= len(payload):
                return None
            payload, delta = payload[skip:], 0
        if delta > 0:  # a gap: hold it until the missing bytes come
            reach = MAX_DNS_BUFFER if flow.kind == "dns" else MAX_HEAD
            if len(flow.pending) < MAX_OUT_OF_ORDER and delta < reach:  # else: past any use
                flow.pending[seq] = payload
            return None
        out = bytearray(payload)
        flow.next_seq = (flow.next_seq + len(payload)) % SEQ_MOD
        while flow.next_seq in flow.pending:
            nxt = flow.pending.pop(flow.next_seq)
            out += nxt
            flow.next_seq = (flow.next_seq + len(nxt)) % SEQ_MOD
        return bytes(out)

    def _advance(self, key: FlowKey, flow: _Flow, new: bool = False) -> list[Sighting]:
        try:
            done, found = self._parse(flow)
        except DecodeError:
            self._drop(key, flow)
            raise
        if done:
            self._drop(key, flow)
        elif new:
            self._keep(key, flow)
        return found

    def _drop(self, key: FlowKey, flow: _Flow) -> None:
        """Forget a flow that ended; ``held = -1`` marks it gone."""
        if self._flows.get(key) is flow:
            del self._flows[key]
            self.bytes -= flow.held
        flow.held = -1

    def _keep(self, key: FlowKey, flow: _Flow) -> None:
        self._flows[key] = flow
        self._account(flow)
        if len(self._flows) > self.max_flows:
            self._evict_oldest()

    def _account(self, flow: _Flow) -> None:
        """Recount this flow's bytes; past ``max_bytes``, evict from the oldest flow on."""
        held = len(flow.buf) + (sum(map(len, flow.pending.values())) if flow.pending else 0)
        self.bytes += held - flow.held
        flow.held = held
        while self.bytes > self.max_bytes and self._flows:
            self._evict_oldest()

    def _evict_oldest(self) -> None:
        _, old = self._flows.popitem(last=False)
        self.bytes -= old.held
        old.held = -1
        self.evicted += 1

    def _parse(self, flow: _Flow) -> tuple[bool, list[Sighting]]:
        if flow.kind == "dns":
            return False, self._dns_messages(flow)
        if flow.kind == "tls":
            complete, hello = self._decode.hello_from_stream(bytes(flow.buf))
            if not complete and len(flow.buf) > MAX_HEAD:
                raise DecodeError("tls client hello longer than the stream buffer")
            return complete, [hello] if hello else []
        # the head ends at an empty line; some clients end lines with a bare LF
        if b"\r\n\r\n" not in flow.buf and b"\n\n" not in flow.buf and len(flow.buf) < MAX_HEAD:
            return False, []
        return True, self._decode.decode_http_request(bytes(flow.buf))

    def _dns_messages(self, flow: _Flow) -> list[Sighting]:
        out: list[Sighting] = []
        buf = flow.buf
        pos = 0
        while len(buf) - pos >= 2:
            mlen = int.from_bytes(buf[pos : pos + 2], "big")
            if len(buf) - pos - 2 < mlen:
                break
            if mlen >= 12:
                try:
                    out.extend(self._decode.decode_dns(bytes(buf[pos + 2 : pos + 2 + mlen])))
                except DecodeError:
                    self.message_errors += 1  # one bad message; the stream goes on
            pos += 2 + mlen
        del buf[:pos]
        if len(buf) > MAX_DNS_BUFFER:
            raise DecodeError("dns over tcp: message longer than 65535 bytes")
        return out
