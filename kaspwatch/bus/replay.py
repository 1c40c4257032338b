"""Replay: a Kafka subscriber that starts a consumer group at the beginning of the topic
or at a point in time (``open_subscriber(..., replay=Replay(...))``), for rebuilding a
store from the hits topic.

It is a ``kaspwatch.bus.Subscriber`` (start/poll/commit/lag/rewind/stop). On the first
assignment of each partition in this process it seeks: to the beginning, or to the first
offset at or after the time (``offsets_for_times``; the end when nothing is that recent).
Later reassignments resume from the group's commits. ``lag`` reports "not caught up"
until partitions are assigned, so ``--until-caught-up`` never stops before it started.
"""

from __future__ import annotations

import logging

from aiokafka import TopicPartition

from kaspwatch.bus import GroupSettings
from kaspwatch.bus.kafka import KafkaSubscriber
from kaspwatch.bus.security import PLAINTEXT, KafkaSecurity

log = logging.getLogger("kaspwatch.bus")


class ReplaySubscriber(KafkaSubscriber):
    """``start_ms``: None = resume the group (earliest when it has no commits);
    0 with ``from_beginning``; else a time in epoch milliseconds."""

    def __init__(
        self,
        bootstrap: str,
        topics: list[str],
        group: str,
        client_id: str = "kaspwatch-store",
        from_beginning: bool = False,
        start_ms: int | None = None,
        security: KafkaSecurity = PLAINTEXT,
        settings: GroupSettings | None = None,
    ) -> None:
        super().__init__(bootstrap, topics, group, client_id, security, settings)
        self.from_beginning = from_beginning
        self.start_ms = start_ms
        self.assigned = False
        self._started: dict[TopicPartition, int] = {}  # where each partition began here

    async def _assigned(self, parts: list[TopicPartition]) -> None:
        await self.position_new(parts)

    async def position_new(self, parts: list[TopicPartition]) -> None:
        """Seek partitions seen for the first time; remember where each one starts."""
        fresh = [tp for tp in parts if tp not in self._started]
        c = self._consumer
        if fresh and self.from_beginning:
            starts = dict(await c.beginning_offsets(fresh))
        elif fresh and self.start_ms is not None:
            found = await c.offsets_for_times(dict.fromkeys(fresh, self.start_ms))
            past = [tp for tp in fresh if found.get(tp) is None]
            ends = await c.end_offsets(past) if past else {}
            starts = {
                tp: found[tp].offset if found.get(tp) is not None else ends[tp] for tp in fresh
            }
        else:
            starts = {}
            first = await c.beginning_offsets(fresh) if fresh else {}
            for tp in fresh:
                committed = await c.committed(tp)
                starts[tp] = committed if committed is not None else first[tp]
            self._started.update(starts)
            self.assigned = True
            return
        for tp, offset in starts.items():
            c.seek(tp, offset)
            log.info("replay: %s[%d] from offset %d", tp.topic, tp.partition, offset)
        self._started.update(starts)
        self.assigned = True

    async def lag(self) -> int:
        """Records between this group's progress and the end; 1 until assigned."""
        parts = list(self._consumer.assignment())
        if not self.assigned or not parts:
            return 1
        ends = await self._consumer.end_offsets(parts)
        total = 0
        for tp in parts:
            done = await self._consumer.committed(tp)
            if done is None:
                done = self._started.get(tp, 0)
            total += max(ends[tp] - done, 0)
        return total

    async def rewind(self) -> None:
        for tp in self._consumer.assignment():
            committed = await self._consumer.committed(tp)
            self._consumer.seek(
                tp, committed if committed is not None else self._started.get(tp, 0)
            )
