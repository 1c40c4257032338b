"""DNS over TCP on a port of its own: dnsmasq on 5300 and ``dig +tcp -p 5300`` in a
namespace pair, seen by the live sensor and by a scan of the capture; the same capture with
a long answer's segments swapped, checked against tshark told the port and to reassemble
out of order."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests import capturegen as gen
from tests.livelab import lab, ok
from tests.netns import SERVER_V4

pytestmark = [pytest.mark.live, pytest.mark.timeout(60)]

PORT = 5300
WATCHED = "s05.upd.kaspersky.com"
BIG = "big.dns-tcp.test"  # eight 250-byte TXT strings: an answer of two segments or more
TSHARK_DNS = ["-d", f"tcp.port=={PORT},dns", "-o", "tcp.reassemble_out_of_order:TRUE"]


def tshark_names(pcap: Path) -> set[tuple[str, str]]:
    out = subprocess.run(
        ["tshark", "-r", str(pcap), "-n", *TSHARK_DNS, "-T", "fields",
         "-e", "dns.flags.response", "-e", "dns.qry.name", "-Y", "dns"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    rows = (line.split("\t") for line in out.splitlines())
    return {("dns_answer" if r == "1" else "dns_query", n.lower()) for r, n in rows}


def scan_names(pcap: Path, *flags: str) -> set[tuple[str, str]]:
    args = [sys.executable, "-m", "kaspwatch", "scan", "--observations", *flags, str(pcap)]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60, check=True).stdout
    events = map(json.loads, out.splitlines())
    return {(e["kind"], e["name"]) for e in events if e["kind"].startswith("dns_")}


def test_dns_over_tcp_on_port_5300_in_and_out_of_order(tmp_path: Path) -> None:
    txt = [f'txt-record={BIG},"{chr(97 + i) * 250}"' for i in range(8)]
    with lab("dp", tmp_path, "dig", "dnsmasq", "tshark") as net:
        net.dnsmasq(*txt, port=PORT)
        with net.watch() as seen:
            dig = f"dig +tcp +tries=1 +time=3 -p {PORT} @{SERVER_V4}"
            ok(net.client(f"{dig} {WATCHED} A"))
            out = ok(net.client(f"{dig} {BIG} TXT"))
    assert out.stdout.count(f"{BIG}.") >= 8 and "status: NOERROR" in out.stdout, out.stdout
    seen.expect(("dns_query", WATCHED))  # scan and live alert (one per host and category)
    want = {(k, n) for n in (WATCHED, BIG) for k in ("dns_query", "dns_answer")}
    assert want == {p for p in seen.pairs() if p[0].startswith("dns_")}, sorted(seen.pairs())
    assert {e["transport"] for e in seen.of("dns_answer", BIG)} == {"tcp"}
    assert tshark_names(seen.pcap) == want

    reordered = tmp_path / "reordered.pcap"
    assert gen.reorder_answer(seen.pcap, reordered, PORT) >= 2
    assert tshark_names(reordered) == want
    assert scan_names(reordered) == want  # through the prefilter
    assert scan_names(reordered, "--no-prefilter") == want
