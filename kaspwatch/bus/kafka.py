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

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from kaspwatch.bus import BusError, BusUnreachable, GroupSettings, Record
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

    async def send(self, topic: str, value: bytes, key: bytes | None = None) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = await self._producer.send(topic, value=value, key=key)
        return fut

    async def flush(self) -> None:
        await self._producer.flush()

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.stop()


class KafkaSubscriber:
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

    def _rebalance_listener(self) -> Any:
        """Called on partition assignment; subclasses that position partitions override."""
        return None

    @property
    def _consumer(self) -> AIOKafkaConsumer:
        if self._client is None:
            raise BusError(f"kafka {self.bootstrap}: subscriber used before start()")
        return self._client

    async def start(self) -> None:
        self._client = self._make()
        await start_client(self.bootstrap, self.security, self._client.start, self._client.stop)
        listener = self._rebalance_listener()
        if listener is None:
            self._consumer.subscribe(self.topics)
        else:
            self._consumer.subscribe(self.topics, listener=listener)

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
        if self._unknown:
            await self._await_topics()
        batches = await self._consumer.getmany(
            timeout_ms=int(timeout * 1000), max_records=max_records
        )
        return [
            Record(m.topic, m.partition, m.offset, m.key, m.value)
            for msgs in batches.values()
            for m in msgs
        ]

    async def commit(self) -> None:
        await self._consumer.commit()

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
        await self._consumer.seek_to_committed()

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.stop()


class KafkaTopicReader:
    """Reads partitions of a topic between offsets with a consumer of no group (nothing is
    committed); a client per ``read``, since reads are rare (a start, a failed send)."""

    def __init__(
        self,
        bootstrap: str,
        client_id: str,
        security: KafkaSecurity = PLAINTEXT,
        timeout_s: float = 30.0,
    ) -> None:
        self.bootstrap = bootstrap
        self.client_id = client_id
        self.security = security
        self.timeout_s = timeout_s

    async def read(
        self, topic: str, since: dict[int, int] | None
    ) -> tuple[list[Record], dict[int, int]]:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            client_id=self.client_id,
            **self.security.client_kwargs(),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",  # a start offset already deleted: the oldest kept
        )
        await start_client(self.bootstrap, self.security, consumer.start, consumer.stop)
        try:
            # a consumer with no subscription has no metadata of the topic yet, and the public
            # topics() returns names only: the cluster metadata it fetches has the partitions
            cluster = await consumer._client.fetch_all_metadata()
            tps = [TopicPartition(topic, p) for p in cluster.partitions_for_topic(topic) or ()]
            if not tps:
                return [], {}
            ends = {tp.partition: n for tp, n in (await consumer.end_offsets(tps)).items()}
            if since is None:
                return [], ends
            pending = [tp for tp in tps if min(since.get(tp.partition, 0), ends[tp.partition])
                       < ends[tp.partition]]  # fmt: skip
            consumer.assign(pending)
            for tp in pending:
                consumer.seek(tp, max(since.get(tp.partition, 0), 0))
            out: list[Record] = []
            deadline = asyncio.get_running_loop().time() + self.timeout_s
            while pending:
                if asyncio.get_running_loop().time() > deadline:
                    raise BusError(
                        f"kafka {self.bootstrap}: topic {topic} not read to its end offsets "
                        f"{ends} within {self.timeout_s:.0f} s"
                    )
                batches = await consumer.getmany(*pending, timeout_ms=500)
                for tp, msgs in batches.items():
                    end = ends[tp.partition]
                    out.extend(
                        Record(m.topic, m.partition, m.offset, m.key, m.value)
                        for m in msgs
                        if m.offset < end
                    )
                pending = [tp for tp in pending if await consumer.position(tp) < ends[tp.partition]]
            return out, ends
        except KafkaError as exc:
            raise BusError(f"kafka {self.bootstrap}: reading topic {topic}: {exc}") from exc
        finally:
            await consumer.stop()


async def group_lag(
    bootstrap: str, groups: list[str], security: KafkaSecurity = PLAINTEXT
) -> dict[tuple[str, str, int], int]:
    """Records not yet committed, per (group, topic, partition), for the groups given."""
    from aiokafka.admin import AIOKafkaAdminClient

    kw = security.client_kwargs()
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="kaspwatch-lag", **kw)
    probe = AIOKafkaConsumer(bootstrap_servers=bootstrap, client_id="kaspwatch-lag", **kw)
    await start_client(bootstrap, security, admin.start, admin.close)
    try:
        await start_client(bootstrap, security, probe.start, probe.stop)
    except BusError:
        await admin.close()
        raise
    try:
        out: dict[tuple[str, str, int], int] = {}
        for group in groups:
            committed = await admin.list_consumer_group_offsets(group)
            if not committed:
                continue
            ends = await probe.end_offsets(list(committed))
            for tp, meta in committed.items():
                out[(group, tp.topic, tp.partition)] = max(ends.get(tp, 0) - meta.offset, 0)
        return out
    finally:
        await probe.stop()
        await admin.close()
