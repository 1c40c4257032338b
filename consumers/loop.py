"""The consume loop every consumer shares: poll, parse, handle, and only then commit.

Offsets are committed after the handler returns, so a crash replays (at-least-once)
rather than loses. A message that is not a valid event is logged with its topic,
partition and offset, counted, and skipped: one poison message never stalls a group.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from kaspwatch.bus import Record, Subscriber
from kaspwatch.event import Event, EventError, event_from_json

log = logging.getLogger("kaspwatch.consumers")


class Handler(Protocol):
    async def handle(self, events: list[Event]) -> None:
        """Do every side effect for these events; return only when they are done."""
        ...


def parse_records(records: list[Record], on_invalid: Callable[[Record, str], None]) -> list[Event]:
    events = []
    for rec in records:
        try:
            events.append(event_from_json(rec.value))
        except EventError as exc:
            on_invalid(rec, str(exc))
    return events


def log_invalid(rec: Record) -> str:
    return f"{rec.topic}[{rec.partition}]@{rec.offset}"


async def consume(
    sub: Subscriber,
    handlers: list[Handler],
    stop: asyncio.Event,
    on_invalid: Callable[[Record, str], None],
    finished: Callable[[], bool] | None = None,
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
        events = parse_records(records, on_invalid)
        for handler in handlers:
            await handler.handle(events)
        await sub.commit()
