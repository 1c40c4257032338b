"""One fuzz harness per target: bytes in, and only the target's documented outcome out.

Each harness returns normally for any input, or raises the one "malformed" exception its
target documents (``DecodeError`` for decoders, ``CaptureError`` for capture files);
anything else escaping is a crash. The same functions serve the coverage-guided runner
(``fuzz/run.py``, atheris) and the CI smoke test (``tests/test_fuzz_smoke.py``).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

from fuzz.differential import check_decoders, check_quic_open
from kaspwatch.identity import identity_from_json
from sensor.decode import DecodeError
from sensor.decode.dns import decode_dns, looks_like_dns, read_name
from sensor.decode.http import decode_http_request
from sensor.decode.packet import PROTO_TCP, PROTO_UDP, PacketDecoder
from sensor.decode.quic import QuicInitialTracker
from sensor.decode.quic_crypto import CryptoStream, crypto_frames
from sensor.decode.stream import StreamTable
from sensor.decode.tls import decode_client_hello_record, hello_from_stream, parse_client_hello
from sensor.identity import IdentityWatch
from sensor.pipeline import Sensor
from sensor.rules.indicators import load_pack
from sensor.rules.match import Matcher
from sensor.sources.base import CaptureError
from sensor.sources.pcapfile import CaptureFile

Harness = Callable[[bytes], None]
# the first byte of a packet input picks one (new link types go at the end)
LINKTYPES: Final = (1, 101, 113, 276, 0, 239, 228, 229, 127, 105, 9, 50, 104, 108)
FLOW: Final = (b"\x0a\x00\x00\x01", 40000, b"\x0a\x00\x00\x02", 443)


def fuzz_dns(data: bytes) -> None:
    looks_like_dns(data)
    with contextlib.suppress(DecodeError):
        decode_dns(data)
    if len(data) > 12:
        with contextlib.suppress(DecodeError):
            read_name(data, 12)


def fuzz_tls(data: bytes) -> None:
    """The ClientHello parsers, and the stream table fed the bytes cut at a point the input
    chooses (its first byte), so reassembly state is exercised too."""
    for parse in (hello_from_stream, decode_client_hello_record):
        with contextlib.suppress(DecodeError):
            parse(data)
    with contextlib.suppress(DecodeError):
        parse_client_hello(data, "tls_sni")
    cut = data[0] % max(1, len(data)) if data else 0
    table = StreamTable(max_flows=4)
    try:
        table.feed(FLOW, 1000, data[:cut], False)
        table.feed(FLOW, 1000 + cut, data[cut:], False)
    except DecodeError:
        pass


def fuzz_http(data: bytes) -> None:
    decode_http_request(data)
    table = StreamTable(max_flows=4)
    with contextlib.suppress(DecodeError):
        table.feed(FLOW, 7, data, False)


_QUIC = QuicInitialTracker(max_connections=64)


def fuzz_quic(data: bytes) -> None:
    """Whole datagrams into a long-lived tracker (its tables must stay bounded), and the
    input read as Initial plaintext: CRYPTO frames, their reassembly and the hello parser."""
    with contextlib.suppress(DecodeError):
        _QUIC.feed(FLOW, data, 0.0)
    try:
        stream = CryptoStream(65536)
        for offset, chunk in crypto_frames(data):
            stream.add(offset, chunk)
        hello = stream.hello()
        if hello is not None:
            parse_client_hello(hello, "quic_sni")
    except DecodeError:
        pass
    assert len(_QUIC) <= 64


_SHM: Final = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
# fuzz/run.py names the file and removes it when the worker ends (libFuzzer exits hard)
_CAPTURE: Final = Path(
    os.environ.get("KASPWATCH_FUZZ_CAPTURE", _SHM / f"kaspwatch-fuzz-{os.getpid()}.pcap")
)


def fuzz_pcap(data: bytes) -> None:
    """A capture file with these bytes: frames or a CaptureError naming the file, never a
    traceback; a cut-off file says where in ``stats.note``."""
    _CAPTURE.write_bytes(data)
    try:
        with CaptureFile(str(_CAPTURE)) as cap:
            for _frame in cap:
                pass
            if cap.stats.truncated:
                assert str(_CAPTURE) in cap.stats.note
    except CaptureError as exc:
        assert str(_CAPTURE) in str(exc), exc


_SENSOR: Sensor | None = None


def fuzz_packet(data: bytes) -> None:
    """The whole packet path (decode, reassembly, match, events) of one long-lived Sensor;
    the first byte picks the link type. Sensor.process_frame never raises."""
    global _SENSOR
    if _SENSOR is None:
        _SENSOR = Sensor(Matcher(load_pack()), "fuzz", observations=True, strict=True)
    if not data:
        return
    _SENSOR.process_frame(1_700_000_000_000_000_000, LINKTYPES[data[0] % len(LINKTYPES)], data[1:])


_IDENTITY = IdentityWatch("fuzz", max_clients=64, max_bindings=64)


def fuzz_identity(data: bytes) -> None:
    """DHCP payloads, mDNS/LLMNR responses, Kerberos AS-REQs, NetBIOS
    name service and DHCPv6 messages and Ethernet frames (ARP, NDP) (the first
    byte picks) into one long-lived IdentityWatch, whose tables must stay bounded; records
    it makes must be valid."""
    if not data:
        return
    try:
        if data[0] & 3 == 1:
            _IDENTITY.dhcp(data[1:], 1_700_000_000_000_000_000)
        elif data[0] & 3 == 3:  # an mDNS/LLMNR response from 10.0.0.1
            _IDENTITY.announce(data[1:], 5353, b"\x0a\0\0\x01", 1_700_000_000_000_000_000)
        elif data[0] & 7 == 2:  # a Kerberos AS-REQ (bit 3: over TCP) from 10.0.0.2
            _IDENTITY.kerberos(data[1:], b"\x0a\0\0\x02", 1_700_000_000_000_000_000,
                               tcp=bool(data[0] & 8))  # fmt: skip
        elif data[0] & 7 == 4:  # a DHCPv6 message
            _IDENTITY.dhcpv6(data[1:], 1_700_000_000_000_000_000)
        elif data[0] & 7 == 6:  # a NetBIOS name service message from 10.0.0.3
            _IDENTITY.netbios(data[1:], b"\x0a\0\0\x03", 1_700_000_000_000_000_000)
        else:
            _IDENTITY.frame(1, data[1:], 1_700_000_000_000_000_000)
    except DecodeError:
        pass
    for record in _IDENTITY.drain():
        assert identity_from_json(record.to_json()) == record
    assert len(_IDENTITY.clients) <= 64 and len(_IDENTITY.bindings) <= 64


_QUIC_PAIR = (
    QuicInitialTracker(max_connections=64, pure=True),
    QuicInitialTracker(max_connections=64),
)


def _fed(tracker: QuicInitialTracker, data: bytes) -> str:
    try:
        return repr(tracker.feed(FLOW, data, 0.0))
    except DecodeError as exc:
        return f"error {exc}"


def fuzz_native(data: bytes) -> None:
    """The compiled decoders (native/) against the pure-Python ones, the reference: every
    ported decoder on the bytes, the bytes as a QUIC Initial (header protection, AEAD) under
    a DCID the first byte picks, and as datagrams into a pure and a compiled tracker. A
    difference fails as a crash; with no compiled module it checks nothing."""
    check_decoders(data)
    if data:
        check_quic_open(data[1:], data[1 : 1 + data[0] % 21], data[0] - 1)  # largest >= -1
    pure, compiled = _QUIC_PAIR
    assert _fed(pure, data) == _fed(compiled, data), data


TARGETS: Final[dict[str, Harness]] = {
    "dns": fuzz_dns,
    "tls": fuzz_tls,
    "quic": fuzz_quic,
    "http": fuzz_http,
    "pcap": fuzz_pcap,
    "packet": fuzz_packet,
    "identity": fuzz_identity,
    "native": fuzz_native,
}


# -- seeds: real bytes from captures, cut to what each target reads -----------------------


def _captures(dirs: list[Path]) -> Iterator[Path]:
    for d in dirs:
        if d.is_file():
            yield d
        elif d.is_dir():
            yield from sorted(p for p in d.glob("*.pcap*") if p.is_file())


def seeds(target: str, dirs: list[Path], limit: int = 400) -> list[bytes]:
    """Up to ``limit`` distinct seed inputs for ``target`` from the captures under ``dirs``."""
    out: dict[bytes, None] = {}
    for path in _captures(dirs):
        if target == "pcap":
            out[path.read_bytes()[:4096]] = None  # the header and the first records
        else:
            _payload_seeds(target, path, out, limit)
        if len(out) >= limit:
            break
    return list(out)[:limit]


def _payload_seeds(target: str, path: Path, out: dict[bytes, None], limit: int) -> None:
    dec = PacketDecoder()
    try:
        with CaptureFile(str(path)) as cap:
            for ts, linktype, frame in cap:
                if target == "packet":
                    if linktype in LINKTYPES:
                        out[bytes([LINKTYPES.index(linktype)]) + frame] = None
                else:
                    seed = _pick(target, dec, linktype, frame, ts)
                    if seed:
                        out[seed] = None
                if len(out) >= limit:
                    return
    except (CaptureError, DecodeError):
        return


def _pick(target: str, dec: PacketDecoder, linktype: int, frame: bytes, ts: int) -> bytes | None:
    try:
        seg = dec.decode(linktype, frame, ts)
    except DecodeError:
        return None
    if seg is None or not seg.payload:
        return None
    p = seg.payload
    if target in ("dns", "native") and seg.proto == PROTO_UDP and 53 in (seg.sport, seg.dport):
        return p
    if target in ("quic", "native") and seg.proto == PROTO_UDP and p[0] & 0xC0 == 0xC0:
        return p
    if target in ("tls", "native") and seg.proto == PROTO_TCP and p[:1] == b"\x16":
        return p
    if target in ("http", "native") and seg.proto == PROTO_TCP and p[:1].isupper():
        return p
    if target == "identity" and seg.proto == PROTO_UDP and {seg.sport, seg.dport} <= {67, 68}:
        return b"\x01" + p
    if target == "identity" and seg.proto == PROTO_UDP and seg.dport == 88:
        return b"\x02" + p
    if target == "identity" and seg.proto == PROTO_UDP and {seg.sport, seg.dport} <= {546, 547}:
        return b"\x04" + p
    if target == "identity" and seg.proto == PROTO_UDP and seg.sport == 137:
        return b"\x06" + p
    return None
