"""The topics kaspwatch creates itself, with partitions and replication of its own choosing
rather than the broker's defaults (``num.partitions=1`` leaves a consumer group nothing to
spread over).

``ensure_topics`` is called by whichever command starts first (the sensor, the alerts
consumer, the store or metrics consumer) for the topics it writes or reads: a topic that is
missing is created; one that exists is never altered (with fewer partitions than asked, one
WARNING line says so). Creating a topic that another instance created a moment before is
not an error, and neither is a broker that does not let this client create topics (one
WARNING line: the operator creates them).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kaspwatch.bus import BusError, GroupSettings
from kaspwatch.bus.security import PLAINTEXT, KafkaSecurity

if TYPE_CHECKING:  # aiokafka is loaded by the commands that talk to Kafka only
    from aiokafka.admin import AIOKafkaAdminClient

log = logging.getLogger("kaspwatch.bus")

DEFAULT_PARTITIONS = 12  # room for up to 12 consumers of one group
MAX_AUTO_REPLICATION = 3  # "auto": 3 on a cluster, as many as there are brokers below that
LEADER_WAIT_S = 30.0  # a created topic's partitions all have a leader by then

# CreateTopics error codes (Kafka protocol) this module tells apart
_EXISTS = 36  # TOPIC_ALREADY_EXISTS: another instance was first
_NOT_ALLOWED = (29, 31)  # TOPIC_ / CLUSTER_AUTHORIZATION_FAILED
_UNKNOWN_TOPIC = 3  # UNKNOWN_TOPIC_OR_PARTITION in a metadata answer
_HINTS = {
    37: "give --partitions 1 or more",  # INVALID_PARTITIONS
    38: "give --replication auto, or at most the number of brokers",  # INVALID_REPLICATION_FACTOR
    40: "check the topic settings",  # INVALID_CONFIG
    44: "the broker's create-topic policy refused it; create the topic yourself",
}


@dataclass(frozen=True)
class TopicSpec:
    """A topic as kaspwatch creates it: ``replication`` None is "auto",
    min(``MAX_AUTO_REPLICATION``, brokers in the cluster); ``configs`` are topic settings,
    e.g. ``{"cleanup.policy": "compact"}``."""

    name: str
    partitions: int = DEFAULT_PARTITIONS
    replication: int | None = None
    configs: Mapping[str, str] = field(default_factory=dict)


def auto_replication(brokers: int) -> int:
    return max(1, min(MAX_AUTO_REPLICATION, brokers))


@contextlib.asynccontextmanager
async def admin_client(
    bootstrap: str, security: KafkaSecurity = PLAINTEXT, client_id: str = "kaspwatch"
) -> AsyncIterator[AIOKafkaAdminClient]:
    """A started admin client (one line ``BusError`` when it cannot start), closed after."""
    from aiokafka.admin import AIOKafkaAdminClient

    from kaspwatch.bus.kafka import start_client

    client = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, client_id=client_id, **security.client_kwargs()
    )
    await start_client(bootstrap, security, client.start, client.close)
    try:
        yield client
    finally:
        await client.close()


async def ensure_topics(
    admin: AIOKafkaAdminClient | str,
    specs: Sequence[TopicSpec],
    security: KafkaSecurity = PLAINTEXT,
    where: str = "kafka",
) -> dict[str, str]:
    """Create the topics of ``specs`` that do not exist. ``admin``: a started admin client
    (``admin_client``), or bootstrap servers to start one for this call; ``where`` starts
    each log line and error. Returns what happened to each topic: ``created``, ``exists``,
    ``fewer-partitions`` (exists, left as is) or ``not-allowed``. A refusal other than
    "exists" or "not allowed" raises ``BusError`` (one line)."""
    if not specs:
        return {}
    if not isinstance(admin, str):
        return await _ensure(admin, specs, where)
    async with admin_client(admin, security) as client:
        return await _ensure(client, specs, f"kafka {admin}")


async def check_session_timeout(
    admin: AIOKafkaAdminClient, settings: GroupSettings, where: str = "kafka"
) -> None:
    """``BusError`` when the broker would refuse this session timeout: aiokafka would only
    say so from inside its coordinator, as a traceback. A broker that does not let this
    client read its configuration is not asked."""
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
    from aiokafka.errors import KafkaError

    try:
        node = admin._client.get_random_node()
        (answer,) = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.BROKER, str(node))]
        )
        (resource,) = answer.to_object()["resources"]
    except (KafkaError, ValueError) as exc:
        log.debug("%s: broker configuration not read (%s): session timeout not checked", where, exc)
        return
    if resource["error_code"]:
        return
    entries = {c["config_names"]: c["config_value"] for c in resource["config_entries"]}
    low = int(entries.get("group.min.session.timeout.ms") or 6000) / 1000
    high = int(entries.get("group.max.session.timeout.ms") or 1_800_000) / 1000
    if not low <= settings.session_timeout_s <= high:
        raise BusError(
            f"{where}: session timeout {settings.session_timeout_s:g} s: the broker accepts "
            f"{low:g} to {high:g} s (its group.min/max.session.timeout.ms); give "
            f"--session-timeout (or group.session_timeout) within that"
        )


async def _ensure(
    admin: AIOKafkaAdminClient, specs: Sequence[TopicSpec], where: str
) -> dict[str, str]:
    from aiokafka.admin import NewTopic
    from aiokafka.errors import KafkaError

    names = [s.name for s in specs]
    meta = await _metadata(admin, names, where)
    brokers = len(meta["brokers"])
    existing = {
        t["topic"]: len(t["partitions"])
        for t in meta["topics"]
        if t["error_code"] != _UNKNOWN_TOPIC and t["partitions"]
    }
    outcome: dict[str, str] = {}
    for spec in specs:
        have = existing.get(spec.name)
        if have is None:
            continue
        outcome[spec.name] = "exists"
        if have < spec.partitions:
            outcome[spec.name] = "fewer-partitions"
            log.warning(
                "%s: topic %s exists with %d partition%s, fewer than the %d asked: left as is "
                "(records reach at most %d consumer%s of a group; add partitions with "
                "kafka-topics.sh --alter --partitions)",
                where, spec.name, have, "" if have == 1 else "s", spec.partitions, have,
                "" if have == 1 else "s",
            )  # fmt: skip
    missing = [s for s in specs if s.name not in existing]
    if not missing:
        return outcome
    new = [
        NewTopic(
            s.name,
            s.partitions,
            s.replication if s.replication is not None else auto_replication(brokers),
            topic_configs=dict(s.configs),
        )
        for s in missing
    ]
    try:
        answer = (await admin.create_topics(new)).to_object()
    except KafkaError as exc:
        what = ", ".join(s.name for s in missing)
        raise BusError(f"{where}: creating topics {what}: {exc}") from exc
    errors = {e["topic"]: (e["error_code"], e.get("error_message")) for e in answer["topic_errors"]}
    raced: list[str] = []
    for topic in new:
        code, message = errors.get(topic.name, (0, None))
        if code == 0:
            outcome[topic.name] = "created"
            log.info(
                "%s: created topic %s (%d partitions, replication %d%s)",
                where,
                topic.name,
                topic.num_partitions,
                topic.replication_factor,
                "".join(f", {k}={v}" for k, v in topic.topic_configs.items()),
            )
        elif code == _EXISTS:  # another instance's, a moment ago: wait for its leaders too
            outcome[topic.name] = "exists"
            raced.append(topic.name)
        elif code in _NOT_ALLOWED:
            outcome[topic.name] = "not-allowed"
            log.warning(
                "%s: not allowed to create topic %s (%s): create it with %d partitions, "
                "or grant this user CREATE; else the broker's defaults apply",
                where, topic.name, message or _name(code), topic.num_partitions,
            )  # fmt: skip
        else:
            hint = _HINTS.get(code, "see the broker's log")
            raise BusError(
                f"{where}: topic {topic.name} ({topic.num_partitions} partitions, replication "
                f"{topic.replication_factor}, {brokers} broker{'s' if brokers != 1 else ''}) "
                f"not created: {message or _name(code)}; {hint}"
            )
    created = [name for name, what in outcome.items() if what == "created"] + raced
    if created:
        await _wait_leaders(admin, created, where)
    return outcome


async def _metadata(admin: AIOKafkaAdminClient, names: list[str], where: str) -> dict[str, Any]:
    from aiokafka.errors import KafkaError
    from aiokafka.protocol.metadata import MetadataRequest

    try:
        # asked by name, but with auto-creation off: a plain describe_topics would have the
        # broker create every missing topic with its own defaults, the very thing to avoid
        request = MetadataRequest(names, allow_auto_topic_creation=False)
        meta: dict[str, Any] = (await admin._send_request(request)).to_object()
    except KafkaError as exc:
        raise BusError(f"{where}: describing topics {', '.join(names)}: {exc}") from exc
    return meta


async def _wait_leaders(
    admin: AIOKafkaAdminClient, names: list[str], where: str, timeout_s: float = LEADER_WAIT_S
) -> None:
    """Until every partition of these new topics has a leader that answers for it: a
    consumer that starts sooner logs an ERROR per partition whose offsets it cannot list
    yet (the metadata names a leader a moment before that broker leads)."""
    import asyncio  # here: ``scan`` reads this module's defaults and never runs a loop

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        meta = await _metadata(admin, names, where)
        leaders: dict[int, dict[str, list[int]]] = {}
        led = set()
        for t in meta["topics"]:
            parts = t["partitions"]
            if t["error_code"] == 0 and parts and all(p["leader"] >= 0 for p in parts):
                led.add(t["topic"])
                for p in parts:
                    leaders.setdefault(p["leader"], {}).setdefault(t["topic"], []).append(
                        p["partition"]
                    )
        if led >= set(names) and await _leading(admin, leaders):
            return
        if loop.time() > deadline:
            raise BusError(
                f"{where}: topics {', '.join(sorted(set(names) - led))} created but without a "
                f"leader for every partition after {timeout_s:.0f} s; see the broker's log"
            )
        await asyncio.sleep(0.1)


async def _leading(admin: AIOKafkaAdminClient, leaders: dict[int, dict[str, list[int]]]) -> bool:
    """Whether each broker answers a ListOffsets for the partitions it is said to lead."""
    from aiokafka.errors import KafkaError
    from aiokafka.protocol.offset import OffsetRequest

    for node, topics in leaders.items():
        request = OffsetRequest(-1, 0, [(t, [(p, -1) for p in ps]) for t, ps in topics.items()])
        try:
            answer = await admin._client.send(node, request)
        except KafkaError:
            return False
        if any(code for _, parts in answer.topics for _, code, *_ in parts):
            return False
    return True


def _name(code: int) -> str:
    from aiokafka.errors import for_code

    err: Any = for_code(code)
    return f"{err.__name__} ({code})"
