"""The consume loop every consumer shares: poll, parse, handle, and only then commit.

Offsets are committed after every handler returned, so a crash replays (at-least-once)
rather than loses. A message that is not a valid event goes to the dead-letter handler
(logged with topic, partition and offset, counted, and published to the dead-letter
topic) before the batch is committed: one poison message never stalls a group.

When a handler raises an error that a record can cause (``EVENT_FAULTS``: a value, type,
lookup, arithmetic or assertion error), the handlers roll back and handle the batch again
one event at a time: the event that raises again goes to the dead-letter handler with the
reason, the others are handled, and the batch is committed. Any other failure (a sink or
a database that is down) commits nothing: handlers roll back, the subscriber rewinds to
the committed offsets and the batch is read again after a pause. A ``KnownFailure`` (a sink
that is down) was already logged by its handler in one line: the loop adds no traceback
(it is there with -v); anything else is logged with its traceback.

A commit the group refuses because it rebalanced meanwhile (``CommitFailed``: another
instance joined or left) is not fatal: the handlers roll back, the subscriber rewinds to
what is committed, and the partitions' new owner reads the batch again.

A handler that keeps state per partition (``Located``) gets each event with its record
(topic, partition, offset) through ``handle_located`` instead of ``handle``.

``ConsumerHealth`` makes a stall visible: failed batches and dead-lettered events are
counted, and the time of the last progress (a commit, or a poll that found nothing to do)
is a gauge the ``KaspwatchConsumerStalled`` rule watches.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge

from kaspwatch.bus import CommitFailed, Publisher, Record, Subscriber
from kaspwatch.event import EventError, event_from_json

log = logging.getLogger("kaspwatch.consumers")

DeadLetter = Callable[[Record, str], Awaitable[None]]
RETRY_PAUSE_S = 2.0
# Errors a record can cause in a handler: that record is dead-lettered, the batch goes on.
EVENT_FAULTS: Final = (
    ArithmeticError, AssertionError, AttributeError, LookupError, RecursionError, TypeError,
    ValueError,
)  # fmt: skip
# The dead-letter envelope stays well under Kafka's default 1 MB message limit: the
# original bytes past this are cut (base64 grows them by a third), the reason too.
DEAD_LETTER_KEEP: Final = 256 * 1024
REASON_KEEP: Final = 1000
KEY_KEEP: Final = 1024  # keys are hosts


class KnownFailure(Exception):
    """A handler could not finish a batch for a known reason (a receiver down) that it has
    already logged in one line: the loop retries the batch without logging it again."""


class Handler(Protocol):
    async def handle(self, events: list[Any]) -> None:
        """Do every side effect for these events; return only when they are done."""
        ...


Parsed = tuple[list[tuple[Record, Any]], list[tuple[Record, str]]]


async def _handle(handler: Handler, parsed: list[tuple[Record, Any]]) -> None:
    """``handle_located`` (events with their records) when the handler has it."""
    located = getattr(handler, "handle_located", None)
    if located is not None:
        await located(parsed)
    else:
        await handler.handle([event for _, event in parsed])


def parse_with(
    parse: Callable[[bytes], Any], by_topic: dict[str, Callable[[bytes], Any]] | None = None
) -> Callable[[list[Record]], Parsed]:
    """A batch parser: what ``parse`` accepts (with its record), and the rest with the
    reason. ``by_topic``: another parser for the records of those topics (a subscriber of
    hits and identities)."""
    other = by_topic or {}

    def parse_batch(records: list[Record]) -> Parsed:
        good, invalid = [], []
        for rec in records:
            try:
                good.append((rec, other.get(rec.topic, parse)(rec.value)))
            except EventError as exc:
                invalid.append((rec, str(exc)))
            except EVENT_FAULTS as exc:  # a parser bug a record triggers: that record only
                invalid.append((rec, f"parser failed: {type(exc).__name__}: {str(exc)[:300]}"))
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
        fut = await self.publisher.send(self.topic, envelope(rec, reason), rec.key)
        await fut


def envelope(rec: Record, reason: str) -> bytes:
    """The dead-letter record: bounded whatever the original's size (``truncated`` and
    ``size`` say when the value was cut), so it always fits the broker's message limit."""
    key = rec.key[:KEY_KEEP] if rec.key is not None else None
    doc: dict[str, Any] = {
        "reason": reason[:REASON_KEEP],
        "topic": rec.topic,
        "partition": rec.partition,
        "offset": rec.offset,
        "key": base64.b64encode(key).decode() if key is not None else None,
        "value": base64.b64encode(rec.value[:DEAD_LETTER_KEEP]).decode(),
    }
    if len(rec.value) > DEAD_LETTER_KEEP or (rec.key is not None and key != rec.key):
        doc["truncated"] = True
        doc["size"] = len(rec.value)
    return json.dumps(doc).encode()


class ConsumerHealth:
    """A consumer's progress as metrics, labelled by consumer group: ``group`` gives one
    group's children (several consumers may share one registry)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._batches = Counter(
            "kaspwatch_consumer_batch_failures",
            "Batches a handler failed on and that will be read again (nothing committed).",
            ["group"],
            registry=registry,
        )
        self._events = Counter(
            "kaspwatch_consumer_handler_failures",
            "Events a handler raised on: dead-lettered with the reason, the batch went on.",
            ["group"],
            registry=registry,
        )
        self._progress = Gauge(
            "kaspwatch_consumer_last_progress_timestamp_seconds",
            "When the consumer last committed a batch or found nothing to read.",
            ["group"],
            registry=registry,
        )

    def group(self, name: str) -> GroupHealth:
        health = GroupHealth(
            self._batches.labels(name), self._events.labels(name), self._progress.labels(name)
        )
        health.progress.set(time.time())
        return health


class GroupHealth:
    def __init__(self, batch_failures: Any, handler_failures: Any, progress: Any) -> None:
        self.batch_failures = batch_failures
        self.handler_failures = handler_failures
        self.progress = progress


async def _handle_each(
    handlers: list[Handler],
    parsed: list[tuple[Record, Any]],
    dead_letter: DeadLetter,
    health: GroupHealth | None,
) -> None:
    """After an ``EVENT_FAULTS`` error: the batch again, one event at a time."""
    _rollback(handlers)
    for rec, event in parsed:
        try:
            for handler in handlers:
                await _handle(handler, [(rec, event)])
        except EVENT_FAULTS as exc:
            _rollback(handlers)
            if health is not None:
                health.handler_failures.inc()
            log.debug("handler failed on %s[%d]@%d", rec.topic, rec.partition, rec.offset,
                      exc_info=True)  # fmt: skip
            await dead_letter(rec, f"handler failed: {type(exc).__name__}: {str(exc)[:300]}")


def _rollback(handlers: list[Handler]) -> None:
    for handler in handlers:
        rollback = getattr(handler, "rollback", None)
        if rollback is not None:
            rollback()


async def consume(
    sub: Subscriber,
    handlers: list[Handler],
    stop: asyncio.Event,
    dead_letter: DeadLetter,
    finished: Callable[[], bool] | None = None,
    parse: Callable[[list[Record]], Parsed] = parse_records,
    health: GroupHealth | None = None,
) -> None:
    """Run until ``stop`` is set, or, with ``finished``, once it says the producers are
    done and nothing is left to read (the embedded mode's end of a capture)."""
    while not stop.is_set():
        done = finished is not None and finished()
        records = await sub.poll(timeout=0.2)
        if not records:
            if health is not None:
                health.progress.set(time.time())
            if done and await sub.lag() == 0:
                return
            continue
        parsed, invalid = parse(records)
        try:
            for rec, reason in invalid:
                await dead_letter(rec, reason)
            try:
                for handler in handlers:
                    await _handle(handler, parsed)
            except EVENT_FAULTS:
                log.warning("a handler failed on the batch: handling it one event at a time",
                            exc_info=True)  # fmt: skip
                await _handle_each(handlers, parsed, dead_letter, health)
        except Exception as exc:
            if health is not None:
                health.batch_failures.inc()
            if isinstance(exc, KnownFailure):
                log.debug("batch failed; nothing committed, retrying in %.0f s", RETRY_PAUSE_S)
            else:
                log.exception("batch failed; nothing committed, retrying in %.0f s", RETRY_PAUSE_S)
            _rollback(handlers)
            await sub.rewind()
            with contextlib.suppress(TimeoutError):  # a stop ends the pause
                await asyncio.wait_for(stop.wait(), RETRY_PAUSE_S)
            continue
        try:
            await sub.commit()
        except CommitFailed as exc:
            log.warning("%s; the batch is read again by the partitions' owner", exc)
            _rollback(handlers)
            await sub.rewind()
            continue
        if health is not None:
            health.progress.set(time.time())
