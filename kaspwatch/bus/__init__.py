"""The bus between sensors and consumers: Kafka, or an in-process queue (embedded mode).

Both transports implement the same small protocols. ``open_publisher``, ``open_subscriber``
and ``open_reader`` pick one from a URL: ``kafka://host:port[,host:port...]`` or ``memory://``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # asyncio only in annotations: ``kaspwatch scan`` never loads it
    import asyncio

    from kaspwatch.bus.security import KafkaSecurity


class BusError(Exception):
    """The bus cannot be reached or refused a request."""


class CommitFailed(BusError):
    """The group rebalanced under a commit: this process may no longer own the partitions,
    so the batch is not committed here (its new owner reads it again)."""


class BusUnreachable(BusError):
    """No broker answered at all (down, or not up yet), as opposed to one that refused us
    (credentials, TLS, protocol): a spooling sensor starts anyway and spools until it can."""


@dataclass(frozen=True, slots=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes


class Publisher(Protocol):
    async def start(self) -> None: ...

    async def send(
        self, topic: str, value: bytes, key: bytes | None = None, partition: int | None = None
    ) -> asyncio.Future[Any]:
        """Queue a record; the returned future resolves once the bus has it durably (with
        its partition and offset). ``partition``: that one, not the key's."""
        ...

    async def flush(self) -> None: ...

    async def prepare(self, topics: list[str]) -> None:
        """Make sure these topics can be written (exist, have leaders) before producing."""
        ...

    async def stop(self) -> None: ...


Partition = tuple[str, int]  # (topic, partition)


class PartitionListener(Protocol):
    """Told when the group gives this process partitions and takes them away (a rebalance:
    an instance joined, left or died). ``revoked`` runs after the batch in flight was
    committed or given up, before anyone else gets the partitions; ``assigned`` before any
    record of them is returned by ``poll``. A memory bus has one owner of everything: all
    its topics' partitions are assigned at ``start``. What they return (what they did) goes
    into the subscriber's one log line of the rebalance."""

    async def assigned(self, partitions: list[Partition]) -> str | None: ...

    async def revoked(self, partitions: list[Partition]) -> str | None: ...


class Subscriber(Protocol):
    group: str

    def listen(self, listener: PartitionListener) -> None:
        """Call ``listener`` on every assignment and revocation (before ``start``)."""
        ...

    async def start(self) -> None: ...

    async def poll(self, timeout: float = 1.0, max_records: int = 500) -> list[Record]: ...

    async def commit(self) -> None:
        """Commit everything ``poll`` has returned so far: call after its side effects.
        Raises ``CommitFailed`` when the group rebalanced meanwhile."""
        ...

    async def lag(self) -> int:
        """Records not yet consumed by this subscriber (0 when caught up)."""
        ...

    async def rewind(self) -> None:
        """Go back to the committed offsets (after a batch failed)."""
        ...

    async def stop(self) -> None: ...


class TopicReader(Protocol):
    """Reads a topic back, outside any consumer group (the alerts sink checks what it wrote)."""

    async def read(
        self, topic: str, since: dict[int, int] | None, partitions: list[int] | None = None
    ) -> tuple[list[Record], dict[int, int]]:
        """The topic's end offsets now (partition -> next offset), and the records from
        ``since`` (partition -> first offset; a partition it does not name: from its
        beginning) up to them; ``since`` None: the end offsets only, no records.
        ``partitions``: only those (default: every partition of the topic)."""
        ...


KAFKA_URL_HINT = "give kafka://HOST:PORT[,HOST:PORT...] (e.g. kafka://127.0.0.1:9092)"


def _check_server(url: str, server: str) -> None:
    """One ``HOST:PORT`` (``[v6]:PORT`` for an IPv6 address) of a Kafka bootstrap list."""
    host, sep, port = server.rpartition(":")
    if not sep or not host.strip("[]"):
        raise BusError(f"bus URL {url!r}: {server!r} needs HOST:PORT; {KAFKA_URL_HINT}")
    if not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise BusError(
            f"bus URL {url!r}: port {port!r} of {server!r} is not a number from 1 to 65535; "
            f"{KAFKA_URL_HINT}"
        )
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        raise BusError(
            f"bus URL {url!r}: write an IPv6 address in brackets ([{host}]:{port}); "
            f"{KAFKA_URL_HINT}"
        )


def parse_bus_url(url: str) -> tuple[str, str]:
    """The transport and where: ``kafka`` and its bootstrap servers, or ``memory`` and a
    bus name. A malformed URL raises ``BusError`` naming the URL and what to give."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("kafka", "memory"):
        raise BusError(f"bus URL {url!r}: expected kafka://HOST:PORT[,HOST:PORT] or memory://")
    if scheme == "kafka":
        hosts = [h.strip() for h in rest.strip("/").split(",") if h.strip()]
        if not hosts:
            raise BusError(f"bus URL {url!r}: no Kafka bootstrap server; {KAFKA_URL_HINT}")
        for host in hosts:
            _check_server(url, host)
        return scheme, ",".join(hosts)
    return scheme, rest.strip("/") or "default"


def open_publisher(
    url: str,
    client_id: str = "kaspwatch",
    security: KafkaSecurity | None = None,
    delivery_timeout: float | None = None,
) -> Publisher:
    """``security``: how to connect to Kafka (TLS, SASL); plaintext when None.
    ``delivery_timeout``: fail a send not acknowledged within that many seconds (for a
    spooling sensor) rather than retry it for ever."""
    scheme, where = parse_bus_url(url)
    if scheme == "kafka":
        from kaspwatch.bus.kafka import KafkaPublisher
        from kaspwatch.bus.security import PLAINTEXT

        return KafkaPublisher(where, client_id, security or PLAINTEXT, delivery_timeout)
    from kaspwatch.bus.memory import MemoryBus

    return MemoryBus.named(where).publisher()


@dataclass(frozen=True)
class Replay:
    """Where a Kafka consumer group starts when this process first gets a partition: the
    beginning, the first record at or after ``start_ms`` (epoch ms), or (neither) the
    group's commits; its ``lag`` says "not caught up" until partitions are assigned."""

    from_beginning: bool = False
    start_ms: int | None = None


@dataclass(frozen=True)
class GroupSettings:
    """How a Kafka consumer keeps its place in its group (seconds). ``heartbeat_interval_s``
    None: a third of the session timeout, at most 3 s (aiokafka's default); and
    ``rebalance_timeout_s`` None: the session timeout (aiokafka's default). ``instance_id``:
    static membership, one name per instance, which keeps its partitions over a restart
    shorter than the session timeout instead of rebalancing twice."""

    session_timeout_s: float = 10.0
    heartbeat_interval_s: float | None = None
    max_poll_interval_s: float = 300.0
    rebalance_timeout_s: float | None = None
    instance_id: str | None = None

    def consumer_kwargs(self) -> dict[str, Any]:
        """aiokafka ``AIOKafkaConsumer`` keyword arguments."""
        beat = self.heartbeat_interval_s
        if beat is None:
            beat = min(3.0, self.session_timeout_s / 3)
        kw: dict[str, Any] = {
            "session_timeout_ms": round(self.session_timeout_s * 1000),
            "heartbeat_interval_ms": round(beat * 1000),
            "max_poll_interval_ms": round(self.max_poll_interval_s * 1000),
            "group_instance_id": self.instance_id,
        }
        if self.rebalance_timeout_s is not None:
            kw["rebalance_timeout_ms"] = round(self.rebalance_timeout_s * 1000)
        return kw


def open_subscriber(
    url: str,
    topics: list[str],
    group: str,
    client_id: str = "kaspwatch",
    security: KafkaSecurity | None = None,
    replay: Replay | None = None,
    settings: GroupSettings | None = None,
) -> Subscriber:
    """``replay`` (Kafka only: a memory group always starts at the beginning) rebuilds
    from a point of the topic, see ``Replay``; ``settings``: the Kafka group's timeouts
    and static membership (a memory group has none)."""
    scheme, where = parse_bus_url(url)
    if scheme == "kafka":
        from kaspwatch.bus.kafka import KafkaSubscriber
        from kaspwatch.bus.security import PLAINTEXT

        if replay is not None:
            from kaspwatch.bus.replay import ReplaySubscriber

            return ReplaySubscriber(
                where,
                topics,
                group,
                client_id,
                replay.from_beginning,
                replay.start_ms,
                security=security or PLAINTEXT,
                settings=settings or GroupSettings(),
            )
        return KafkaSubscriber(
            where, topics, group, client_id, security or PLAINTEXT, settings or GroupSettings()
        )
    from kaspwatch.bus.memory import MemoryBus

    return MemoryBus.named(where).subscriber(topics, group)


def open_reader(
    url: str, client_id: str = "kaspwatch", security: KafkaSecurity | None = None
) -> TopicReader:
    scheme, where = parse_bus_url(url)
    if scheme == "kafka":
        from kaspwatch.bus.kafka_admin import KafkaTopicReader
        from kaspwatch.bus.security import PLAINTEXT

        return KafkaTopicReader(where, client_id, security or PLAINTEXT)
    from kaspwatch.bus.memory import MemoryBus

    return MemoryBus.named(where).reader()


async def prepare_changelog(
    url: str, hits: str, alerts: str, changelog: str, security: KafkaSecurity | None = None
) -> int:
    """Kafka only: the alerts state changelog topic, co-partitioned with the hits topic
    (created when missing; a topic of another partition count is refused with
    ``BusError``); its partition count."""
    scheme, where = parse_bus_url(url)
    if scheme != "kafka":
        raise BusError(f"bus URL {url!r}: the alerts state changelog needs a kafka:// bus")
    from kaspwatch.bus.kafka_admin import ensure_changelog
    from kaspwatch.bus.security import PLAINTEXT

    return await ensure_changelog(where, hits, alerts, changelog, security or PLAINTEXT)
