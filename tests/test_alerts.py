"""Alert decisions: one per (host, category) per window, on event time, with stable ids."""

from __future__ import annotations

import io
import json

from consumers.alerts.engine import AlertEngine, render_text
from kaspwatch.bus.memory import MemoryBus
from kaspwatch.event import Event
from tests.factories import KSN, hit


def test_one_alert_per_host_and_category_per_window() -> None:
    engine = AlertEngine(window_s=600)
    decided = [
        engine.feed(hit("10.1.1.1", 0)),
        engine.feed(hit("10.1.1.1", 10)),  # same host+category: suppressed
        engine.feed(hit("10.1.1.1", 20, KSN, "dc1.ksn.kaspersky-labs.com")),  # new category
        engine.feed(hit("10.1.1.2", 30)),  # new host
        engine.feed(hit("10.1.1.1", 700)),  # window over: alerts again
    ]
    assert [len(a) for a in decided] == [1, 0, 1, 1, 1]
    assert (engine.alerts, engine.suppressed) == (4, 1)


def test_fanned_out_sensors_do_not_double_alert() -> None:
    """Sensors in one PACKET_FANOUT group each see some of a host's flows; the alerts
    consumer keys on (host, category, stage), never on the sensor, so one alert."""
    from dataclasses import replace

    engine = AlertEngine(window_s=600)
    a = replace(hit("10.1.1.1", 0), sensor="edge-1/fanout-0")
    b = replace(hit("10.1.1.1", 1, name="s02.upd.kaspersky.com"), sensor="edge-1/fanout-1")
    assert [len(engine.feed(e)) for e in (a, b)] == [1, 0]


def test_observations_never_alert() -> None:
    ev = hit("10.1.1.1", 0)
    obs = Event(**{**{f: getattr(ev, f) for f in Event.__slots__}, "indicator": None})  # type: ignore[attr-defined]
    assert AlertEngine().feed(obs) == []


def test_replay_gives_the_same_alert_ids() -> None:
    events = [hit("10.1.1.1", s) for s in (0, 5, 4000)]
    first = [a.alert_id for e in events for a in AlertEngine(3600).feed(e)]
    engine = AlertEngine(3600)
    again = [a.alert_id for e in events for a in engine.feed(e)]
    assert len(again) == 2 and again[0] == first[0]


async def test_delivery_writes_stdout_and_ocsf_topic_then_records(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from consumers.alerts.delivery import AlertDelivery
    from consumers.alerts.sinks.ocsf import KafkaTopicSink
    from consumers.alerts.sinks.stdout import StdoutSink
    from consumers.alerts.state import AlertState

    bus = MemoryBus()
    out = io.StringIO()
    state = AlertState(str(tmp_path / "state.sqlite"))
    sinks = [StdoutSink(lambda a: a.to_json().decode(), out), KafkaTopicSink(bus.publisher())]
    delivery = AlertDelivery(AlertEngine(), sinks, state)  # type: ignore[arg-type]
    await delivery.handle([hit("10.1.1.1", 0), hit("10.1.1.1", 1)])
    [line] = out.getvalue().splitlines()
    [rec] = bus.topics["kaspwatch.alerts.v1"]
    finding = json.loads(rec.value)
    doc = json.loads(line)
    assert rec.key == b"10.1.1.1"
    assert finding["class_uid"] == 2004 and finding["type_uid"] == 200401
    assert finding["finding_info"]["uid"] == doc["alert_id"] == finding["metadata"]["uid"]
    assert finding["severity_id"] == 4 and finding["device"]["ip"] == "10.1.1.1"
    assert (
        doc["host"] == "10.1.1.1"
        and doc["category"] == "update"
        and doc["stage"] == "first_contact"
    )
    assert state.delivered([doc["alert_id"]], "stdout") == {doc["alert_id"]}
    # a restart (new engine, same state) neither forgets the window nor re-sends
    again = AlertDelivery(AlertEngine(), sinks, AlertState(str(tmp_path / "state.sqlite")))  # type: ignore[arg-type]
    await again.handle([hit("10.1.1.1", 2)])
    assert len(out.getvalue().splitlines()) == 1 and len(bus.topics["kaspwatch.alerts.v1"]) == 1


async def test_read_back_keeps_a_crashed_batch_off_the_topic_the_second_time(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The crash window: the topic took a batch, the record of it was never written. The
    restart reads the topic back from the recorded marks and does not write it again."""
    from consumers.alerts.delivery import AlertDelivery
    from consumers.alerts.sinks.ocsf import KafkaTopicSink, finding_uid
    from consumers.alerts.state import AlertState

    bus = MemoryBus()
    path = str(tmp_path / "state.sqlite")
    sink = KafkaTopicSink(bus.publisher(), reader=bus.reader())
    first = AlertDelivery(AlertEngine(), [sink], AlertState(path))
    await first.handle([hit("10.1.1.1", 0)])
    assert AlertState(path).marks("kafka") == {0: 1}  # past the one record
    batch = [hit("10.1.1.2", 1), hit("10.1.1.3", 2)]
    await sink.send([a for e in batch for a in AlertEngine().feed(e)])  # accepted, no record
    assert first.stats.found == {}

    again = AlertDelivery(AlertEngine(), [sink], AlertState(path))
    await again.handle(batch)  # the batch read again after the restart
    await again.handle([hit("10.1.1.4", 3)])  # and the next one goes out as usual
    uids = [finding_uid(r.value) for r in bus.topics["kaspwatch.alerts.v1"]]
    assert len(uids) == len(set(uids)) == 4
    assert again.stats.found == {"kafka": 2} and again.stats.sent == {"kafka": 1}
    assert AlertState(path).marks("kafka") == {0: 4}


async def test_read_back_after_a_failed_send_skips_what_the_topic_took() -> None:
    """A send that failed (a timeout) although the broker wrote the records: the retry of
    the batch reads the topic back first and writes nothing twice."""
    import asyncio

    import pytest

    from consumers.alerts.delivery import AlertDelivery
    from consumers.alerts.sinks import SinkError
    from consumers.alerts.sinks.ocsf import KafkaTopicSink
    from consumers.alerts.state import AlertState

    bus = MemoryBus()
    inner = bus.publisher()

    class LostAcks:  # the broker writes every record, the answer of the last one is lost
        async def send(self, topic: str, value: bytes, key: bytes | None = None) -> asyncio.Future[object]:  # fmt: skip
            await inner.send(topic, value, key)
            fut: asyncio.Future[object] = asyncio.get_running_loop().create_future()
            if key == b"10.1.1.2":
                fut.set_exception(TimeoutError("no answer"))
            else:
                fut.set_result(bus.topics[topic][-1])
            return fut

    sink = KafkaTopicSink(LostAcks(), reader=bus.reader())  # type: ignore[arg-type]
    delivery = AlertDelivery(AlertEngine(), [sink], AlertState(None))
    batch = [hit("10.1.1.1", 0), hit("10.1.1.2", 1)]
    with pytest.raises(SinkError):
        await delivery.handle(batch)
    delivery.rollback()
    await delivery.handle(batch)  # the consume loop's retry of the batch
    assert len(bus.topics["kaspwatch.alerts.v1"]) == 2
    assert delivery.stats.found == {"kafka": 2} and delivery.stats.failures == {"kafka": 1}


def test_text_rendering_names_host_and_endpoint() -> None:
    [alert] = AlertEngine().feed(hit("10.1.1.9", 0))
    line = render_text(alert)
    assert "10.1.1.9" in line and "s01.upd.kaspersky.com" in line and "HIGH" in line


def test_sustained_contact_escalates_once() -> None:
    engine = AlertEngine(window_s=3600)
    stages = [
        [a.stage for a in engine.feed(hit("10.1.1.1", t))] for t in (0, 60, 120, 180, 240, 300, 360)
    ]
    # 5th hit at 240 s: span 4 min < 5; 6th at 300 s: 6 hits over 5 min -> sustained, once
    assert stages == [["first_contact"], [], [], [], [], ["sustained"], []]


def test_sustained_and_bypass_raise_severity_and_ot_raises_more(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from consumers.assets import load_assets

    assets = tmp_path / "assets.csv"
    assets.write_text(
        "cidr,site,zone,owner,criticality\n10.9.0.0/16,substation-3,OT,ops,critical\n"
    )
    engine = AlertEngine(assets=load_assets(str(assets)))
    ev = hit("10.9.1.1", 0, KSN, "dc1.ksn.kaspersky-labs.com")
    ev.extra["resolver_bypass"] = True
    alerts = {a.stage: a for a in engine.feed(ev)}
    assert set(alerts) == {"first_contact", "resolver_bypass"}
    assert alerts["first_contact"].severity == "critical"  # high + OT zone
    assert alerts["resolver_bypass"].severity == "critical"  # capped
    doc = alerts["first_contact"].to_dict()
    assert (doc["site"], doc["zone"], doc["criticality"]) == ("substation-3", "OT", "critical")
    assert "substation-3/OT" in doc["summary"]
    it = AlertEngine().feed(hit("10.1.1.1", 0))[0]
    assert it.severity == "high" and it.to_dict()["site"] == "unknown"


def test_one_packet_from_three_sensors_is_one_hit_in_the_window() -> None:
    """Four packets over five minutes, each reported by three sensors (the same
    packet_id, each sensor's own event id and clock): four hits, not twelve, so not yet
    ``sustained`` (five hits); the fifth packet makes it, with ``hits`` 5."""
    from dataclasses import replace

    engine = AlertEngine(window_s=3600)
    stages = []
    for n, t in enumerate((0, 100, 200, 300)):
        for i, sensor in enumerate(("edge-1", "edge-2", "edge-3")):
            ev = replace(hit("10.1.1.1", t + i / 1000), sensor=sensor, packet_id=f"{n:032x}")
            stages += [a.stage for a in engine.feed(ev)]
    assert stages == ["first_contact"]
    assert engine.repeats == 8
    alerts = engine.feed(replace(hit("10.1.1.1", 310), packet_id=f"{4:032x}"))
    assert [(a.stage, a.hits) for a in alerts] == [("sustained", 5)]
