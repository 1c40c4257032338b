"""Content signals: Kaspersky updaters that name nothing.

A real updater fetches ``/updaters/updater.xml.dif`` over plain HTTP from a bare address
with an opaque User-Agent, and the files it gets start with ``KLZF``/``KLD2``; an OEM
appliance updates from its vendor's mirror with an encrypted User-Agent. The request path,
the User-Agent and the first bytes of the response body survive all of that.

Requests are read by the stream table (``decode_http_request``); this module adds an
``http_request`` sighting per request and follows the server's answer to each request
(``_Response``, keyed by the server-to-client direction) until the body's first four
bytes, read across the head/body boundary: the head in one segment and the body in the
next is the common case. Heads are bounded (``MAX_RESPONSE_HEAD``), answers followed
only for requests seen, and the table bounded (oldest evicted, counted).

What the capture prefilter lets through decides what a response can be read from:
server data from a well-known port to an ephemeral one passes only from port 80 and only
when its first byte is ``H`` (a status line), ``K`` or ``D`` (a body starting with a
magic); bulk downloads stay in C. ``visible`` applies the same rule here, so a file read
with and without the prefilter gives the same events. So an answer is read when its head
is in one segment (up to 8 KiB: large segments from offloading NICs) and the body starts
there or at the next segment; a head cut over segments is read only when each piece
starts with one of those letters (rare), and otherwise reported as no magic.
"""

from __future__ import annotations

import socket
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Final

from sensor.decode import Sighting
from sensor.rules.indicators import Indicator
from sensor.rules.match import Matcher

FlowKey = tuple[bytes, int, bytes, int]

MAX_RESPONSE_HEAD: Final = 8192
MAX_RESPONSES: Final = 16384
SEQ_MOD: Final = 1 << 32
MAGIC_LEN: Final = 4
_HTTP: Final = b"HTTP/"
_ANSWER_STARTS: Final = frozenset(b"HKD")  # a status line, KLZF/KLD2, DIFF
PATH_SHOWN: Final = 256  # characters of a path published with a content hit


def visible(sport: int, dport: int, first: int) -> bool:
    """Whether the capture prefilter passes a data segment with this first byte (the
    ``_IPV4_TCP``/``_IPV6_TCP`` clauses of ``sensor.sources.prefilter``)."""
    if sport < 1024 and sport != 53 and dport >= 1024:
        return sport == 80 and first in _ANSWER_STARTS
    return True


@dataclass(slots=True)
class _Response:
    name: str  # the request's Host, or its destination address
    path: str
    path_signal: bool  # the request path was an updater path (``DIFF`` counts then)
    next_seq: int | None = None  # unknown until the head's first segment
    buf: bytearray = field(default_factory=bytearray)


def _address(packed: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(packed) == 4 else socket.AF_INET6, packed)


def _body_start(buf: bytearray) -> int | None:
    """Where the body starts (after a chunk-size line for a chunked one), or None while
    the head (or that line) is not complete."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    start = end + 4
    if b"chunked" in buf[:end].lower():
        line = buf.find(b"\r\n", start)
        return None if line < 0 else line + 2
    return start


class ContentWatch:
    def __init__(self, max_responses: int = MAX_RESPONSES) -> None:
        self.max_responses = max_responses
        self._resp: OrderedDict[FlowKey, _Response] = OrderedDict()
        self.evicted = 0

    def __contains__(self, key: FlowKey) -> bool:
        """Whether the server-to-client flow ``key`` has an answer being followed."""
        return key in self._resp

    def __len__(self) -> int:
        return len(self._resp)

    def close(self, key: FlowKey) -> None:
        self._resp.pop(key, None)

    def requests(self, key: FlowKey, found: list[Sighting], matcher: Matcher) -> list[Sighting]:
        """``found`` (what the stream table read on client flow ``key``) with an
        ``http_request`` sighting for each HTTP request, whose answer is then followed."""
        out = []
        for s in found:
            if s.kind not in ("http_host", "http_request"):
                out.append(s)
                continue
            name = s.name or _address(key[2])
            if s.kind == "http_host":
                out.append(s)
            path = s.path or "/"
            out.append(Sighting("http_request", name, path=path, user_agent=s.user_agent))
            ind = matcher.match_request(path, None)
            self._follow(
                (key[2], key[3], key[0], key[1]),
                _Response(name, path, ind is not None and ind.match == "path"),
            )
        return out

    def _follow(self, rkey: FlowKey, resp: _Response) -> None:
        self._resp.pop(rkey, None)
        self._resp[rkey] = resp
        if len(self._resp) > self.max_responses:
            self._resp.popitem(last=False)
            self.evicted += 1

    def response(self, key: FlowKey, seq: int, payload: bytes) -> list[Sighting]:
        """A ``file_magic`` sighting once the body's first bytes are in, else []."""
        r = self._resp.get(key)
        if r is None or not payload or not visible(key[1], key[3], payload[0]):
            return []
        if r.next_seq is None:  # the answer must start here, with a status line
            if not payload.startswith(_HTTP[: len(payload)]):
                del self._resp[key]
                return []
            r.next_seq = seq
        delta = (seq - r.next_seq) % SEQ_MOD
        if delta >= SEQ_MOD // 2:  # a retransmission or overlap: keep the new bytes only
            skip = SEQ_MOD - delta
            if skip >= len(payload):
                return []
            payload = payload[skip:]
        elif delta:  # a gap: the head or the magic is in what is missing
            del self._resp[key]
            return []
        r.buf += payload
        r.next_seq = (r.next_seq + len(payload)) % SEQ_MOD
        start = _body_start(r.buf)
        if start is None:
            if len(r.buf) > MAX_RESPONSE_HEAD:
                del self._resp[key]
            return []
        if len(r.buf) - start < MAGIC_LEN:
            if start > MAX_RESPONSE_HEAD + 64:
                del self._resp[key]
            return []
        del self._resp[key]  # one answer per request: done with this one
        magic = bytes(r.buf[start : start + MAGIC_LEN])
        return [
            Sighting(
                "file_magic",
                r.name,
                path=r.path,
                extra={"magic": magic.decode("latin-1"), "path_signal": r.path_signal},
            )
        ]


def content_hit(matcher: Matcher, s: Sighting) -> tuple[Indicator, dict[str, object]] | None:
    """The indicator a content sighting fits, and what its event publishes."""
    path = (s.path or "")[:PATH_SHOWN]
    if s.kind == "http_request":
        ind = matcher.match_request(s.path, s.user_agent)
        if ind is None:
            return None
        if ind.match == "user_agent":
            return ind, {"path": path, "user_agent": (s.user_agent or "")[:128]}
        return ind, {"path": path}
    magic = str(s.extra.get("magic", ""))
    ind = matcher.match_magic(magic.encode("latin-1"), bool(s.extra.get("path_signal")))
    return (ind, {"magic": magic, "path": path}) if ind is not None else None
