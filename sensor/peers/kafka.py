"""EVE (or Zeek JSON) from a Kafka topic: ``kafka://HOST:PORT[,HOST:PORT]/TOPIC``.

Suricata deployments often ship EVE to Kafka (its Kafka output plugin, Filebeat, Vector,
Logstash). The topic is read with the project's bus subscriber (``open_subscriber``) in a
thread of its own running its own event loop, handing each polled batch over a
one-batch queue; a message may hold one line or several. ``follow=False`` (``scan``)
reads the topic from its beginning in a group of its own and ends once caught up;
``follow=True`` (``sense`` and ``run``, always for a topic) reads in the group
``kaspwatch-peers-SENSOR`` from its committed offsets (the beginning the first time)
until stopped. Offsets are committed
once a batch has been handed to the sensor: a crash in between may read up to one batch
again (the events keep their ids, so consumers deduplicate them).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import uuid
from collections.abc import Iterator
from typing import Final

from kaspwatch.bus import BusError, Record, Replay, open_subscriber, parse_bus_url
from kaspwatch.bus.security import KafkaSecurity
from sensor.peers.follow import Line
from sensor.sources.base import CaptureError

_END: Final = object()


def split_kafka_url(url: str) -> tuple[str, str]:
    """``kafka://h:p,h2:p/topic`` -> (``kafka://h:p,h2:p``, ``topic``); CaptureError if not."""
    rest = url.removeprefix("kafka://")
    hosts, sep, topic = rest.partition("/")
    topic = topic.strip("/")
    if not sep or not topic or "/" in topic:
        raise CaptureError(f"{url}: expected kafka://HOST:PORT[,HOST:PORT]/TOPIC")
    try:
        parse_bus_url(f"kafka://{hosts}")
    except BusError as exc:
        raise CaptureError(f"{url}: {exc}") from None
    return f"kafka://{hosts}", topic


class KafkaLines:
    """The topic's messages as lines (``Line``: "topic[partition]", offset, text), ``None``
    while it is quiet."""

    def __init__(
        self,
        url: str,
        follow: bool,
        group: str | None = None,
        security: KafkaSecurity | None = None,
        poll_s: float = 1.0,
    ) -> None:
        self.bus, self.topic = split_kafka_url(url)
        self.url = url
        self.follow = follow
        self.group = group or f"kaspwatch-scan-{uuid.uuid4().hex[:12]}"
        self.security = security
        self.poll_s = poll_s
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def __iter__(self) -> Iterator[Line | None]:
        handoff: queue.Queue[object] = queue.Queue(maxsize=1)
        pump = threading.Thread(
            target=lambda: asyncio.run(self._pump(handoff)), name="kafka-peer", daemon=True
        )
        pump.start()
        try:
            while True:
                item = handoff.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise CaptureError(f"{self.url}: {item}") from None
                if item is None:
                    yield None
                    continue
                assert isinstance(item, list)
                for rec in item:
                    where = f"{rec.topic}[{rec.partition}]"
                    for line in rec.value.splitlines():
                        yield where, rec.offset, line
        finally:
            self._stop.set()
            while pump.is_alive():  # let it leave the group cleanly
                with contextlib.suppress(queue.Empty):
                    handoff.get(timeout=0.1)
            pump.join()

    async def _pump(self, handoff: queue.Queue[object]) -> None:
        def put(item: object) -> None:
            while True:
                try:
                    handoff.put(item, timeout=0.2)
                    return
                except queue.Full:
                    if self._stop.is_set() and item is not _END:
                        return

        try:
            sub = open_subscriber(
                self.bus,
                [self.topic],
                self.group,
                client_id="kaspwatch-peers",
                security=self.security,
                replay=None if self.follow else Replay(from_beginning=True),
            )
            await sub.start()
        except Exception as exc:
            put(exc)
            put(_END)
            return
        try:
            while not self._stop.is_set():
                records: list[Record] = await sub.poll(self.poll_s)
                if records:
                    await asyncio.to_thread(put, records)
                    await sub.commit()
                elif not self.follow and await sub.lag() == 0:
                    break
                else:
                    await asyncio.to_thread(put, None)
        except Exception as exc:
            put(exc)
        finally:
            await sub.stop()
            put(_END)
