"""Write a realistic mixed capture for the scan benchmark, deterministically (seeded).

    .venv/bin/python bench/gen_mixed.py OUT.pcap [--packets 1000000] [--seed 1]
                                        [--upload-share 0.12]

The mix (Ethernet, no VLAN; 20% of sessions over IPv6), interleaved over 48 concurrent
sessions the way a busy uplink looks:

- TCP downloads and uploads (``--upload-share`` of the TCP sessions, 12%): handshake, a ClientHello or an HTTP request, then bulk data
  (1460/1440-byte segments) with an ACK every second segment, then FIN;
- TLS ClientHellos: ~70% ordinary (~520 bytes), ~30% post-quantum (~1.8 kB, an X25519MLKEM768
  key share) split over two segments, a third of those with the SNI in the second
  segment; a few TLS servers on port 8443;
- HTTP/1.1 GETs with a Host header, and a proxy CONNECT followed by the tunnelled hello;
  downloads answer with a response head in a segment of its own, then the body;
- Kaspersky updater flows (``UPDATER_SHARE`` of the HTTP sessions): HTTP/1.0 GETs of
  updater paths (``/index/u1313g.xml.klz``, ``/updaters/updater.xml.dif``...) with the
  destination address as Host and an opaque User-Agent, answered by a head segment and a
  body segment starting with ``KLZF``/``KLD2`` (what the content signals read; no name);
- DNS over UDP (a few per cent of the packets): queries in 0x20 mixed case, answers
  echoing it, some with CNAME chains from an innocent name into a Kaspersky one;
- QUIC v1: a client Initial properly protected (RFC 9001 keys, AES-GCM, header protection)
  carrying the ClientHello, a server long-header packet, then short-header bulk on 443.

About 2% of the names are Kaspersky names taken from the shipped pack. Next to OUT.pcap,
OUT.pcap.expected.json lists the Kaspersky names the file carries (lower case) and what
the file holds, so the benchmark can check every tool found them. Raw bytes are
assembled with ``struct``: a million packets take a few seconds.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import random
import struct
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sensor.decode.quic import client_initial_secrets
from sensor.rules.indicators import expand_range, load_pack

SESSIONS_IN_FLIGHT = 48
KASPERSKY_SHARE = 0.02
UPDATER_SHARE = 0.03  # of the HTTP sessions
UPDATER_PATHS = (
    "/index/u1313g.xml.klz",
    "/updaters/updater.xml.dif",
    "/updaters/updater.xml.klz",
    "/bases/av/kdb/i386/kdb-i386-0607g.xml.klz",
    "/diffs/bases/av/kdb/i386/kdb-i386-0607g.xml.dif",
)
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
MAC_CLIENT, MAC_SERVER = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")
ETH4 = MAC_SERVER + MAC_CLIENT + b"\x08\x00"
ETH6 = MAC_SERVER + MAC_CLIENT + b"\x86\xdd"
ETH4_BACK = MAC_CLIENT + MAC_SERVER + b"\x08\x00"
ETH6_BACK = MAC_CLIENT + MAC_SERVER + b"\x86\xdd"
SYN, SYN_ACK, ACK, PSH_ACK, FIN_ACK = 0x02, 0x12, 0x10, 0x18, 0x11

_ip4 = struct.Struct("!BBHHHBBH4s4s")
_ip6 = struct.Struct("!IHBB16s16s")
_tcp = struct.Struct("!HHIIBBHHH")
_udp = struct.Struct("!HHHH")
_rec = struct.Struct("<IIII")

INNOCENT_ZONES = """google.com googleapis.com gstatic.com youtube.com microsoft.com windowsupdate.com
office.com live.com azureedge.net akamaiedge.net cloudflare.com cloudfront.net amazonaws.com
apple.com icloud.com fbcdn.net github.com slack.com zoom.us adobe.com digicert.com ubuntu.com
debian.org mozilla.org example.com example.org bbc.co.uk wikipedia.org""".split()  # noqa: SIM905


class Endpoint:
    """One side of a conversation: addresses, ports, and the frame header for sending."""

    __slots__ = ("dport", "dst", "eth", "sport", "src", "v6")

    def __init__(
        self, v6: bool, src: bytes, dst: bytes, sport: int, dport: int, back: bool
    ) -> None:
        self.v6, self.src, self.dst, self.sport, self.dport = v6, src, dst, sport, dport
        self.eth = (ETH6_BACK if back else ETH6) if v6 else (ETH4_BACK if back else ETH4)


def ip_frame(ep: Endpoint, proto: int, l4: bytes) -> bytes:
    if ep.v6:
        return ep.eth + _ip6.pack(0x60000000, len(l4), proto, 64, ep.src, ep.dst) + l4
    hdr = _ip4.pack(0x45, 0, 20 + len(l4), 0, 0x4000, 64, proto, 0, ep.src, ep.dst)
    return ep.eth + hdr + l4


def tcp_frame(ep: Endpoint, seq: int, ack: int, flags: int, payload: bytes = b"") -> bytes:
    hdr = _tcp.pack(
        ep.sport, ep.dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 0x50, flags, 65535, 0, 0
    )
    return ip_frame(ep, 6, hdr + payload)


def udp_frame(ep: Endpoint, payload: bytes) -> bytes:
    return ip_frame(ep, 17, _udp.pack(ep.sport, ep.dport, 8 + len(payload), 0) + payload)


# --- names ------------------------------------------------------------------------------


class Names:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        kasp: set[str] = set()
        for ind in load_pack().indicators:
            if not {"dns", "sni", "http"} <= set(ind.where) or ind.path_prefix:
                continue
            if ind.match == "exact":
                kasp.add(ind.pattern)
            elif ind.match == "range":
                kasp.update(expand_range(ind.pattern)[:3])
        self.kaspersky = sorted(kasp)

    def innocent(self) -> str:
        rng = self.rng
        zone = rng.choice(INNOCENT_ZONES)
        shape = rng.random()
        if shape < 0.4:
            return f"www.{zone}"
        if shape < 0.8:
            return (
                f"{rng.choice(('cdn', 'api', 'edge', 'img', 'static'))}{rng.randrange(40)}.{zone}"
            )
        return f"{rng.getrandbits(40):010x}.r.{zone}"  # hashed CDN label

    def pick(self) -> tuple[str, bool]:
        if self.rng.random() < KASPERSKY_SHARE:
            return self.rng.choice(self.kaspersky), True
        return self.innocent(), False

    def mixed_case(self, name: str) -> str:
        """DNS 0x20: a random case per letter (the resolver echoes it)."""
        bits = self.rng.getrandbits(len(name))
        return "".join(c.upper() if bits >> i & 1 else c for i, c in enumerate(name))


# --- application payloads -------------------------------------------------------------------


def _ext(kind: int, body: bytes) -> bytes:
    return struct.pack("!HH", kind, len(body)) + body


def client_hello(name: str, rng: random.Random, pq: bool, sni_late: bool) -> bytes:
    """A TLS 1.3 ClientHello handshake message (no record header)."""
    host = name.encode()
    sni = _ext(0, struct.pack("!HBH", len(host) + 3, 0, len(host)) + host)
    groups = [0x11EC, 0x001D, 0x0017] if pq else [0x001D, 0x0017, 0x0018]
    shares = b""
    if pq:
        shares += struct.pack("!HH", 0x11EC, 1216) + rng.randbytes(1216)
    shares += struct.pack("!HH", 0x001D, 32) + rng.randbytes(32)
    exts = [
        _ext(
            0x000A,
            struct.pack("!H", 2 * len(groups)) + b"".join(struct.pack("!H", g) for g in groups),
        ),
        _ext(0x000D, bytes.fromhex("0010040305030603080408050806040105010601")),
        _ext(0x0010, b"\x00\x0c\x02h2\x08http/1.1"),
        _ext(0x002B, b"\x04\x03\x04\x03\x03"),
        _ext(0x0033, struct.pack("!H", len(shares)) + shares),
    ]
    exts.insert(len(exts) if sni_late else 0, sni)
    if sni_late:
        exts.insert(0, _ext(0x0015, bytes(120)))  # padding first, so the SNI lands past the MSS
    body = (
        b"\x03\x03" + rng.randbytes(32) + b"\x20" + rng.randbytes(32)
        + bytes.fromhex("00201301130213031301c02bc02fc02cc030cca9cca8c013c014009c009d002f0035")[:34]
        + b"\x01\x00"
    )  # fmt: skip
    ext_bytes = b"".join(exts)
    if not pq and len(body) + len(ext_bytes) < 508:  # Chrome-like padding to 517 bytes
        ext_bytes += _ext(0x0015, bytes(508 - len(body) - len(ext_bytes) - 4))
    body += struct.pack("!H", len(ext_bytes)) + ext_bytes
    return b"\x01" + len(body).to_bytes(3, "big") + body


def tls_record(handshake: bytes) -> bytes:
    return b"\x16\x03\x01" + struct.pack("!H", len(handshake)) + handshake


def dns_name(name: str) -> bytes:
    return b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00"


def dns_query(qid: int, qname: str, qtype: int) -> bytes:
    return (
        struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
        + dns_name(qname)
        + struct.pack("!HH", qtype, 1)
    )


def dns_response(qid: int, qname: str, qtype: int, chain: list[str], addr: bytes) -> bytes:
    answers = b""
    owner = b"\xc0\x0c"
    for target in chain:
        rdata = dns_name(target)
        answers += owner + struct.pack("!HHIH", 5, 1, 300, len(rdata)) + rdata
        owner = rdata
    atype = 28 if len(addr) == 16 else 1
    answers += owner + struct.pack("!HHIH", atype, 1, 300, len(addr)) + addr
    head = struct.pack("!HHHHHH", qid, 0x8180, 1, len(chain) + 1, 0, 0)
    return head + dns_name(qname) + struct.pack("!HH", qtype, 1) + answers


def quic_initial(hello: bytes, rng: random.Random) -> bytes:
    """A client Initial (QUIC v1) protected as RFC 9001 says, padded to 1200 bytes."""
    dcid, scid, pn = rng.randbytes(8), rng.randbytes(8), 0
    secrets = client_initial_secrets(1, dcid)
    crypto = b"\x06\x00" + struct.pack("!H", 0x4000 | len(hello)) + hello
    head_len = 1 + 4 + 1 + 8 + 1 + 8 + 1 + 2 + 4
    plain = crypto + bytes(1200 - head_len - 16 - len(crypto))
    header = (
        b"\xc3" + struct.pack("!I", 1) + b"\x08" + dcid + b"\x08" + scid + b"\x00"
        + struct.pack("!H", 0x4000 | (4 + len(plain) + 16)) + struct.pack("!I", pn)
    )  # fmt: skip
    nonce = (int.from_bytes(secrets.iv, "big") ^ pn).to_bytes(12, "big")
    sealed = AESGCM(secrets.key).encrypt(nonce, plain, header)
    pn_off = len(header) - 4
    sample = sealed[:16]  # starts 4 bytes after the packet number's start: a 4-byte PN
    enc = Cipher(algorithms.AES(secrets.hp), modes.ECB()).encryptor()
    mask = enc.update(sample) + enc.finalize()
    first = bytes([header[0] ^ (mask[0] & 0x0F)])
    pn_bytes = bytes(b ^ m for b, m in zip(header[pn_off:], mask[1:5], strict=True))
    return first + header[1:pn_off] + pn_bytes + sealed


# --- sessions ---------------------------------------------------------------------------


class Mix:
    def __init__(self, seed: int, upload_share: float = 0.12) -> None:
        self.rng = random.Random(seed)
        self.upload_share = upload_share
        self.names = Names(self.rng)
        self.counts: Counter[str] = Counter()
        self.kaspersky: set[str] = set()
        self.connect_done = False

    def addresses(self) -> tuple[bool, bytes, bytes]:
        rng = self.rng
        if rng.random() < 0.2:
            client = bytes.fromhex("fd000001000000000000000000") + rng.randbytes(3)
            return True, client, bytes.fromhex("20010db8000000000000000000") + rng.randbytes(3)
        return (
            False,
            bytes([10, 1, rng.randrange(256), rng.randrange(1, 255)]),
            bytes([198, 51, 100, rng.randrange(1, 255)]),
        )

    def pair(self, dport: int, v6: bool, client: bytes, server: bytes) -> tuple[Endpoint, Endpoint]:
        sport = self.rng.randrange(32768, 61000)
        return (
            Endpoint(v6, client, server, sport, dport, back=False),
            Endpoint(v6, server, client, dport, sport, back=True),
        )

    def session(self) -> Iterator[bytes]:
        r = self.rng.random()
        if r < 0.62:
            return self.dns()
        if r < 0.80:
            return self.tcp("tls")
        if r < 0.97:
            return self.tcp("http")
        return self.quic()

    def note(self, kind: str, name: str, kasp: bool) -> str | None:
        self.counts[kind] += 1
        if kasp:
            self.kaspersky.add(name.lower())
            return name.lower()
        return None

    def dns(self) -> Iterator[bytes]:
        rng = self.rng
        v6, client, server = self.addresses()
        cli, srv = self.pair(53, v6, client, server)
        name, kasp = self.names.pick()
        chain: list[str] = []
        if rng.random() < 0.25:  # a CNAME chain; now and then an innocent name into Kaspersky
            if not kasp and rng.random() < 0.08:
                chain = [f"edge.{self.names.innocent()}", rng.choice(self.names.kaspersky)]
            else:
                chain = [f"{rng.getrandbits(32):08x}.cdn.{self.names.innocent()}"]
        qname = self.names.mixed_case(name)
        qid, qtype = rng.getrandbits(16), rng.choice((1, 1, 28))
        self.counts["dns_message"] += 2
        self.note("dns_query", name, kasp)
        yield udp_frame(cli, dns_query(qid, qname, qtype))
        addr = rng.randbytes(16) if qtype == 28 else bytes([203, 0, 113, rng.randrange(256)])
        if len(chain) == 2:
            self.kaspersky.add(chain[-1])
            self.counts["cname_into_kaspersky"] += 1
        yield udp_frame(srv, dns_response(qid, qname, qtype, chain, addr))

    def quic(self) -> Iterator[bytes]:
        rng = self.rng
        v6, client, server = self.addresses()
        cli, srv = self.pair(443, v6, client, server)
        name, kasp = self.names.pick()
        hello = client_hello(name, rng, pq=False, sni_late=False)  # one Initial
        self.counts["quic_initial"] += 1
        self.note("quic_sni", name, kasp)
        yield udp_frame(cli, quic_initial(hello, rng))
        yield udp_frame(srv, b"\xc1\x00\x00\x00\x01\x08" + rng.randbytes(1194))
        for i in range(rng.randrange(10, 120)):  # short-header 1-RTT bulk, mostly down
            size = 1252 if i % 3 else 48
            ep = srv if i % 3 else cli
            yield udp_frame(ep, bytes([0x40 | rng.getrandbits(6)]) + rng.randbytes(size - 1))

    def tcp(self, app: str) -> Iterator[bytes]:
        rng = self.rng
        v6, client, server = self.addresses()
        connect = app == "http" and not self.connect_done and self.counts["http_get"] >= 20
        if connect:
            self.connect_done = True
            dport = 3128
        elif app == "tls":
            dport = 8443 if rng.random() < 0.05 else 443
        else:
            dport = 80
        cli, srv = self.pair(dport, v6, client, server)
        mss = 1440 if v6 else 1460
        cseq, sseq = rng.getrandbits(32), rng.getrandbits(32)
        yield tcp_frame(cli, cseq, 0, SYN)
        yield tcp_frame(srv, sseq, cseq + 1, SYN_ACK)
        cseq, sseq = cseq + 1, sseq + 1
        yield tcp_frame(cli, cseq, sseq, ACK)
        name, kasp = self.names.pick()
        if connect:
            req = f"CONNECT {name}:443 HTTP/1.1\r\nHost: {name}:443\r\nUser-Agent: curl/7.88.1\r\n\r\n"
            self.note("http_connect", name, kasp)
            yield tcp_frame(cli, cseq, sseq, PSH_ACK, req.encode())
            cseq += len(req)
            reply = b"HTTP/1.1 200 Connection established\r\n\r\n"
            yield tcp_frame(srv, sseq, cseq, PSH_ACK, reply)
            sseq += len(reply)
            app = "tls"
        if app == "tls":
            pq = rng.random() < 0.3
            sni_late = pq and rng.random() < 0.35
            flight = tls_record(client_hello(name, rng, pq, sni_late))
            kind = "tls_sni"
            self.counts["tls_hello"] += 1
            self.counts["tls_hello_split"] += len(flight) > mss
            self.counts["tls_sni_in_2nd_segment"] += sni_late
        elif rng.random() < UPDATER_SHARE:  # names nothing: the IP is the Host
            host = (
                str(ipaddress.ip_address(srv.src))
                if not v6
                else f"[{ipaddress.ip_address(srv.src)}]"
            )
            token = rng.choice("*@") + "".join(rng.choice(B64) for _ in range(58))
            flight = (
                f"GET {rng.choice(UPDATER_PATHS)} HTTP/1.0\r\nHost: {host}\r\n"
                f"User-Agent: {token}\r\n\r\n"
            ).encode()
            kind = "updater"
            self.counts["updater_flow"] += 1
        else:
            path = (
                f"/{rng.choice(('index.html', 'api/v1/items', 'static/app.js', 'update/list.xml'))}"
            )
            flight = (
                f"GET {path} HTTP/1.1\r\nHost: {name}\r\nUser-Agent: Mozilla/5.0\r\n"
                "Accept: */*\r\nAccept-Encoding: gzip\r\nConnection: keep-alive\r\n\r\n"
            ).encode()
            kind = "http_host"
            self.counts["http_get"] += 1
        for off in range(0, len(flight), mss):
            chunk = flight[off : off + mss]
            if off + mss >= len(flight) and kind != "updater":
                self.note(kind, name, kasp)
            yield tcp_frame(cli, cseq, sseq, PSH_ACK, chunk)
            cseq += len(chunk)
        up = kind != "updater" and rng.random() < self.upload_share
        if app == "http" and not connect and not up:  # the response head, then the body
            head = (
                b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: application/octet-stream"
                b"\r\nContent-Length: 1048576\r\n\r\n"
            )
            yield tcp_frame(srv, sseq, cseq, PSH_ACK, head)
            sseq += len(head)
        sender, receiver = (cli, srv) if up else (srv, cli)
        seq, ack = (cseq, sseq) if up else (sseq, cseq)
        data = rng.randbytes(mss)
        if kind == "updater":
            data = rng.choice((b"KLZF", b"KLD2")) + data[4:]
        for i in range(rng.randrange(8, 160)):
            yield tcp_frame(sender, seq, ack, ACK if i % 4 else PSH_ACK, data)
            seq += mss
            if i == 0 and kind == "updater":
                data = rng.randbytes(mss)
            if i % 2:
                yield tcp_frame(receiver, ack, seq, ACK)
        if up:
            cseq, sseq = seq, ack
        else:
            sseq, cseq = seq, ack
        yield tcp_frame(cli, cseq, sseq, FIN_ACK)
        yield tcp_frame(srv, sseq, cseq + 1, FIN_ACK)
        yield tcp_frame(cli, cseq + 1, sseq + 1, ACK)


def generate(path: Path, packets: int, seed: int, upload_share: float = 0.12) -> dict[str, object]:
    mix = Mix(seed, upload_share)
    rng = mix.rng
    live = [mix.session() for _ in range(SESSIONS_IN_FLIGHT)]
    ts_us = 1_790_000_000 * 1_000_000
    v6 = 0
    with path.open("wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        write, pack = out.write, _rec.pack
        n = 0
        while n < packets:
            i = rng.randrange(SESSIONS_IN_FLIGHT)
            try:
                frame = next(live[i])
            except StopIteration:
                live[i] = mix.session()
                continue
            ts_us += rng.randrange(1, 16)
            write(pack(ts_us // 1_000_000, ts_us % 1_000_000, len(frame), len(frame)))
            write(frame)
            v6 += frame[12] == 0x86
            n += 1
    info: dict[str, object] = {
        "packets": packets,
        "seed": seed,
        "upload_share": upload_share,
        "bytes": path.stat().st_size,
        "ipv6_share": round(v6 / packets, 3),
        "dns_share": round(mix.counts["dns_message"] / packets, 3),
        "counts": dict(sorted(mix.counts.items())),
        "kaspersky_names": sorted(mix.kaspersky),
    }
    Path(f"{path}.expected.json").write_text(json.dumps(info, indent=1) + "\n")
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--upload-share", type=float, default=0.12, help="TCP sessions that upload")
    args = ap.parse_args(argv)
    info = generate(args.out, args.packets, args.seed, args.upload_share)
    shown = {k: v for k, v in info.items() if k != "kaspersky_names"}
    print(json.dumps(shown), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
