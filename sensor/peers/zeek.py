"""Zeek logs -> ``PeerRecord``: dns, ssl, http, quic, conn, and dhcp as identity (a
transaction with an ``ACK`` binds ``assigned_addr`` to ``mac`` with ``host_name``,
``client_fqdn`` and ``lease_time``; one without names the MAC for a later ACK). files is
read and skipped: the event contract has no place for a MIME type yet. A server_name or
Host that is not a host name (``server4:443``) is kept as the capture path keeps it:
normalised, flagged ``not_host_name``, never matched.

Both of Zeek's writers: TSV (``#separator``, ``#set_separator``, ``#empty_field``,
``#unset_field``, ``#path``, ``#fields``, ``#types`` headers; ``\\xNN`` escapes; ``-`` unset,
``(empty)`` empty; containers split on the set separator) and JSON (``LogAscii::use_json=T``:
one object per line, field names as in ``#fields``, flat ``id.orig_h`` or nested ``id``).
Which log a line belongs to: ``#path`` (TSV), ``_path`` (JSON from Corelight and Zeek's
Kafka writer), else the file name (``dns.log``, ``dns.09:00:00-10:00:00.log.gz``). A
masked or missing time (Zeek's test baselines write ``XXXXXXXXXX.XXXXXX``) reads as 0:
the event's time is then 1970-01-01T00:00:00Z. Any other line starting with ``#`` is a
comment.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from datetime import datetime
from typing import Any, Final

from sensor.decode import normalise_name, sni_name
from sensor.decode.http import authority_name, odd
from sensor.peers.eve import PeerLineError, dhcp_record
from sensor.sources.base import PeerRecord

SOURCE: Final = "zeek"
LOGS: Final = ("dns", "ssl", "http", "quic", "conn", "files", "dhcp")
_ESCAPE: Final = re.compile(r"\\x([0-9a-fA-F]{2})")
ADDRESS_QTYPES: Final = frozenset({"A", "AAAA", "CNAME", "*", "ANY"})


def log_name(path: str) -> str | None:
    """``/x/dns.log``, ``dns.2026-12-06-10-00-00.log.gz`` -> ``dns``; None if not one of LOGS."""
    base = os.path.basename(path).split(".", 1)[0]
    return base if base in LOGS else None


def _unescape(text: str) -> str:
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), text) if "\\x" in text else text


class ZeekLog:
    """One Zeek log file (or stream): keeps its TSV header, reads its lines."""

    def __init__(self, name: str | None = None) -> None:
        self.path = log_name(name) if name else None
        self.separator = "\t"
        self.set_separator = ","
        self.empty = "(empty)"
        self.unset = "-"
        self.fields: list[str] | None = None
        self.containers: set[str] = set()

    def records(self, line: str) -> list[PeerRecord]:
        line = line.rstrip("\r\n")
        if not line:
            return []
        if line[0] == "#":
            self._header(line)
            return []
        if line[0] == "{":
            try:
                doc = json.loads(line)
            except json.JSONDecodeError as exc:
                raise PeerLineError(f"not JSON: {exc}") from None
            if not isinstance(doc, dict):
                raise PeerLineError("not a JSON object")
            row = _flatten(doc)
            path = row.get("_path") if isinstance(row.get("_path"), str) else self.path
        else:
            row = self._tsv_row(line)
            path = self.path
        if path is None:
            raise PeerLineError("which log? no #path, _path or log file name (dns.log...)")
        reader = _READERS.get(path)
        return reader(row) if reader is not None else []

    def _header(self, line: str) -> None:
        if line.startswith("#separator "):
            self.separator = _unescape(line.split(" ", 1)[1])
            return
        key, _, value = line[1:].partition(self.separator)
        if key == "set_separator":
            self.set_separator = value
        elif key == "empty_field":
            self.empty = value
        elif key == "unset_field":
            self.unset = value
        elif key == "path":
            self.path = value
        elif key == "fields":
            self.fields = value.split(self.separator)
            self.containers = set()
        elif key == "types" and self.fields is not None:
            types = value.split(self.separator)
            self.containers = {
                f
                for f, t in zip(self.fields, types, strict=False)
                if t.startswith(("set[", "vector["))
            }

    def _tsv_row(self, line: str) -> dict[str, Any]:
        if self.fields is None:
            raise PeerLineError("data line before the #fields header")
        values = line.split(self.separator)
        if len(values) != len(self.fields):
            raise PeerLineError(f"{len(values)} fields where #fields names {len(self.fields)}")
        row: dict[str, Any] = {}
        for key, value in zip(self.fields, values, strict=True):
            if value == self.unset:
                row[key] = None
            elif key in self.containers:
                row[key] = (
                    []
                    if value == self.empty
                    else [_unescape(v) for v in value.split(self.set_separator)]
                )
            else:
                row[key] = "" if value == self.empty else _unescape(value)
        return row


def _flatten(doc: dict[str, Any]) -> dict[str, Any]:
    """``{"id": {"orig_h": ...}}`` (some exporters) -> ``{"id.orig_h": ...}`` (Zeek's own)."""
    ids = doc.get("id")
    if isinstance(ids, dict):
        doc = dict(doc)
        del doc["id"]
        doc.update({f"id.{k}": v for k, v in ids.items()})
    return doc


def _ts(value: Any) -> int:
    if value is None or (isinstance(value, str) and value.startswith("X")):
        return 0  # masked or unset: unknown time
    if isinstance(value, int | float) and not isinstance(value, bool):
        return round(float(value) * 1_000_000) * 1000
    if isinstance(value, str):
        try:
            return round(float(value) * 1_000_000) * 1000
        except ValueError:
            pass
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise PeerLineError(f"bad ts {value[:40]!r}") from None
        return (int(dt.timestamp()) * 1_000_000 + dt.microsecond) * 1000
    raise PeerLineError(f"bad ts {str(value)[:40]!r}")


_Ends = tuple[str, int, str, int, str]


def _ends(row: dict[str, Any], transport: str | None = None) -> _Ends:
    try:
        src = str(ipaddress.ip_address(str(row.get("id.orig_h"))))
        dst = str(ipaddress.ip_address(str(row.get("id.resp_h"))))
        sport, dport = int(row.get("id.orig_p") or 0), int(row.get("id.resp_p") or 0)
    except (TypeError, ValueError):
        raise PeerLineError("no connection id (id.orig_h/p, id.resp_h/p)") from None
    if not (0 <= sport <= 65535 and 0 <= dport <= 65535):
        raise PeerLineError("port out of range")
    proto = transport or str(row.get("proto") or "")
    return src, sport, dst, dport, proto


def _record(row: dict[str, Any], kind: str, name: str, ends: _Ends, **kw: Any) -> PeerRecord:
    src, sport, dst, dport, transport = ends
    ts = _ts(row.get("ts"))
    return PeerRecord(ts, kind, name, src, sport, dst, dport, transport, SOURCE, **kw)


def _dns(row: dict[str, Any]) -> list[PeerRecord]:
    query = row.get("query")
    name = normalise_name(query) if isinstance(query, str) else None
    ends = _ends(row)
    if name is None or ends[4] not in ("udp", "tcp"):
        return []
    out = [_record(row, "dns_query", name, ends)]
    answers = row.get("answers") or []
    if row.get("rcode") is None and not answers:
        return out  # no reply seen
    if isinstance(answers, str):
        answers = answers.split(",")
    ttls = row.get("TTLs") or []
    chain: list[str] = []
    addrs: list[str] = []
    ttl: int | None = None
    for i, answer in enumerate(answers):
        try:
            addrs.append(str(ipaddress.ip_address(str(answer))))
        except ValueError:
            target = normalise_name(str(answer))
            if target is not None and row.get("qtype_name") in ADDRESS_QTYPES:
                chain.append(target)
            continue
        try:
            t = int(float(ttls[i]))
        except (IndexError, TypeError, ValueError):
            continue
        ttl = t if ttl is None else min(ttl, t)
    src, sport, dst, dport, transport = ends
    back = (dst, dport, src, sport, transport)  # the reply: resolver -> client
    out.append(
        _record(
            row,
            "dns_answer",
            name,
            back,
            chain=tuple(dict.fromkeys(chain))[:16],
            answers=tuple(addrs),
            ttl=ttl or 0,
        )
    )
    return out


def _sni(kind: str, transport: str) -> Any:
    def read(row: dict[str, Any]) -> list[PeerRecord]:
        raw = row.get("server_name")
        name, is_host = sni_name(raw) if isinstance(raw, str) else (None, False)
        if not name:
            return []
        return [_record(row, kind, name, _ends(row, transport), extra=odd(is_host))]

    return read


def _http(row: dict[str, Any]) -> list[PeerRecord]:
    ends = _ends(row, "tcp")
    uri = row.get("uri") if isinstance(row.get("uri"), str) else None
    host = row.get("host") if isinstance(row.get("host"), str) else None
    if row.get("method") == "CONNECT":
        target = uri or host
        name, is_host = authority_name(target) if target else (None, False)
        return [_record(row, "http_connect", name, ends, extra=odd(is_host))] if name else []
    extra: dict[str, Any] = {}
    path, authority = uri, None
    if uri is not None and (uri[:7].lower() == "http://" or uri[:8].lower() == "https://"):
        extra["proxy_form"] = True
        rest = uri.split("//", 1)[1]
        slash = rest.find("/")
        authority, path = (rest, "/") if slash < 0 else (rest[:slash], rest[slash:])
    raw = host or authority
    name, is_host = authority_name(raw) if raw else (None, False)
    if not name:
        return []
    extra.update(odd(is_host))
    agent = row.get("user_agent")
    ua = agent if isinstance(agent, str) else None
    return [_record(row, "http_host", name, ends, path=path, extra=extra, user_agent=ua)]


def _conn(row: dict[str, Any]) -> list[PeerRecord]:
    ends = _ends(row)
    return [_record(row, "ip_flow", "", ends)] if ends[4] in ("tcp", "udp") else []


def _dhcp(row: dict[str, Any]) -> list[PeerRecord]:
    ts, mac, types = _ts(row.get("ts")), row.get("mac"), row.get("msg_types") or []
    name, fqdn = row.get("host_name"), row.get("client_fqdn")
    if isinstance(types, str):
        types = types.split(",")
    addr = row.get("assigned_addr")
    if "ACK" not in types or not addr:
        return dhcp_record(ts, SOURCE, mac, hostname=name, fqdn=fqdn)
    return dhcp_record(ts, SOURCE, mac, addr, name, fqdn, row.get("lease_time"))


_READERS: Final = {
    "dhcp": _dhcp,
    "dns": _dns,
    "ssl": _sni("tls_sni", "tcp"),
    "quic": _sni("quic_sni", "udp"),
    "http": _http,
    "conn": _conn,
}
