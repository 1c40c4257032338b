"""Re-sending firing alerts to sinks that forget them (Alertmanager drops an alert whose
``endsAt`` has passed)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from consumers.alerts.sinks import Sink, SinkError

log = logging.getLogger("kaspwatch.alerts")


async def resend_firing(sinks: list[Sink], stop: asyncio.Event, every_s: float = 30.0) -> None:
    """Alertmanager forgets an alert whose endsAt passes: re-send the firing ones."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)
        for sink in sinks:
            due = getattr(sink, "resend_due", None)
            if due is None:
                continue
            alerts = due(time.time())
            if not alerts:
                continue
            try:
                await sink.send(alerts)
            except SinkError as exc:
                log.warning("re-send to %s failed (will try again): %s", sink.name, exc)
