"""Where alerts go: stdout, the Kafka alerts topic (OCSF), Alertmanager, webhooks, syslog.

Every sink implements ``Sink``. ``send`` returns once the receiver accepted the alert,
after the sink's own retries; it raises ``SinkError`` when it gave up. The delivery
loop commits Kafka offsets only after every sink returned or gave up per policy.

A sink the user switches on with flags declares and checks them itself, the way a
mitmproxy addon does: ``add_options(parser)`` declares its flags, ``from_options(args)``
validates them (``SinkOptionError`` naming the flag) and returns the sink, or None when
its flags are unset. The command line (``kaspwatch.cli.alerting``) lists those modules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

from consumers.loop import KnownFailure

if TYPE_CHECKING:
    from consumers.alerts.engine import Alert


class SinkError(KnownFailure):
    """A sink gave up on an alert; the message names the sink and the receiver. The
    delivery logs it in one line (traceback with -v); the consume loop retries quietly."""


class SinkOptionError(Exception):
    """A sink's flags are wrong; the message names the flag and what to give instead."""


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

    async def read_back(
        self, since: dict[int, int] | None, partitions: list[int] | None = None
    ) -> tuple[set[str], dict[int, int]]:
        """Alert ids on the receiver from ``since`` (None: none) to its end, and that end;
        ``partitions``: of those only (a partitioned state reads back its own)."""
        ...
