"""One page per host (issue 17, item 3): webhook and syslog get one message per host per
``--group-wait`` listing every category, stage and name (a fake clock, no sleeping); the
alert records keep their (host, category, stage) identity; the outbox survives a crash;
the shipped Alertmanager configuration groups a host's alerts into one notification."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from consumers.alerts.delivery import AlertDelivery
from consumers.alerts.engine import AlertEngine, render_json
from consumers.alerts.sinks.alertmanager import AlertmanagerSink
from consumers.alerts.sinks.stdout import StdoutSink
from consumers.alerts.sinks.syslog import SyslogSink
from consumers.alerts.sinks.webhook import WebhookSink
from consumers.alerts.state import AlertState
from kaspwatch.event import Event, IndicatorRef
from tests.alertmanager import running_alertmanager
from tests.factories import EPOCH, hit
from tests.httpserve import webhook
from tests.testenv import REPO, free_port

pytestmark = pytest.mark.timeout(60)
CATS = ("update", "telemetry", "activation", "management")


def ref(category: str) -> IndicatorRef:
    return IndicatorRef(f"kw-{category}-x", f"{category}.kaspersky.com", "suffix", category,
                        "high" if category != "management" else "critical", "high")  # fmt: skip


def burst() -> list[Event]:
    """One host reaching four categories within 3 s, and one other host."""
    evs = [hit("10.5.0.7", i, ref(c), f"x{i}.{c}.kaspersky.com") for i, c in enumerate(CATS)]
    return [*evs, hit("10.5.0.8", 1, ref("update"), "s01.update.kaspersky.com")]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@contextmanager
def receiver() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    with webhook() as (url, posts):
        yield url, posts.bodies


class Udp(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.got: list[bytes] = []

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.got.append(data)


async def test_one_message_per_host_per_group_wait(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    transport, udp = await loop.create_datagram_endpoint(Udp, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    clock, out = Clock(), io.StringIO()
    with receiver() as (url, posts):
        syslog = SyslogSink(f"udp://127.0.0.1:{port}", "rfc5424", hostname="s1")
        sinks = [StdoutSink(render_json, out), WebhookSink(url, None), syslog]
        state = AlertState(str(tmp_path / "s.sqlite"))
        delivery = AlertDelivery(AlertEngine(), sinks, state, group_wait_s=10, clock=clock)  # type: ignore[arg-type]
        await syslog.start()
        for ev in burst():  # one batch per hit: grouping spans batches
            await delivery.handle([ev])
            clock.now += 0.5
        records = [json.loads(x) for x in out.getvalue().splitlines()]
        assert len(records) == 5  # the alert records keep their identity, one each
        assert {(r["host"], r["category"], r["stage"]) for r in records} == {
            *(("10.5.0.7", c, "first_contact") for c in CATS), ("10.5.0.8", "update", "first_contact")
        }  # fmt: skip
        assert posts == [] and udp.got == []  # held: the first alert waited 2.5 s of 10
        clock.now = 1000 + 9.9
        await delivery.flush_groups()
        assert posts == []
        clock.now = 1000 + 10.0
        await delivery.flush_groups()
        for _ in range(50):
            if len(udp.got) == 1:
                break
            await asyncio.sleep(0.02)  # the datagram crosses loopback
        assert [p["host"] for p in posts] == ["10.5.0.7"]  # 10.5.0.8's group is 2 s younger
        page = posts[0]
        assert page["categories"] == list(CATS) and page["stages"] == ["first_contact"]
        assert page["names"] == [f"x{i}.{c}.kaspersky.com" for i, c in enumerate(CATS)]
        assert page["severity"] == "critical" and page["count"] == 4
        assert [a["category"] for a in page["alerts"]] == list(CATS)
        assert "update first_contact x0.update.kaspersky.com [high]" in page["summary"]
        [msg] = udp.got
        text = msg.decode()
        assert text.startswith("<162>1 ") and " kaspwatch - host_alerts [kaspwatch@32473 " in text
        assert 'categories="update,telemetry,activation,management"' in text
        assert 'stages="first_contact"' in text and 'count="4"' in text
        clock.now = 1000 + 12.0
        await delivery.flush_groups()
        assert [p["host"] for p in posts] == ["10.5.0.7", "10.5.0.8"]
        await delivery.flush_groups(everything=True)
        assert len(posts) == 2 and delivery.stats.sent == {"stdout": 5, "webhook": 5, "syslog": 5}
        await syslog.stop()
    transport.close()
    state.close()


async def test_outbox_survives_a_crash_and_a_receiver_outage(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sqlite")
    clock = Clock()
    with receiver() as (url, posts):
        down = WebhookSink(f"http://127.0.0.1:{free_port()}/", None, attempts=1, backoff_s=0)
        first = AlertDelivery(AlertEngine(), [down], AlertState(path), group_wait_s=10, clock=clock)
        await first.handle(burst())  # queued and recorded: the loop may commit
        clock.now += 60
        await first.flush_groups()  # the receiver is down: kept
        assert first.stats.failures == {"webhook": 1} and first.stats.sent == {}
        first.state.close()  # the process dies here
        again = AlertDelivery(  # restarted against a receiver that is up
            AlertEngine(), [WebhookSink(url, None)], AlertState(path), group_wait_s=10, clock=clock
        )
        await again.handle(burst())  # the replayed batch raises nothing new
        await again.flush_groups()
        assert sorted(p["host"] for p in posts) == ["10.5.0.7", "10.5.0.8"]
        assert sum(len(p["alerts"]) for p in posts) == 5
        await again.flush_groups(everything=True)
        assert len(posts) == 2  # sent once
        again.state.close()


async def test_group_wait_zero_sends_each_batch_as_before(tmp_path: Path) -> None:
    with receiver() as (url, posts):
        delivery = AlertDelivery(AlertEngine(), [WebhookSink(url, None)], AlertState(None))
        await delivery.handle(burst())
    assert len(posts) == 1 and len(posts[0]["alerts"]) == 5 and "host" not in posts[0]


def test_shipped_alertmanager_config_groups_by_host_and_site() -> None:
    cfg = yaml.safe_load((REPO / "deploy" / "alertmanager" / "alertmanager.yml").read_text())
    assert cfg["route"]["group_by"] == ["host", "site"]


async def test_alertmanager_with_the_shipped_routes_pages_once_per_host(tmp_path: Path) -> None:
    """The real Alertmanager with the shipped configuration (receivers pointed at a local
    webhook, group_wait shortened so the test does not wait 30 s): a host's four alerts
    arrive as one notification."""
    cfg = yaml.safe_load((REPO / "deploy" / "alertmanager" / "alertmanager.yml").read_text())
    with receiver() as (url, posts):
        for rcv in cfg["receivers"]:
            rcv["webhook_configs"] = [{"url": url, "send_resolved": False}]
        cfg["route"]["group_wait"] = "1s"
        with running_alertmanager(tmp_path / "am", config=yaml.safe_dump(cfg)) as am:
            engine = AlertEngine()
            recent = time.time() - EPOCH - 60
            alerts = [
                a
                for i, c in enumerate(CATS)
                for a in engine.feed(hit("10.5.0.9", recent + i, ref(c), f"x{i}.{c}.kaspersky.com"))
            ]
            await AlertmanagerSink([am]).send(alerts)
            deadline = time.monotonic() + 20
            while not posts and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.5)  # a second notification would come within group_wait
    assert len(posts) == 1, posts
    [note] = posts
    assert note["groupLabels"] == {"host": "10.5.0.9", "site": "unknown"}
    assert sorted(a["labels"]["category"] for a in note["alerts"]) == sorted(CATS)
