"""Consumers started before the topic exists see the first hits within seconds.

README's "Running against Kafka by hand" starts the consumers first, then ``sense``: on a
fresh broker the hits topic does not exist yet when they subscribe. aiokafka refreshes its
metadata every 5 minutes, so without the subscriber asking again they stayed blind that long.
"""

from __future__ import annotations

import time
import uuid

import pytest

from kaspwatch.bus import Record, Replay, open_publisher, open_subscriber

pytestmark = pytest.mark.kafka


async def _first_records(sub: object, deadline_s: float) -> list[Record]:
    got: list[Record] = []
    deadline = time.monotonic() + deadline_s
    while not got and time.monotonic() < deadline:
        got = await sub.poll(timeout=0.5)  # type: ignore[attr-defined]
    return got


@pytest.mark.parametrize("replay", [None, Replay(from_beginning=True)], ids=["group", "replay"])
async def test_subscriber_started_before_the_topic_exists_gets_the_first_hit(
    kafka_bootstrap: str, replay: Replay | None
) -> None:
    run = uuid.uuid4().hex[:10]
    topic = f"late-hits-{run}"
    bus = f"kafka://{kafka_bootstrap}"
    sub = open_subscriber(bus, [topic], f"late-{run}", replay=replay)
    await sub.start()  # nothing has created the topic yet
    try:
        await sub.poll(timeout=0.5)  # the group joins and finds no such topic
        pub = open_publisher(bus)
        await pub.start()
        try:
            await pub.prepare([topic])  # what ``sense`` does before its first packet
            await (await pub.send(topic, b'{"first": true}', b"host"))
        finally:
            await pub.stop()
        got = await _first_records(sub, 15.0)
        assert [r.value for r in got] == [b'{"first": true}']
    finally:
        await sub.stop()
