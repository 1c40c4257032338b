"""The consume loop every consumer shares: poll, parse, handle, and only then commit.

Offsets are committed after every handler returned, so a crash replays (at-least-once)
rather than loses. A message that is not a valid event goes to the dead-letter handler
(logged with topic, partition and offset, counted, and published to the dead-letter
topic) before the batch is committed: one poison message never stalls a group. When a
handler raises, nothing is committed: handlers roll back, the subscriber rewinds to
the committed offsets and the batch is read again after a pause. A ``KnownFailure`` (a sink
that is down) was already logged by its handler in one line: the loop adds no traceback
(it is there with -v); anything else is a bug and is logged with its traceback.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from kaspwatch.bus import Publisher, Record, Subscriber
from kaspwatch.event import EventError, event_from_json

log = logging.getLogger("kaspwatch.consumers")

DeadLetter = Callable[[Record, str], Awaitable[None]]
RETRY_PAUSE_S = 2.0


class KnownFailure(Exception):
    """A handler could not finish a batch for a known reason (a receiver down) that it has
    already logged in one line: the loop retries the batch without logging it again."""


class Handler(Protocol):
    async def handle(self, events: list[Any]) -> None:
        """Do every side effect for these events; return only when they are done."""
        ...


Parsed = tuple[list[Any], list[tuple[Record, str]]]


def parse_with(parse: Callable[[bytes], Any]) -> Callable[[list[Record]], Parsed]:
    """A batch parser: what ``parse`` accepts, and the rest with the reason."""

    def parse_batch(records: list[Record]) -> Parsed:
        good, invalid = [], []
        for rec in records:
            try:
                good.append(parse(rec.value))
            except EventError as exc:
                invalid.append((rec, str(exc)))
        return good, invalid

    return parse_batch


parse_records = parse_with(event_from_json)


class DeadLetters:
    """Poison messages: logged, counted, and (with a publisher) kept on a dead-letter topic
    as a JSON envelope with the reason and the original bytes, base64."""

    def __init__(self, counter: Any, publisher: Publisher | None = None, topic: str = "") -> None:
        self.counter = counter
        self.publisher = publisher
        self.topic = topic

    async def __call__(self, rec: Record, reason: str) -> None:
        self.counter.inc()
        log.error("dead letter %s[%d]@%d: %s", rec.topic, rec.partition, rec.offset, reason)
        if self.publisher is None:
            return
        envelope = {
            "reason": reason,
            "topic": rec.topic,
            "partition": rec.partition,
            "offset": rec.offset,
            "key": base64.b64encode(rec.key).decode() if rec.key is not None else None,
            "value": base64.b64encode(rec.value).decode(),
        }
        fut = await self.publisher.send(self.topic, json.dumps(envelope).encode(), rec.key)
        await fut


async def consume(
    sub: Subscriber,
    handlers: list[Handler],
    stop: asyncio.Event,
    dead_letter: DeadLetter,
    finished: Callable[[], bool] | None = None,
    parse: Callable[[list[Record]], Parsed] = parse_records,
) -> None:
    """Run until ``stop`` is set, or, with ``finished``, once it says the producers are
    done and nothing is left to read (the embedded mode's end of a capture)."""
    while not stop.is_set():
        done = finished is not None and finished()
        records = await sub.poll(timeout=0.2)
        if not records:
            if done and await sub.lag() == 0:
                return
            continue
        events, invalid = parse(records)
        try:
            for rec, reason in invalid:
                await dead_letter(rec, reason)
            for handler in handlers:
                await handler.handle(events)
        except Exception as exc:
            if isinstance(exc, KnownFailure):
                log.debug("batch failed; nothing committed, retrying in %.0f s", RETRY_PAUSE_S)
            else:
                log.exception("batch failed; nothing committed, retrying in %.0f s", RETRY_PAUSE_S)
            for handler in handlers:
                rollback = getattr(handler, "rollback", None)
                if rollback is not None:
                    rollback()
            await sub.rewind()
            await asyncio.sleep(RETRY_PAUSE_S)
            continue
        await sub.commit()
