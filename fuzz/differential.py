"""The compiled decoders (``kaspwatch_native``) against the pure-Python ones, the reference:
for any input both give the same sightings, or the same ``DecodeError`` message.

Shared by the differential fuzz target (``fuzz/targets.py``: ``native``) and the tests
(``tests/test_native.py``: hypothesis, the fuzz seeds, every corpus capture). Each check
raises AssertionError naming the decoder and the input; with no compiled module built there
is nothing to compare and each returns at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sensor.decode import DecodeError
from sensor.decode.native import COMPILED, NATIVE, PURE
from sensor.decode.quic import (
    _INITIAL_TYPE,
    _LABELS,
    _LABELS_V1,
    _SALTS,
    _Keys,
    _long_header,
    _open,
    client_initial_secrets,
)


def outcome(f: Callable[..., Any], *args: Any) -> str:
    """What a call gave, as text: the result's repr (Sighting fields, extra's own type) or
    the DecodeError's message. Any other exception propagates: a crash either way."""
    try:
        return repr(("ok", f(*args)))
    except DecodeError as exc:
        return repr(("error", str(exc)))


def check_decoders(data: bytes) -> None:
    """Every ported decoder on ``data``, pure against compiled."""
    if COMPILED is None:
        return
    calls: tuple[tuple[str, tuple[Any, ...]], ...] = (
        ("decode_dns", (data,)),
        ("looks_like_dns", (data,)),
        ("parse_client_hello", (data, "tls_sni")),
        ("hello_from_stream", (data,)),
        ("decode_http_request", (data,)),
    )
    for name, args in calls:
        pure = outcome(getattr(PURE, name), *args)
        compiled = outcome(getattr(COMPILED, name), *args)
        assert pure == compiled, f"{name}({data!r}): pure {pure} != compiled {compiled}"


def protect(version: int, dcid: bytes, pn: int, pn_len: int, plain: bytes) -> bytes:
    """A client Initial carrying ``plain``, protected with ``cryptography`` (RFC 9001 5.3-5.4)."""
    secrets = client_initial_secrets(version, dcid)
    plain = plain + bytes(max(0, 4 - len(plain)))  # room for the header-protection sample
    length = pn_len + len(plain) + 16
    first = 0xC0 | (_INITIAL_TYPE[version] << 4) | (pn_len - 1)
    header = bytes([first]) + version.to_bytes(4, "big") + bytes([len(dcid)]) + dcid
    header += b"\x00\x00" + (0x4000 | length).to_bytes(2, "big")  # no SCID, no token
    pn_offset = len(header)
    header += (pn % (1 << (8 * pn_len))).to_bytes(pn_len, "big")
    nonce = (int.from_bytes(secrets.iv, "big") ^ pn).to_bytes(12, "big")
    packet = bytearray(header + AESGCM(secrets.key).encrypt(nonce, plain, header))
    hp = Cipher(algorithms.AES(secrets.hp), modes.ECB()).encryptor()
    mask = hp.update(bytes(packet[pn_offset + 4 : pn_offset + 20]))
    packet[0] ^= mask[0] & 0x0F
    for i in range(pn_len):
        packet[pn_offset + i] ^= mask[1 + i]
    return bytes(packet)


def check_quic_open(packet: bytes, dcid: bytes, largest_pn: int, version: int = 1) -> None:
    """Header protection and decryption of the Initial at the start of ``packet``."""
    if NATIVE is None or version not in _SALTS:
        return
    try:
        hdr = _long_header(packet, 0) if packet else None
    except DecodeError:
        return
    if hdr is None:
        return
    pure = outcome(_open, packet, hdr, _Keys(client_initial_secrets(version, dcid)), largest_pn)
    keys = NATIVE.initial_keys(_SALTS[version], dcid, *_LABELS.get(version, _LABELS_V1))
    args = (packet, hdr.start, hdr.pn_offset, hdr.end, largest_pn)
    compiled = outcome(NATIVE.open_initial, keys, *args)
    assert pure == compiled, f"open({packet!r}, {dcid!r}): pure {pure} != compiled {compiled}"
