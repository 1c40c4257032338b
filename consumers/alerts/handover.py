"""The alerts consumer's rebalance listener: state moves with the hits partitions.

On an assignment the partitions' state is restored (``ChangelogState.restore``: kept when
still current, else read from the changelog), the engine's windows are those of the
partitions held, and every sink that can be read back (the alerts topic) is read back
from each new partition's marks before any of its hits is handled: what the last owner
wrote and did not record is recorded, not written again. On a revocation (after the
batch in flight was committed or given up) the state's changes are flushed and the
partitions' windows leave this instance. One INFO line each, naming the partitions.

With the single-process SQLite state there is nothing to move: an instance that gets only
some partitions of the hits topic says, once, that its state cannot follow them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from consumers.alerts.changelog import ChangelogState
from consumers.alerts.delivery import AlertDelivery
from consumers.alerts.sinks import ReadBack
from kaspwatch.bus import BusError, Partition, TopicReader

log = logging.getLogger("kaspwatch.alerts")
RESTORE_TRIES = 3


class Handover:
    def __init__(
        self,
        delivery: AlertDelivery,
        hits_topic: str,
        reader: TopicReader | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``reader``: to learn the hits topic's partition count (the SQLite warning)."""
        self.delivery, self.topic, self.reader, self.clock = delivery, hits_topic, reader, clock
        self.warned = False

    def _hits(self, partitions: list[Partition]) -> list[int]:
        return sorted(p for t, p in partitions if t == self.topic)

    async def assigned(self, partitions: list[Partition]) -> str | None:
        parts = self._hits(partitions)
        state = self.delivery.state
        if not isinstance(state, ChangelogState):
            await self._warn_partial(parts)
            return None
        began = self.clock()
        for attempt in range(1, RESTORE_TRIES + 1):
            try:
                counts = await state.restore(parts)
                break
            except BusError as exc:
                if attempt == RESTORE_TRIES:
                    raise
                log.warning(
                    "alerts: restoring hits partitions %s (try %d): %s", parts, attempt, exc
                )
        engine = self.delivery.engine
        engine.windows = state.load_windows(engine.max_windows)
        restored = self.clock() - began
        found = 0
        for sink in self.delivery.sinks:
            if isinstance(sink, ReadBack):
                found += await self.delivery.read_back(sink, [*parts])
        return (
            f"alerts state: {len(counts)} partitions restored from {state.topic} "
            f"({sum(counts.values())} records, {restored:.2f} s), {len(parts) - len(counts)} "
            f"kept; alerts topic read back: {found} alerts already there, not written again"
        )

    async def revoked(self, partitions: list[Partition]) -> str | None:
        parts = self._hits(partitions)
        state = self.delivery.state
        if not isinstance(state, ChangelogState):
            return None
        await state.flush()
        state.revoke(parts)
        engine = self.delivery.engine
        engine.windows = state.load_windows(engine.max_windows)
        return f"alerts state flushed to {state.topic}"

    async def _warn_partial(self, parts: list[int]) -> None:
        if self.warned or self.reader is None:
            return
        _, ends = await self.reader.read(self.topic, None)
        if ends and len(parts) < len(ends):
            self.warned = True
            log.warning(
                "alerts: this instance holds %d of the %d partitions of %s, and its state "
                "(windows, deliveries) is in its own --state file, which does not follow a "
                "partition to another instance: run every instance of the group with "
                "--state-store changelog",
                len(parts),
                len(ends),
                self.topic,
            )
