"""Decoders: bytes on the wire -> transport segments -> names (``Sighting``)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final, NamedTuple

NO_EXTRA: Final[Mapping[str, Any]] = MappingProxyType({})
_HOST: Final = re.compile(r"[a-z0-9_*-]+(\.[a-z0-9_*-]+)*|[0-9a-f:.]+")
# ``[v6]`` or ``[v6]:port``, and ``host:port`` (one colon): the part before the port
_WITH_PORT: Final = re.compile(r"\[([^\]]*)\](?::[0-9]*)?|([^:\[\]]*):[0-9]*")
_ALNUM: Final = re.compile(r"[a-z0-9]")
NOT_HOST: Final = "not_host_name"  # Sighting.extra key: an observation, never matched


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


def observed_name(raw: str) -> str | None:
    """A TLS server_name or HTTP Host that ``host_name`` refuses (``server4:443``,
    ``[::1]:8000``, other characters), normalised to be kept as an observation: lowercase,
    an IPv6 literal without brackets, no port, no trailing dot. None when no letter or digit
    is left, it holds a blank or a control character, or it is longer than 253.

    Such a value is never matched against the packs, even when the part before the port is a
    watched name: a client that sends it is not a client following the protocol, and a name
    match on it would be a guess (the sensor's ``Sighting.extra[NOT_HOST]``)."""
    text = raw.strip().lower()
    m = _WITH_PORT.fullmatch(text)
    if m is not None:
        text = m.group(1) if m.group(1) is not None else m.group(2)
    text = text.rstrip(".")
    if len(text) > 253 or not text.isascii() or not text.isprintable() or " " in text:
        return None
    return text if _ALNUM.search(text) else None  # "/" (a CONNECT to a path) names nothing


def sni_name(raw: str) -> tuple[str | None, bool]:
    """A TLS/QUIC server_name as the sensor keeps it: (name, whether it is a host name).
    ``host_name``, else ``observed_name`` (flagged ``NOT_HOST``, never matched); (None,
    False) when neither keeps anything. The capture path and the peer readers share it."""
    name = host_name(raw)
    return (name, True) if name is not None else (observed_name(raw), False)
