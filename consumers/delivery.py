"""Alert delivery: decide (engine), deliver to every sink, record, then let the loop commit.

``handle`` returns only when every sink took the batch (or gave up, under the ``drop``
policy); under the default ``retry`` policy a sink that gives up raises, nothing is
committed, ``rollback`` restores the engine's windows from the state store, and the
consume loop re-reads the batch. Sinks that already took an alert are not sent it again.
"""

from __future__ import annotations

import logging
from typing import Final

from consumers.alerts import Alert, AlertEngine
from consumers.sinks import Sink, SinkError
from consumers.state import AlertState
from kaspwatch.event import Event

log = logging.getLogger("kaspwatch.alerts")
POLICIES: Final = ("retry", "drop")
PRUNE_EVERY: Final = 100  # batches between deletions of closed windows from the state file


class DeliveryStats:
    def __init__(self) -> None:
        self.sent: dict[str, int] = {}
        self.failures: dict[str, int] = {}
        self.dropped: dict[str, int] = {}
        self.alerts: dict[tuple[str, str, str], int] = {}  # (category, stage, severity)


class AlertDelivery:
    def __init__(
        self, engine: AlertEngine, sinks: list[Sink], state: AlertState, policy: str = "retry"
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(
                f"sink failure policy {policy!r}: expected one of {', '.join(POLICIES)}"
            )
        self.engine = engine
        self.sinks = sinks
        self.state = state
        self.policy = policy
        self.stats = DeliveryStats()
        engine.windows = state.load_windows(engine.max_windows)
        self._batches = 0

    async def handle(self, events: list[Event]) -> None:
        alerts: list[Alert] = []
        touched = []
        for ev in events:
            if ev.indicator is not None:
                touched.append((ev.host, ev.indicator.category))
            alerts.extend(self.engine.feed(ev))
        for sink in self.sinks:
            await self._deliver(sink, alerts)
        self.state.save_windows(self.engine.windows, touched)
        self._batches += 1
        if self._batches % PRUNE_EVERY == 0 and self.engine.newest is not None:
            self.state.prune_windows(self.engine.newest - self.engine.window)
        for a in alerts:
            key = (a.category, a.stage, a.severity)
            self.stats.alerts[key] = self.stats.alerts.get(key, 0) + 1

    async def _deliver(self, sink: Sink, alerts: list[Alert]) -> None:
        done = self.state.delivered([a.alert_id for a in alerts], sink.name)
        fresh = [a for a in alerts if a.alert_id not in done]
        if not fresh:
            return
        try:
            await sink.send(fresh)
        except SinkError as exc:
            self.stats.failures[sink.name] = self.stats.failures.get(sink.name, 0) + 1
            if self.policy == "retry":
                log.error("sink %s failed, will retry the batch: %s", sink.name, exc)
                raise
            self.stats.dropped[sink.name] = self.stats.dropped.get(sink.name, 0) + len(fresh)
            log.error(
                "sink %s failed, dropping %d alerts (policy drop): %s", sink.name, len(fresh), exc
            )
            return
        self.state.mark_delivered([a.alert_id for a in fresh], sink.name)
        self.stats.sent[sink.name] = self.stats.sent.get(sink.name, 0) + len(fresh)

    def rollback(self) -> None:
        """Forget in-memory decisions of a batch that will be re-read."""
        self.engine.windows = self.state.load_windows(self.engine.max_windows)
