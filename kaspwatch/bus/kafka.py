"""Kafka transport (aiokafka): idempotent acks=all producer; consumer groups with manual commits.

Every client connects with the same ``KafkaSecurity`` (TLS, SASL; kaspwatch/bus/security.py);
a client that cannot start says why in one line (wrong password, untrusted certificate ...).
The aiokafka clients are made in ``start`` and closed when it fails, so a command that stops
before starting them, or cannot connect, leaves no "Unclosed AIOKafka..." behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from kaspwatch.bus import (
    BusError,
    BusUnreachable,
    CommitFailed,
    GroupSettings,
    Partition,
    PartitionListener,
    Record,
)
from kaspwatch.bus.security import PLAINTEXT, KafkaSecurity, explain_connect_failure


class _ConnectErrors(logging.Filter):
    """While a client starts: takes aiokafka's "Unable connect to ..." / "Unable to request
    metadata from ..." records (their reason goes into the one-line error, not a second raw
    line on stderr) and drops anything below the level the logger had."""

    CAUGHT = ("Unable connect to", "Unable to request metadata from")

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level
        self.seen: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith(self.CAUGHT):
            args = record.args
            if isinstance(args, tuple) and args:
                self.seen.append(str(args[-1]) or type(args[-1]).__name__)
            else:
                self.seen.append(record.getMessage())
            return False
        return record.levelno >= self.level


_starting: list[tuple[int, int]] = []  # (own, effective) level of aiokafka's logger before


@contextlib.contextmanager
def _connect_errors() -> Iterator[_ConnectErrors]:
    logger = logging.getLogger("aiokafka")
    own, effective = _starting[0] if _starting else (logger.level, logger.getEffectiveLevel())
    errors = _ConnectErrors(effective)
    _starting.append((own, effective))
    logger.addFilter(errors)
    logger.setLevel(min(effective, logging.WARNING))  # the metadata failure is a warning
    try:
        yield errors
    finally:
        logger.removeFilter(errors)
        _starting.pop()
        if not _starting:  # clients starting side by side: the last one restores the level
            logger.setLevel(own)


async def start_client(
    bootstrap: str,
    security: KafkaSecurity,
    start: Callable[[], Awaitable[Any]],
    stop: Callable[[], Awaitable[Any]],
) -> None:
    """Start an aiokafka client; on failure stop it (whatever the failure, so nothing is left
    unclosed) and raise a ``BusError`` that says why."""
    with _connect_errors() as errors:
        try:
            await start()
        except (KafkaError, OSError) as exc:
            await stop()
            why, unreachable = explain_connect_failure(bootstrap, security, errors.seen, exc)
            raise (BusUnreachable if unreachable else BusError)(why) from None
        except BaseException:
            with contextlib.suppress(Exception):
                await stop()
            raise


TOPIC_CHECK_S = 1.0  # how often a subscriber asks again for a topic that does not exist yet
log = logging.getLogger("kaspwatch.bus")
_awaited: set[str] = set()  # topics some subscriber here waits for: their errors are ours


class _AwaitedTopics(logging.Filter):
    """Drops aiokafka's ERROR "Topic X not found" (once a second while we wait) for a topic a
    subscriber waits for; the subscriber says it once, and again when the topic appears."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        return not (
            record.msg == "Topic %s not found in cluster metadata"
            and isinstance(args, tuple)
            and args
            and args[0] in _awaited
        )


logging.getLogger("aiokafka.cluster").addFilter(_AwaitedTopics())


class KafkaPublisher:
    def __init__(
        self,
        bootstrap: str,
        client_id: str,
        security: KafkaSecurity = PLAINTEXT,
        delivery_timeout: float | None = None,
    ) -> None:
        """``delivery_timeout`` (seconds) makes every send fail after that long without an
        acknowledgement, instead of retrying for ever: what a spooling sensor needs to notice
        an outage (aiokafka's idempotent producer never gives up, so it is off then; ordering
        holds with one request in flight, and consumers drop a retry's duplicate by event_id)."""
        self.bootstrap = bootstrap
        self.security = security
        self._client: AIOKafkaProducer | None = None
        self._make = functools.partial(
            AIOKafkaProducer,
            bootstrap_servers=bootstrap,
            client_id=client_id,
            **security.client_kwargs(),
            acks="all",
            enable_idempotence=delivery_timeout is None,
            compression_type="gzip",
            linger_ms=5,
            request_timeout_ms=30_000 if delivery_timeout is None else int(delivery_timeout * 1000),
            max_batch_size=16_384 if delivery_timeout is None else 1 << 20,
        )

    @property
    def _producer(self) -> AIOKafkaProducer:
        if self._client is None:
            raise BusError(f"kafka {self.bootstrap}: publisher used before start()")
        return self._client

    async def start(self) -> None:
        self._client = self._make()
        await start_client(self.bootstrap, self.security, self._client.start, self._client.stop)

    async def prepare(self, topics: list[str], timeout_s: float = 30.0) -> None:
        """Wait until every partition of these topics has a leader (creating a topic the
        broker auto-creates). Producing into a partition whose leader the client has not
        learnt yet can fail a batch; waiting here before the first packet avoids it."""
        client = self._producer.client
        deadline = asyncio.get_running_loop().time() + timeout_s
        for topic in topics:
            while True:
                try:
                    parts = await self._producer.partitions_for(topic)
                except KafkaError as exc:
                    parts, last = set(), exc
                else:
                    last = None
                leaders = [
                    client.cluster.leader_for_partition(TopicPartition(topic, p)) for p in parts
                ]
                if parts and all(leader is not None and leader >= 0 for leader in leaders):
                    break
                if asyncio.get_running_loop().time() > deadline:
                    raise BusError(
                        f"kafka {self.bootstrap}: topic {topic} has no leader for every partition ({last})"
                    )
                await client.force_metadata_update()
                await asyncio.sleep(0.1)

    async def send(
        self, topic: str, value: bytes, key: bytes | None = None, partition: int | None = None
    ) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = await self._producer.send(
            topic, value=value, key=key, partition=partition
        )
        return fut

    async def flush(self) -> None:
        await self._producer.flush()

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.stop()


DRAIN_S = 60.0  # how long a revocation waits for the batch in flight to be committed


def _named(parts: list[Partition]) -> str:
    """``hits[0,3,5]`` for a log line: the partitions of each topic."""
    by_topic: dict[str, list[int]] = {}
    for topic, p in sorted(parts):
        by_topic.setdefault(topic, []).append(p)
    return " ".join(f"{t}[{','.join(map(str, ps))}]" for t, ps in by_topic.items()) or "none"


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: KafkaSubscriber) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self.owner._on_revoked(sorted((tp.topic, tp.partition) for tp in revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self.owner._on_assigned(sorted((tp.topic, tp.partition) for tp in assigned))


class KafkaSubscriber:
    """A consumer group member. On a rebalance it logs one INFO line per revocation and per
    assignment naming the partitions; a revocation first waits (up to ``DRAIN_S``) for the
    batch ``poll`` returned to be committed or rewound, then tells the listeners (they
    flush state); an assignment tells them before ``poll`` returns any record of it."""

    def __init__(
        self,
        bootstrap: str,
        topics: list[str],
        group: str,
        client_id: str,
        security: KafkaSecurity = PLAINTEXT,
        settings: GroupSettings | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.group = group
        self.security = security
        self._unknown = set(topics)  # subscribed topics not seen in the metadata yet
        self._said: set[str] = set()  # of those, the ones we said we are waiting for
        self._next_check = 0.0
        self._client: AIOKafkaConsumer | None = None
        self._listeners: list[PartitionListener] = []
        self._idle = asyncio.Event()  # no batch in flight (set), or one being handled
        self._idle.set()
        self._ready = asyncio.Event()  # no rebalance under way
        self._ready.set()
        self._rebalances = 0  # revocations so far: a poll that spans one drops its records
        self._revoked_at: float | None = None
        self._failure: BaseException | None = None  # a listener failed: poll raises it
        self._make = functools.partial(
            AIOKafkaConsumer,
            bootstrap_servers=bootstrap,
            **security.client_kwargs(),
            group_id=group,
            client_id=client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **(settings or GroupSettings()).consumer_kwargs(),
        )

    def listen(self, listener: PartitionListener) -> None:
        self._listeners.append(listener)

    async def _assigned(self, parts: list[TopicPartition]) -> None:
        """Subclasses that position new partitions override this."""
        return None

    async def _on_revoked(self, parts: list[Partition]) -> None:
        self._ready.clear()
        self._rebalances += 1
        loop = asyncio.get_running_loop()
        began = self._revoked_at = loop.time()
        drained = True
        try:
            await asyncio.wait_for(self._idle.wait(), DRAIN_S)
        except TimeoutError:
            drained = False
        drain = loop.time() - began
        notes = []
        try:
            for listener in self._listeners:
                notes.append(await listener.revoked(parts))
        except Exception as exc:
            self._failure = exc
            log.exception("kafka group %s: flushing revoked partitions failed", self.group)
        if parts:
            log.info(
                "kafka group %s: rebalance: revoked %s (%s in %.2f s)%s",
                self.group,
                _named(parts),
                "batch in flight finished" if drained else "batch in flight abandoned",
                drain,
                "".join(f"; {n}" for n in notes if n),
            )

    async def _on_assigned(self, parts: list[Partition]) -> None:
        loop = asyncio.get_running_loop()
        notes = []
        try:
            await self._assigned([TopicPartition(t, p) for t, p in parts])
            for listener in self._listeners:
                notes.append(await listener.assigned(parts))
        except Exception as exc:
            self._failure = exc
            log.exception("kafka group %s: taking over %s failed", self.group, _named(parts))
        finally:
            began, self._revoked_at = self._revoked_at, None
            pause = f", paused {loop.time() - began:.2f} s since the revocation" if began else ""
            log.info("kafka group %s: rebalance: assigned %s%s%s", self.group, _named(parts),
                     pause, "".join(f"; {n}" for n in notes if n))  # fmt: skip
            self._ready.set()

    def _rebalance_listener(self) -> Any:
        return _Listener(self)

    @property
    def _consumer(self) -> AIOKafkaConsumer:
        if self._client is None:
            raise BusError(f"kafka {self.bootstrap}: subscriber used before start()")
        return self._client

    async def start(self) -> None:
        self._client = self._make()
        await start_client(self.bootstrap, self.security, self._client.start, self._client.stop)
        self._consumer.subscribe(self.topics, listener=self._rebalance_listener())

    async def _await_topics(self) -> None:
        """A topic subscribed before anything created it (consumers started before the
        sensor, on a fresh broker): ask the broker again every ``TOPIC_CHECK_S`` until it
        exists; aiokafka alone asks every 5 minutes, and reads nothing until then."""
        now = asyncio.get_running_loop().time()
        if now < self._next_check:
            return
        self._next_check = now + TOPIC_CHECK_S
        _awaited.update(self._unknown)
        missing = {t for t in self._unknown if not self._consumer.partitions_for_topic(t)}
        if missing:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._consumer._client.force_metadata_update(), 5.0)
            missing = {t for t in missing if not self._consumer.partitions_for_topic(t)}
        for topic in sorted(missing - self._said):
            log.info(
                "kafka %s: topic %s does not exist yet; reading it as soon as it does",
                self.bootstrap,
                topic,
            )
        for topic in sorted(self._said & (self._unknown - missing)):
            log.info("kafka %s: topic %s exists now", self.bootstrap, topic)
        _awaited.difference_update(self._unknown - missing)
        self._said |= missing
        self._unknown = missing

    async def poll(self, timeout: float = 1.0, max_records: int = 500) -> list[Record]:
        """Records of partitions whose listeners are done; none while a rebalance is under
        way (records fetched across one are put back: their partition may have moved)."""
        self._raise_failure()
        if self._unknown:
            await self._await_topics()
        if not self._ready.is_set():  # bounded: the caller checks for a stop in between
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), timeout)
            return []
        before = self._rebalances
        batches = await self._consumer.getmany(
            timeout_ms=int(timeout * 1000), max_records=max_records
        )
        if self._rebalances != before or not self._ready.is_set():
            # fetched under the old assignment: a new one starts from the commits anyway
            owned = self._consumer.assignment()
            for tp, msgs in batches.items():
                if msgs and tp in owned:
                    with contextlib.suppress(KafkaError, AssertionError):
                        self._consumer.seek(tp, msgs[0].offset)
            return []
        out = [
            Record(m.topic, m.partition, m.offset, m.key, m.value)
            for msgs in batches.values()
            for m in msgs
        ]
        if out:
            self._idle.clear()  # a batch in flight until commit or rewind
        return out

    def _raise_failure(self) -> None:
        if self._failure is not None:
            exc, self._failure = self._failure, None
            raise BusError(f"kafka group {self.group}: rebalance listener failed: {exc}") from exc

    async def commit(self) -> None:
        try:
            await self._consumer.commit()
        except CommitFailedError as exc:
            raise CommitFailed(
                f"kafka group {self.group}: commit refused, the group rebalanced ({exc})"
            ) from exc
        finally:
            self._idle.set()

    async def lag(self) -> int:
        parts = self._consumer.assignment()
        if not parts:
            return 0
        ends = await self._consumer.end_offsets(list(parts))
        total = 0
        for tp in parts:
            committed = await self._consumer.committed(tp)
            total += ends[tp] - (committed or 0)
        return total

    async def rewind(self) -> None:
        """Back to the commits; after a rebalance took partitions (a refused commit) there
        is nothing to rewind: a new assignment starts every partition at its commit."""
        try:
            await self._consumer.seek_to_committed()
        except IllegalStateError:
            log.debug("kafka group %s: rewind: the assignment changed meanwhile", self.group)
        finally:
            self._idle.set()

    async def stop(self) -> None:
        """Leaving the group: the listeners give up the partitions first (a graceful
        scale-in: the others take them at once, without waiting for a session timeout)."""
        if self._client is None:
            return
        owned = sorted((tp.topic, tp.partition) for tp in self._client.assignment())
        try:
            if owned and self._listeners:
                notes = [await listener.revoked(owned) for listener in self._listeners]
                log.info("kafka group %s: leaving, gave up %s%s", self.group, _named(owned),
                         "".join(f"; {n}" for n in notes if n))  # fmt: skip
        finally:
            await self._client.stop()
