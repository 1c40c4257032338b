"""Kafka outside a consumer group: reading a topic back between offsets, the groups' lag,
and the alerts state changelog topic (created co-partitioned with the hits topic)."""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from kaspwatch.bus import BusError, Record
from kaspwatch.bus.kafka import start_client
from kaspwatch.bus.security import PLAINTEXT, KafkaSecurity
from kaspwatch.bus.topics import TopicSpec, ensure_topics

log = logging.getLogger("kaspwatch.bus")


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
        self, topic: str, since: dict[int, int] | None, partitions: list[int] | None = None
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
            tps = [TopicPartition(topic, p) for p in cluster.partitions_for_topic(topic) or ()
                   if partitions is None or p in partitions]  # fmt: skip
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


async def _partition_counts(admin: AIOKafkaAdminClient, topics: list[str]) -> dict[str, int]:
    """Partitions of each topic that exists (a missing one is left out: describing it
    would have a broker with auto.create.topics.enable make it, with 1 partition)."""
    existing = [t for t in topics if t in set(await admin.list_topics())]
    out = {}
    for d in await admin.describe_topics(existing) if existing else []:
        if not d["error_code"] and d["partitions"]:
            out[d["topic"]] = len(d["partitions"])
    return out


async def ensure_changelog(
    bootstrap: str,
    hits: str,
    alerts: str,
    changelog: str,
    security: KafkaSecurity = PLAINTEXT,
    wait_s: float = 600.0,
) -> int:
    """Check that the alerts topic has as many partitions as the hits topic (each hits
    partition's alerts go to the same partition) and create the changelog topic with that
    many when it is missing (compacted; 3 replicas on a cluster, 1 on a lone broker);
    refuse (``BusError``) any other count. Waits up to ``wait_s`` for the hits topic to
    exist. Returns the partition count."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, client_id="kaspwatch-alerts", **security.client_kwargs()
    )
    await start_client(bootstrap, security, admin.start, admin.close)
    try:
        deadline = asyncio.get_running_loop().time() + wait_s
        said = False
        while (n := (await _partition_counts(admin, [hits])).get(hits)) is None:
            if asyncio.get_running_loop().time() > deadline:
                raise BusError(f"topic {hits} does not exist after {wait_s:.0f} s; create it")
            if not said:
                log.info("topic %s does not exist yet: the state changelog is sized on it", hits)
                said = True
            await asyncio.sleep(1.0)
        brokers = len((await admin.describe_cluster())["brokers"])
        configs = {"cleanup.policy": "compact", "min.insync.replicas": "2" if brokers >= 3 else "1"}
        await ensure_topics(
            admin, [TopicSpec(changelog, n, None, configs)], where=f"kafka {bootstrap}"
        )
        counts = await _partition_counts(admin, [alerts, changelog])
        for topic in (alerts, changelog):
            have = counts.get(topic)
            if have is not None and have != n:
                raise BusError(
                    f"topic {topic} has {have} partitions and {hits} has {n}: the alerts "
                    f"state per partition needs them co-partitioned; recreate {topic} with "
                    f"{n} partitions (or give --state-store sqlite for a single instance)"
                )
        return n
    except KafkaError as exc:
        raise BusError(f"kafka {bootstrap}: preparing the changelog {changelog}: {exc}") from exc
    finally:
        await admin.close()
