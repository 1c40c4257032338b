"""Passive identity from more of the wire (issue 17): Kerberos AS-REQ machine accounts
(a real MIT KDC and kinit in namespaces), NetBIOS name service, DHCPv6 and NDP."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import jsonschema
import pytest

from kaspwatch.identity import identity_from_json
from sensor.decode import DecodeError
from sensor.decode.kerberos import decode_as_req
from sensor.identity import IdentityWatch
from sensor.pipeline import Sensor
from sensor.rules.indicators import load_pack, shipped_pack_paths
from sensor.rules.match import Matcher
from sensor.sources.pcapfile import CaptureFile
from tests.netns import CLIENT_V4, SERVER_V4, SERVER_V6, namespace_pair, need_tools, sh
from tests.testenv import KASPWATCH, REPO

SCHEMA = json.loads((REPO / "kaspwatch" / "schema" / "identity.v1.schema.json").read_text())
TS = 1_800_000_000 * 10**9


def sensor() -> Sensor:
    return Sensor(Matcher([load_pack(p) for p in shipped_pack_paths()]), "edge", strict=True)


def valid(watch: IdentityWatch) -> list[tuple[str, str, str, str]]:
    out = []
    for ident in watch.drain():
        jsonschema.validate(ident.to_dict(), SCHEMA)
        assert identity_from_json(ident.to_json()) == ident
        out.append((ident.address, ident.hostname, ident.source, ident.mac))
    return out


# ---------------------------------------------------------------- Kerberos


def _kdc_files(tmp: Path, transport: str) -> dict[str, str]:
    limit = 1 if transport == "tcp" else 1465  # 1: every request over TCP
    (tmp / "krb5.conf").write_text(
        "[libdefaults]\n default_realm = LAB.TEST\n dns_lookup_kdc = false\n"
        f" dns_lookup_realm = false\n rdns = false\n udp_preference_limit = {limit}\n"
        f"[realms]\n LAB.TEST = {{\n  kdc = {SERVER_V4}\n  admin_server = {SERVER_V4}\n }}\n"
    )
    (tmp / "kdc.conf").write_text(
        "[kdcdefaults]\n kdc_ports = 88\n kdc_tcp_ports = 88\n"
        f"[realms]\n LAB.TEST = {{\n  database_name = {tmp}/principal\n"
        f"  key_stash_file = {tmp}/stash\n  acl_file = {tmp}/kadm5.acl\n }}\n"
        f"[logging]\n kdc = FILE:{tmp}/kdc.log\n"
    )
    (tmp / "kadm5.acl").write_text("")
    return {"KRB5_CONFIG": str(tmp / "krb5.conf"), "KRB5_KDC_PROFILE": str(tmp / "kdc.conf"),
            "KRB5CCNAME": f"FILE:{tmp}/ccache"}  # fmt: skip


@pytest.mark.live
@pytest.mark.timeout(90)
@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_live_kinit_machine_account_names_the_machine_and_its_alerts(
    tmp_path: Path, transport: str
) -> None:
    """An MIT KDC (krb5kdc) in one namespace; in the other, a workstation takes its machine
    account's ticket with kinit and a keytab, as a domain member does at boot, then looks
    up a Kaspersky update host. The capture's AS-REQ names WS-LAB7 at the client address;
    the alert for the lookup names it."""
    need_tools("ip", "tcpdump", "krb5kdc", "kdb5_util", "kadmin.local", "kinit", "dnsmasq", "dig")
    env = _kdc_files(tmp_path, transport)
    envs = [f"{k}={v}" for k, v in env.items()]
    subprocess.run(["kdb5_util", "create", "-s", "-r", "LAB.TEST", "-P", "master-not-secret"],
                   env={**os.environ, **env}, capture_output=True, check=True)  # fmt: skip
    keytab = tmp_path / "ws.keytab"
    for q in ("addprinc -randkey WS-LAB7$", f"ktadd -k {keytab} WS-LAB7$"):
        subprocess.run(["kadmin.local", "-r", "LAB.TEST", "-q", q], env={**os.environ, **env},
                       capture_output=True, check=True)  # fmt: skip
    with namespace_pair("kr") as net:
        sif = net.server[:15]
        dns = tmp_path / "dnsmasq.conf"
        dns.write_text(f"no-resolv\nno-hosts\nbind-interfaces\nlisten-address={SERVER_V4}\n"
                       f"port=53\naddress=/kaspersky.com/{SERVER_V4}\n")  # fmt: skip
        net.spawn(net.server, "dnsmasq", "-k", f"--conf-file={dns}",
                  f"--pid-file={tmp_path}/dnsmasq.pid")  # fmt: skip
        kdc = net.spawn(net.server, "env", *envs, "krb5kdc", "-n")
        pcap = tmp_path / "krb.pcap"
        tcpdump = net.spawn(net.server, "tcpdump", "-i", sif, "-n", "--immediate-mode", "-U",
                            "-s", "0", "-w", str(pcap))  # fmt: skip
        time.sleep(1.0)  # tcpdump's and krb5kdc's readiness go to pipes: give them a moment
        assert kdc.poll() is None, kdc.stderr.read() if kdc.stderr else ""
        got = net.run(net.client, "env", *envs, "kinit", "-k", "-t", str(keytab),
                      "WS-LAB7$@LAB.TEST")  # fmt: skip
        assert got.returncode == 0, got.stderr + (tmp_path / "kdc.log").read_text()
        kdc_log = (tmp_path / "kdc.log").read_text()
        assert "AS_REQ (" in kdc_log and "WS-LAB7$@LAB.TEST" in kdc_log, kdc_log
        dig = net.run(net.client, "dig", f"@{SERVER_V4}", "upd.kaspersky.com", "+short")
        assert dig.stdout.strip() == SERVER_V4, dig.stdout + dig.stderr
        time.sleep(0.5)
        tcpdump.send_signal(2)
        tcpdump.wait(10)
    s = sensor()
    for frame in CaptureFile(str(pcap)):
        s.process_frame(*frame)
    seen = {(f[2][23], int.from_bytes(f[2][36:38], "big")) for f in CaptureFile(str(pcap))}
    assert (6 if transport == "tcp" else 17, 88) in seen  # the AS-REQ went as asked
    named = [i for i in valid(s.identity) if i[2] == "kerberos"]
    assert [i[:3] for i in named] == [(CLIENT_V4, "WS-LAB7", "kerberos")]
    proc = subprocess.run([*KASPWATCH, "run", "--pcap", str(pcap), "--format", "ndjson"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    alerts = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    assert alerts and all(a["host"] == CLIENT_V4 for a in alerts), proc.stdout + proc.stderr
    assert {a["host_name"] for a in alerts} == {"WS-LAB7"}
    assert {a["identity_source"] for a in alerts} == {"kerberos"}


def _as_req(*names: str, realm: str = "LAB.TEST") -> bytes:
    from scapy.layers.kerberos import KRB_AS_REQ, KRB_KDC_REQ_BODY, PrincipalName

    body = KRB_KDC_REQ_BODY(
        cname=PrincipalName(nameType=1, nameString=list(names)), realm=realm,
        sname=PrincipalName(nameType=2, nameString=["krbtgt", realm]),
    )  # fmt: skip
    return bytes(KRB_AS_REQ(reqBody=body))


def test_kerberos_user_principals_name_no_machine_and_odd_bytes_are_decode_errors() -> None:
    w = IdentityWatch("s")
    src = bytes([10, 0, 0, 7])
    w.kerberos(_as_req("alice"), src, TS)  # a person, not a machine
    w.kerberos(_as_req("host", "ws7.lab.test"), src, TS)  # a service principal
    assert valid(w) == []
    w.kerberos(_as_req("WS-7$"), src, TS)
    w.kerberos(_as_req("ws-7$"), src, TS + 1)  # the same name in other letters
    assert valid(w) == [("10.0.0.7", "WS-7", "kerberos", "")]
    record = _as_req("WS-8$")
    w.kerberos(len(record).to_bytes(4, "big") + record, src, TS, tcp=True)
    assert valid(w) == [("10.0.0.7", "WS-8", "kerberos", "")]
    for bad in (record[:-3], b"\x6a\x84\xff\xff\xff\xff", b"\x6a\x01", b"\x6a\x03\x30\x01\x00",
                b"\x6a\x80\x30\x00", b"\x6a\x1f"):  # fmt: skip
        with pytest.raises(DecodeError):
            decode_as_req(bad)
    many = _as_req(*[f"n{i}" for i in range(9)])
    with pytest.raises(DecodeError):
        decode_as_req(many)


# ---------------------------------------------------------------- NetBIOS


def _udp4(src: str, sport: int, dport: int, payload: object) -> tuple[int, int, bytes]:
    from scapy.all import IP, UDP, Ether, raw

    pkt = Ether(src="02:00:00:00:00:99", dst="ff:ff:ff:ff:ff:ff") / IP(src=src, dst="10.0.0.255")
    return TS, 1, raw(pkt / UDP(sport=sport, dport=dport) / payload)  # type: ignore[operator]


def test_netbios_registrations_and_answers_name_their_sender() -> None:
    from scapy.layers.netbios import (
        NBNS_ADD_ENTRY,
        NBNSHeader,
        NBNSQueryResponse,
        NBNSRegistrationRequest,
    )

    def reg(name: str, addr: str, group: bool = False, suffix: int = 0x4141) -> object:
        body = NBNSRegistrationRequest(
            QUESTION_NAME=name, SUFFIX=suffix, NB_ADDRESS=addr, G=int(group)
        )
        return NBNSHeader(OPCODE=5, NM_FLAGS=0x11, QDCOUNT=1, ARCOUNT=1) / body

    answer = NBNSHeader(RESPONSE=1, NM_FLAGS=0x50, QDCOUNT=0, ANCOUNT=1) / NBNSQueryResponse(
        RR_NAME="WS-LAB10", ADDR_ENTRY=[NBNS_ADD_ENTRY(NB_ADDRESS="10.0.0.10")]
    )
    wins = NBNSHeader(RESPONSE=1, NM_FLAGS=0x50, QDCOUNT=0, ANCOUNT=1) / NBNSQueryResponse(
        RR_NAME="WS-FAR", ADDR_ENTRY=[NBNS_ADD_ENTRY(NB_ADDRESS="10.0.0.77")]
    )
    s = sensor()
    s.process_frame(*_udp4("10.0.0.9", 137, 137, reg("WS-LAB9", "10.0.0.9")))
    s.process_frame(*_udp4("10.0.0.9", 137, 137, reg("WS-LAB9", "10.0.0.9", suffix=0x4341)))
    s.process_frame(*_udp4("10.0.0.9", 137, 137, reg("LABDOMAIN", "10.0.0.9", group=True)))
    s.process_frame(*_udp4("10.0.0.9", 137, 137, reg("WS-OTHER", "10.0.0.8")))  # not its own
    s.process_frame(*_udp4("10.0.0.10", 137, 5000, answer))
    s.process_frame(*_udp4("10.0.0.2", 137, 5000, wins))  # a WINS server answers for another
    assert valid(s.identity) == [
        ("10.0.0.9", "WS-LAB9", "netbios", ""),
        ("10.0.0.10", "WS-LAB10", "netbios", ""),
    ]


def test_malformed_netbios_is_a_decode_error() -> None:
    from sensor.decode.netbios import decode_nbns

    head = bytes.fromhex("000029100001000000000001")
    name = b"\x20" + b"FHFDCNEMEBECDJCACACACACACACACAAA" + b"\x00"
    for bad in (
        head[:8],
        head + b"\xc0\x0c" + b"\x00\x20\x00\x01",  # a pointer to itself
        head + b"\x20" + b"z" * 32 + b"\x00\x00\x20\x00\x01",  # not first-level encoded
        head + name + b"\x00\x20\x00\x01" + b"\xc0\x0c\x00\x20\x00\x01\0\0\0\0\x00\x07" + b"x" * 7,
        head + name,  # the question runs off the end: its type, then the record
        bytes.fromhex("0000291000ff000000000001"),  # too many records
    ):
        with pytest.raises(DecodeError):
            r = decode_nbns(bad)
            assert not r, r
    s = sensor()
    s.process_frame(*_udp4("10.0.0.9", 137, 137, head[:8]))
    assert s.stats.decode_errors == 1 and valid(s.identity) == []


# ---------------------------------------------------------------- DHCPv6 and NDP

V6_MAC = "02:11:22:33:44:66"


def _udp6(src: str, dst: str, sport: int, dport: int, payload: object) -> tuple[int, int, bytes]:
    from scapy.all import UDP, Ether, IPv6, raw

    pkt = Ether(src=V6_MAC, dst="33:33:00:01:00:02") / IPv6(src=src, dst=dst)
    return TS, 1, raw(pkt / UDP(sport=sport, dport=dport) / payload)  # type: ignore[operator]


def test_dhcpv6_reply_binds_the_clients_fqdn_and_duid_mac() -> None:
    from scapy.layers.dhcp6 import (
        DUID_LLT,
        DHCP6_Reply,
        DHCP6_Request,
        DHCP6OptClientFQDN,
        DHCP6OptClientId,
        DHCP6OptIA_NA,
        DHCP6OptIAAddress,
    )

    duid = DHCP6OptClientId(duid=DUID_LLT(lladdr=V6_MAC, timeval=1))
    fqdn = DHCP6OptClientFQDN(fqdn="ws-lab6.lab.test.")
    request = DHCP6_Request(trid=7) / duid / fqdn
    ia = DHCP6OptIA_NA(iaid=1, ianaopts=[DHCP6OptIAAddress(addr="fd78::50", validlft=7200)])
    reply = DHCP6_Reply(trid=7) / duid / ia
    s = sensor()
    s.process_frame(*_udp6("fe80::11", "ff02::1:2", 546, 547, request))
    assert valid(s.identity) == []  # only the server's reply binds
    s.process_frame(*_udp6("fe80::1", "fe80::11", 547, 546, reply))
    [ident] = s.identity.pending
    assert (ident.fqdn, ident.lease_s, ident.names()) == ("ws-lab6.lab.test", 7200, "ws-lab6")
    assert valid(s.identity) == [("fd78::50", "", "dhcpv6", V6_MAC)]
    gone = DHCP6OptIA_NA(iaid=1, ianaopts=[DHCP6OptIAAddress(addr="fd78::51", validlft=0)])
    s.process_frame(*_udp6("fe80::1", "fe80::11", 547, 546, DHCP6_Reply(trid=8) / duid / gone))
    assert valid(s.identity) == []  # a released address binds nothing
    for bad in (b"\x07\0\0", b"\x07\0\0\x07\x00\x01\x00\x09ab", b"\x07\0\0\x07\x00\x03\x00\x02ab"):
        with pytest.raises(DecodeError):
            s.identity.dhcpv6(bad, TS)


def _advert(src: str, target: str, mac: str | None) -> tuple[int, int, bytes]:
    from scapy.all import Ether, ICMPv6ND_NA, ICMPv6NDOptDstLLAddr, IPv6, raw

    na = ICMPv6ND_NA(tgt=target, R=0, S=0, O=1)
    if mac:
        na = na / ICMPv6NDOptDstLLAddr(lladdr=mac)
    return TS, 1, raw(Ether(src=mac or V6_MAC, dst="33:33:00:00:00:01") / IPv6(src=src) / na)


def _solicit(src: str, mac: str) -> tuple[int, int, bytes]:
    from scapy.all import Ether, ICMPv6ND_NS, ICMPv6NDOptSrcLLAddr, IPv6, raw

    ns = ICMPv6ND_NS(tgt="fd78::1") / ICMPv6NDOptSrcLLAddr(lladdr=mac)
    return TS, 1, raw(Ether(src=mac, dst="33:33:ff:00:00:01") / IPv6(src=src) / ns)


def test_ndp_names_its_senders_own_address_and_mac() -> None:
    s = sensor()
    s.process_frame(*_solicit("::", "02:00:00:00:00:07"))  # duplicate address detection
    s.process_frame(*_solicit("fd78::7", "02:00:00:00:00:07"))
    assert valid(s.identity) == [("fd78::7", "", "ndp", "02:00:00:00:00:07")]
    s.process_frame(*_advert("fd78::2", "fd78::2", V6_MAC))
    s.process_frame(*_advert("fd78::2", "fd78::2", V6_MAC))  # chatter: nothing new
    s.process_frame(*_advert("fd78::1", "fd78::99", "02:00:00:00:00:01"))  # a proxy's
    s.process_frame(*_advert("fd78::3", "fd78::3", None))  # no link-layer option
    assert valid(s.identity) == [("fd78::2", "", "ndp", V6_MAC)]
    _, _, frame = _advert("fd78::2", "fd78::2", V6_MAC)
    s.process_frame(TS, 1, frame[:-4])  # the option cut short
    bad = bytearray(frame)
    bad[-7] = 0  # an option of length 0 would never end
    s.process_frame(TS, 1, bytes(bad))
    assert s.stats.errors_by_layer == {"ndp": 2} and valid(s.identity) == []


@pytest.mark.live
@pytest.mark.timeout(90)
def test_live_dhcpv6_and_ndp_name_the_machine_and_its_alerts(tmp_path: Path) -> None:
    """dnsmasq leases one IPv6 address; dhclient -6 (DUID-LL of its MAC, FQDN
    ws-lab6.lab.test) takes it and looks a Kaspersky update host up over IPv6 from it, so
    its neighbour solicitation for the server names it. The capture binds the address by
    DHCPv6 (NDP names the link-local address), and the alert names the machine."""
    need_tools("ip", "dnsmasq", "dig", "tcpdump", "dhclient")
    with namespace_pair("v6") as net:
        sif, cif = net.server[:15], net.client_if
        sh("ip", "-n", net.client, "link", "set", cif, "address", V6_MAC)
        conf = tmp_path / "dnsmasq.conf"
        conf.write_text(
            f"no-resolv\nno-hosts\nbind-interfaces\ninterface={sif}\nlisten-address={SERVER_V6}\n"
            f"dhcp-range=fd78::50,fd78::50,64,1h\ndhcp-leasefile={tmp_path}/leases\n"
            f"address=/kaspersky.com/{SERVER_V6}\n"
        )
        dnsmasq = net.spawn(net.server, "dnsmasq", "-k", f"--conf-file={conf}",
                            f"--pid-file={tmp_path}/dnsmasq.pid")  # fmt: skip
        pcap = tmp_path / "v6.pcap"
        tcpdump = net.spawn(net.server, "tcpdump", "-i", sif, "-n", "--immediate-mode", "-U",
                            "-s", "0", "-w", str(pcap))  # fmt: skip
        deadline = time.monotonic() + 20  # dhclient -6 needs a link-local address past DAD
        while "tentative" in net.run(net.client, "ip", "-6", "addr", "show", "dev", cif).stdout:
            assert time.monotonic() < deadline, "the client's link-local address stayed tentative"
            time.sleep(0.2)
        time.sleep(1.0)  # tcpdump's "listening" goes to a pipe: give it its moment
        assert dnsmasq.poll() is None and tcpdump.poll() is None
        script = tmp_path / "dhclient-script"  # sets the address only: no resolv.conf
        script.write_text(
            '#!/bin/sh\ncase "$reason" in BOUND6|RENEW6|REBIND6|REBOOT6)\n'
            '  ip -6 addr add "$new_ip6_address/64" dev "$interface" nodad;;\nesac\nexit 0\n'
        )
        script.chmod(0o755)
        dconf = tmp_path / "dhclient6.conf"
        dconf.write_text('send fqdn.fqdn "ws-lab6.lab.test.";\n')
        got = net.run(net.client, "dhclient", "-6", "-1", "-D", "LL", "-sf", str(script),
                      "-cf", str(dconf), "-lf", str(tmp_path / "v6.leases"),
                      "-pf", str(tmp_path / "v6.pid"), cif, timeout=40)  # fmt: skip
        assert got.returncode == 0, got.stderr
        addrs = net.run(net.client, "ip", "-6", "-o", "addr", "show", "dev", cif).stdout
        assert "fd78::50/64" in addrs, addrs
        dig = net.run(net.client, "dig", f"@{SERVER_V6}", "-b", "fd78::50", "AAAA",
                      "dnl-09.geo.kaspersky.com", "+short")  # fmt: skip
        assert dig.stdout.strip() == SERVER_V6, dig.stdout + dig.stderr
        net.run(net.client, "dhclient", "-6", "-x", "-pf", str(tmp_path / "v6.pid"), cif)
        time.sleep(0.5)
        tcpdump.send_signal(2)
        tcpdump.wait(10)
    s = sensor()
    for frame in CaptureFile(str(pcap)):
        s.process_frame(*frame)
    pending = list(s.identity.pending)
    got6 = valid(s.identity)
    assert ("fd78::50", "", "dhcpv6", V6_MAC) in got6, got6
    # NDP names the client's link-local address; its solicitation from fd78::50 only
    # confirms what DHCPv6 said (same MAC): nothing new to publish
    assert any(a.startswith("fe80:") and (src, mac) == ("ndp", V6_MAC)
               for a, _, src, mac in got6), got6  # fmt: skip
    assert [g for g in got6 if g[0] == "fd78::50"] == [("fd78::50", "", "dhcpv6", V6_MAC)]
    [lease] = [i for i in pending if i.source == "dhcpv6"]
    assert lease.fqdn == "ws-lab6.lab.test" and lease.lease_s == 3600
    proc = subprocess.run([*KASPWATCH, "run", "--pcap", str(pcap), "--format", "ndjson"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    alerts = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    assert alerts, proc.stdout + proc.stderr
    assert {(a["host"], a["host_name"], a["mac"]) for a in alerts} == {
        ("fd78::50", "ws-lab6", V6_MAC)
    }


def test_real_kerberos_capture_names_the_machine() -> None:
    """The committed capture of the live test (UDP): no root needed to pin the decoder on
    the bytes a real kinit sends."""
    s = sensor()
    events = [e for f in CaptureFile(str(REPO / "tests/captures/kerberos-workstation.pcap"))
              for e in s.process_frame(*f)]  # fmt: skip
    assert [i[:3] for i in valid(s.identity) if i[2] == "kerberos"] == [
        ("10.78.0.2", "WS-LAB7", "kerberos")
    ]
    assert events and s.stats.decode_errors == 0
