"""TLS ClientHello: the server_name extension, and whether Encrypted Client Hello is offered."""

from __future__ import annotations

from typing import Final

from sensor.decode import NOT_HOST, DecodeError, Sighting, sni_name

EXT_SERVER_NAME: Final = 0
EXT_ECH: Final = 0xFE0D


def looks_like_client_hello(payload: bytes) -> bool:
    return len(payload) >= 6 and payload[0] == 0x16 and payload[1] == 3 and payload[5] == 1


MAX_HELLO: Final = 65536


def hello_from_stream(buf: bytes) -> tuple[bool, Sighting | None]:
    """Parse the start of a client->server TLS stream: ``(complete, sighting)``.

    The ClientHello may be cut into several TCP segments (small MSS) and, per RFC 8446
    5.1, into several handshake records; both are joined here. ``complete`` is False
    while more bytes are needed.
    """
    hs = bytearray()
    pos = 0
    while pos + 5 <= len(buf):
        if buf[pos] != 0x16 or buf[pos + 1] != 3:
            raise DecodeError("tls stream: a non-handshake record before the hello ended")
        rec_len = int.from_bytes(buf[pos + 3 : pos + 5], "big")
        frag = buf[pos + 5 : pos + 5 + rec_len]
        hs += frag
        if len(hs) >= 4:
            if hs[0] != 1:
                return True, None  # a handshake, but not a ClientHello
            need = 4 + int.from_bytes(hs[1:4], "big")
            if need > MAX_HELLO:
                raise DecodeError(f"tls client hello claims {need} bytes")
            if len(hs) >= need:
                return True, parse_client_hello(bytes(hs[4:need]), "tls_sni")
        if len(frag) < rec_len:
            return False, None
        pos += 5 + rec_len
    return False, None


def decode_client_hello_record(payload: bytes) -> Sighting | None:
    """SNI from a TLS record holding a ClientHello (first cut: the hello in one segment)."""
    if not looks_like_client_hello(payload):
        return None
    rec_len = int.from_bytes(payload[3:5], "big")
    body = payload[5 : 5 + rec_len]
    if len(body) < 4:
        raise DecodeError("tls handshake header cut short")
    hs_len = int.from_bytes(body[1:4], "big")
    return parse_client_hello(body[4 : 4 + hs_len], "tls_sni")


def parse_client_hello(hello: bytes, kind: str) -> Sighting | None:
    """Parse a ClientHello body (after the 4-byte handshake header). Shared with QUIC."""
    try:
        pos = 2 + 32  # legacy_version, random
        pos += 1 + hello[pos]  # session id
        pos += 2 + int.from_bytes(hello[pos : pos + 2], "big")  # cipher suites
        pos += 1 + hello[pos]  # compression methods
        if pos + 2 > len(hello):
            return None  # no extensions at all
        ext_end = pos + 2 + int.from_bytes(hello[pos : pos + 2], "big")
        pos += 2
        sni: str | None = None
        ech = False
        while pos + 4 <= min(ext_end, len(hello)):
            etype = int.from_bytes(hello[pos : pos + 2], "big")
            elen = int.from_bytes(hello[pos + 2 : pos + 4], "big")
            data = hello[pos + 4 : pos + 4 + elen]
            if len(data) < elen:
                raise DecodeError("tls extension cut short")
            if etype == EXT_SERVER_NAME:
                sni = _server_name(data)
            elif etype == EXT_ECH:
                ech = True
            pos += 4 + elen
    except IndexError:
        raise DecodeError("tls client hello cut short") from None
    if sni is None:
        return None
    extra: dict[str, bool] = {"ech": True} if ech else {}
    name, is_host = sni_name(sni)
    if name is None:
        return None
    if not is_host:  # not a host name (``server4:443``): an observation, never a match
        extra[NOT_HOST] = True
    return Sighting(kind, name, extra=extra)


def _server_name(data: bytes) -> str | None:
    """The host_name entry of a server_name extension, as sent."""
    pos = 2  # server_name_list length
    while pos + 3 <= len(data):
        ntype = data[pos]
        nlen = int.from_bytes(data[pos + 1 : pos + 3], "big")
        raw = data[pos + 3 : pos + 3 + nlen]
        if ntype == 0:
            try:
                return raw.decode("ascii")
            except UnicodeDecodeError:
                raise DecodeError("tls server_name is not ASCII") from None
        pos += 3 + nlen
    return None
