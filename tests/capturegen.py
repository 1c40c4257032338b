"""Captures of classes no tool on this machine produces, built byte by byte: QUIC Initials of
the IETF drafts (and a Version Negotiation exchange), TLS SNI and HTTP Host values that are
not host names. ``write_all`` writes them to ``tests/captures`` (deterministic: a test checks
the committed files equal what this module builds); the corpus test checks each against
tshark's dissection.

The QUIC Initial protection here is written from the drafts' text (HKDF-Extract with the
draft's salt, HKDF-Expand-Label, AES-128-GCM, AES-ECB header protection), independently of
``sensor.decode.quic``; the draft-29 Appendix A packet proves it (tests/test_quic_drafts.py).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

HERE: Final = Path(__file__).resolve().parent / "captures"

# draft-ietf-quic-tls section 5.2, as published in each draft
SALT_23_28: Final = bytes.fromhex("c3eef712c72ebb5a11a7d2432bb46365bef9f502")
SALT_29_32: Final = bytes.fromhex("afbfec289993d24c9e9786f19c6111e04390a899")
SALT_33_V1: Final = bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a")


def draft_salt(version: int) -> bytes:
    if version == 1:
        return SALT_33_V1
    draft = version & 0xFF
    assert version & 0xFFFFFF00 == 0xFF000000 and 23 <= draft <= 34, hex(version)
    return SALT_23_28 if draft <= 28 else SALT_29_32 if draft <= 32 else SALT_33_V1


def _expand_label(secret: bytes, label: bytes, length: int) -> bytes:
    full = b"tls13 " + label
    info = struct.pack("!HB", length, len(full)) + full + b"\x00"
    return hmac.new(secret, info + b"\x01", hashlib.sha256).digest()[:length]  # length <= 32


def client_keys(version: int, dcid: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    """(client initial secret, key, iv, hp) for ``version`` (v1 labels: drafts and v1)."""
    initial = hmac.new(draft_salt(version), dcid, hashlib.sha256).digest()
    secret = _expand_label(initial, b"client in", 32)
    return (
        secret,
        _expand_label(secret, b"quic key", 16),
        _expand_label(secret, b"quic iv", 12),
        _expand_label(secret, b"quic hp", 16),
    )


def varint(n: int) -> bytes:
    if n < 0x40:
        return bytes([n])
    if n < 0x4000:
        return (0x4000 | n).to_bytes(2, "big")
    return (0x80000000 | n).to_bytes(4, "big")


def protect_initial(
    version: int, dcid: bytes, scid: bytes, payload: bytes, pn: int, size: int = 1200
) -> bytes:
    """A client Initial (4-byte packet number, no token) padded to ``size`` bytes."""
    _, key, iv, hp = client_keys(version, dcid)
    head = bytes([0xC3]) + version.to_bytes(4, "big") + bytes([len(dcid)]) + dcid
    head += bytes([len(scid)]) + scid + b"\x00"  # empty token
    length = size - len(head) - 2  # 2-byte length field
    payload += bytes(length - 4 - 16 - len(payload))  # PADDING frames up to the size
    header = bytearray(head + (0x4000 | length).to_bytes(2, "big") + pn.to_bytes(4, "big"))
    nonce = (int.from_bytes(iv, "big") ^ pn).to_bytes(12, "big")
    sealed = AESGCM(key).encrypt(nonce, payload, bytes(header))
    mask = Cipher(algorithms.AES(hp), modes.ECB()).encryptor().update(sealed[:16])
    header[0] ^= mask[0] & 0x0F
    for i in range(4):
        header[-4 + i] ^= mask[1 + i]
    return bytes(header) + sealed


def client_hello(sni: bytes) -> bytes:
    """A TLS 1.3 ClientHello handshake message naming ``sni`` (bytes as sent, any value)."""
    entry = b"\x00" + struct.pack("!H", len(sni)) + sni
    exts = struct.pack("!HH", 0, len(entry) + 2) + struct.pack("!H", len(entry)) + entry
    exts += bytes.fromhex("002b0003020304")  # supported_versions: TLS 1.3
    exts += bytes.fromhex("000a00040002001d")  # supported_groups: x25519
    exts += bytes.fromhex("000d000400020403")  # signature_algorithms
    share = bytes(range(32))
    exts += struct.pack("!HHHHH", 0x33, 38, 36, 0x1D, 32) + share  # key_share
    body = b"\x03\x03" + bytes(range(32)) + b"\x00" + bytes.fromhex("000213010100")
    body += struct.pack("!H", len(exts)) + exts
    return b"\x01" + len(body).to_bytes(3, "big") + body


def crypto_frame(data: bytes, offset: int = 0) -> bytes:
    return b"\x06" + varint(offset) + varint(len(data)) + data


# --- packets and files -------------------------------------------------------------------------

CLIENT4: Final = "10.61.0.2"
SERVER4: Final = "10.61.0.1"
T0: Final = 1_767_225_600  # 2026-01-01T00:00:00Z: every packet's time counts up from here


def _ether(layer3: object) -> object:
    from scapy.layers.l2 import Ether

    return Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01") / layer3


def udp(payload: bytes, sport: int, dport: int = 443, reply: bool = False) -> object:
    from scapy.layers.inet import IP, UDP

    src, dst = (SERVER4, CLIENT4) if reply else (CLIENT4, SERVER4)
    if reply:
        sport, dport = dport, sport
    return _ether(IP(src=src, dst=dst, id=1) / UDP(sport=sport, dport=dport) / payload)


def tcp_session(cport: int, dport: int, request: bytes, answer: bytes = b"") -> list[object]:
    """Handshake, the request (one segment), the answer (if any), FIN from both."""
    from scapy.layers.inet import IP, TCP

    c, s = 1000, 50000

    def seg(reply: bool, flags: str, seq: int, ack: int, data: bytes = b"") -> object:
        src, dst = (SERVER4, CLIENT4) if reply else (CLIENT4, SERVER4)
        sp, dp = (dport, cport) if reply else (cport, dport)
        tcp = TCP(sport=sp, dport=dp, flags=flags, seq=seq, ack=ack, window=65535)
        return _ether(IP(src=src, dst=dst, id=1) / tcp / data)

    out = [seg(False, "S", c, 0), seg(True, "SA", s, c + 1), seg(False, "A", c + 1, s + 1)]
    out.append(seg(False, "PA", c + 1, s + 1, request))
    c += 1 + len(request)
    if answer:
        out.append(seg(True, "PA", s + 1, c, answer))
    s += 1 + len(answer)
    out += [seg(False, "FA", c, s), seg(True, "FA", s, c + 1), seg(False, "A", c + 1, s + 1)]
    return out


def tls_record(handshake: bytes) -> bytes:
    return b"\x16\x03\x01" + struct.pack("!H", len(handshake)) + handshake


def write(path: Path, packets: list[object]) -> None:
    from scapy.utils import wrpcap

    for i, p in enumerate(packets):
        p.time = T0 + i / 1000  # type: ignore[attr-defined]
    wrpcap(str(path), packets)


DRAFTS: Final = tuple(0xFF000000 | n for n in range(23, 35))
# draft-ietf-quic-tls-29 Appendix A.2: the client Initial (DCID 8394c8f03e515708, pn 2, SNI
# "server"); the hex is the draft's, checked against its keys in tests/test_quic_drafts.py
A2_DCID: Final = bytes.fromhex("8394c8f03e515708")


def quic_drafts(a2_packet: bytes) -> list[object]:
    """One Initial per draft 23-34 and v1, each on its own client port, naming the version;
    then the draft-29 Appendix A packet itself."""
    out = []
    for i, version in enumerate((*DRAFTS, 1)):
        label = f"draft{version & 0xFF}" if version != 1 else "v1"
        hello = crypto_frame(client_hello(f"{label}.quic.test".encode()))
        dcid = bytes([0xD0 + i]) * 8
        out.append(udp(protect_initial(version, dcid, b"\x5c" * 4, hello, 0), 40000 + i))
    out.append(udp(a2_packet, 41000))
    return out


def version_negotiation(dcid: bytes, scid: bytes, versions: tuple[int, ...]) -> bytes:
    """RFC 8999 section 6: version 0, the client's CIDs swapped, the versions offered."""
    head = b"\xc9\x00\x00\x00\x00" + bytes([len(dcid)]) + dcid + bytes([len(scid)]) + scid
    return head + b"".join(v.to_bytes(4, "big") for v in versions)


def quic_vn() -> list[object]:
    """Two clients meet Version Negotiation and start over in the offered version, same DCID:
    one's first Initial is v1 (decodable), the other's a reserved version (0x1a2a3a4a)."""
    out = []
    for port, first, name in ((42000, 1, "vn-from-v1"), (42001, 0x1A2A3A4A, "vn-from-grease")):
        dcid, scid = bytes([port & 0xFF]) * 8, b"\xc1\xc2\xc3\xc4"
        before = crypto_frame(client_hello(f"{name}-before.quic.test".encode()))
        after = crypto_frame(client_hello(f"{name}.quic.test".encode()))
        if first == 1:
            out.append(udp(protect_initial(1, dcid, scid, before, 0), port))
        else:  # a version nobody derives keys for: only its header is real
            head = protect_initial(1, dcid, scid, before, 0)
            out.append(udp(head[:1] + first.to_bytes(4, "big") + head[5:], port))
        out.append(udp(version_negotiation(scid, dcid, (0xFF00001D,)), port, reply=True))
        out.append(udp(protect_initial(0xFF00001D, dcid, scid, after, 1), port))
    return out


# SNI and Host values that are not host names, as other tools' test traces hold them
ODD_SNI: Final = (b"server4:443", b"[2001:db8::1]:443", b"UPD.Kaspersky.COM:443")
ODD_HOST: Final = (b"[::1]:8000", b"[2001:DB8::5]", b"files.kaspersky.com:8080")


def odd_names() -> list[object]:
    out: list[object] = []
    for i, sni in enumerate(ODD_SNI):
        out += tcp_session(43000 + i, 443, tls_record(client_hello(sni)))
        hello = crypto_frame(client_hello(sni))
        out.append(udp(protect_initial(1, bytes([0xE0 + i]) * 8, b"\x5c" * 4, hello, 0), 44000 + i))
    for i, host in enumerate(ODD_HOST):
        request = b"GET / HTTP/1.1\r\nHost: " + host + b"\r\nUser-Agent: t\r\n\r\n"
        out += tcp_session(45000 + i, 8000, request, b"HTTP/1.1 200 OK\r\n\r\n")
    return out


A2_HEADER: Final = bytes.fromhex("c3ff00001d088394c8f03e5157080000449e00000002")  # unprotected
A2_CRYPTO: Final = bytes.fromhex(  # the CRYPTO frame; PADDING follows up to 1162 bytes
    "060040c4010000c003036660261ff947cea49cce6cfad687f457cf1b14531ba1"
    "4131a0e8f309a1d0b9c4000006130113031302010000910000000b0009000006"
    "736572766572ff01000100000a00140012001d00170018001901000101010201"
    "03010400230000003300260024001d00204cfdfcd178b784bf328cae793b136f"
    "2aedce005ff183d7bb1495207236647037002b0003020304000d0020001e0403"
    "05030603020308040805080604010501060102010402050206020202002d0002"
    "0101001c00024001"
)
A2_PACKET: Final = bytes.fromhex(  # the protected packet, 1200 bytes
    "c5ff00001d088394c8f03e5157080000449e4a95245bfb66bc5f93032b7ddd89"
    "fe0ff15d9c4f7050fccdb71c1cd80512d4431643a53aafa1b0b518b44968b18b"
    "8d3e7a4d04c30b3ed9410325b2abb2dafb1c12f8b70479eb8df98abcaf95dd8f"
    "3d1c78660fbc719f88b23c8aef6771f3d50e10fdfb4c9d92386d44481b6c52d5"
    "9e5538d3d3942de9f13a7f8b702dc31724180da9df22714d01003fc5e3d165c9"
    "50e630b8540fbd81c9df0ee63f94997026c4f2e1887a2def79050ac2d86ba318"
    "e0b3adc4c5aa18bcf63c7cf8e85f569249813a2236a7e72269447cd1c755e451"
    "f5e77470eb3de64c8849d292820698029cfa18e5d66176fe6e5ba4ed18026f90"
    "900a5b4980e2f58e39151d5cd685b10929636d4f02e7fad2a5a458249f5c0298"
    "a6d53acbe41a7fc83fa7cc01973f7a74d1237a51974e097636b6203997f921d0"
    "7bc1940a6f2d0de9f5a11432946159ed6cc21df65c4ddd1115f86427259a196c"
    "7148b25b6478b0dc7766e1c4d1b1f5159f90eabc61636226244642ee148b464c"
    "9e619ee50a5e3ddc836227cad938987c4ea3c1fa7c75bbf88d89e9ada642b2b8"
    "8fe8107b7ea375b1b64889a4e9e5c38a1c896ce275a5658d250e2d76e1ed3a34"
    "ce7e3a3f383d0c996d0bed106c2899ca6fc263ef0455e74bb6ac1640ea7bfedc"
    "59f03fee0e1725ea150ff4d69a7660c5542119c71de270ae7c3ecfd1af2c4ce5"
    "51986949cc34a66b3e216bfe18b347e6c05fd050f85912db303a8f054ec23e38"
    "f44d1c725ab641ae929fecc8e3cefa5619df4231f5b4c009fa0c0bbc60bc75f7"
    "6d06ef154fc8577077d9d6a1d2bd9bf081dc783ece60111bea7da9e5a9748069"
    "d078b2bef48de04cabe3755b197d52b32046949ecaa310274b4aac0d008b1948"
    "c1082cdfe2083e386d4fd84c0ed0666d3ee26c4515c4fee73433ac703b690a9f"
    "7bf278a77486ace44c489a0c7ac8dfe4d1a58fb3a730b993ff0f0d61b4d89557"
    "831eb4c752ffd39c10f6b9f46d8db278da624fd800e4af85548a294c1518893a"
    "8778c4f6d6d73c93df200960104e062b388ea97dcf4016bced7f62b4f062cb6c"
    "04c20693d9a0e3b74ba8fe74cc01237884f40d765ae56a51688d985cf0ceaef4"
    "3045ed8c3f0c33bced08537f6882613acd3b08d665fce9dd8aa73171e2d3771a"
    "61dba2790e491d413d93d987e2745af29418e428be34941485c93447520ffe23"
    "1da2304d6a0fd5d07d0837220236966159bef3cf904d722324dd852513df39ae"
    "030d8173908da6364786d3c1bfcb19ea77a63b25f1e7fc661def480c5d00d444"
    "56269ebd84efd8e3a8b2c257eec76060682848cbf5194bc99e49ee75e4d0d254"
    "bad4bfd74970c30e44b65511d4ad0e6ec7398e08e01307eeeea14e46ccd87cf3"
    "6b285221254d8fc6a6765c524ded0085dca5bd688ddf722e2c0faf9d0fb2ce7a"
    "0c3f2cee19ca0ffba461ca8dc5d2c8178b0762cf67135558494d2a96f1a139f0"
    "edb42d2af89a9c9122b07acbc29e5e722df8615c343702491098478a389c9872"
    "a10b0c9875125e257c7bfdf27eef4060bd3d00f4c14fd3e3496c38d3c5d1a566"
    "8c39350effbc2d16ca17be4ce29f02ed969504dda2a8c6b9ff919e693ee79e09"
    "089316e7d1d89ec099db3b2b268725d888536a4b8bf9aee8fb43e82a4d919d48"
    "43b1ca70a2d8d3f725ead1391377dcc0"
)


def reorder_answer(src: Path, dst: Path, port: int) -> int:
    """Copy ``src`` to ``dst`` with the first two payload segments from TCP ``port`` of the
    connection whose answer took the most segments swapped (each keeps its time slot, so
    times still rise): the answer's start arrives after its continuation. Returns how many
    segments that answer had (at least 2, else AssertionError)."""
    from scapy.layers.inet import TCP
    from scapy.utils import rdpcap, wrpcap

    packets = list(rdpcap(str(src)))
    by_conn: dict[int, list[int]] = {}
    for i, p in enumerate(packets):
        if TCP in p and p[TCP].sport == port and len(bytes(p[TCP].payload)):
            by_conn.setdefault(p[TCP].dport, []).append(i)
    segments = max(by_conn.values(), key=len, default=[])
    assert len(segments) >= 2, f"no answer from port {port} took two segments: {by_conn}"
    a, b = segments[:2]
    packets[a].time, packets[b].time = packets[b].time, packets[a].time
    packets[a], packets[b] = packets[b], packets[a]
    wrpcap(str(dst), packets)
    return len(segments)


BUILT: Final = {
    "quic-drafts.pcap": lambda: quic_drafts(A2_PACKET),
    "quic-version-negotiation.pcap": quic_vn,
    "odd-sni-host.pcap": odd_names,
}


def write_all(folder: Path = HERE) -> list[Path]:
    paths = []
    for name, build in BUILT.items():
        write(folder / name, build())
        paths.append(folder / name)
    return paths


if __name__ == "__main__":
    for p in write_all():
        print(p)
