"""Test tiers, by marker: ``kafka`` (a real broker) and ``live`` (root: network namespaces
and live capture). ``pytest -m "not kafka and not live"`` is the fast unit run.

How a test gets its marker:

* conftest.py marks every item that uses one of ``KAFKA_FIXTURES``;
* modules that start their own broker or namespaces mark themselves (``pytestmark``, or per
  test where only some tests need it);
* as a backstop every place that starts a broker or needs root calls ``require()``, which
  fails the running test when it lacks the marker. A forgotten mark is then a failure in
  the unit run, not a broker start or a root-only test hiding in it.

No pytest import at module level: bench/ scripts use ``tests.netns`` without pytest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pytest

KAFKA = "kafka"
LIVE = "live"
KAFKA_FIXTURES = frozenset({"kafka_bootstrap", "kafka_cluster"})

current: pytest.Item | None = None  # the test running now; set by conftest.py


def require(marker: str, what: str) -> None:
    """Fail the running test unless it carries ``marker``; outside pytest, do nothing."""
    item = current
    if item is None or item.get_closest_marker(marker) is not None:
        return
    import pytest

    pytest.fail(
        f"{item.nodeid} {what} but is not marked {marker!r}: add pytest.mark.{marker} "
        f"(see tests/tiers.py) so the unit run leaves it out"
    )
