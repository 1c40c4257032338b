"""The live lab the live tests share: a namespace pair with servers, tcpdump and the live
sensor watching the client's veth (``lab``), a test certificate, and the tool helpers."""

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
    def dnsmasq(self, *extra: str, port: int = 53) -> None:
        conf = self.tmp / "dnsmasq.conf"
        conf.write_text(
            f"no-resolv\nno-hosts\nbind-interfaces\nport={port}\n"
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
        self.wait_listening("udp", port, p)
        self.wait_listening("tcp", port, p)

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


def make_cert(d: Path) -> tuple[Path, Path]:
    """A throw-away certificate for every test name (the ``cert`` fixture of conftest)."""
    need_tools("openssl")
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
