"""Where alerts go: stdout, the Kafka alerts topic (OCSF), Alertmanager, webhooks, syslog.

Every sink implements ``Sink``. ``send`` returns once the receiver accepted the alert,
after the sink's own retries; it raises ``SinkError`` when it gave up. The delivery
loop commits Kafka offsets only after every sink returned or gave up per policy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

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


@runtime_checkable
class ReadBack(Protocol):
    """A sink whose receiver can be read back (the Kafka alerts topic): the delivery records
    ``acked`` (partition -> offset after the last batch) with each delivery, and after a
    start or a failed send asks ``read_back`` which alerts are there past those offsets."""

    name: str
    acked: dict[int, int]

    async def read_back(self, since: dict[int, int] | None) -> tuple[set[str], dict[int, int]]:
        """Alert ids on the receiver from ``since`` (None: none) to its end, and that end."""
        ...
