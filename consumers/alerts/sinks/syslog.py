"""Syslog: RFC 5424 lines or bare ArcSight CEF, over UDP or TCP.

UDP sends one datagram per alert (no delivery confirmation exists). TCP frames each
message with RFC 6587 octet counting (``<len> <msg>``) and reconnects once when the
connection broke. RFC 5424 uses facility local4, APP-NAME ``kaspwatch``, MSGID = stage
and one SD element ``kaspwatch@32473``; PRI follows the alert's severity.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import socket
from typing import Final
from urllib.parse import urlsplit

from consumers.alerts.engine import Alert
from consumers.alerts.sinks import SinkError, SinkOptionError
from kaspwatch import __version__
from kaspwatch.event import parse_ts
from kaspwatch.table import printable

FORMATS: Final = ("rfc5424", "cef")
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


def rfc5424(alert: Alert, hostname: str) -> str:
    d = alert.to_dict()
    pri = FACILITY_LOCAL4 * 8 + PRI_SEVERITY.get(alert.severity, 4)
    params = {
        "alert_id": alert.alert_id,
        "host": d["host"],
        "category": d["category"],
        "severity": d["severity"],
        "site": d["site"],
        "zone": d["zone"],
        "name": d["name"],
        "indicator": d["indicator"]["id"],
    }
    sd = "".join(f' {k}="{_sd_escape(_oneline(str(v)))}"' for k, v in params.items())
    head = f"<{pri}>1 {d['ts']} {hostname} kaspwatch - {alert.stage}"
    return f"{head} [{SD_ID}{sd}] {_oneline(d['summary'])}"


def _cef_head(v: str) -> str:
    return _oneline(v).replace("\\", "\\\\").replace("|", "\\|")


def _cef_ext(v: str) -> str:
    return _oneline(v).replace("\\", "\\\\").replace("=", "\\=")


def cef(alert: Alert) -> str:
    d, ev = alert.to_dict(), alert.event
    answer = ev.kind == "dns_answer"  # the host is the destination; the peer the resolver
    ext = {
        "rt": str(int(parse_ts(ev.ts).timestamp() * 1000)),
        "src": ev.host,
        "dhost": ev.name,
        "dst": ev.src_ip if answer else ev.dst_ip,
        "dpt": str(ev.src_port if answer else ev.dst_port),
        "cs1Label": "category",
        "cs1": d["category"],
        "cs2Label": "stage",
        "cs2": alert.stage,
        "cs3Label": "site",
        "cs3": d["site"],
        "cs4Label": "zone",
        "cs4": d["zone"],
        "externalId": alert.alert_id,
    }
    head = ["kaspwatch", "kaspwatch", __version__, d["indicator"]["id"], d["summary"]]
    sev = CEF_SEVERITY.get(alert.severity, 5)
    extension = " ".join(f"{k}={_cef_ext(v)}" for k, v in ext.items())
    return "CEF:0|" + "|".join(_cef_head(h) for h in head) + f"|{sev}|{extension}"


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
        return rfc5424(alert, self.hostname) if self.fmt == "rfc5424" else cef(alert)

    async def start(self) -> None:
        try:
            await self._connect()
        except (OSError, TimeoutError) as exc:
            raise SinkError(f"syslog: cannot reach {self.receiver}: {exc}") from exc

    async def send(self, alerts: list[Alert]) -> None:
        if not alerts:
            return
        msgs = [self.render(a).encode() for a in alerts]
        async with self._lock:
            if self.proto == "udp":
                await self._send_udp(msgs)
            else:
                await self._send_tcp(b"".join(b"%d %s" % (len(m), m) for m in msgs))

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
    p.add_argument("--syslog-format", choices=FORMATS, default="rfc5424")


def from_options(args: argparse.Namespace) -> SyslogSink | None:
    if not args.syslog:
        return None
    try:
        return SyslogSink(args.syslog, args.syslog_format)
    except ValueError as exc:
        raise SinkOptionError(str(exc)) from None
