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

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.netns import CLIENT_V4, CLIENT_V6, SERVER_V4, SERVER_V6, Pair, namespace_pair, need_tools

pytestmark = [pytest.mark.live, pytest.mark.timeout(45)]  # each case takes 2-10 s

NAMES = (
    "s05.upd.kaspersky.com",
    "s09.upd.kaspersky.com",
    "dnl-07.geo.kaspersky.com",
    "ksn-url-geo.kaspersky-labs.com",
    "activation-v2.kaspersky.com",
    "downloads.kaspersky-labs.com",
    "support.kaspersky.com",
)

Obs = dict[str, Any]


def run_in(ns: str, *args: str, timeout: float = 15) -> subprocess.CompletedProcess[str]:
    """Run a client command inside ``ns``; stdin is empty, output captured."""
    return subprocess.run(
        ["ip", "netns", "exec", ns, *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, f"{proc.args} exit {proc.returncode}: {proc.stderr[-2000:]}"
    return proc


@dataclass
class Seen:
    """What the pcap scan and the live run reported for one test's traffic."""

    pcap: Path
    observations: list[Obs] = field(default_factory=list)
    alerts: list[Obs] = field(default_factory=list)
    run_stderr: str = ""

    def pairs(self) -> set[tuple[str, str]]:
        return {(o["kind"], o["name"]) for o in self.observations}

    def of(self, kind: str, name: str) -> list[Obs]:
        return [o for o in self.observations if o["kind"] == kind and o["name"] == name]

    def alerted(self) -> set[tuple[str, str]]:
        return {(a["kind"], a["name"]) for a in self.alerts}

    def expect(self, *pairs: tuple[str, str]) -> None:
        """(a) the pcap scan saw each pair; (b) the live run alerted on each pair."""
        missing = sorted(set(pairs) - self.pairs())
        assert not missing, (
            f"kaspwatch scan {self.pcap.name} lacks {missing}; it saw {sorted(self.pairs())}"
        )
        not_alerted = sorted(set(pairs) - self.alerted())
        assert not not_alerted, (
            f"live kaspwatch run did not alert on {not_alerted}; it alerted on "
            f"{sorted(self.alerted())}; stderr: {self.run_stderr[-1500:]}"
        )


class Lab:
    """A namespace pair plus the servers and the two captures of one test."""

    def __init__(self, net: Pair, tmp: Path) -> None:
        self.net = net
        self.tmp = tmp
        self.logs: list[Path] = []

    # -- processes -------------------------------------------------------------------------
    def spawn(self, ns: str, name: str, *args: str) -> subprocess.Popen[str]:
        """Start a long-running process in ``ns``; stdout/stderr go to files in tmp."""
        out, err = self.tmp / f"{name}.out", self.tmp / f"{name}.err"
        self.logs += [out, err]
        with out.open("w") as fo, err.open("w") as fe:
            p = subprocess.Popen(
                ["ip", "netns", "exec", ns, *args],
                stdin=subprocess.DEVNULL,
                stdout=fo,
                stderr=fe,
                text=True,
            )
        self.net.procs.append(p)  # killed by namespace_pair on the way out
        return p

    def client(self, cmd: str, *args: str, timeout: float = 15) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` (split on blanks, no shell) plus ``args`` in the client namespace."""
        return run_in(self.net.client, *cmd.split(), *args, timeout=timeout)

    def wait_listening(self, proto: str, port: int, proc: subprocess.Popen[str]) -> None:
        flag = {"tcp": "-Hltn", "udp": "-Hlun"}[proto]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"server exited early:\n{self.dump()}"
            out = run_in(self.net.server, "ss", flag, timeout=5).stdout
            if any(line.split()[3].endswith(f":{port}") for line in out.splitlines() if line):
                return
            time.sleep(0.05)
        pytest.fail(f"nothing listens on {proto}/{port} in the server namespace:\n{self.dump()}")

    def dump(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in self.logs if p.exists())

    # -- servers ---------------------------------------------------------------------------
    def dnsmasq(self, *extra: str) -> None:
        conf = self.tmp / "dnsmasq.conf"
        conf.write_text(
            "no-resolv\nno-hosts\nbind-interfaces\n"
            f"listen-address={SERVER_V4}\nlisten-address={SERVER_V6}\n"
            f"address=/kaspersky.com/{SERVER_V4}\naddress=/kaspersky.com/{SERVER_V6}\n"
            f"address=/kaspersky-labs.com/{SERVER_V4}\n"
            f"address=/kaspersky-labs.com/{SERVER_V6}\n" + "".join(f"{line}\n" for line in extra)
        )
        p = self.spawn(
            self.net.server,
            "dnsmasq",
            "dnsmasq",
            "-k",
            f"--conf-file={conf}",
            f"--pid-file={self.tmp}/dnsmasq.pid",
        )
        self.wait_listening("udp", 53, p)
        self.wait_listening("tcp", 53, p)

    def nginx(self, cert: tuple[Path, Path]) -> None:
        crt, key = cert
        root = self.tmp / "nginx"
        root.mkdir()
        conf = root / "nginx.conf"
        conf.write_text(
            f"""daemon off;
master_process off;
pid {root}/nginx.pid;
error_log {root}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {root}/access.log;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    server {{
        listen {SERVER_V4}:80;
        listen [{SERVER_V6}]:80;
        listen {SERVER_V4}:443 ssl;
        listen [{SERVER_V6}]:443 ssl;
        server_name _;
        ssl_certificate {crt};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {{ return 200 "ok\\n"; }}
    }}
}}
"""
        )
        args = f"nginx -p {root} -e {root}/early.log -c {conf}".split()
        p = self.spawn(self.net.server, "nginx", *args)
        self.wait_listening("tcp", 80, p)
        self.wait_listening("tcp", 443, p)

    def tinyproxy(self) -> None:
        conf = self.tmp / "tinyproxy.conf"
        conf.write_text(
            f"Port 8888\nListen {SERVER_V4}\nTimeout 10\nAllow 10.78.0.0/24\nConnectPort 443\n"
            f'MaxClients 16\nPidFile "{self.tmp}/tinyproxy.pid"\n'
            f'LogFile "{self.tmp}/tinyproxy.log"\nLogLevel Info\n'
        )
        self.logs.append(self.tmp / "tinyproxy.log")
        p = self.spawn(self.net.server, "tinyproxy", "tinyproxy", "-d", "-c", str(conf))
        self.wait_listening("tcp", 8888, p)

    def udp_sink(self, port: int) -> None:
        """A bound UDP socket that reads and drops: a QUIC client gets no ICMP unreachable and
        sends its whole first flight, as it would to a real but slow server."""
        code = (
            "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM);"
            f"s.bind(({SERVER_V4!r}, {port}));\nwhile True: s.recv(65535)"
        )
        p = self.spawn(self.net.server, f"udp{port}", sys.executable, "-c", code)
        self.wait_listening("udp", port, p)

    # -- the two captures ------------------------------------------------------------------
    @contextmanager
    def watch(self) -> Iterator[Seen]:
        """tcpdump to a pcap and a live ``kaspwatch run`` on the client veth, around the body."""
        pcap = self.tmp / "traffic.pcap"
        seen = Seen(pcap)
        cif = self.net.client_if
        # --immediate-mode: else frames still in libpcap's ring are lost at SIGINT
        args = f"tcpdump -i {cif} -n --immediate-mode -U -s 0 -w {pcap}".split()
        tcpdump = self.spawn(self.net.client, "tcpdump", *args)
        args = f"{sys.executable} -m kaspwatch run --interface {cif} --format ndjson".split()
        run = self.spawn(self.net.client, "run", *args, "--sensor", "live-tools")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            assert tcpdump.poll() is None, f"tcpdump exited:\n{self.dump()}"
            assert run.poll() is None, f"kaspwatch run exited:\n{self.dump()}"
            tcpdump_up = "listening on" in (self.tmp / "tcpdump.err").read_text()
            # the sensor says so once its socket is bound and its kernel filter attached
            sensor_up = "capturing on" in (self.tmp / "run.err").read_text()
            if tcpdump_up and sensor_up:
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"captures did not start:\n{self.dump()}")
        try:
            yield seen
            time.sleep(0.7)  # let the last frames reach both captures
        finally:
            run.send_signal(signal.SIGTERM)
            tcpdump.send_signal(signal.SIGINT)
            for p in (run, tcpdump):
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
        assert run.returncode == 0, f"kaspwatch run exit {run.returncode}:\n{self.dump()}"
        seen.run_stderr = (self.tmp / "run.err").read_text()
        seen.alerts = [
            a
            for a in map(json.loads, _json_lines((self.tmp / "run.out").read_text()))
            if "category" in a
        ]
        args = f"{sys.executable} -m kaspwatch scan --observations --sensor t {pcap}".split()
        scan = subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)
        assert scan.returncode == 0, scan.stderr
        seen.observations = [json.loads(line) for line in _json_lines(scan.stdout)]
        assert not strangers(pcap), f"traffic left the namespace pair: {strangers(pcap)}"


def _json_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("{")]


@contextmanager
def lab(tag: str, tmp_path: Path, *tools: str) -> Iterator[Lab]:
    need_tools("ip", "ss", "ethtool", "tcpdump", *tools)
    with namespace_pair(tag) as net:
        etc = [Path("/etc/netns") / ns for ns in (net.client, net.server)]
        try:
            for d in etc:
                d.mkdir(parents=True, exist_ok=True)
                (d / "resolv.conf").write_text(
                    "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n"
                )
                (d / "hosts").write_text(
                    f"127.0.0.1 localhost\n{SERVER_V4} {' '.join(NAMES)}\n"
                    f"{SERVER_V6} {' '.join(NAMES)}\n"
                )
            for ns, ifname in ((net.client, net.client_if), (net.server, None)):
                ifname = ifname or _only_veth(ns)
                ok(run_in(ns, "ethtool", "-K", ifname, "tso", "off", "gso", "off", "gro", "off"))
            yield Lab(net, tmp_path)
        finally:
            for ns in (net.client, net.server):  # anything left behind in the namespaces
                pids = subprocess.run(
                    ["ip", "netns", "pids", ns],
                    capture_output=True,
                    text=True,
                    timeout=5,
                    check=False,
                ).stdout.split()
                for pid in pids:
                    with suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
            for d in etc:
                shutil.rmtree(d, ignore_errors=True)


def _only_veth(ns: str) -> str:
    out = ok(run_in(ns, "ip", "-o", "link", "show", "type", "veth", timeout=5)).stdout
    return out.split(":")[1].strip().split("@")[0]


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    need_tools("openssl")
    d = tmp_path_factory.mktemp("cert")
    crt, key = d / "server.crt", d / "server.key"
    sans = ",".join(f"DNS:{n}" for n in NAMES)
    args = "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2"
    args += f" -subj /CN=kaspwatch.test -addext subjectAltName={sans} -keyout {key} -out {crt}"
    ok(subprocess.run(args.split(), capture_output=True, text=True, timeout=30, check=False))
    return crt, key


# -- pcap inspection: check the test traffic really has the shape the case is about ---------
def tcp_flows(pcap: Path, port: int) -> list[dict[str, Any]]:
    """Per TCP connection to ``port``: SYN count and the client's payload segments sent
    before the server's first payload byte (i.e. the segments carrying the first request)."""
    from scapy.layers.inet import TCP
    from scapy.utils import PcapReader

    flows: dict[tuple[str, int], dict[str, Any]] = {}
    with PcapReader(str(pcap)) as reader:
        for pkt in reader:
            if TCP not in pkt:
                continue
            tcp = pkt[TCP]
            ip = pkt[TCP].underlayer
            size = len(bytes(tcp.payload))
            if tcp.dport == port:
                flow = flows.setdefault((ip.src, tcp.sport), {"segments": [], "answered": False})
                if not flow["answered"] and size:
                    flow["segments"].append(size)
            elif tcp.sport == port and size:
                flow = flows.get((ip.dst, tcp.dport))
                if flow is not None:
                    flow["answered"] = True
    return list(flows.values())


def udp_datagrams(pcap: Path, port: int) -> list[int]:
    """Sizes of the UDP datagrams sent to ``port``."""
    from scapy.layers.inet import UDP
    from scapy.utils import PcapReader

    with PcapReader(str(pcap)) as reader:
        return [len(bytes(p[UDP].payload)) for p in reader if UDP in p and p[UDP].dport == port]


def strangers(pcap: Path) -> set[str]:
    """Unicast addresses on the client veth other than the namespaces' own: must be none."""
    from scapy.layers.inet import IP
    from scapy.layers.inet6 import IPv6
    from scapy.utils import PcapReader

    own = {SERVER_V4, CLIENT_V4, SERVER_V6, CLIENT_V6, "::"}
    found: set[str] = set()
    with PcapReader(str(pcap)) as reader:
        for p in reader:
            for ip in (p[layer] for layer in (IP, IPv6) if layer in p):
                found |= {a for a in (ip.src, ip.dst) if not a.startswith(("ff0", "fe80:"))}
    return found - own


# -- the cases ---------------------------------------------------------------------------------
PROXY_CURL = "curl -sS --max-time 5 -o /dev/null -w %{http_code}"
CURL = f"{PROXY_CURL} --noproxy *"  # direct: never a proxy from the environment


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
