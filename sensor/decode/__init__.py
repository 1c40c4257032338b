"""Decoders: bytes on the wire -> transport segments -> names (``Sighting``)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final, NamedTuple

NO_EXTRA: Final[Mapping[str, Any]] = MappingProxyType({})
_HOST: Final = re.compile(r"[a-z0-9_*-]+(\.[a-z0-9_*-]+)*|[0-9a-f:.]+")


class DecodeError(ValueError):
    """A packet or message is malformed. Counted, never fatal."""


class Sighting(NamedTuple):
    """A name seen in one packet, before matching.

    ``chain`` holds CNAME targets for a DNS answer (in chain order, the asked name
    excluded); ``answers`` the A/AAAA addresses the chain ends in. A NamedTuple: one is
    made for every name on the wire, and a frozen dataclass costs several times more.
    """

    kind: str
    name: str
    chain: tuple[str, ...] = ()
    answers: tuple[str, ...] = ()
    extra: Mapping[str, Any] = NO_EXTRA
    path: str | None = None  # HTTP request path: matched by path_prefix, never published
    ttl: int = 0  # DNS answer: smallest TTL of the address records
    user_agent: str | None = None  # HTTP request: read by the content signals


def normalise_name(raw: str) -> str | None:
    """Lowercase, no trailing dot, IDNA (punycode) form; None if it cannot be a host name."""
    name = raw.strip().rstrip(".").lower()
    if not name or len(name) > 253:
        return None
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    return name


def host_name(raw: str) -> str | None:
    """``normalise_name`` for names from TLS and HTTP: only host-name characters
    (letters, digits, ``-``, ``_``, dots) or an IP literal; anything else is not a host."""
    name = normalise_name(raw)
    if name is None or not _HOST.fullmatch(name):
        return None
    return name
