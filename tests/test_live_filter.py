"""The live sensor's default kernel filter: the file prefilter's, plus NDP for the identity
watch, so nothing the old hand-written live filter kept for identity is lost."""

from __future__ import annotations

from pathlib import Path

from sensor.sources.live import default_filter
from sensor.sources.prefilter import PrefilteredFile, prefilter_expression


def _kept(tmp_path: Path, expression: str) -> list[str]:
    from scapy.all import (
        ARP,
        IP,
        TCP,
        UDP,
        DHCP6_Solicit,
        Ether,
        ICMPv6EchoRequest,
        ICMPv6ND_NA,
        ICMPv6ND_NS,
        IPv6,
        Raw,
        wrpcap,
    )

    frames = {
        "arp": Ether() / ARP(psrc="10.0.0.2", pdst="10.0.0.1"),
        "dhcp": Ether()
        / IP(src="0.0.0.0", dst="255.255.255.255")
        / UDP(sport=68, dport=67)
        / Raw(b"\x01" * 240),
        "dhcpv6": Ether()
        / IPv6(src="fe80::2", dst="ff02::1:2")
        / UDP(sport=546, dport=547)
        / DHCP6_Solicit(),
        "ndp-ns": Ether() / IPv6(src="fd78::2", dst="ff02::1:ff00:1") / ICMPv6ND_NS(tgt="fd78::1"),
        "ndp-na": Ether() / IPv6(src="fd78::1", dst="fd78::2") / ICMPv6ND_NA(tgt="fd78::1"),
        "netbios": Ether()
        / IP(src="10.0.0.2", dst="10.0.0.255")
        / UDP(sport=137, dport=137)
        / Raw(b"\x00" * 50),
        "kerberos": Ether()
        / IP(src="10.0.0.2", dst="10.0.0.1")
        / UDP(sport=50000, dport=88)
        / Raw(b"\x6a" * 50),
        "client-data": Ether()
        / IP(src="10.0.0.2", dst="10.0.0.1")
        / TCP(sport=50000, dport=443, flags="PA")
        / Raw(b"\x16\x03\x01" + b"\x00" * 200),
        # not kept: an echo request, and server bulk data to the client
        "icmp6-echo": Ether() / IPv6(src="fd78::2", dst="fd78::1") / ICMPv6EchoRequest(),
        "server-data": Ether()
        / IP(src="10.0.0.1", dst="10.0.0.2")
        / TCP(sport=443, dport=50000, flags="PA")
        / Raw(b"\x17" * 1000),
    }
    path = tmp_path / "identity.pcap"
    wrpcap(str(path), list(frames.values()))
    with PrefilteredFile(str(path), expression) as cap:
        kept = {bytes(f[2]) for f in cap}
    return [name for name, pkt in frames.items() if bytes(pkt) in kept]


def test_the_live_filter_keeps_what_names_a_machine_and_drops_server_bulk(tmp_path: Path) -> None:
    want = ["arp", "dhcp", "dhcpv6", "ndp-ns", "ndp-na", "netbios", "kerberos", "client-data"]
    assert _kept(tmp_path, default_filter()) == want
    # the file prefilter alone drops NDP: the clause the live filter adds is what keeps it
    assert _kept(tmp_path, prefilter_expression()) == [n for n in want if not n.startswith("ndp")]


def test_watched_networks_pass_the_live_filter_as_they_do_for_files() -> None:
    assert default_filter(["192.0.2.0/24"]).startswith("dst net 192.0.2.0/24 or ")
