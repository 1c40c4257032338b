"""One message per host (``--group-wait``): the webhook and syslog sinks get every alert of a
(host, site) that arrived within the wait in one message listing each category, stage and
name, instead of one message per alert.

Alerts keep their (host, category, stage) identity; grouping happens only at these sinks.
A grouping sink's alerts go to an outbox in the state file, recorded as delivered to it
in the same transaction, so the consume loop can commit and keep reading while the group
fills; ``flush`` sends every group whose first alert waited ``wait_s`` and removes it
from the outbox only when the receiver accepted it. A crash keeps the outbox: the
restarted consumer sends what it holds (at least once, like these sinks always were).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, Protocol, runtime_checkable

from consumers.alerts.engine import Alert
from consumers.alerts.sinks import SinkError
from consumers.alerts.state import AlertState

GROUP_WAIT_S: Final = 10.0
log = logging.getLogger("kaspwatch.alerts")


@runtime_checkable
class Grouping(Protocol):
    """A sink that can send one message for a host's alerts (webhook, syslog)."""

    name: str

    async def send_group(self, docs: list[dict[str, Any]]) -> None:
        """Deliver these alert documents (one host) as one message; SinkError on giving up."""
        ...


class Counters(Protocol):
    """The delivery's per-sink counters (``DeliveryStats``)."""

    sent: dict[str, int]
    failures: dict[str, int]
    dropped: dict[str, int]


class Outbox:
    def __init__(
        self,
        state: AlertState,
        wait_s: float,
        stats: Counters,
        policy: str = "retry",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state, self.wait_s, self.policy, self.clock = state, wait_s, policy, clock
        self.sent, self.failures, self.dropped = stats.sent, stats.failures, stats.dropped
        self._lock = asyncio.Lock()

    def hold(self, sink: str, alerts: list[Alert]) -> None:
        now = self.clock()
        self.state.queue(
            sink,
            [
                (a.alert_id, f"{a.event.host}|{a.asset.site}", now, a.to_json().decode())
                for a in alerts
            ],
        )

    async def flush(self, sinks: Sequence[Grouping], everything: bool = False) -> None:
        """Send every group that waited long enough (``everything``: all of them)."""
        async with self._lock:
            now = self.clock()
            for sink in sinks:
                groups: dict[str, list[tuple[str, float, str]]] = {}
                for alert_id, grp, at, doc in self.state.queued(sink.name):
                    groups.setdefault(grp, []).append((alert_id, at, doc))
                for rows in groups.values():
                    if not everything and rows[0][1] + self.wait_s > now:
                        continue
                    if not await self._send(sink, rows):
                        break  # the receiver is down: the next flush tries again

    async def _send(self, sink: Grouping, rows: list[tuple[str, float, str]]) -> bool:
        ids = [r[0] for r in rows]
        try:
            await sink.send_group([json.loads(r[2]) for r in rows])
        except SinkError as exc:
            self.failures[sink.name] = self.failures.get(sink.name, 0) + 1
            if self.policy == "drop":
                self.dropped[sink.name] = self.dropped.get(sink.name, 0) + len(ids)
                self.state.unqueue(sink.name, ids)
                log.error("sink %s failed, dropping %d grouped alerts (policy drop): %s",
                          sink.name, len(ids), exc)  # fmt: skip
            else:
                log.warning("sink %s failed, will retry the group: %s", sink.name, exc)
            return False
        self.state.unqueue(sink.name, ids)
        self.sent[sink.name] = self.sent.get(sink.name, 0) + len(ids)
        return True


async def flush_every(flush: Callable[[], Any], stop: asyncio.Event, every_s: float = 1.0) -> None:
    """Flush due groups every ``every_s`` until ``stop`` (the caller flushes what is left)."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)
        await flush()
