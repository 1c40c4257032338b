"""QUIC Initials of the IETF drafts 23-34 and a client starting over after Version Negotiation.

The keys are checked against the drafts' own Appendix A values and the draft-29 Appendix A
client Initial; the Initials of every draft are built by tests/capturegen.py (written from
the drafts' text, not from sensor.decode.quic) and tshark's dissection of them is the truth.
"""

from __future__ import annotations

import subprocess

import pytest

from sensor.decode.quic import QuicInitialTracker, client_initial_secrets, looks_like_quic_initial
from tests import capturegen as gen

CLIENT = (b"\x0a\x3d\x00\x02", 40000, b"\x0a\x3d\x00\x01", 443)
SERVER = (CLIENT[2], CLIENT[3], CLIENT[0], CLIENT[1])
DRAFT_29 = 0xFF00001D

# draft-ietf-quic-tls-29 A.1 (salt 0xafbfec28...), and draft-ietf-quic-tls-23..28 A.1 (salt
# 0xc3eef712...): client initial secret, key, iv, hp for DCID 0x8394c8f03e515708
DRAFT_SECRETS = {
    DRAFT_29: (
        "0088119288f1d866733ceeed15ff9d50902cf82952eee27e9d4d4918ea371d87",
        "175257a31eb09dea9366d8bb79ad80ba",
        "6b26114b9cba2b63a9e8dd4f",
        "9ddd12c994c0698b89374a9c077a3077",
    ),
    0xFF00001B: (  # draft 27: the 23-28 salt
        "fda3953aecc040e48b34e27ef87de3a6098ecf0e38b7e032c5c57bcbd5975b84",
        "af7fd7efebd21878ff66811248983694",
        "8681359410a70bb9c92f0420",
        "a980b8b4fb7d9fbc13e814c23164253d",
    ),
}


@pytest.mark.parametrize("version", DRAFT_SECRETS, ids=["draft29", "draft27"])
def test_initial_secrets_match_the_drafts(version: int) -> None:
    got = client_initial_secrets(version, gen.A2_DCID)
    assert (got.secret.hex(), got.key.hex(), got.iv.hex(), got.hp.hex()) == DRAFT_SECRETS[version]
    assert tuple(x.hex() for x in gen.client_keys(version, gen.A2_DCID)) == DRAFT_SECRETS[version]


def test_draft29_appendix_a_client_initial() -> None:
    # the builder reproduces the draft's protected packet from its plaintext, byte for byte
    header = gen.A2_HEADER
    assert gen.protect_initial(DRAFT_29, gen.A2_DCID, b"", gen.A2_CRYPTO, 2) == gen.A2_PACKET
    assert header[1:5] == DRAFT_29.to_bytes(4, "big") and len(gen.A2_PACKET) == 1200
    assert looks_like_quic_initial(gen.A2_PACKET)
    sighting = QuicInitialTracker().feed(CLIENT, gen.A2_PACKET, 0.0)
    assert sighting is not None and (sighting.kind, sighting.name) == ("quic_sni", "server")


@pytest.mark.parametrize("draft", range(23, 35))
def test_every_shipped_draft_is_read(draft: int) -> None:
    version = 0xFF000000 | draft
    name = f"draft{draft}.quic.test"
    packet = gen.protect_initial(
        version,
        bytes([draft]) * 8,
        b"\x01\x02",
        gen.crypto_frame(gen.client_hello(name.encode())),
        0,
    )
    assert looks_like_quic_initial(packet)
    sighting = QuicInitialTracker().feed(CLIENT, packet, 0.0)
    assert sighting is not None and sighting.name == name


def test_older_drafts_and_unknown_versions_are_not_initials() -> None:
    hello = gen.crypto_frame(gen.client_hello(b"x.test"))
    packet = gen.protect_initial(DRAFT_29, b"\x05" * 8, b"", hello, 0)
    for version in (0xFF000016, 0x1A2A3A4A, 0xFF000023):  # draft 22, reserved, draft 35
        assert not looks_like_quic_initial(packet[:1] + version.to_bytes(4, "big") + packet[5:])


def _initial(version: int, name: str, pn: int, dcid: bytes = b"\xaa" * 8) -> bytes:
    hello = gen.client_hello(name.encode())
    return gen.protect_initial(version, dcid, b"\xc1\xc2", gen.crypto_frame(hello), pn)


def test_after_version_negotiation_the_new_version_is_read() -> None:
    """v1 Initial, Version Negotiation offering draft 29, the same client (same DCID) starts
    over in draft 29 with another hello: both hellos are read, each once."""
    tracker = QuicInitialTracker()
    first = tracker.feed(CLIENT, _initial(1, "first.quic.test", 0), 0.0)
    assert first is not None and first.name == "first.quic.test"
    vn = gen.version_negotiation(b"\xc1\xc2", b"\xaa" * 8, (DRAFT_29,))
    assert not looks_like_quic_initial(vn)
    again = tracker.feed(CLIENT, _initial(DRAFT_29, "second.quic.test", 1), 0.1)
    assert again is not None and again.name == "second.quic.test"
    assert tracker.feed(CLIENT, _initial(DRAFT_29, "second.quic.test", 2), 0.2) is None


def test_a_hello_cut_short_by_version_negotiation_does_not_mix_with_the_next() -> None:
    """The first Initial carries only the head of a long hello; the server answers with
    Version Negotiation; the client's hello in the new version must be read on its own."""
    long_hello = gen.client_hello(b"a" * 60 + b".quic.test")
    tracker = QuicInitialTracker()
    cut = gen.protect_initial(1, b"\xaa" * 8, b"\xc1\xc2", gen.crypto_frame(long_hello[:40]), 0)
    assert tracker.feed(CLIENT, cut, 0.0) is None
    # a server Initial of the old flow's reverse is still skipped unread
    assert tracker.feed(SERVER, _initial(1, "srv.quic.test", 0, b"\xc1\xc2"), 0.05) is None
    got = tracker.feed(CLIENT, _initial(DRAFT_29, "b.quic.test", 1), 0.1)
    assert got is not None and got.name == "b.quic.test"


def test_tshark_reads_the_same_draft_names() -> None:
    """tshark's own reading of the built captures: the server_name of every draft's Initial."""
    path = gen.HERE / "quic-drafts.pcap"
    out = subprocess.run(
        ["tshark", "-r", str(path), "-n", "-T", "fields", "-e", "quic.version",
         "-e", "tls.handshake.extensions_server_name"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    rows = [line.split("\t") for line in out.splitlines()]
    want = [f"draft{n}.quic.test" for n in range(23, 35)] + ["v1.quic.test", "server"]
    assert [r[1] for r in rows] == want
    assert [int(r[0], 16) for r in rows[:12]] == [0xFF000000 | n for n in range(23, 35)]
    tracker = QuicInitialTracker()
    from sensor.decode.packet import decode_frame
    from sensor.sources.pcapfile import CaptureFile

    got = []
    for _, linktype, frame in CaptureFile(str(path)):
        seg = decode_frame(linktype, frame)
        assert seg is not None
        s = tracker.feed((seg.src, seg.sport, seg.dst, seg.dport), seg.payload, 0.0)
        got.append(s.name if s else None)
    assert got == want
