"""IP fragment reassembly (IPv4 and the IPv6 Fragment header), bounded.

Datagrams are keyed by ``(src, dst, id, proto)``. At most ``max_datagrams`` are in
flight, each at most 64 KiB; the oldest is evicted to make room, and any older than the
TTL goes when the next fragment arrives. Where fragments overlap, the bytes that came
first win (the later copy is ignored, as the BSD stacks do). A completed datagram comes
back as the bytes after the IP header(s): the transport header and its payload.
"""

from __future__ import annotations

from typing import Final

from sensor.decode import DecodeError

FragKey = tuple[bytes, bytes, int, int]  # (src, dst, identification, protocol)

MAX_DATAGRAM: Final = 65535


class _Datagram:
    """One datagram being put together: bytes so far and the spans they cover."""

    __slots__ = ("born_ns", "buf", "spans", "total")

    def __init__(self, born_ns: int) -> None:
        self.born_ns = born_ns
        self.buf = bytearray()
        self.spans: list[tuple[int, int]] = []  # sorted, disjoint, non-adjacent [start, stop)
        self.total = -1  # known once the last fragment (more-fragments clear) arrives

    def add(self, start: int, data: bytes, lo: int, hi: int) -> None:
        """Copy ``data[lo:hi]`` to offset ``start`` where nothing was yet."""
        stop = start + hi - lo
        if len(self.buf) < stop:
            self.buf.extend(bytes(stop - len(self.buf)))
        cur = start
        for s, e in self.spans:
            if e <= cur:
                continue
            if s >= stop:
                break
            if s > cur:
                self.buf[cur:s] = data[lo + cur - start : lo + s - start]
            cur = e
            if cur >= stop:
                break
        if cur < stop:
            self.buf[cur:stop] = data[lo + cur - start : hi]
        self._merge(start, stop)

    def _merge(self, start: int, stop: int) -> None:
        merged: list[tuple[int, int]] = []
        for s, e in sorted([*self.spans, (start, stop)]):
            if merged and s <= merged[-1][1]:
                if e > merged[-1][1]:
                    merged[-1] = (merged[-1][0], e)
            else:
                merged.append((s, e))
        self.spans = merged

    def complete(self) -> bool:
        return self.total >= 0 and self.spans == [(0, self.total)]


class Reassembler:
    """Fragments in, whole transport payloads out. Not thread-safe."""

    __slots__ = ("_table", "evicted", "max_datagrams", "reassembled", "ttl_ns")

    def __init__(self, max_datagrams: int = 1024, ttl_ns: int = 30_000_000_000) -> None:
        if max_datagrams < 1:
            raise ValueError("max_datagrams must be at least 1")
        self.max_datagrams = max_datagrams
        self.ttl_ns = ttl_ns
        self.reassembled = 0  # datagrams completed
        self.evicted = 0  # datagrams dropped unfinished (full table or TTL)
        self._table: dict[FragKey, _Datagram] = {}

    def __len__(self) -> int:
        return len(self._table)

    def add(
        self, key: FragKey, offset: int, more: bool, data: bytes, lo: int, hi: int, ts_ns: int
    ) -> bytes | None:
        """Add the fragment ``data[lo:hi]`` at byte ``offset``; the payload once complete.

        Raises DecodeError (and drops the datagram) when it would pass 64 KiB or its
        fragments disagree on where it ends.
        """
        self._expire(ts_ns)
        dgram = self._entry(key, ts_ns)
        stop = offset + hi - lo
        if stop > MAX_DATAGRAM:
            del self._table[key]
            raise DecodeError(f"ipfrag datagram larger than {MAX_DATAGRAM} bytes")
        if not more:
            self._set_total(key, dgram, stop)
        if dgram.total >= 0:
            hi = min(hi, lo + max(0, dgram.total - offset))
        if hi > lo:
            dgram.add(offset, data, lo, hi)
        if not dgram.complete():
            return None
        del self._table[key]
        self.reassembled += 1
        return bytes(dgram.buf[: dgram.total])

    def _entry(self, key: FragKey, ts_ns: int) -> _Datagram:
        dgram = self._table.get(key)
        if dgram is not None and ts_ns - dgram.born_ns <= self.ttl_ns:
            return dgram
        if dgram is not None:  # a stale datagram with a reused id: start afresh
            del self._table[key]
            self.evicted += 1
        elif len(self._table) >= self.max_datagrams:
            del self._table[next(iter(self._table))]
            self.evicted += 1
        dgram = self._table[key] = _Datagram(ts_ns)
        return dgram

    def _set_total(self, key: FragKey, dgram: _Datagram, total: int) -> None:
        if dgram.total >= 0:
            return  # the first last-fragment wins
        if dgram.spans and dgram.spans[-1][1] > total:
            del self._table[key]
            raise DecodeError("ipfrag last fragment ends before data already received")
        dgram.total = total

    def _expire(self, ts_ns: int) -> None:
        table = self._table
        while table:
            key = next(iter(table))
            if ts_ns - table[key].born_ns <= self.ttl_ns:
                return
            del table[key]
            self.evicted += 1
