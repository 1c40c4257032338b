"""Syslog: RFC 5424 lines, or ArcSight CEF under an RFC 5424 or RFC 3164 header, over UDP
or TCP.

UDP sends one datagram per alert (no delivery confirmation exists). TCP frames each
message with RFC 6587 octet counting (``<len> <msg>``) and reconnects once when the
connection broke. RFC 5424 uses facility local4, APP-NAME ``kaspwatch``, MSGID = stage
and one SD element ``kaspwatch@32473``; PRI follows the alert's severity. ``cef`` puts the
CEF record where RFC 5424's MSG goes (no structured data), ``cef-rfc3164`` after a BSD
header (``<PRI>Mmm dd hh:mm:ss HOST kaspwatch: CEF:0|...``), as ArcSight's syslog
connector reads it. Times are the alert's event time, in UTC.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import socket
from typing import Any, Final
from urllib.parse import urlsplit

from consumers.alerts.engine import Alert
from consumers.alerts.sinks import SinkError, SinkOptionError
from consumers.alerts.sinks.endpoint import kaspersky_endpoint
from consumers.alerts.sinks.group import group_summary
from kaspwatch import __version__
from kaspwatch.event import parse_ts
from kaspwatch.table import printable

FORMATS: Final = ("rfc5424", "cef", "cef-rfc3164")
FACILITY_LOCAL4: Final = 20
PRI_SEVERITY: Final = {"info": 6, "low": 5, "medium": 4, "high": 3, "critical": 2}
CEF_SEVERITY: Final = {"info": 1, "low": 3, "medium": 5, "high": 8, "critical": 10}
SD_ID: Final = "kaspwatch@32473"


def parse_url(url: str) -> tuple[str, str, int]:
    """``udp://HOST:PORT`` or ``tcp://HOST:PORT`` (IPv6 as ``[addr]``) → (scheme, host, port)."""
    bad = ValueError(f"--syslog {url!r}: expected udp://HOST:PORT or tcp://HOST:PORT")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise bad from None
    if parts.scheme not in ("udp", "tcp") or not parts.hostname or not port:
        raise bad
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise bad
    return parts.scheme, parts.hostname, port


def _oneline(v: str) -> str:
    """Every control, line separator and bidi/format character escaped (``\\x1b``,
    ``\\u202e``): nothing a SIEM or a terminal showing the log would act on."""
    return printable(v)


def _sd_escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _pri(alert: Alert) -> int:
    return FACILITY_LOCAL4 * 8 + PRI_SEVERITY.get(alert.severity, 4)


def rfc5424(alert: Alert, hostname: str) -> str:
    d = alert.to_dict()
    pri = _pri(alert)
    params = {
        "alert_id": alert.alert_id,
        "host": d["host"],
        "category": d["category"],
        "severity": d["severity"],
        "site": d["site"],
        "zone": d["zone"],
        "name": d["name"],
        "indicator": d["indicator"]["id"],
        **{k: d[k] for k in ("host_name", "mac") if d.get(k)},
    }
    sd = "".join(f' {k}="{_sd_escape(_oneline(str(v)))}"' for k, v in params.items())
    head = f"<{pri}>1 {d['ts']} {hostname} kaspwatch - {alert.stage}"
    return f"{head} [{SD_ID}{sd}] {_oneline(d['summary'])}"


def _cef_head(v: str) -> str:
    return _oneline(v).replace("\\", "\\\\").replace("|", "\\|")


def _cef_ext(v: str) -> str:
    return _oneline(v).replace("\\", "\\\\").replace("=", "\\=")


def cef(alert: Alert) -> str:
    """The bare CEF record. ``dst``/``dpt`` are the Kaspersky endpoint (for DNS the answer's
    address, none for a query: the resolver is not Kaspersky); ``dhost`` its name."""
    d, ev = alert.to_dict(), alert.event
    ip, port = kaspersky_endpoint(ev)
    ext = {
        "rt": str(int(parse_ts(ev.ts).timestamp() * 1000)),
        "src": ev.host,
        "dhost": ev.name,
        **({"dst": ip} if ip is not None else {}),
        **({"dpt": str(port)} if port is not None else {}),
        "cs1Label": "category",
        "cs1": d["category"],
        "cs2Label": "stage",
        "cs2": alert.stage,
        "cs3Label": "site",
        "cs3": d["site"],
        "cs4Label": "zone",
        "cs4": d["zone"],
        "cs5Label": "owner",
        "cs5": d["owner"],
        "cs6Label": "criticality",
        "cs6": d["criticality"],
        "cn1Label": "hits",
        "cn1": str(d["hits"]),
        "externalId": alert.alert_id,
    }
    if "remediation" in d:
        ext["msg"] = d["remediation"]
    if d.get("host_name"):
        ext["shost"] = d["host_name"]
    if d.get("mac"):
        ext["smac"] = d["mac"]
    head = ["kaspwatch", "kaspwatch", __version__, d["indicator"]["id"], d["summary"]]
    sev = CEF_SEVERITY.get(alert.severity, 5)
    extension = " ".join(f"{k}={_cef_ext(v)}" for k, v in ext.items())
    return "CEF:0|" + "|".join(_cef_head(h) for h in head) + f"|{sev}|{extension}"


def cef_rfc5424(alert: Alert, hostname: str) -> str:
    """CEF as the MSG of an RFC 5424 message (MSGID = stage, no structured data)."""
    return f"<{_pri(alert)}>1 {alert.event.ts} {hostname} kaspwatch - {alert.stage} - {cef(alert)}"


def cef_rfc3164(alert: Alert, hostname: str) -> str:
    """CEF after an RFC 3164 (BSD) header: ``<PRI>Mmm dd hh:mm:ss HOST kaspwatch: CEF:0|...``."""
    ts = parse_ts(alert.event.ts)
    stamp = f"{ts.strftime('%b')} {ts.day:2d} {ts.strftime('%H:%M:%S')}"
    return f"<{_pri(alert)}>{stamp} {hostname} kaspwatch: {cef(alert)}"


def _group_pri(severity: str) -> int:
    return FACILITY_LOCAL4 * 8 + PRI_SEVERITY.get(severity, 4)


def group_message(docs: list[dict[str, Any]], fmt: str, hostname: str) -> str:
    """One host's alerts as one syslog message: RFC 5424 with MSGID ``host_alerts`` and the
    lists in structured data, or one CEF record (signature ``host-alerts``) listing them."""
    g = group_summary(docs)
    if fmt == "rfc5424":
        params = {
            "host": g["host"], "site": g["site"], "zone": g["zone"], "owner": g["owner"],
            "criticality": g["criticality"], "severity": g["severity"], "count": g["count"],
            "categories": ",".join(g["categories"]), "stages": ",".join(g["stages"]),
            "names": ",".join(g["names"]), "indicators": ",".join(g["indicators"]),
            "alert_ids": ",".join(g["alert_ids"]),
        }  # fmt: skip
        sd = "".join(f' {k}="{_sd_escape(_oneline(str(v)))}"' for k, v in params.items())
        head = f"<{_group_pri(g['severity'])}>1 {g['last_ts']} {hostname} kaspwatch - host_alerts"
        return f"{head} [{SD_ID}{sd}] {_oneline(g['summary'])}"
    ext = {
        "rt": str(int(parse_ts(g["last_ts"]).timestamp() * 1000)),
        "src": g["host"],
        "cs1Label": "categories", "cs1": ",".join(g["categories"]),
        "cs2Label": "stages", "cs2": ",".join(g["stages"]),
        "cs3Label": "site", "cs3": g["site"],
        "cs4Label": "zone", "cs4": g["zone"],
        "cs5Label": "owner", "cs5": g["owner"],
        "cs6Label": "criticality", "cs6": g["criticality"],
        "cn1Label": "alerts", "cn1": str(g["count"]),
        "msg": ",".join(g["names"]),
        "externalId": ",".join(g["alert_ids"]),
    }  # fmt: skip
    fields = ["kaspwatch", "kaspwatch", __version__, "host-alerts", g["summary"]]
    sev = CEF_SEVERITY.get(g["severity"], 5)
    extension = " ".join(f"{k}={_cef_ext(v)}" for k, v in ext.items())
    record = "CEF:0|" + "|".join(_cef_head(h) for h in fields) + f"|{sev}|{extension}"
    pri = _group_pri(g["severity"])
    if fmt == "cef":
        return f"<{pri}>1 {g['last_ts']} {hostname} kaspwatch - host_alerts - {record}"
    ts = parse_ts(g["last_ts"])
    return f"<{pri}>{ts:%b} {ts.day:2d} {ts:%H:%M:%S} {hostname} kaspwatch: {record}"


def _local_hostname() -> str:
    return re.sub(r"[^\x21-\x7e]", "", socket.gethostname())[:255] or "-"


class SyslogSink:
    name = "syslog"

    def __init__(
        self, url: str, fmt: str = "rfc5424", hostname: str | None = None, timeout_s: float = 10
    ) -> None:
        self.proto, self.host, self.port = parse_url(url)
        if fmt not in FORMATS:
            raise ValueError(f"--syslog-format {fmt!r}: expected one of {', '.join(FORMATS)}")
        self.fmt, self.timeout_s = fmt, timeout_s
        self.hostname = hostname or _local_hostname()
        self.receiver = f"{self.proto}://{self.host}:{self.port}"
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._lock = asyncio.Lock()

    def render(self, alert: Alert) -> str:
        if self.fmt == "rfc5424":
            return rfc5424(alert, self.hostname)
        if self.fmt == "cef":
            return cef_rfc5424(alert, self.hostname)
        return cef_rfc3164(alert, self.hostname)

    async def start(self) -> None:
        try:
            await self._connect()
        except (OSError, TimeoutError) as exc:
            raise SinkError(f"syslog: cannot reach {self.receiver}: {exc}") from exc

    async def send(self, alerts: list[Alert]) -> None:
        if not alerts:
            return
        await self._send([self.render(a).encode() for a in alerts])

    async def _send(self, msgs: list[bytes]) -> None:
        async with self._lock:
            if self.proto == "udp":
                await self._send_udp(msgs)
            else:
                await self._send_tcp(b"".join(b"%d %s" % (len(m), m) for m in msgs))

    async def send_group(self, docs: list[dict[str, Any]]) -> None:
        """One host's alerts in one message."""
        await self._send([group_message(docs, self.fmt, self.hostname).encode()])

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        await self._close_tcp()

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        if self.proto == "udp" and self._udp is None:
            self._udp, _ = await loop.create_datagram_endpoint(
                asyncio.DatagramProtocol, remote_addr=(self.host, self.port)
            )
        elif self.proto == "tcp" and not self._tcp_alive():
            await self._close_tcp()
            conn = asyncio.open_connection(self.host, self.port)
            self._tcp = await asyncio.wait_for(conn, self.timeout_s)

    async def _send_udp(self, msgs: list[bytes]) -> None:
        try:
            await self._connect()
        except OSError as exc:
            raise SinkError(f"syslog: cannot reach {self.receiver}: {exc}") from exc
        assert self._udp is not None
        for m in msgs:
            self._udp.sendto(m)

    async def _send_tcp(self, frames: bytes) -> None:
        why: Exception | None = None
        for _ in range(2):  # the first try, then one reconnect
            try:
                await self._connect()
                assert self._tcp is not None
                self._tcp[1].write(frames)
                await asyncio.wait_for(self._tcp[1].drain(), self.timeout_s)
                return
            except (OSError, TimeoutError) as exc:
                why = exc
                await self._close_tcp()
        raise SinkError(f"syslog: {self.receiver} failed after a reconnect: {why!r}")

    def _tcp_alive(self) -> bool:
        return self._tcp is not None and not (self._tcp[0].at_eof() or self._tcp[1].is_closing())

    async def _close_tcp(self) -> None:
        if self._tcp is None:
            return
        writer, self._tcp = self._tcp[1], None
        writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), 1)


def add_options(p: argparse._ActionsContainer) -> None:
    p.add_argument("--syslog", metavar="URL", help="udp://HOST:PORT or tcp://HOST:PORT")
    p.add_argument(
        "--syslog-format",
        choices=FORMATS,
        default="rfc5424",
        help="rfc5424 (structured data), cef (CEF under an RFC 5424 header) or cef-rfc3164",
    )


def from_options(args: argparse.Namespace) -> SyslogSink | None:
    if not args.syslog:
        return None
    try:
        return SyslogSink(args.syslog, args.syslog_format)
    except ValueError as exc:
        raise SinkOptionError(str(exc)) from None
