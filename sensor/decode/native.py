"""Which decoders run: the compiled ones (``kaspwatch_native``, built from ``native/`` by
``make`` when a Rust toolchain is there) or the pure-Python ones, the reference.

The compiled module ports ``decode_dns``, ``looks_like_dns``, ``parse_client_hello``,
``hello_from_stream``, ``decode_http_request`` and the QUIC Initial key derivation and
decryption, with the same results and the same ``DecodeError`` messages
(``tests/test_native.py`` compares them). ``KASPWATCH_PURE=1`` in the environment (or
``kaspwatch scan --pure-decoders``, which sets it before the sensor loads) selects the
pure-Python decoders; so does a machine where the module was not built. The choice is made
once, when this module is first imported, and ``notice`` says it once per process.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from types import ModuleType
from typing import Final, NamedTuple

from sensor.decode import NO_EXTRA, DecodeError, Sighting, dns, http, tls

PURE_ENV: Final = "KASPWATCH_PURE"


def _load() -> tuple[ModuleType | None, str]:
    if os.environ.get(PURE_ENV, "") not in ("", "0"):
        return None, f"{PURE_ENV} is set"
    try:
        import kaspwatch_native
    except ImportError:
        return None, "not built (no Rust toolchain at install)"
    if Sighting._fields != kaspwatch_native.SIGHTING_FIELDS:  # built from older sources
        return None, "out of date (run make to rebuild them)"
    kaspwatch_native.bind(Sighting, NO_EXTRA, DecodeError)
    return kaspwatch_native, ""


NATIVE, WHY_PURE = _load()


class Decoders(NamedTuple):
    """One set of decoders: the pure-Python ones or the compiled ones."""

    decode_dns: Callable[[bytes], list[Sighting]]
    looks_like_dns: Callable[[bytes], bool]
    parse_client_hello: Callable[[bytes, str], Sighting | None]
    hello_from_stream: Callable[[bytes], tuple[bool, Sighting | None]]
    decode_http_request: Callable[[bytes], list[Sighting]]


PURE: Final = Decoders(
    dns.decode_dns,
    dns.looks_like_dns,
    tls.parse_client_hello,
    tls.hello_from_stream,
    http.decode_http_request,
)
COMPILED: Final = (
    Decoders(
        NATIVE.decode_dns,
        NATIVE.looks_like_dns,
        NATIVE.parse_client_hello,
        NATIVE.hello_from_stream,
        NATIVE.decode_http_request,
    )
    if NATIVE is not None
    else None
)
CHOSEN: Final = COMPILED if COMPILED is not None else PURE


def decoders(pure: bool = False) -> Decoders:
    """The pure-Python set when asked for, else the chosen one (compiled when built)."""
    return PURE if pure else CHOSEN


_told = False


def describe() -> str:
    if NATIVE is not None:
        return "compiled decoders (kaspwatch_native)"
    return f"pure-Python decoders: compiled decoders {WHY_PURE}"


def notice(log: logging.Logger) -> None:
    """Say once per process which decoders run: INFO when the compiled ones are missing."""
    global _told
    if _told:
        return
    _told = True
    if NATIVE is not None:
        log.debug("using the %s", describe())
    elif WHY_PURE.startswith("not built"):
        log.info("compiled decoders not built (no Rust toolchain): using the pure-Python decoders")
    else:
        log.info("using the %s", describe())
