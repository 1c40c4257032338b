"""Property tests (hypothesis) of the consumers against hostile bus records (issue 21).

A record is a valid hit with any of its fields replaced by hostile values (huge or empty
strings, control characters, wrong types, times at the ends of the calendar, forged
addresses, unknown fields), or arbitrary bytes. ``event_from_json`` either accepts it or
raises ``EventError``; whatever it accepts, every consumer's handler (the alerts engine
and delivery's renderings, the metrics, the store's rollup) takes without raising, and the
consume loop over all of them finishes: nothing escapes, nothing stalls.
``HYPOTHESIS_PROFILE=fuzz .venv/bin/pytest --timeout=0 tests/test_hostile_properties.py``
runs 20,000 examples per test (profiles in conftest.py).
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumers.alerts.engine import AlertEngine, render_text
from consumers.alerts.sinks.alertmanager import to_am
from consumers.alerts.sinks.syslog import cef, rfc5424
from consumers.loop import consume
from consumers.metrics import HitMetrics
from consumers.store import open_store
from consumers.store.store import Store
from kaspwatch.bus import Record
from kaspwatch.bus.memory import MemoryBus
from kaspwatch.event import Event, EventError, event_from_json
from tests.factories import hit

BASE: dict[str, Any] = json.loads(hit("10.0.0.1", 0).to_json())
TIMES = st.sampled_from([
    "9999-12-31T23:59:59.999999Z", "0001-01-01T00:00:00.000000Z", "1990-01-01T00:00:00.000000Z",
    "1989-12-31T23:59:59.999999Z", "2026-02-30T00:00:00.000000Z", "2025-06-15T00:00:00.1Z",
]) | st.datetimes().map(lambda d: d.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))  # fmt: skip
TEXT = (
    st.text(max_size=40)
    | st.text(alphabet=st.characters(max_codepoint=0x20), max_size=10)
    | st.sampled_from(["", "a" * 256, "x" * 70_000, "\x00", "\u202e", "=cmd|x", "10.0.0.300"])
)
HOSTILE = (
    TEXT | TIMES | st.integers() | st.floats() | st.booleans() | st.none()
    | st.lists(st.text(max_size=5) | st.integers(), max_size=300)
    | st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3)
    | st.sampled_from(["::1", "fe80::1%eth0", "8.8.8.8", "10.0.0.1", "kaspersky.com"])
)  # fmt: skip
INDICATOR = st.fixed_dictionaries(
    {},
    optional={
        k: TEXT | st.sampled_from(["critical", "activation", "exact", "high", "canary"])
        for k in ("id", "pattern", "match", "category", "severity", "confidence")
    },
)


@st.composite
def hostile_record(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=200))
    doc = dict(BASE)
    for key in draw(st.lists(st.sampled_from([*BASE, "extra", "answers", "query"]), max_size=4)):
        doc[key] = draw(INDICATOR if key == "indicator" else HOSTILE)
    doc["indicator"] = (
        {**BASE["indicator"], **draw(INDICATOR)} if draw(st.booleans()) else doc["indicator"]
    )
    return json.dumps(doc).encode()


@pytest.fixture(scope="module")
def store() -> Iterator[Store]:
    with tempfile.TemporaryDirectory() as tmp:
        s = open_store(f"sqlite:///{Path(tmp) / 'p.sqlite'}")
        yield s
        s.close()


@given(hostile_record())
def test_event_from_json_accepts_or_says_why(raw: bytes) -> None:
    try:
        ev = event_from_json(raw)
    except EventError as exc:
        assert len(str(exc)) < 500
        return
    assert isinstance(ev, Event) and len(ev.name) <= 255


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(raws=st.lists(hostile_record(), min_size=1, max_size=6))
def test_no_handler_exception_escapes_and_nothing_stalls(raws: list[bytes], store: Store) -> None:
    events = []
    for raw in raws:
        try:
            events.append(event_from_json(raw))
        except EventError:
            continue
    engine = AlertEngine()
    for ev in events:
        for alert in engine.feed(ev):
            render_text(alert), rfc5424(alert, "h"), cef(alert), to_am(alert, 0.0)
            assert len(alert.to_json()) < 16_384  # an alert never nears the broker's 1 MB
    asyncio.run(HitMetrics().handle(events))
    store.ingest(events)

    async def loop() -> list[tuple[Record, str]]:
        bus = MemoryBus()
        for raw in raws:
            bus.append("hits", None, raw)
        dead: list[tuple[Record, str]] = []

        async def dead_letter(rec: Record, why: str) -> None:
            dead.append((rec, why))

        class Engine:
            def __init__(self) -> None:
                self.engine = AlertEngine()

            async def handle(self, evs: list[Event]) -> None:
                for ev in evs:
                    self.engine.feed(ev)

        sub = bus.subscriber(["hits"], "g")
        await sub.start()
        handlers = [Engine(), HitMetrics(), store]
        await asyncio.wait_for(
            consume(sub, handlers, asyncio.Event(), dead_letter, lambda: True), 30
        )
        assert bus.committed[("g", "hits")] == len(raws)  # everything read, nothing stuck
        return dead

    dead = asyncio.run(loop())
    assert len(dead) == len(raws) - len(events)
