"""Alerts on standard output: NDJSON for pipelines, or one readable line each."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from consumers.alerts.engine import Alert


class StdoutSink:
    name = "stdout"

    def __init__(self, render: Callable[[Alert], str], out: TextIO | None = None) -> None:
        self.render = render
        self.out = out

    async def start(self) -> None:
        return None

    async def send(self, alerts: list[Alert]) -> None:
        out = self.out or sys.stdout
        for alert in alerts:
            out.write(self.render(alert) + "\n")
        out.flush()

    async def stop(self) -> None:
        return None
