"""QUIC Initial payloads, decrypted: their CRYPTO frames, and the CRYPTO stream they make
(the ClientHello, reassembled by offset and bounded) -- read by ``sensor.decode.quic``."""

from __future__ import annotations

import re
from bisect import insort
from typing import Final

from sensor.decode import DecodeError

_MAX_RANGES: Final = 512  # CRYPTO fragments kept apart per connection before giving up
_HELLO: Final = 0x01
_NONZERO: Final = re.compile(rb"[^\x00]")


def varint(data: bytes, pos: int) -> tuple[int, int]:
    """A QUIC variable-length integer at ``pos``: (value, position after it)."""
    if pos >= len(data):
        raise DecodeError("quic varint cut short")
    size = 1 << (data[pos] >> 6)
    end = pos + size
    if end > len(data):
        raise DecodeError("quic varint cut short")
    value = int.from_bytes(data[pos:end], "big") & ((1 << (8 * size - 2)) - 1)
    return value, end


def crypto_frames(plain: bytes) -> list[tuple[int, bytes]]:
    """(offset, data) of the CRYPTO frames in a decrypted Initial payload.

    PADDING, PING and ACK are skipped; any other frame ends the walk (Initials carry little else).
    """
    out: list[tuple[int, bytes]] = []
    pos, n = 0, len(plain)
    while pos < n:
        ftype = plain[pos]
        if ftype == 0x00:  # PADDING, usually a long run
            m = _NONZERO.search(plain, pos)
            if m is None:
                break
            pos = m.start()
        elif ftype == 0x01:  # PING
            pos += 1
        elif ftype in (0x02, 0x03):  # ACK, ACK with ECN counts
            pos = _skip_ack(plain, pos + 1, ecn=ftype == 0x03)
        elif ftype == 0x06:
            offset, pos = varint(plain, pos + 1)
            length, pos = varint(plain, pos)
            if pos + length > n:
                raise DecodeError("quic CRYPTO frame runs past the packet")
            out.append((offset, plain[pos : pos + length]))
            pos += length
        else:
            break
    return out


def _skip_ack(plain: bytes, pos: int, *, ecn: bool) -> int:
    _, pos = varint(plain, pos)  # largest acknowledged
    _, pos = varint(plain, pos)  # ack delay
    ranges, pos = varint(plain, pos)
    _, pos = varint(plain, pos)  # first ack range
    for _ in range(ranges):  # each varint takes a byte or more: ends at the payload's end
        _, pos = varint(plain, pos)
        _, pos = varint(plain, pos)
    for _ in range(3 if ecn else 0):
        _, pos = varint(plain, pos)
    return pos


class CryptoStream:
    """Initial-level CRYPTO bytes of one connection, reassembled by offset, capped at ``cap``."""

    __slots__ = ("buf", "cap", "ranges")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.buf = bytearray()
        self.ranges: list[tuple[int, int]] = []  # disjoint, sorted [start, end)

    def add(self, offset: int, data: bytes) -> None:
        """Store ``data`` at ``offset``; bytes at or past ``cap`` are dropped."""
        end = min(offset + len(data), self.cap)
        if end <= offset:
            return
        if end > len(self.buf):
            self.buf.extend(bytes(end - len(self.buf)))
        self.buf[offset:end] = data[: end - offset]
        insort(self.ranges, (offset, end))
        merged: list[tuple[int, int]] = []
        for start, stop in self.ranges:
            if merged and start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], stop))
            else:
                merged.append((start, stop))
        if len(merged) > _MAX_RANGES:
            raise DecodeError("quic CRYPTO stream in too many fragments")
        self.ranges = merged

    def hello(self) -> bytes | None:
        """The ClientHello body once bytes [0, 4 + length) are all in, else None."""
        if not self.ranges or self.ranges[0][0] != 0:
            return None
        have = self.ranges[0][1]
        if have < 4:
            return None
        if self.buf[0] != _HELLO:
            raise DecodeError(f"quic CRYPTO stream starts with handshake type {self.buf[0]}")
        need = 4 + int.from_bytes(self.buf[1:4], "big")
        if need > self.cap:
            raise DecodeError(f"quic ClientHello of {need} bytes exceeds the {self.cap}-byte cap")
        return bytes(self.buf[4:need]) if have >= need else None
