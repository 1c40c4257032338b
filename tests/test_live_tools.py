"""Real client tools against real servers in throw-away namespaces, seen two ways.

Every test builds its own namespace pair, starts the servers it needs in the server
namespace, then captures the client's veth with tcpdump (to a pcap) and, at the same time,
with the live sensor (``kaspwatch run --interface``). After the traffic it checks that
``kaspwatch scan --observations`` finds the expected (kind, name) pairs in the pcap and that
the live run alerted on the Kaspersky names: the capture path and the live path, on the same
real traffic.

Traffic only ever goes to the namespaces' own addresses: no default route exists, every
client is pointed at 10.78.0.1 / fd78::1, and both namespaces get their own resolv.conf
(a loopback nameserver where nothing listens) and hosts file through /etc/netns.

Offloads (TSO/GSO/GRO) are switched off on both veth ends, so the captures see the packets
as a wire would carry them: a ClientHello larger than the MSS shows up as several segments.
"""

from __future__ import annotations

import subprocess
import sys
from contextlib import suppress
from pathlib import Path

import pytest

from tests.livelab import (
    CURL,
    PROXY_CURL,
    _only_veth,
    lab,
    ok,
    run_in,
    tcp_flows,
    udp_datagrams,
)
from tests.netns import CLIENT_V4, CLIENT_V6, SERVER_V4, SERVER_V6

pytestmark = [pytest.mark.live, pytest.mark.timeout(45)]  # each case takes 2-10 s


def test_dns_over_tcp_several_queries_on_one_connection(tmp_path: Path) -> None:
    names = [
        "s05.upd.kaspersky.com",
        "activation-v2.kaspersky.com",
        "ksn-url-geo.kaspersky-labs.com",
    ]
    with lab("dt", tmp_path, "kdig", "dnsmasq") as net:
        net.dnsmasq()
        with net.watch() as seen:
            out = ok(net.client(f"kdig +tcp +keepopen +timeout=3 +retry=0 @{SERVER_V4}", *names))
    assert out.stdout.count("status: NOERROR") == 3, out.stdout
    flows = tcp_flows(seen.pcap, 53)
    assert len(flows) == 1, f"kdig +keepopen should use one TCP connection, saw {len(flows)}"
    seen.expect(*[("dns_query", n) for n in names])
    for name in names:
        events = seen.of("dns_query", name) + seen.of("dns_answer", name)
        assert seen.of("dns_answer", name), f"no dns_answer for {name}: {sorted(seen.pairs())}"
        assert {e["transport"] for e in events} == {"tcp"}, events


def test_dns_over_udp_to_ipv6_aaaa(tmp_path: Path) -> None:
    name = "dnl-07.geo.kaspersky.com"
    with lab("d6", tmp_path, "dig", "dnsmasq") as net:
        net.dnsmasq()
        with net.watch() as seen:
            out = ok(net.client(f"dig +tries=1 +time=2 @{SERVER_V6} {name} AAAA"))
    assert SERVER_V6 in out.stdout, out.stdout
    seen.expect(("dns_query", name))
    answers = seen.of("dns_answer", name)
    assert answers, sorted(seen.pairs())
    assert (answers[0]["transport"], answers[0]["host"]) == ("udp", CLIENT_V6), answers[0]
    assert answers[0].get("answers") == [SERVER_V6], answers[0]


def test_dns_cname_chain_innocent_name_to_kaspersky(tmp_path: Path) -> None:
    with lab("cn", tmp_path, "dig", "dnsmasq") as net:
        net.dnsmasq(
            f"host-record=dnl-07.geo.kaspersky.com,{SERVER_V4}",
            "cname=cdn-updates.example.net,dnl-07.geo.kaspersky.com",
        )
        with net.watch() as seen:
            out = ok(net.client(f"dig +tries=1 +time=2 @{SERVER_V4} cdn-updates.example.net A"))
    assert "CNAME\tdnl-07.geo.kaspersky.com." in out.stdout, out.stdout
    assert ("dns_query", "cdn-updates.example.net") in seen.pairs(), sorted(seen.pairs())
    seen.expect(("dns_answer", "dnl-07.geo.kaspersky.com"))
    hit = seen.of("dns_answer", "dnl-07.geo.kaspersky.com")[0]
    assert hit["query"] == "cdn-updates.example.net" and hit.get("indicator"), hit
    alert = next(a for a in seen.alerts if a["name"] == "dnl-07.geo.kaspersky.com")
    assert alert["host"] == CLIENT_V4


def test_http_host_with_curl_over_ipv4_and_ipv6(tmp_path: Path, cert: tuple[Path, Path]) -> None:
    v4, v6 = "downloads.kaspersky-labs.com", "activation-v2.kaspersky.com"
    with lab("hh", tmp_path, "curl", "nginx") as net:
        net.nginx(cert)
        with net.watch() as seen:
            a = net.client(f"{CURL} --resolve {v4}:80:{SERVER_V4} http://{v4}/updates/index.xml")
            b = net.client(f"{CURL} --resolve {v6}:80:[{SERVER_V6}] http://{v6}/")
            c = net.client(f"{CURL} -g -H", "Host: s05.upd.kaspersky.com", f"http://[{SERVER_V6}]/")
    assert [ok(p).stdout for p in (a, b, c)] == ["200", "200", "200"]
    seen.expect(("http_host", v4), ("http_host", v6))
    hosts = {o["name"]: o["host"] for o in seen.observations if o["kind"] == "http_host"}
    assert hosts == {v4: CLIENT_V4, v6: CLIENT_V6, "s05.upd.kaspersky.com": CLIENT_V6}


def test_https_sni_tls13_curl_and_tls12_openssl(tmp_path: Path, cert: tuple[Path, Path]) -> None:
    n13, n12 = "s05.upd.kaspersky.com", "ksn-url-geo.kaspersky-labs.com"
    with lab("ts", tmp_path, "curl", "nginx", "openssl") as net:
        net.nginx(cert)
        with net.watch() as seen:
            curl = ok(
                net.client(f"{CURL} -k --tlsv1.3 --resolve {n13}:443:{SERVER_V4} https://{n13}/")
            )
            s_client = ok(
                net.client(f"openssl s_client -tls1_2 -connect {SERVER_V4}:443 -servername {n12}")
            )
    assert curl.stdout == "200"
    assert "Protocol  : TLSv1.2" in s_client.stdout, s_client.stdout[-1500:]
    seen.expect(("tls_sni", n13), ("tls_sni", n12))


def test_client_hello_in_many_tiny_segments(tmp_path: Path, cert: tuple[Path, Path]) -> None:
    name = "dnl-07.geo.kaspersky.com"
    with lab("ms", tmp_path, "curl", "nginx") as net:
        # the server advertises MSS 88, so the client cuts its hello into <= 88-byte segments
        sif = _only_veth(net.net.server)
        ok(run_in(net.net.server, *f"ip route replace 10.78.0.0/24 dev {sif} advmss 88".split()))
        net.nginx(cert)
        with net.watch() as seen:
            ok(net.client(f"{CURL} -k --resolve {name}:443:{SERVER_V4} https://{name}/"))
    flows = tcp_flows(seen.pcap, 443)
    assert len(flows) == 1, flows
    segments = flows[0]["segments"]
    assert len(segments) >= 4 and max(segments) <= 88, f"hello segments {segments}"
    seen.expect(("tls_sni", name))


LARGE_HELLO = """
import socket, ssl, sys
name, addr = sys.argv[1], sys.argv[2]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.set_alpn_protocols([f"x-kaspwatch-padding-protocol-{i:03d}" for i in range(150)] + ["http/1.1"])
with socket.create_connection((addr, 443), timeout=5) as raw:
    with ctx.wrap_socket(raw, server_hostname=name) as tls:
        print(tls.version(), tls.selected_alpn_protocol())
"""


def test_large_client_hello_spanning_segments(tmp_path: Path, cert: tuple[Path, Path]) -> None:
    # OpenSSL 3.0 has no ML-KEM key share, so a real TLS stack (Python's ssl, i.e. OpenSSL)
    # offers 151 ALPN protocols instead: a ~5 kB ClientHello, four 1448-byte segments
    name = "ksn-url-geo.kaspersky-labs.com"
    script = tmp_path / "large_hello.py"
    script.write_text(LARGE_HELLO)
    with lab("lh", tmp_path, "nginx") as net:
        net.nginx(cert)
        with net.watch() as seen:
            hello = ok(net.client(sys.executable, str(script), name, SERVER_V4))
    assert hello.stdout.split() == ["TLSv1.3", "http/1.1"], hello.stdout
    flows = tcp_flows(seen.pcap, 443)
    assert len(flows) == 1, flows
    segments = flows[0]["segments"]
    assert len(segments) >= 3 and sum(segments) > 4000, f"hello segments {segments}"
    seen.expect(("tls_sni", name))


def test_http_connect_and_absolute_form_through_tinyproxy(
    tmp_path: Path, cert: tuple[Path, Path]
) -> None:
    proxy = f"http://{SERVER_V4}:8888"
    with lab("px", tmp_path, "curl", "nginx", "tinyproxy") as net:
        net.nginx(cert)
        net.tinyproxy()
        with net.watch() as seen:
            tunnel = net.client(f"{PROXY_CURL} -k -x {proxy} https://s05.upd.kaspersky.com/")
            plain = net.client(f"{PROXY_CURL} -x {proxy} http://activation-v2.kaspersky.com/x")
    # the proxy resolves through the server namespace's own hosts file, to nginx
    assert len(tcp_flows(seen.pcap, 8888)) == 2, "curl did not go through the proxy"
    assert not tcp_flows(seen.pcap, 443) and not tcp_flows(seen.pcap, 80)
    assert (tunnel.stdout, plain.stdout) == ("200", "200"), f"{tunnel} {plain}\n{net.dump()}"
    seen.expect(
        ("http_connect", "s05.upd.kaspersky.com"), ("http_host", "activation-v2.kaspersky.com")
    )


QUIC_CLIENT = """
import socket, sys, time
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicProtocolVersion

name, addr, version = sys.argv[1], sys.argv[2], QuicProtocolVersion[sys.argv[3]]
config = QuicConfiguration(is_client=True, alpn_protocols=["h3"], server_name=name)
config.supported_versions = [version]
conn = QuicConnection(configuration=config)
conn.connect((addr, 4433), now=time.monotonic())
sent = 0
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
    for data, dest in conn.datagrams_to_send(now=time.monotonic()):
        sock.sendto(data, dest)
        sent += 1
print(sent, hex(version))
"""


@pytest.mark.parametrize(
    ("version", "name"),
    [("VERSION_1", "dnl-07.geo.kaspersky.com"), ("VERSION_2", "s05.upd.kaspersky.com")],
)
def test_quic_initial_from_aioquic(tmp_path: Path, version: str, name: str) -> None:
    script = tmp_path / "quic_client.py"
    script.write_text(QUIC_CLIENT)
    with lab(f"q{version[-1]}", tmp_path) as net, net.watch() as seen:
        out = ok(net.client(sys.executable, str(script), name, SERVER_V4, version))
    assert int(out.stdout.split()[0]) >= 1, out.stdout
    assert udp_datagrams(seen.pcap, 4433), "no QUIC datagram captured"
    seen.expect(("quic_sni", name))


CHROMIUM = (
    "chromium --headless --no-sandbox --disable-gpu --disable-dev-shm-usage --no-first-run"
    " --no-default-browser-check --no-proxy-server --disable-background-networking"
    " --disable-component-update --disable-sync --disable-default-apps --disable-extensions"
    " --disable-domain-reliability --disable-breakpad --metrics-recording-only"
    " --ignore-certificate-errors --enable-quic --dump-dom --timeout=4000"
)


def test_chromium_tls_and_quic(tmp_path: Path, cert: tuple[Path, Path]) -> None:
    tcp, quic = "s09.upd.kaspersky.com", "ksn-url-geo.kaspersky-labs.com"
    profile = tmp_path / "chromium"
    # every name resolves to the server namespace; nothing else is reachable anyway
    base = f"env HOME={profile} {CHROMIUM} --user-data-dir={profile}"
    rules = f"--host-resolver-rules=MAP * {SERVER_V4}"
    with lab("cr", tmp_path, "chromium", "nginx") as net:
        net.nginx(cert)
        net.udp_sink(443)
        with net.watch() as seen:
            for extra in ([], [f"--origin-to-force-quic-on={quic}:443"]):
                url = f"https://{quic if extra else tcp}/"
                # the hello is on the wire long before a hung browser would time out
                with suppress(subprocess.TimeoutExpired):
                    net.client(base, rules, *extra, url, timeout=12)
    flows = tcp_flows(seen.pcap, 443)
    assert flows and len(flows[0]["segments"]) >= 2, f"Chromium hello segments: {flows}"
    assert udp_datagrams(seen.pcap, 443), "Chromium sent no QUIC"
    seen.expect(("tls_sni", tcp), ("quic_sni", quic))
