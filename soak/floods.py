"""Floods through the real sensor pipeline (``Sensor.process_frame``), at million scale.

    .venv/bin/python soak/floods.py [--n 250000] [--flood dns|syn|hello|quic|udp|frag|all]

Each flood runs twice, each time in a fresh process, at N and at 4N, and prints: packets,
hits, decode errors, peak RSS, the live size of every state table, and its evictions.
Memory must not grow with the flood (the 4N figure stays near the N one) because every
table has a cap; evictions must grow instead. tests/test_floods.py runs the same floods at
CI size with small caps and asserts it.

Floods:
- dns:   N/2 queries + N/2 answers for unique random names under ksn.kaspersky-labs.com (a
         watched zone): every one is a hit; each answer's address feeds IP attribution.
- syn:   N TCP SYNs from random sources and ports, half to a Kaspersky prefix (hits).
- hello: N TCP streams that send the first 20 bytes of a ClientHello and never finish.
- ooo:   TCP streams (N packets in all) that send a 20-byte ClientHello head, then ten
         1400-byte segments past a gap that is never filled: the reassembly's held bytes.
- quic:  N/2 QUIC v1 Initials with valid-looking long headers, random DCIDs and garbage
         payloads, and N/2 authentic Initials carrying a partial ClientHello, each from
         its own random client port (CRYPTO reassembly state that never completes).
- udp:   N UDP datagrams (not QUIC, not DNS) from random sources to a Kaspersky prefix:
         every one starts a watched flow (a hit) and an entry in the UDP flow table.
- frag:  N first fragments of IPv4 datagrams that never complete.

N counts flood units: for dns a unit is one unique name (a query and its answer, two
packets), for the others one packet. ``--n 250000`` (the default) makes the 4N run of the
dns flood the issue's million unique subdomains.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from sensor.pipeline import Sensor  # noqa: E402
from sensor.rules.indicators import load_pack  # noqa: E402
from sensor.rules.match import Matcher  # noqa: E402

Frame = tuple[int, int, bytes]
T0: Final = 1_780_000_000_000_000_000
ETH: Final = b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02\x08\x00"
RESOLVER: Final = bytes([10, 0, 0, 53])
KASPERSKY_NET: Final = bytes([37, 203, 128, 10])  # in the pack's 37.203.128.0/23
OTHER_NET: Final = bytes([192, 0, 2, 1])
WATCHED_ZONE: Final = "ksn.kaspersky-labs.com"
FLOODS: Final = ("dns", "syn", "hello", "ooo", "quic", "udp", "frag")


# -- frames ------------------------------------------------------------------------------


def ipv4(src: bytes, dst: bytes, proto: int, l4: bytes, ident: int = 0, frag: int = 0) -> bytes:
    head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), ident, frag, 64, proto, 0, src, dst)
    return ETH + head + l4


def udp(src: bytes, sport: int, dst: bytes, dport: int, payload: bytes) -> bytes:
    return ipv4(src, dst, 17, struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload)


def tcp(
    src: bytes, sport: int, dst: bytes, dport: int, seq: int, flags: int, payload: bytes
) -> bytes:
    head = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 0x50, flags, 65535, 0, 0)
    return ipv4(src, dst, 6, head + payload)


def rand_ip(rng: random.Random) -> bytes:
    return bytes([10, rng.randrange(256), rng.randrange(256), rng.randrange(1, 255)])


def _dns_name(qname: str) -> bytes:
    return b"".join(bytes([len(x)]) + x.encode() for x in qname.split(".")) + b"\x00"


def dns_query(qid: int, qname: str) -> bytes:
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + _dns_name(qname) + b"\x00\x01\x00\x01"


def dns_answer(qid: int, qname: str, addr: bytes) -> bytes:
    head = struct.pack("!HHHHHH", qid, 0x8180, 1, 1, 0, 0) + _dns_name(qname) + b"\x00\x01\x00\x01"
    return head + b"\xc0\x0c\x00\x01\x00\x01" + struct.pack("!IH", 300, 4) + addr


def random_label(rng: random.Random) -> str:
    return "".join(rng.choices("abcdefghijklmnopqrstuvwxyz0123456789", k=rng.randint(8, 24)))


# -- floods: each yields frames and knows how many hits it must produce ---------------------


def flood_name(i: int, rng: random.Random) -> str:
    return f"{random_label(rng)}-{i}.{WATCHED_ZONE}"


def flood_addr(i: int) -> bytes:
    return bytes([198, 18 + (i >> 16 & 1), i >> 8 & 0xFF, i & 0xFF])


def dns_flood(n: int, seed: int = 1) -> Iterator[Frame]:
    """n unique names under the watched zone, each asked and answered; the answers point
    at distinct addresses in 198.18.0.0/15 (each an IP attribution)."""
    rng = random.Random(seed)
    for i in range(n):
        name = flood_name(i, rng)
        client, port, qid = rand_ip(rng), rng.randrange(1024, 65536), i & 0xFFFF
        addr = flood_addr(i)
        ts = T0 + i * 1000
        yield ts, 1, udp(client, port, RESOLVER, 53, dns_query(qid, name))
        yield ts + 500, 1, udp(RESOLVER, 53, client, port, dns_answer(qid, name, addr))


def syn_flood(n: int, seed: int = 2) -> Iterator[Frame]:
    rng = random.Random(seed)
    for i in range(n):
        dst = KASPERSKY_NET if i % 2 == 0 else OTHER_NET
        port = rng.randrange(32768, 61000)  # ephemeral; 5353/5355 would be read as DNS
        frame = tcp(rand_ip(rng), port, dst, 443, rng.getrandbits(32), 0x02, b"")
        yield T0 + i * 1000, 1, frame


HELLO_HEAD: Final = bytes.fromhex("160301020001 0001fc 0303") + bytes(11)  # 20 bytes of a hello


def hello_flood(n: int, seed: int = 3) -> Iterator[Frame]:
    rng = random.Random(seed)
    for i in range(n):
        frame = tcp(
            rand_ip(rng),
            rng.randrange(1024, 65536),
            OTHER_NET,
            443,
            rng.getrandbits(32),
            0x18,
            HELLO_HEAD,
        )
        yield T0 + i * 1000, 1, frame


def ooo_flood(n: int, seed: int = 7) -> Iterator[Frame]:
    rng = random.Random(seed)
    chunk = bytes(1400)
    for i in range(n // 11):
        src, port, seq = rand_ip(rng), rng.randrange(1024, 65536), rng.getrandbits(32)
        ts = T0 + i * 11_000
        yield ts, 1, tcp(src, port, OTHER_NET, 443, seq, 0x18, HELLO_HEAD)
        for k in range(10):  # bytes [20, 1000) never come
            at = (seq + 1000 + k * 1400) % (1 << 32)
            yield ts + k + 1, 1, tcp(src, port, OTHER_NET, 443, at, 0x18, chunk)


def partial_initial(dcid: bytes) -> bytes:
    """An authentic client Initial (QUIC v1) whose CRYPTO frame holds only the first 200
    bytes of a 1000-byte ClientHello: it decrypts, opens reassembly state and never ends."""
    from aioquic.quic.crypto import CryptoPair

    hello = b"\x01" + (996).to_bytes(3, "big") + bytes(196)
    frames = b"\x06\x00" + (0x4000 | len(hello)).to_bytes(2, "big") + hello + bytes(900)
    pair = CryptoPair()
    pair.setup_initial(cid=dcid, is_client=True, version=1)
    header = b"\xc1" + (1).to_bytes(4, "big") + bytes([len(dcid)]) + dcid + b"\x00\x00"
    header += (0x4000 | (2 + len(frames) + 16)).to_bytes(2, "big") + (0).to_bytes(2, "big")
    return pair.encrypt_packet(header, frames, 0)


def quic_flood(n: int, seed: int = 4) -> Iterator[Frame]:
    rng = random.Random(seed)
    # distinct DCIDs, more than the tracker caches keys for (1024): its key cache evicts too
    authentic = [partial_initial(rng.randbytes(8)) for _ in range(min(2048, n // 2 + 1))]
    for i in range(n):
        src, port = rand_ip(rng), rng.randrange(1024, 65536)
        if i % 2:
            payload = authentic[i // 2 % len(authentic)]
        else:
            dcid = rng.randbytes(rng.randint(8, 20))
            payload = b"\xc3\x00\x00\x00\x01" + bytes([len(dcid)]) + dcid + b"\x00\x00"
            payload += (0x4000 | 1180).to_bytes(2, "big") + rng.randbytes(1180)
        yield T0 + i * 1000, 1, udp(src, port, OTHER_NET, 443, payload)


UDP_JUNK: Final = b"\x17" + bytes(40)  # neither DNS nor QUIC


def udp_flood(n: int) -> Iterator[Frame]:
    for i in range(n):
        src = bytes([10, i >> 16 & 0xFF, i >> 8 & 0xFF, i & 0xFF])  # distinct: each a new flow
        yield T0 + i * 1000, 1, udp(src, 40000, KASPERSKY_NET, 7000, UDP_JUNK)


def frag_flood(n: int, seed: int = 5) -> Iterator[Frame]:
    rng = random.Random(seed)
    body = struct.pack("!HHHH", 5000, 53, 1208, 0) + bytes(1200)  # a first fragment: UDP head
    for i in range(n):
        frame = ipv4(rand_ip(rng), RESOLVER, 17, body, ident=rng.getrandbits(16), frag=0x2000)
        yield T0 + i * 1000, 1, frame


GENERATORS: Final[dict[str, Callable[[int], Iterator[Frame]]]] = {
    "dns": dns_flood,
    "syn": syn_flood,
    "hello": hello_flood,
    "ooo": ooo_flood,
    "quic": quic_flood,
    "udp": udp_flood,
    "frag": frag_flood,
}


def expected_hits(flood: str, n: int) -> int:
    return {"dns": 2 * n, "syn": (n + 1) // 2, "udp": n}.get(flood, 0)


def table_sizes(sensor: Sensor) -> dict[str, int]:
    """Live entries in every state table of the sensor (the caps bound these)."""
    quic = sensor.quic
    frags = sensor.decoder._frags
    return {
        "tcp_streams": len(sensor.streams),
        "tcp_stream_bytes": sensor.streams.bytes,
        "quic_connections": len(quic),
        "quic_by_dcid": len(quic._by_dcid),
        "quic_by_flow": len(quic._by_flow),
        "quic_keys": len(quic._keys),  # capped at quic._max_keys
        "fragments": len(frags) if frags is not None else 0,
        "attributions": len(sensor.flows),
        "udp_flows": len(sensor.flows._udp),
    }


def make_sensor(caps: dict[str, int] | None = None) -> Sensor:
    """The real pipeline; ``caps`` shrinks the tables (CI sizes): streams, quic, flows, frags."""
    sensor = Sensor(Matcher(load_pack()), "soak")
    caps = caps or {}
    if "streams" in caps:
        sensor.streams.max_flows = caps["streams"]
    if "stream_bytes" in caps:
        sensor.streams.max_bytes = caps["stream_bytes"]
    if "quic" in caps:
        sensor.quic.max_connections = caps["quic"]
        sensor.quic._max_keys = max(16, min(caps["quic"], 1024))  # as the constructor would
    if "flows" in caps:
        sensor.flows.max_attributions = sensor.flows.max_udp_flows = caps["flows"]
    if "frags" in caps and sensor.decoder._frags is not None:
        sensor.decoder._frags.max_datagrams = caps["frags"]
    return sensor


def run(flood: str, n: int) -> dict[str, object]:
    sensor = make_sensor()
    start = time.monotonic()
    hits = sum(len(sensor.process_frame(*f)) for f in GENERATORS[flood](n))
    return {
        "flood": flood,
        "packets": sensor.stats.packets,
        "hits": hits,
        "expected_hits": expected_hits(flood, n),
        "decode_errors": sensor.stats.decode_errors,
        "seconds": round(time.monotonic() - start, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "tables": table_sizes(sensor),
        "evictions": sensor.evictions(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--n", type=int, default=250_000, help="flood units at the small size (4N follows)"
    )
    ap.add_argument("--flood", choices=[*FLOODS, "all"], default="all")
    ap.add_argument(
        "--one", action="store_true", help=argparse.SUPPRESS
    )  # child: one run, one line
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(run(args.flood, args.n)))
        return 0
    failed = 0
    for flood in FLOODS if args.flood == "all" else (args.flood,):
        rows = []
        for n in (args.n, 4 * args.n):
            proc = subprocess.run(
                [sys.executable, __file__, "--one", "--flood", flood, "--n", str(n)],
                capture_output=True, text=True, check=False, env={**os.environ, "PYTHONHASHSEED": "0"},
            )  # fmt: skip
            if proc.returncode:
                print(proc.stderr[-3000:])
                return 1
            rows.append(json.loads(proc.stdout))
        for r in rows:
            print(
                f"{r['flood']:<6} packets={r['packets']:>9,} hits={r['hits']:>9,} "
                f"(expected {r['expected_hits']:,}) errors={r['decode_errors']:>9,} "
                f"rss={r['peak_rss_mib']:>7} MiB time={r['seconds']:>6}s"
            )
            print(f"       tables={r['tables']}")
            print(f"       evictions={r['evictions']}")
        small, big = rows
        grew = big["peak_rss_mib"] / small["peak_rss_mib"]  # type: ignore[operator]
        ok = grew < 1.5 and all(r["hits"] == r["expected_hits"] for r in rows)
        failed += not ok
        print(f"       RSS 4N/N = {grew:.2f} -> {'bounded' if ok else 'NOT BOUNDED or hits wrong'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
