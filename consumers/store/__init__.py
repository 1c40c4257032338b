"""The incident-response store: every hit, kept and aggregated, and the questions asked of it.

``open_store(url)`` gives a ``Store`` over SQLite (``sqlite:///path``, the embedded
default) or PostgreSQL (``postgresql://…``); it is a consume-loop handler. ``queries``
answers hosts / host timeline / name / passive DNS / after-ban, ``render`` prints them,
``api`` serves them over HTTP. A rebuild replays the hits topic through the bus
(``kaspwatch.bus.Replay``).
"""

from consumers.store.backends import open_backend
from consumers.store.base import StoreError, default_db_url
from consumers.store.store import Store, StoreStats, open_store

__all__ = ["Store", "StoreError", "StoreStats", "default_db_url", "open_backend", "open_store"]
