"""Where alerts go: stdout, the Kafka alerts topic (OCSF), Alertmanager, webhooks, syslog.

Every sink implements ``Sink``. ``send`` returns once the receiver accepted the alert,
after the sink's own retries; it raises ``SinkError`` when it gave up. The delivery
loop commits Kafka offsets only after every sink returned or gave up per policy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from consumers.alerts import Alert


class SinkError(Exception):
    """A sink gave up on an alert; the message names the sink and the receiver."""


class Sink(Protocol):
    name: str  # short, bounded: used as a metric label ("alertmanager", "webhook", ...)

    async def start(self) -> None: ...

    async def send(self, alerts: list[Alert]) -> None:
        """Deliver these alerts (one batch); raise SinkError after giving up."""
        ...

    async def stop(self) -> None: ...
