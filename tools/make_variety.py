"""Make the corpus captures of link layers, tunnels and offload packets that no tool on
Debian produces (``tests/corpus/kaspwatch_*``), and the multi-interface pcapng that
dumpcap writes when it captures on several interfaces (made with mergecap and editcap
from other corpus files).

    python tools/make_variety.py [OUT_DIR]   (default: tests/corpus)

Packets are built with scapy (checksums right) and written with fixed timestamps, so a
rerun gives the same bytes; the 802.11, radiotap and PPP headers are written by hand,
field by field, to control exactly what a reader must cope with. Every file's dissection
is tshark's to judge: ``tests/corpus/oracle.sh`` makes its truth, and
``tests/test_variety.py`` checks that tshark sees the names each file was made with.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrHopByHop, Jumbo
from scapy.layers.l2 import Ether

REPO = Path(__file__).resolve().parent.parent
T0 = 1_767_225_600  # 2026-01-01T00:00:00Z

# names each file carries, by kind: what tshark and kaspwatch must both report
NAMES = {
    "kaspwatch_radiotap.pcap": {
        "dns_query": ["rt-dns.example.com"],
        "dns_answer": ["rt-dns.example.com"],
        "tls_sni": ["rt-tls.example.org", "rt-pad.example.org"],
        "http_host": ["rt-http.example.net", "rt-htc.example.net"],
    },
    "kaspwatch_80211.pcap": {
        "dns_query": ["wlan-dns.example.com"],
        "dns_answer": ["wlan-dns.example.com"],
        "tls_sni": ["wlan-tls.example.org"],
        "http_host": ["wlan-http.example.net", "wlan-htc.example.net"],
    },
    "kaspwatch_ppp.pcap": {
        "dns_query": ["ppp-dns.example.com", "ppp-pfc.example.com", "ppp6-dns.example.com"],
        "http_host": ["ppp-http.example.net"],
    },
    "kaspwatch_ppp-hdlc.pcap": {
        "tls_sni": ["hdlc-tls.example.org"],
        "http_host": ["hdlc6-http.example.net"],
        "dns_query": ["hdlc-dns.example.com"],
    },
    "kaspwatch_ayiya.pcap": {
        "dns_query": ["ayiya-dns.example.com"],
        "http_host": ["ayiya-http.example.net"],
        "tls_sni": ["ayiya4-tls.example.org"],
    },
    "kaspwatch_tso.pcap": {
        "http_host": ["tso-http.example.net", "jumbo-http.example.net"],
        "tls_sni": ["tso-tls.example.org"],
    },
}


# -- application payloads ------------------------------------------------------------


def client_hello(sni: str) -> bytes:
    """A TLS 1.3-style ClientHello record naming ``sni`` (fixed random: same bytes each run)."""
    name = sni.encode()
    sni_ext = struct.pack("!HHHBH", 0, len(name) + 5, len(name) + 3, 0, len(name)) + name
    versions = struct.pack("!HHB", 43, 3, 2) + b"\x03\x04"
    exts = sni_ext + versions
    suites = b"\x13\x01\x13\x02\xc0\x2b"
    body = b"\x03\x03" + bytes(range(32)) + b"\x00"
    body += struct.pack("!H", len(suites)) + suites + b"\x01\x00"
    body += struct.pack("!H", len(exts)) + exts
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack("!H", len(hs)) + hs


def http_get(host: str) -> bytes:
    return f"GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: variety\r\n\r\n".encode()


def dns_query(name: str, ident: int) -> DNS:
    return DNS(id=ident, rd=1, qd=DNSQR(qname=name))


def dns_answer(name: str, ident: int) -> DNS:
    return DNS(
        id=ident,
        qr=1,
        rd=1,
        ra=1,
        qd=DNSQR(qname=name),
        an=DNSRR(rrname=name, ttl=60, rdata="192.0.2.80"),
    )


def v4(payload: object, src: str = "10.1.0.2", dst: str = "192.0.2.80", **ip: object) -> bytes:
    return bytes(IP(src=src, dst=dst, **ip) / payload)  # type: ignore[operator]


def v6(payload: object, src: str = "2001:db8:1::2", dst: str = "2001:db8:2::80") -> bytes:
    return bytes(IPv6(src=src, dst=dst) / payload)  # type: ignore[operator]


def tcp(data: bytes, sport: int, dport: int, flags: str = "PA") -> object:
    return TCP(sport=sport, dport=dport, flags=flags, seq=1000, ack=1) / data


# -- link layers, by hand ----------------------------------------------------------------

LLC_SNAP_IPV4 = b"\xaa\xaa\x03\x00\x00\x00\x08\x00"
LLC_SNAP_IPV6 = b"\xaa\xaa\x03\x00\x00\x00\x86\xdd"
STA = bytes.fromhex("020000000001")
AP = bytes.fromhex("020000000002")
ROUTER = bytes.fromhex("020000000003")
PEER = bytes.fromhex("020000000004")


def dot11_data(
    body: bytes,
    *,
    qos: bool = False,
    to_ds: bool = True,
    from_ds: bool = False,
    order: bool = False,
    protected: bool = False,
    subtype: int | None = None,
) -> bytes:
    """An 802.11 data frame: FC, duration, addresses (3, or 4 with ToDS and FromDS), sequence
    control, then QoS control and HT control as the flags say, then ``body``."""
    sub = subtype if subtype is not None else (8 if qos else 0)
    fc0 = (sub << 4) | (2 << 2)
    fc1 = to_ds | from_ds << 1 | protected << 6 | order << 7
    a1, a2, a3 = (AP, STA, ROUTER) if to_ds and not from_ds else (STA, AP, ROUTER)
    hdr = bytes([fc0, fc1]) + b"\x00\x00" + a1 + a2 + a3 + struct.pack("<H", 0x10)
    if to_ds and from_ds:
        hdr += PEER
    if sub & 8:
        hdr += b"\x00\x00"  # QoS control: TID 0, no A-MSDU
        if order:
            hdr += b"\x00\x00\x00\x00"  # HT control
    return hdr + body


def radiotap(frame: bytes, *, flags: int = 0, tsft_ext: bool = False, pad: int = 0) -> bytes:
    """A radiotap header: Flags, Rate, Channel and antenna signal; with ``tsft_ext`` an
    extended present bitmap and TSFT (8-byte alignment) before the flags."""
    if tsft_ext:
        fields = b"\x00" * 4 + struct.pack("<Q", 123456789) + bytes([flags, 2])
        present = struct.pack("<II", 0x80000007, 0)  # TSFT, Flags, Rate + an extension
    else:
        fields = bytes([flags, 2]) + struct.pack("<HH", 2412, 0x00A0) + b"\xc4"
        present = struct.pack("<I", 0x0000002E)  # Flags, Rate, Channel, dBm signal
    hlen = 4 + len(present) + len(fields)
    return b"\x00\x00" + struct.pack("<H", hlen) + present + fields + b"\x00" * pad + frame


def beacon() -> bytes:
    bssid = AP
    hdr = b"\x80\x00\x00\x00" + b"\xff" * 6 + bssid + bssid + b"\x00\x00"
    return hdr + b"\x00" * 8 + b"\x64\x00\x11\x04" + b"\x00\x07variety"


# -- the files --------------------------------------------------------------------------


def wifi_frames(prefix: str, rt: bool) -> list[bytes]:
    wrap = radiotap if rt else (lambda f, **_: f)
    q = f"{prefix}-dns.example.com"
    frames = [
        wrap(beacon()),
        wrap(b"\xd4\x00\x00\x00" + STA),  # an ACK: a 10-byte control frame
        wrap(dot11_data(LLC_SNAP_IPV4 + v4(UDP(sport=40001, dport=53) / dns_query(q, 7)))),
        wrap(dot11_data(b"", subtype=4)),  # null data
        wrap(dot11_data(bytes(range(64)), protected=True)),  # encrypted: skipped, counted
    ]
    answer = LLC_SNAP_IPV4 + v4(
        UDP(sport=53, dport=40001) / dns_answer(q, 7), src="192.0.2.53", dst="10.1.0.2"
    )
    if rt:  # the FCS at the end, as the Flags field says
        frames.append(
            radiotap(dot11_data(answer, qos=True, to_ds=False, from_ds=True), flags=0x10)
            + b"\xde\xad\xbe\xef"
        )
    else:
        frames.append(dot11_data(answer, qos=True, to_ds=False, from_ds=True))
    frames += [
        # 4-address (a mesh or WDS link) QoS data, IPv6 TLS
        wrap(
            dot11_data(
                LLC_SNAP_IPV6 + v6(tcp(client_hello(f"{prefix}-tls.example.org"), 41000, 443)),
                qos=True,
                from_ds=True,
            )
        ),
        wrap(
            dot11_data(LLC_SNAP_IPV4 + v4(tcp(http_get(f"{prefix}-http.example.net"), 41001, 80)))
        ),
        # QoS data with the order bit: an HT control field follows the QoS control
        wrap(
            dot11_data(
                LLC_SNAP_IPV4 + v4(tcp(http_get(f"{prefix}-htc.example.net"), 41002, 80)),
                qos=True,
                order=True,
            )
        ),
    ]
    if rt:
        # data padding (Flags 0x20): the 26-byte QoS header padded to 28; TSFT behind an
        # extended present bitmap
        frame = dot11_data(LLC_SNAP_IPV4, qos=True)
        body = v4(tcp(client_hello("rt-pad.example.org"), 41003, 443))
        frames.append(
            radiotap(frame[:26] + b"\x00\x00" + frame[26:] + body, flags=0x20, tsft_ext=True)
        )
    return frames


def ppp_frames() -> list[bytes]:
    return [
        b"\xc0\x21\x01\x01\x00\x04",  # LCP configure-request: no IP
        b"\xff\x03\x00\x21" + v4(UDP(sport=40010, dport=53) / dns_query("ppp-dns.example.com", 1)),
        b"\x00\x21" + v4(tcp(http_get("ppp-http.example.net"), 41010, 80)),
        b"\x21" + v4(UDP(sport=40011, dport=53) / dns_query("ppp-pfc.example.com", 2)),
        b"\xff\x03\x00\x57" + v6(UDP(sport=40012, dport=53) / dns_query("ppp6-dns.example.com", 3)),
    ]


def hdlc_frames() -> list[bytes]:
    return [
        b"\xff\x03\x00\x21" + v4(tcp(client_hello("hdlc-tls.example.org"), 41020, 443)),
        b"\xff\x03\x00\x57" + v6(tcp(http_get("hdlc6-http.example.net"), 41021, 80)),
        b"\x0f\x00\x08\x00" + v4(UDP(sport=40020, dport=53) / dns_query("hdlc-dns.example.com", 4)),
    ]


def ayiya(inner: bytes, next_header: int) -> bytes:
    """AYIYA forward: identity 16 bytes (IDLen 4, an IPv6 address), signature 20 bytes
    (SigLen 5, SHA-1), epoch time."""
    head = bytes([0x41, 0x52, 0x11, next_header]) + struct.pack("!I", T0)
    return head + bytes.fromhex("20010db8000100000000000000000002") + b"\x5a" * 20 + inner


def ayiya_frames() -> list[bytes]:
    eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    out = []
    for inner, nh in (
        (v6(UDP(sport=40030, dport=53) / dns_query("ayiya-dns.example.com", 5)), 41),
        (v6(tcp(http_get("ayiya-http.example.net"), 41030, 80)), 41),
        (v4(tcp(client_hello("ayiya4-tls.example.org"), 41031, 443), src="10.9.0.2"), 4),
    ):
        udp = UDP(sport=5072, dport=5072) / ayiya(inner, nh)
        out.append(bytes(eth / IP(src="198.51.100.7", dst="203.0.113.9") / udp))
    return out


def tso_frames(bigtcp6: bool = False) -> list[tuple[bytes, int]]:
    """Offload super-packets as a capture on the sending host holds them, cut to a snapshot
    length of 512 (the file stays small; tshark, like kaspwatch, reads the captured head):
    IPv4 with total length 0 (TSO / BIG TCP), an IPv6 jumbogram (payload length 0, a
    hop-by-hop Jumbo Payload option: RFC 2675, BIG TCP before Linux 6.5). With ``bigtcp6``
    also IPv6 with payload length 0 and no option (BIG TCP since Linux 6.5), which tshark
    4.0 calls malformed: not in the corpus file (tshark is its truth), tested on its own."""
    eth = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02", type=0x0800))
    eth6 = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02", type=0x86DD))
    filler = b"x" * 70000  # the rest of a super-packet: over 64 KiB
    out = []
    for data, port in (
        (http_get("tso-http.example.net") + filler[:60000], 80),
        (client_hello("tso-tls.example.org"), 443),
    ):
        ip = bytearray(v4(tcp(data, 41040 + port % 7, port)))
        ip[2:4] = b"\x00\x00"  # total length 0 (TSO / BIG TCP), header checksum kept
        out.append(eth + bytes(ip))
    src, dst = "2001:db8:1::2", "2001:db8:2::80"
    v6_kinds = [("jumbo-http.example.net", True)]
    if bigtcp6:
        v6_kinds.append(("bigtcp6-http.example.net", False))
    for host, jumbo in v6_kinds:
        # the checksum is the NIC's to fill in (offload): 0 as the sender's capture shows it
        seg = bytes(TCP(sport=41050 + jumbo, dport=80, flags="PA", seq=1000, ack=1, chksum=0))
        seg += http_get(host) + filler
        head = bytes(IPv6(src=src, dst=dst, nh=0 if jumbo else 6, plen=0))[:40]
        if jumbo:
            head += bytes(IPv6ExtHdrHopByHop(nh=6, options=[Jumbo(jumboplen=8 + len(seg))]))
        out.append(eth6 + head + seg)
    return [(frame[:SNAPLEN_TSO], len(frame)) for frame in out]


SNAPLEN_TSO = 512


def write_pcap(
    path: Path, linktype: int, frames: list[bytes] | list[tuple[bytes, int]], snaplen: int = 65535
) -> None:
    """A pcap file; a frame given as (bytes, length) was cut by the snapshot length."""
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen, linktype)]
    for i, item in enumerate(frames):
        frame, size = item if isinstance(item, tuple) else (item, len(item))
        out.append(struct.pack("<IIII", T0 + i, 0, len(frame), size) + frame)
    path.write_bytes(b"".join(out))


def run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)  # noqa: S603 (our own tool calls)


def multi_interface(out: Path, corpus: Path, rt: Path) -> None:
    """What dumpcap writes capturing on several interfaces: one pcapng, an interface per
    input, of link types NULL (BSD loopback), Ethernet (snapshot lengths 65535 and 300),
    raw IPv6 (editcap -T rawip6) and 802.11 with radiotap, packets interleaved by time."""
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        run(
            "editcap",
            "-s",
            "300",
            str(corpus / "suricata-verify_llmnr-udp_input.pcap"),
            str(t / "snap300.pcap"),
        )
        run(
            "editcap",
            "-T",
            "rawip6",
            str(corpus / "tcpdump_LINKTYPE_RAW_ipv6.pcap"),
            str(t / "rawip6.pcap"),
        )
        run(
            "mergecap",
            "-F",
            "pcapng",
            "-w",
            str(out),
            str(corpus / "suricata-verify_http-ipv6_input.pcap"),
            str(corpus / "suricata-verify_datasets-08-state-ipv6_input.pcap"),
            str(t / "snap300.pcap"),
            str(t / "rawip6.pcap"),
            str(rt),
        )


def main(argv: list[str]) -> int:
    out = Path(argv[1]) if len(argv) > 1 else REPO / "tests" / "corpus"
    out.mkdir(parents=True, exist_ok=True)
    write_pcap(out / "kaspwatch_radiotap.pcap", 127, wifi_frames("rt", rt=True))
    write_pcap(out / "kaspwatch_80211.pcap", 105, wifi_frames("wlan", rt=False))
    write_pcap(out / "kaspwatch_ppp.pcap", 9, ppp_frames())
    write_pcap(out / "kaspwatch_ppp-hdlc.pcap", 50, hdlc_frames())
    write_pcap(out / "kaspwatch_ayiya.pcap", 1, ayiya_frames())
    write_pcap(out / "kaspwatch_tso.pcap", 1, tso_frames(), SNAPLEN_TSO)
    if shutil.which("mergecap") and shutil.which("editcap"):
        multi_interface(
            out / "kaspwatch_multi-interface.pcapng",
            REPO / "tests" / "corpus",
            out / "kaspwatch_radiotap.pcap",
        )
    else:
        print("mergecap/editcap not found (wireshark-common): multi-interface file not made")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
