"""Capture readers: formats, byte orders, compression, and clear refusals of bad files."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest

from kaspwatch.cli import main
from sensor.sources.base import CaptureError
from sensor.sources.pcapfile import CaptureFile

DNS_PCAP = "zeek_dns_original_case.pcap"
PCAPNG = "zeek_pcapng-multi-interface.pcapng"


def frames(path: Path) -> list[tuple[int, int, bytes]]:
    with CaptureFile(str(path)) as cap:
        return list(cap)


def to_big_endian_ns(src: Path, dst: Path) -> None:
    """Rewrite a little-endian microsecond pcap as big-endian nanoseconds: same packets."""
    data = src.read_bytes()
    assert data[:4] == b"\xd4\xc3\xb2\xa1"
    fields = struct.unpack("<HHiIII", data[4:24])
    out = [b"\xa1\xb2\x3c\x4d", struct.pack(">HHiIII", *fields)]
    pos = 24
    while pos < len(data):
        sec, usec, incl, orig = struct.unpack("<IIII", data[pos : pos + 16])
        out.append(struct.pack(">IIII", sec, usec * 1000, incl, orig))
        out.append(data[pos + 16 : pos + 16 + incl])
        pos += 16 + incl
    dst.write_bytes(b"".join(out))


def test_byte_orders_resolutions_and_gzip_agree(corpus: Path, tmp_path: Path) -> None:
    original = frames(corpus / DNS_PCAP)
    assert original
    be = tmp_path / "be-ns.pcap"
    to_big_endian_ns(corpus / DNS_PCAP, be)
    gz = tmp_path / "x.pcap.gz"
    gz.write_bytes(gzip.compress((corpus / DNS_PCAP).read_bytes()))
    assert frames(be) == original
    assert frames(gz) == original


def test_pcapng_with_several_interfaces(corpus: Path) -> None:
    got = frames(corpus / PCAPNG)
    assert len(got) > 1
    assert all(ts > 1_000_000_000 * 1_000_000_000 for ts, _, _ in got)  # ns since epoch, post-2001


def test_truncated_file_keeps_what_was_read(corpus: Path, tmp_path: Path) -> None:
    data = (corpus / DNS_PCAP).read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[: len(data) - 7])
    full = frames(corpus / DNS_PCAP)
    with CaptureFile(str(cut)) as cap:
        got = list(cap)
        assert cap.stats.truncated and "truncated packet" in cap.stats.note
    assert got == full[:-1]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        (b"", "empty file"),
        (b"hello, I am a text file\n", "not a pcap or pcapng"),
        (b"\xd4\xc3\xb2\xa1\x02\x00", "pcap header cut short"),
    ],
)
def test_unreadable_input_exits_2_naming_the_file(
    tmp_path: Path, content: bytes | None, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "input.pcap"
    if content is not None:
        path.write_bytes(content)
    rc = main(["scan", str(path)])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and str(path) in err and message in err


def test_capture_error_carries_path(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match=str(tmp_path)):
        CaptureFile(str(tmp_path))
