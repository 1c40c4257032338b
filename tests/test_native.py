"""The compiled decoders (native/, ``kaspwatch_native``) give exactly what the pure-Python
decoders give -- the same sightings, or the same ``DecodeError`` message -- on
hypothesis-built and random inputs, on the fuzz seeds, and on every packet of every capture
in the corpus (decoder by decoder, and through the whole Sensor). Skipped where the module
was not built; where a Rust toolchain is there, not being built is itself a failure."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fuzz.differential import check_decoders, check_quic_open, protect
from fuzz.targets import seeds
from sensor.decode import DecodeError
from sensor.decode.native import NATIVE, PURE_ENV
from sensor.decode.packet import PacketDecoder
from sensor.decode.quic import VERSION_1, VERSION_2, QuicInitialTracker
from sensor.pipeline import Sensor
from sensor.rules.indicators import load_pack
from sensor.rules.match import Matcher
from sensor.sources.base import CaptureError
from sensor.sources.pcapfile import CaptureFile
from tests.testenv import REPO

built = pytest.mark.skipif(NATIVE is None, reason="compiled decoders not built (no Rust toolchain)")
FLOW = (b"\x0a\x00\x00\x01", 40000, b"\x0a\x00\x00\x02", 443)


def test_the_compiled_decoders_are_built_where_a_rust_toolchain_is() -> None:
    rustup = Path(os.environ.get("CARGO_HOME", Path.home() / ".cargo")) / "bin" / "cargo"
    if os.environ.get(PURE_ENV) or not (shutil.which("cargo") or rustup.exists()):
        pytest.skip("no Rust toolchain here (or the pure decoders were asked for)")
    assert NATIVE is not None, "cargo is here but kaspwatch_native is not installed: run make"


# --- hypothesis: random bytes, and inputs shaped like each protocol ---------------------------

label = st.one_of(
    st.binary(min_size=1, max_size=12),
    st.text("abcXYZ019-_.*", min_size=1, max_size=12).map(str.encode),
)


@st.composite
def dns_messages(draw: st.DrawFn) -> bytes:
    """Headers, names with odd bytes and compression pointers (backward, forward, looping),
    and A/AAAA/CNAME records of any class, size and TTL, sometimes cut short."""

    def name() -> bytes:
        out = b"".join(bytes([len(x)]) + x for x in draw(st.lists(label, max_size=4)))
        end = draw(st.sampled_from([b"\x00", b"\xc0\x0c", b"\xc0\x00", b"\xc0\x30", b"\x80"]))
        return out + end

    flags = draw(st.sampled_from([0x0100, 0x8180, 0x8580, 0x0000, 0x8400]))
    qd = draw(st.integers(0, 3))
    records = draw(
        st.lists(st.tuples(st.sampled_from([1, 5, 28, 12, 1]), st.integers()), max_size=6)
    )
    body = b""
    for _ in range(qd):
        body += name() + draw(st.sampled_from([b"\x00\x01\x00\x01", b"\x00\x1c\x80\x01", b"\x00"]))
    for rtype, pick in records:
        if rtype == 1:
            rdata = draw(st.sampled_from([bytes([10, 0, 0, pick % 256]), b"\x01\x02\x03"]))
        elif rtype == 28:
            words = st.lists(st.sampled_from([0, 0, 0, 1, 0xFFFF, 0x2001]), min_size=8, max_size=8)
            zeroes = words.map(lambda w: b"".join(x.to_bytes(2, "big") for x in w))
            mapped = st.just(bytes(10) + b"\xff\xff\x01\x02\x03\x04")
            rdata = draw(st.binary(min_size=16, max_size=16) | zeroes | mapped)
        else:
            rdata = name()
        rclass = draw(st.sampled_from([1, 0x8001, 3]))
        ttl = draw(st.integers(0, 2**32 - 1))
        owner = b"\xc0\x0c" if draw(st.booleans()) else name()  # often the asked name
        body += owner + rtype.to_bytes(2, "big") + rclass.to_bytes(2, "big")
        body += ttl.to_bytes(4, "big")
        body += len(rdata).to_bytes(2, "big") + rdata
    counts = (qd, len(records), 0, 0)
    if draw(st.booleans()):
        counts = (draw(st.integers(0, 5)), draw(st.integers(0, 9)), 0, 0)
    header = draw(st.binary(min_size=2, max_size=2)) + flags.to_bytes(2, "big")
    msg = header + b"".join(c.to_bytes(2, "big") for c in counts) + body
    return msg[: draw(st.integers(0, len(msg)))] if draw(st.booleans()) else msg


host_values = st.one_of(
    st.sampled_from(
        [
            "a.example",
            "Ex.COM.",
            "[2001:db8::1]:8443",
            "u@h.example:80",
            " h ",
            "::1",
            "a..b",
            "",
            "*.x",
            "1.2.3.4:5",
            "h\x1f",
            "\x1ch\x1c",
            "-a",
            "é.fr",
            "a b",
        ]
    ),
    st.text("aZ0.:[]@-_* \t\x0b\x1c\xe9", max_size=20),
)


EOLS = ("\r\n", "\n", "\r\r\n")


@st.composite
def http_heads(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from(["GET", "CONNECT", "POST", "M-SEARCH", "get", "A" * 21, "G_T"]))
    target = draw(
        st.sampled_from(
            [
                "/",
                "/index/u.klz?q=1",
                "http://h.example:81/p",
                "HTTPS://H",
                "http:///x",
                "host.example:443",
                "/\xe9",
                "*",
            ]
        )
    )
    version = draw(st.integers(0, 9))
    eol = draw(st.sampled_from(EOLS))
    line = f"{method} {target} HTTP/1.{version}{eol}"
    head = line
    for _ in range(draw(st.integers(0, 4))):
        field = draw(st.sampled_from(["Host", "HOST", "host ", "User-Agent", "user-agent", "X-A"]))
        sp = draw(st.sampled_from(["", " ", "\t ", "   "]))
        value = (
            draw(host_values)
            if "ost" in field.lower()
            else draw(st.text(" \tAbc/\x85\xa0\xff", max_size=600))
        )
        eol = draw(st.sampled_from(EOLS[:2]))
        head += f"{field}:{sp}{value}{eol}"
    head += draw(st.sampled_from(["\r\n", "", "\n"]))
    return head.encode("latin-1", "replace")


@st.composite
def client_hellos(draw: st.DrawFn) -> bytes:
    """A ClientHello body with an SNI of odd bytes, maybe ECH, maybe cut; in records."""
    sni = draw(host_values.map(lambda s: s.encode("utf-8")) | st.binary(max_size=20))
    entry = bytes([draw(st.sampled_from([0, 0, 1]))]) + len(sni).to_bytes(2, "big") + sni
    sni_ext = (len(entry) + draw(st.integers(0, 2))).to_bytes(2, "big") + entry
    exts = b"\x00\x00" + len(sni_ext).to_bytes(2, "big") + sni_ext
    if draw(st.booleans()):
        exts = b"\xfe\x0d\x00\x02ab" + exts
    body = b"\x03\x03" + bytes(32) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
    body += ((len(exts) + draw(st.integers(-2, 2))) % 65536).to_bytes(2, "big") + exts
    body = body[: draw(st.integers(0, len(body)))] if draw(st.booleans()) else body
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    cut = draw(st.integers(1, max(1, len(hs))))
    records = b"".join(
        b"\x16\x03\x01" + len(p).to_bytes(2, "big") + p for p in (hs[:cut], hs[cut:]) if p
    )
    return draw(st.sampled_from([body, records, records[: len(records) // 2], hs]))


@built
@given(st.binary(max_size=300))
def test_random_bytes(data: bytes) -> None:
    check_decoders(data)


@built
@given(dns_messages())
def test_dns_messages(msg: bytes) -> None:
    check_decoders(msg)


ipv6_words = st.lists(st.sampled_from([0, 0, 0, 1, 0xFFFF, 0x2001]), min_size=8, max_size=8)


@built
@given(
    st.binary(min_size=16, max_size=16)
    | ipv6_words.map(lambda w: b"".join(x.to_bytes(2, "big") for x in w))
)
def test_dns_addresses(address: bytes) -> None:
    """An answer's IPv6 address in the text the C library gives (zero runs, IPv4 forms)."""
    question = b"\x01a\x07example\x00\x00\x1c\x00\x01"
    record = b"\xc0\x0c\x00\x1c\x00\x01\x00\x00\x00\x3c\x00\x10" + address
    check_decoders(b"\x00\x01\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00" + question + record)


@built
@given(http_heads())
def test_http_heads(head: bytes) -> None:
    check_decoders(head)


@built
@given(client_hellos())
def test_client_hellos(hello: bytes) -> None:
    check_decoders(hello)


@built
@given(
    st.binary(min_size=0, max_size=20),
    st.integers(0, 2**32 - 1),
    st.integers(1, 4),
    st.binary(max_size=64),
    st.integers(-1, 2**32),
    st.sampled_from([VERSION_1, VERSION_2]),
    st.integers(0, 3),
)
def test_quic_initials(
    dcid: bytes, pn: int, pn_len: int, plain: bytes, largest: int, version: int, flip: int
) -> None:
    packet = protect(version, dcid, pn, pn_len, plain)
    if flip:  # a damaged packet: the tag must fail the same way
        packet = packet[:-flip] + bytes([packet[-flip] ^ 1]) + packet[len(packet) - flip + 1 :]
    check_quic_open(packet, dcid, largest, version)
    check_quic_open(packet, dcid + b"x", largest, version)


def test_known_answers() -> None:
    """Decoded values on the compiled path: IPv6 text as the C library prints it, the CNAME
    chain, the smallest TTL; a hello's SNI and ECH; an HTTP head's Host, path and agent."""
    if NATIVE is None:
        pytest.skip("compiled decoders not built")
    import dns.message  # dnspython, a dependency

    wire = dns.message.from_text(
        "id 1\nopcode QUERY\nrcode NOERROR\nflags QR RD RA\n;QUESTION\nA.example. IN A\n;ANSWER\n"
        "a.example. 300 IN CNAME b.example.\nb.example. 60 IN AAAA ::ffff:1.2.3.4\n"
        "b.example. 30 IN AAAA 2001:db8:0:0:1:0:0:1\nb.example. 30 IN AAAA ::1.2.3.4\n"
    ).to_wire()
    (s,) = NATIVE.decode_dns(wire)
    assert (s.kind, s.name, s.chain, s.ttl) == ("dns_answer", "a.example", ("b.example",), 30)
    assert sorted(s.answers) == ["2001:db8::1:0:0:1", "::1.2.3.4", "::ffff:1.2.3.4"]
    head = b"GET http://u@Proxy.Example:81/p HTTP/1.1\r\nUser-Agent:  KL \r\n\r\n"
    (h,) = NATIVE.decode_http_request(head)
    assert (h.kind, h.name, h.path, h.user_agent, dict(h.extra)) == (
        "http_host",
        "proxy.example",
        "/p",
        "KL",
        {"proxy_form": True},
    )
    with pytest.raises(DecodeError, match="tls stream: a non-handshake record"):
        NATIVE.hello_from_stream(b"\x17\x03\x03\x00\x01x")


# --- the fuzz seeds and every capture in the corpus -------------------------------------------


def _captures(corpus: Path) -> list[Path]:
    found = [
        *corpus.glob("*.pcap*"),
        *(REPO / "tests" / "captures").glob("*.pcap*"),
        *(REPO / "samples").glob("*.pcap*"),
    ]
    return sorted(p for p in found if p.is_file())


@built
@pytest.mark.parametrize("target", ["dns", "tls", "http", "quic"])
def test_fuzz_seeds(corpus: Path, target: str) -> None:
    found = seeds(target, [REPO / "samples", corpus], limit=2000)
    assert found, "no seeds"
    pure, compiled = QuicInitialTracker(pure=True), QuicInitialTracker()
    for seed in found:
        check_decoders(seed)
        if target == "quic":
            assert _feed(pure, seed) == _feed(compiled, seed), seed


def _feed(tracker: QuicInitialTracker, payload: bytes) -> str:
    try:
        return repr(tracker.feed(FLOW, payload, 0.0))
    except DecodeError as exc:
        return f"error {exc}"


@built
def test_every_corpus_packet(corpus: Path) -> None:
    """Each payload through every ported decoder, and each capture through a pure and a
    compiled Sensor: the same events (observations included) and the same counters."""
    matcher = Matcher(load_pack())
    captures = _captures(corpus)
    assert len(captures) > 50
    payloads = 0
    for path in captures:
        pure = Sensor(matcher, "t", observations=True, strict=True, pure=True)
        compiled = Sensor(matcher, "t", observations=True, strict=True)
        dec = PacketDecoder(max_fragments=0)
        try:
            with CaptureFile(str(path)) as cap:
                for ts, linktype, frame in cap:
                    a = [e.to_json() for e in pure.process_frame(ts, linktype, frame)]
                    b = [e.to_json() for e in compiled.process_frame(ts, linktype, frame)]
                    assert a == b, (path.name, ts)
                    try:
                        seg = dec.decode(linktype, frame, ts)
                    except DecodeError:
                        continue
                    if seg is not None and seg.payload:
                        payloads += 1
                        check_decoders(seg.payload)
                        check_decoders(seg.payload[9:])  # a record's hello body, roughly
        except CaptureError:
            continue
        assert pure.stats == compiled.stats, path.name
    assert payloads > 1000
