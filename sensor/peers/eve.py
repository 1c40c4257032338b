"""Suricata EVE JSON -> ``PeerRecord``: dns (v2 and v3), tls, http, quic, flow.

One EVE line is one JSON object. What becomes a record:

- ``dns``: v3 (Suricata 8's default) ``request``/``response`` with ``queries`` and
  ``answers``; v2 ``query``/``answer`` with ``rrname`` (and Suricata 4's one record per
  ``answer`` line). An answer's CNAME records give the chain, its A/AAAA records the
  addresses (for DNS attribution of later flows). v2 logs an answer in the flow's
  direction (client -> resolver): it is turned round, as v3 and the wire have it.
- ``tls`` ``sni``; ``quic`` ``sni``; ``http`` ``hostname`` with ``url`` (matched by path,
  absolute-form marked ``proxy_form``) and ``CONNECT`` (``http_connect`` on the URL's
  authority). The user agent has no place in the event contract and is not read.
  An SNI or Host that is not a host name (``server4:443``) is kept as the capture path
  keeps it: normalised (``observed_name``), flagged ``not_host_name``, never matched.
- ``flow``: a TCP or UDP flow start (its ``flow.start`` time) for the prefixes and the
  DNS attribution.
- ``dhcp``: identity (kaspwatch.identity), not a hit: a client's ``request`` names its
  MAC (``hostname``), the server's ``reply`` (``ack``, or any reply when ``dhcp_type`` is
  not logged) binds ``assigned_ip`` (else ``client_ip``) to ``client_mac`` for
  ``lease_time``. A ``PeerRecord`` of kind ``dhcp``: ``src`` the address ("" for a
  client's message), ``name`` the host name, ``extra`` ``mac`` and ``lease_s``.
- ``fileinfo`` (libmagic's ``magic``): the event contract has no place for it yet; it is
  skipped, as are ``alert``, ``stats``, ``anomaly``.
"""

from __future__ import annotations

import ipaddress
from datetime import datetime
from typing import Any, Final

from kaspwatch.identity import normalize_mac
from sensor.decode import normalise_name, sni_name
from sensor.decode.dns import answer_sighting
from sensor.decode.http import authority_name, odd
from sensor.sources.base import PeerRecord

SOURCE: Final = "suricata-eve"
DNS_PORTS: Final = frozenset({53, 5353, 5355})
TRANSPORTS: Final = {"TCP": "tcp", "UDP": "udp"}
SKIPPED: Final = frozenset({"alert", "stats", "anomaly", "fileinfo", "netflow", "drop"})
ADDRESS_TYPES: Final = frozenset({"A", "AAAA"})
NO_ADDRESS: Final = str(ipaddress.IPv4Address(0))  # DHCP's "none yet"


class PeerLineError(ValueError):
    """One line of a peer log cannot be read. Counted with its place, never fatal."""


def parse_ts(text: Any) -> int:
    """EVE's ``2016-05-24T23:27:01.960780+0000`` -> epoch ns."""
    if not isinstance(text, str):
        raise PeerLineError("no timestamp")
    try:
        dt = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%f%z")
    except ValueError:
        try:
            dt = datetime.fromisoformat(text)
        except ValueError:
            raise PeerLineError(f"bad timestamp {text[:40]!r}") from None
    if dt.tzinfo is None:
        raise PeerLineError(f"timestamp {text[:40]!r} has no time zone")
    return (int(dt.timestamp()) * 1_000_000 + dt.microsecond) * 1000


def _addr(doc: dict[str, Any], key: str) -> str:
    value = doc.get(key)
    try:
        return str(ipaddress.ip_address(str(value)))  # Suricata writes IPv6 uncompressed
    except ValueError:
        raise PeerLineError(f"{key} {str(value)[:60]!r} is not an address") from None


def _port(doc: dict[str, Any], key: str) -> int:
    value = doc.get(key, 0)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 65535:
        raise PeerLineError(f"{key} {str(value)[:20]!r} is not a port")
    return value


def eve_records(doc: Any) -> list[PeerRecord]:
    """The records one EVE object holds ([] for event types that name nothing)."""
    if not isinstance(doc, dict):
        raise PeerLineError("not a JSON object")
    etype = doc.get("event_type")
    if not isinstance(etype, str):
        raise PeerLineError("no event_type")
    if etype in SKIPPED:
        return []
    reader = _READERS.get(etype)
    if reader is None:
        return []
    transport = TRANSPORTS.get(str(doc.get("proto", "")).upper())
    if transport is None:
        return []  # ICMP, SCTP...: nothing the sensor reads either
    body = doc.get(etype)
    if not isinstance(body, dict):
        raise PeerLineError(f"{etype} record without its {etype!r} object")
    where = (_addr(doc, "src_ip"), _port(doc, "src_port"), _addr(doc, "dest_ip"))
    ends = (*where, _port(doc, "dest_port"), transport)
    return reader(doc, body, ends)


_Ends = tuple[str, int, str, int, str]


def _record(ts: int, kind: str, name: str, ends: _Ends, **kw: Any) -> PeerRecord:
    src, sport, dst, dport, transport = ends
    return PeerRecord(ts, kind, name, src, sport, dst, dport, transport, SOURCE, **kw)


def _dns(doc: dict[str, Any], body: dict[str, Any], ends: _Ends) -> list[PeerRecord]:
    ts = parse_ts(doc.get("timestamp"))
    dtype = body.get("type")
    if dtype in ("request", "query"):
        return [_record(ts, "dns_query", q, ends) for q in _questions(body)]
    if dtype not in ("response", "answer"):
        return []
    src, sport, dst, dport, transport = ends
    if dport in DNS_PORTS and sport not in DNS_PORTS:  # v2: the flow's direction
        ends = (dst, dport, src, sport, transport)
    answers = body.get("answers")
    if answers is None and "rdata" in body:  # Suricata 4 (v1): one answer record a line
        answers = [body]
    if answers is None:
        answers = []
    if not isinstance(answers, list):
        raise PeerLineError("dns answers is not a list")
    cnames: dict[str, str] = {}
    addrs: dict[str, list[str]] = {}
    ttls: dict[str, int] = {}
    for rr in answers:
        if not isinstance(rr, dict):
            raise PeerLineError("dns answer is not an object")
        owner = normalise_name(str(rr.get("rrname", "")))
        rtype, rdata = rr.get("rrtype"), rr.get("rdata")
        if owner is None or not isinstance(rdata, str):
            continue
        if rtype == "CNAME":
            target = normalise_name(rdata)
            if target is not None:
                cnames.setdefault(owner, target)
        elif rtype in ADDRESS_TYPES:
            try:
                addrs.setdefault(owner, []).append(str(ipaddress.ip_address(rdata)))
            except ValueError:
                continue
            ttl = rr.get("ttl", 0)
            ttl = ttl if isinstance(ttl, int) else 0
            ttls[owner] = min(ttls.get(owner, ttl), ttl)
    out = []
    for q in _questions(body):
        a = answer_sighting(q, cnames, addrs, ttls)
        out.append(_record(ts, "dns_answer", q, ends, chain=a.chain, answers=a.answers, ttl=a.ttl))
    return out


def _questions(body: dict[str, Any]) -> list[str]:
    """v3: every ``queries[].rrname``; v2: ``rrname``. Names that are no host name are
    dropped, as the capture path drops them."""
    queries = body.get("queries")
    if isinstance(queries, list):
        raw = [q.get("rrname") for q in queries if isinstance(q, dict)]
    else:
        raw = [body.get("rrname")]
    names = [normalise_name(r) for r in raw if isinstance(r, str)]
    return [n for n in names if n is not None]


def _tls(doc: dict[str, Any], body: dict[str, Any], ends: _Ends) -> list[PeerRecord]:
    sni = body.get("sni")
    name, is_host = sni_name(sni) if isinstance(sni, str) else (None, False)
    if name is None:
        return []
    kind = "quic_sni" if doc.get("event_type") == "quic" else "tls_sni"
    return [_record(parse_ts(doc.get("timestamp")), kind, name, ends, extra=odd(is_host))]


def _http(doc: dict[str, Any], body: dict[str, Any], ends: _Ends) -> list[PeerRecord]:
    ts = parse_ts(doc.get("timestamp"))
    url = body.get("url")
    url = url if isinstance(url, str) else None
    if body.get("http_method") == "CONNECT":
        target = url or body.get("hostname")
        name, is_host = authority_name(target) if isinstance(target, str) else (None, False)
        return [_record(ts, "http_connect", name, ends, extra=odd(is_host))] if name else []
    extra: dict[str, Any] = {}
    path = url
    authority = None
    if url is not None and (url[:7].lower() == "http://" or url[:8].lower() == "https://"):
        extra["proxy_form"] = True
        rest = url.split("//", 1)[1]
        slash = rest.find("/")
        authority, path = (rest, "/") if slash < 0 else (rest[:slash], rest[slash:])
    raw = body.get("hostname")
    if not isinstance(raw, str):
        raw = authority
    name, is_host = authority_name(raw) if raw else (None, False)
    if name is None:
        return []
    extra.update(odd(is_host))
    agent = body.get("http_user_agent")
    ua = agent if isinstance(agent, str) else None
    return [_record(ts, "http_host", name, ends, path=path, extra=extra, user_agent=ua)]


def _flow(doc: dict[str, Any], body: dict[str, Any], ends: _Ends) -> list[PeerRecord]:
    start = body.get("start", doc.get("timestamp"))
    return [_record(parse_ts(start), "ip_flow", "", ends)]


def dhcp_record(
    ts: int, source: str, mac: Any, address: Any = None, hostname: Any = None,
    fqdn: Any = None, lease: Any = None,
) -> list[PeerRecord]:  # fmt: skip
    """A peer's DHCP observation as a ``dhcp`` record (see the module's text); [] without
    a MAC, PeerLineError for a MAC or address that is none."""
    if not isinstance(mac, str) or not mac:
        return []
    try:
        norm = normalize_mac(mac)
        addr = str(ipaddress.ip_address(address)) if isinstance(address, str) else ""
    except ValueError:
        raise PeerLineError(
            f"dhcp: bad MAC or address ({mac[:20]!r}, {str(address)[:40]!r})"
        ) from None
    if addr and ipaddress.ip_address(addr).is_unspecified:
        addr = ""
    try:
        lease_s = round(float(lease)) if isinstance(lease, int | float | str) else None
    except ValueError:
        raise PeerLineError(f"dhcp: lease {str(lease)[:20]!r} is not a number") from None
    extra = {"mac": norm, "lease_s": lease_s if lease_s is None or lease_s >= 0 else None}
    if isinstance(fqdn, str) and fqdn:
        extra["fqdn"] = fqdn
    name = hostname if isinstance(hostname, str) else ""
    return [PeerRecord(ts, "dhcp", name, addr, 68, "", 67, "udp", source, extra=extra)]


def _dhcp(doc: dict[str, Any], body: dict[str, Any], ends: _Ends) -> list[PeerRecord]:
    ts = parse_ts(doc.get("timestamp"))
    mac, kind = body.get("client_mac"), body.get("type")
    if kind == "request":
        return dhcp_record(ts, SOURCE, mac, hostname=body.get("hostname"))
    if kind != "reply" or body.get("dhcp_type", "ack") != "ack":
        return []
    addr = body.get("assigned_ip")
    if addr in (None, NO_ADDRESS):
        addr = body.get("client_ip")
    if addr in (None, NO_ADDRESS):
        return []
    return dhcp_record(ts, SOURCE, mac, addr, body.get("hostname"), lease=body.get("lease_time"))


_READERS: Final = {
    "dns": _dns, "tls": _tls, "quic": _tls, "http": _http, "flow": _flow, "dhcp": _dhcp,
}  # fmt: skip
