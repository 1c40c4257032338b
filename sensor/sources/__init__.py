"""Capture sources: files (pure reader or libpcap prefilter) and live AF_PACKET sockets,
all seen through ``sensor.sources.base.Source``."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from sensor.sources.base import CaptureError
from sensor.sources.pcapfile import CaptureFile
from sensor.sources.prefilter import PrefilteredFile, available, prefilter_expression

log = logging.getLogger(__name__)


def open_capture(
    path: str, prefilter: bool = True, cidrs: Iterable[str] = ()
) -> CaptureFile | PrefilteredFile:
    """The fastest reader for ``path``: libpcap with the prefilter when it can, else the
    pure-Python reader. Errors about the file come from the pure reader (it opens it
    first, so a missing or foreign file is named the same way on both paths)."""
    cap = CaptureFile(path)
    if not prefilter:
        return cap
    why = _no_prefilter(path, cap)
    if why is None:
        try:
            fast = PrefilteredFile(path, prefilter_expression(cidrs))
        except CaptureError as exc:
            why = str(exc).removeprefix(f"{path}: ")
        else:
            cap.close()
            return fast
    log.info("%s: read without the prefilter (%s)", path, why)
    return cap


def _no_prefilter(path: str, cap: CaptureFile) -> str | None:
    if not available():
        return "libpcap not found; install libpcap0.8"
    if path == "-":
        return "stdin"
    if cap.compressed:
        return "gzip"
    return None
