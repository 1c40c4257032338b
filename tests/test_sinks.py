"""Alert sinks against real receivers on loopback: Alertmanager, a webhook, syslog UDP/TCP."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import json
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import TypeVar

import pytest

from consumers.alerts.engine import ASCENDING, Alert, AlertEngine
from consumers.alerts.sinks import SinkError
from consumers.alerts.sinks.alertmanager import AlertmanagerSink
from consumers.alerts.sinks.http import retry_after_s
from consumers.alerts.sinks.syslog import SyslogSink, cef, rfc5424
from consumers.alerts.sinks.webhook import WebhookSink, delivery_id, load_secret
from consumers.assets import Asset, AssetMap
from kaspwatch.event import IndicatorRef, parse_ts
from tests.alertmanager import am_alerts, running_alertmanager
from tests.factories import EPOCH, UPDATE, hit
from tests.httpserve import serving
from tests.testenv import free_port

pytestmark = pytest.mark.timeout(30)
T = TypeVar("T")
SECRET = b"correct horse battery staple"
PLANT = AssetMap([(ipaddress.ip_network("10.9.0.0/16"), Asset("plant-a", "ot", "ops", "high"))])


def alert(
    host: str = "10.1.1.1", name: str = "s01.upd.kaspersky.com", ind: IndicatorRef = UPDATE
) -> Alert:
    recent = time.time() - EPOCH - 60  # hit() counts from EPOCH; a minute ago
    [a] = AlertEngine(assets=PLANT).feed(hit(host, recent, ind, name))
    return a


# ---------------------------------------------------------------- Alertmanager


@pytest.fixture(scope="module")
def am(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_alertmanager(tmp_path_factory.mktemp("alertmanager")) as base:
        yield base


def wait_for(check: Callable[[], T], timeout: float = 5.0) -> T:
    deadline = time.monotonic() + timeout
    while not (got := check()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return got


async def test_alertmanager_receives_bounded_labels_and_annotations(am: str) -> None:
    a = alert("10.9.7.7")  # OT zone: severity high -> critical
    sink = AlertmanagerSink([am])
    await sink.send([a, alert("10.1.7.8")])
    [got] = wait_for(lambda: am_alerts(am, host="10.9.7.7"))
    assert got["labels"] == {
        "alertname": "KasperskyTraffic",
        "severity": "critical",
        "category": "update",
        "stage": "first_contact",
        "site": "plant-a",
        "zone": "ot",
        "host": "10.9.7.7",
    }
    ann = got["annotations"]
    assert set(ann) == {"summary", "description", "alert_id", "event_id", "name", "indicator"}
    assert (ann["alert_id"], ann["event_id"]) == (a.alert_id, a.event.event_id)
    assert (ann["name"], ann["indicator"]) == ("s01.upd.kaspersky.com", "kw-update-x")
    assert "s01.upd.kaspersky.com" in ann["description"] and a.first_seen in ann["description"]
    assert got["status"]["state"] == "active"
    assert got["startsAt"].startswith(a.first_seen[:19])
    assert len(am_alerts(am, host="10.1.7.8")) == 1


async def test_alertmanager_resolve_ends_the_alert(am: str) -> None:
    a = alert("10.1.8.8")
    sink = AlertmanagerSink([am])
    await sink.send([a])
    assert wait_for(lambda: am_alerts(am, host="10.1.8.8"))
    await sink.resolve(a)
    assert wait_for(lambda: not am_alerts(am, host="10.1.8.8"))
    assert sink.resend_due(time.time() + 1000) == []


async def test_alertmanager_sends_to_every_url_and_fails_if_one_fails(am: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    sink = AlertmanagerSink([am, dead], backoff_s=0.01)
    with pytest.raises(SinkError, match=rf"alertmanager: {dead} failed after 3 attempts"):
        await sink.send([alert("10.1.9.9")])
    assert len(am_alerts(am, host="10.1.9.9")) == 1  # the live member still got it


async def test_alertmanager_resend_due(am: str) -> None:
    a, now = alert("10.1.10.10"), time.time()
    clock = [now]
    sink = AlertmanagerSink([am], resend_s=300, resolve_after_s=3600, clock=lambda: clock[0])
    await sink.send([a])
    [got] = wait_for(lambda: am_alerts(am, host="10.1.10.10"))
    assert got["endsAt"].startswith(time.strftime("%Y-%m-%dT%H:%M", time.gmtime(now + 3600)))
    assert sink.resend_due(now + 10) == []
    assert sink.resend_due(now + 301) == [a]
    clock[0] = now + 301
    await sink.send(sink.resend_due(clock[0]))  # a re-send keeps endsAt: first hit + 3600
    assert [x["endsAt"] for x in am_alerts(am, host="10.1.10.10")] == [got["endsAt"]]
    assert sink.resend_due(now + 400) == []  # just re-sent
    assert sink.resend_due(now + 602) == [a]
    assert sink.resend_due(now + 3601) == []  # expired: Alertmanager resolved it


def test_alertmanager_validates_urls() -> None:
    with pytest.raises(ValueError, match="at least one"):
        AlertmanagerSink([])
    with pytest.raises(ValueError, match="--alertmanager 'ftp://x'"):
        AlertmanagerSink(["ftp://x"])


# ---------------------------------------------------------------- webhook


@dataclass
class Receiver:
    url: str
    script: list[tuple[int, str | None]]  # (status, Retry-After) to answer, then 200
    got: list[tuple[dict[str, str], bytes, bool]] = field(default_factory=list)


@contextmanager
def webhook_receiver(*script: tuple[int, str | None]) -> Iterator[Receiver]:
    rec = Receiver("", list(script))

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            want = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
            ok = hmac.compare_digest(self.headers.get("X-Kaspwatch-Signature", ""), want)
            rec.got.append((dict(self.headers.items()), body, ok))
            status, retry = rec.script.pop(0) if rec.script else (200 if ok else 401, None)
            self.send_response(status)
            if retry is not None:
                self.send_header("Retry-After", retry)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    with serving(Handler) as port:
        rec.url = f"http://127.0.0.1:{port}/hooks/kaspwatch?token=abc"
        yield rec


async def test_webhook_delivers_signed_batch() -> None:
    alerts = [alert("10.2.0.1"), alert("10.2.0.2")]
    with webhook_receiver() as rec:
        await WebhookSink(rec.url, SECRET).send(alerts)
    [(headers, body, ok)] = rec.got
    assert ok
    assert json.loads(body) == {"alerts": [a.to_dict() for a in alerts]}
    assert headers["Content-Type"] == "application/json"
    assert headers["Idempotency-Key"] == headers["X-Kaspwatch-Delivery"] == delivery_id(alerts)


async def test_webhook_retries_5xx_with_the_same_idempotency_key() -> None:
    with webhook_receiver((503, None), (503, None)) as rec:
        await WebhookSink(rec.url, SECRET, backoff_s=0.01).send([alert("10.2.0.3")])
    assert len(rec.got) == 3 and all(ok for _, _, ok in rec.got)
    assert len({h["Idempotency-Key"] for h, _, _ in rec.got}) == 1
    assert len({body for _, body, _ in rec.got}) == 1


async def test_webhook_honours_retry_after() -> None:
    with webhook_receiver((429, "1")) as rec:
        t0 = time.monotonic()
        await WebhookSink(rec.url, SECRET, backoff_s=0.01).send([alert("10.2.0.4")])
    assert time.monotonic() - t0 >= 0.9 and len(rec.got) == 2


def test_retry_after_parsing_is_capped() -> None:
    now = time.time()
    assert retry_after_s("120") == 30 and retry_after_s("2") == 2
    assert retry_after_s(formatdate(now + 10, usegmt=True), now) == pytest.approx(10, abs=1)
    assert retry_after_s("soon") is None and retry_after_s(None) is None


async def test_webhook_gives_up_at_once_on_4xx() -> None:
    with webhook_receiver((400, None)) as rec:
        t0 = time.monotonic()
        with pytest.raises(
            SinkError, match=r"webhook: http://127\.0\.0\.1:\d+ refused .*400"
        ) as err:
            await WebhookSink(rec.url, SECRET).send([alert("10.2.0.5")])
    assert time.monotonic() - t0 < 1 and len(rec.got) == 1
    assert "token" not in str(err.value) and "/hooks" not in str(err.value)


async def test_webhook_wrong_secret_is_refused_by_the_receiver() -> None:
    with webhook_receiver() as rec, pytest.raises(SinkError, match="401"):
        await WebhookSink(rec.url, b"wrong").send([alert("10.2.0.6")])
    assert [ok for _, _, ok in rec.got] == [False]


async def test_webhook_unreachable_gives_up_after_attempts() -> None:
    sink = WebhookSink(f"http://127.0.0.1:{free_port()}/x", None, attempts=3, backoff_s=0.01)
    with pytest.raises(SinkError, match="failed after 3 attempts"):
        await sink.send([alert("10.2.0.7")])


def test_load_secret(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_bytes(SECRET + b"\n")
    os.chmod(path, 0o644)
    with pytest.raises(ValueError, match="world-readable") as err:
        load_secret(path)
    assert SECRET.decode() not in str(err.value)
    os.chmod(path, 0o600)
    assert load_secret(path) == SECRET
    assert "correct" not in repr(WebhookSink("http://127.0.0.1:1/", SECRET))


# ---------------------------------------------------------------- syslog

RFC5424 = re.compile(
    r"<(?P<pri>\d{1,3})>1 (?P<ts>\S+) (?P<host>\S+) kaspwatch - (?P<msgid>\S+) "
    r'\[kaspwatch@32473(?P<sd>(?: \w+="(?:[^"\\\]]|\\.)*")+)\] (?P<msg>.+)'
)
PARAM = re.compile(r'(\w+)="((?:[^"\\\]]|\\.)*)"')


def parse_5424(line: str) -> tuple[re.Match[str], dict[str, str]]:
    m = RFC5424.fullmatch(line)
    assert m, line
    sd = {k: re.sub(r"\\(.)", r"\1", v) for k, v in PARAM.findall(m["sd"])}
    return m, sd


CEF_5424 = re.compile(
    r"<(?P<pri>\d{1,3})>1 (?P<ts>\S+) (?P<host>\S+) kaspwatch - (?P<msgid>\S+) - (?P<cef>CEF:0\|.+)"
)
CEF_3164 = re.compile(
    r"<(?P<pri>\d{1,3})>(?P<ts>[A-Z][a-z]{2} [ 1-3]\d \d\d:\d\d:\d\d) (?P<host>\S+) "
    r"kaspwatch: (?P<cef>CEF:0\|.+)"
)


def parse_cef(line: str) -> tuple[list[str], dict[str, str]]:
    head = re.match(r"(?:(?:[^|\\]|\\.)*\|){7}", line)
    assert head, line
    fields, ext = re.findall(r"((?:[^|\\]|\\.)*)\|", head[0]), line[head.end() :]
    unesc = {"n": "\n", "r": "\r"}
    pairs = re.findall(r"(\w+)=((?:[^=\\]|\\.)*?)(?= \w+=|$)", ext)
    values = {k: re.sub(r"\\(.)", lambda m: unesc.get(m[1], m[1]), v) for k, v in pairs}
    return [re.sub(r"\\(.)", r"\1", f) for f in fields], values


def test_rfc5424_pri_follows_severity() -> None:
    for sev, level in zip(ASCENDING, (6, 5, 4, 3, 2), strict=True):
        ind = IndicatorRef("kw-x", "upd.kaspersky.com", "suffix", "update", sev, "high")
        m, sd = parse_5424(rfc5424(alert("10.3.0.1", ind=ind), "sensor-1"))
        assert int(m["pri"]) == 20 * 8 + level and sd["severity"] == sev


class UdpCollector(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.got: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.got.put_nowait(data)


async def test_syslog_udp_rfc5424_escapes_structured_data() -> None:
    loop = asyncio.get_running_loop()
    transport, rx = await loop.create_datagram_endpoint(UdpCollector, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    name = 'x"y]z\\w.upd.kaspersky.com'
    a = alert("10.3.0.2", name=name)
    sink = SyslogSink(f"udp://127.0.0.1:{port}", "rfc5424", hostname="sensor-1")
    await sink.start()
    await sink.send([a, alert("10.3.0.3")])
    got = [(await asyncio.wait_for(rx.got.get(), 5)).decode() for _ in range(2)]
    await sink.stop()
    transport.close()
    m, sd = parse_5424(got[0])
    assert (m["host"], m["msgid"], int(m["pri"])) == ("sensor-1", "first_contact", 163)
    assert m["ts"] == a.event.ts and m["msg"] == a.to_dict()["summary"]
    assert sd == {
        "alert_id": a.alert_id,
        "host": "10.3.0.2",
        "category": "update",
        "severity": "high",
        "site": "unknown",
        "zone": "unknown",
        "name": name,
        "indicator": "kw-update-x",
    }
    assert parse_5424(got[1])[1]["host"] == "10.3.0.3"


def test_cef_fields_and_escaping() -> None:
    name = "a|b=c\\d.upd.kaspersky.com"
    a = alert("10.9.3.4", name=name)
    header, ext = parse_cef(cef(a))
    assert header[:5] == ["CEF:0", "kaspwatch", "kaspwatch", "0.1.0", "kw-update-x"]
    assert header[5] == a.to_dict()["summary"] and name in header[5]
    assert header[6] == "10"  # OT zone: critical
    assert abs(int(ext.pop("rt")) / 1000 - (time.time() - 60)) < 5
    assert ext == {  # a DNS query: no dst (the resolver is not the Kaspersky endpoint)
        "src": "10.9.3.4",
        "dhost": name,
        "cs1Label": "category",
        "cs1": "update",
        "cs2Label": "stage",
        "cs2": "first_contact",
        "cs3Label": "site",
        "cs3": "plant-a",
        "cs4Label": "zone",
        "cs4": "ot",
        "cs5Label": "owner",
        "cs5": "ops",
        "cs6Label": "criticality",
        "cs6": "high",
        "cn1Label": "hits",
        "cn1": "1",
        "externalId": a.alert_id,
    }
    assert "\\|" in cef(a) and "\\=" in cef(a)


class TcpCollector:
    def __init__(self, close_first: bool = False) -> None:
        self.data = bytearray()
        self.connections = 0
        self.close_first = close_first

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        first = self.connections == 1
        while chunk := await reader.read(65536):
            self.data += chunk
            if first and self.close_first:
                break
        writer.close()

    def frames(self) -> list[bytes]:
        out, rest = [], bytes(self.data)
        while m := re.match(rb"([1-9]\d*) ", rest):
            size, start = int(m[1]), m.end()
            if len(rest) < start + size:
                break
            out.append(rest[start : start + size])
            rest = rest[start + size :]
        assert not rest or re.match(rb"\d+ ", rest), rest[:80]
        return out

    async def wait(self, count: int) -> list[bytes]:
        for _ in range(100):
            if len(frames := self.frames()) >= count:
                return frames
            await asyncio.sleep(0.05)
        raise AssertionError(f"got {len(self.frames())} frames, wanted {count}")


@contextlib.asynccontextmanager
async def tcp_receiver(close_first: bool = False) -> AsyncIterator[tuple[TcpCollector, int]]:
    rx = TcpCollector(close_first)
    server = await asyncio.start_server(rx.handle, "127.0.0.1", 0)
    try:
        yield rx, server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def test_syslog_tcp_octet_counting() -> None:
    alerts = [alert(f"10.4.0.{i}", name=f"n{i} \n.upd.kaspersky.com") for i in range(1, 4)]
    async with tcp_receiver() as (rx, port):
        sink = SyslogSink(f"tcp://127.0.0.1:{port}", "rfc5424")
        await sink.start()
        await sink.send(alerts)
        frames = await rx.wait(3)
        await sink.stop()
    assert len(frames) == 3 and rx.connections == 1
    assert [parse_5424(f.decode())[1]["host"] for f in frames] == [
        "10.4.0.1",
        "10.4.0.2",
        "10.4.0.3",
    ]


async def test_syslog_tcp_cef_reconnects_after_the_receiver_closed() -> None:
    async with tcp_receiver(close_first=True) as (rx, port):
        sink = SyslogSink(f"tcp://127.0.0.1:{port}", "cef")
        await sink.start()
        await sink.send([alert("10.4.1.1")])
        await rx.wait(1)
        await asyncio.sleep(0.2)  # the receiver hung up
        await sink.send([alert("10.4.1.2")])
        frames = await rx.wait(2)
        await sink.stop()
    assert rx.connections == 2
    cefs = [CEF_5424.fullmatch(f.decode()) for f in frames]
    assert [parse_cef(m["cef"])[1]["src"] for m in cefs if m] == ["10.4.1.1", "10.4.1.2"]


async def test_syslog_tcp_unreachable_raises() -> None:
    sink = SyslogSink(f"tcp://127.0.0.1:{free_port()}", "rfc5424", timeout_s=2)
    with pytest.raises(SinkError, match=r"syslog: cannot reach tcp://127\.0\.0\.1"):
        await sink.start()
    with pytest.raises(SinkError, match="failed after a reconnect"):
        await sink.send([alert("10.4.2.1")])


@pytest.mark.parametrize(
    "url", ["udp//x", "udp://x", "http://x:514", "tcp://:514", "udp://x:notaport", "tcp://x:514/p"]
)
def test_syslog_rejects_bad_urls(url: str) -> None:
    with pytest.raises(ValueError) as err:
        SyslogSink(url, "rfc5424")
    assert str(err.value) == f"--syslog {url!r}: expected udp://HOST:PORT or tcp://HOST:PORT"


def test_syslog_rejects_bad_format() -> None:
    with pytest.raises(ValueError, match="'json': expected one of rfc5424, cef"):
        SyslogSink("udp://127.0.0.1:514", "json")
    assert SyslogSink("udp://[::1]:514", "cef").host == "::1"


async def test_syslog_cef_has_a_syslog_header_5424_or_3164() -> None:
    loop = asyncio.get_running_loop()
    transport, rx = await loop.create_datagram_endpoint(UdpCollector, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    a = alert("10.9.3.5")  # OT zone: critical, PRI local4.crit = 162
    got = {}
    for fmt in ("cef", "cef-rfc3164"):
        sink = SyslogSink(f"udp://127.0.0.1:{port}", fmt, hostname="sensor-1")
        await sink.start()
        await sink.send([a])
        got[fmt] = (await asyncio.wait_for(rx.got.get(), 5)).decode()
        await sink.stop()
    transport.close()
    m = CEF_5424.fullmatch(got["cef"])
    assert m, got["cef"]
    assert (m["pri"], m["ts"], m["host"], m["msgid"]) == (
        "162",
        a.event.ts,
        "sensor-1",
        "first_contact",
    )
    b = CEF_3164.fullmatch(got["cef-rfc3164"])
    assert b, got["cef-rfc3164"]
    ts = parse_ts(a.event.ts)
    assert b["ts"] == f"{ts:%b} {ts.day:2d} {ts:%H:%M:%S}" and b["host"] == "sensor-1"
    assert m["cef"] == b["cef"] == cef(a)
    ext = parse_cef(b["cef"])[1]
    assert (ext["cs5"], ext["cs6"]) == ("ops", "high")  # every asset field
