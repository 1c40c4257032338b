#!/usr/bin/env python3
"""Make samples/sample.pcap from real tools in two network namespaces it creates.

    sudo .venv/bin/python samples/make_sample.py [OUT.pcap]

A client namespace (10.77.0.2, fd77::2) talks to a server namespace (10.77.0.1 and
fd77::1 for Kaspersky names, 10.77.0.3 for the rest, 10.77.0.53 and fd77::53 for the
resolver) over a veth pair; tcpdump on the client's side writes the capture.
Only these namespaces' addresses receive traffic; no default route exists.

Servers: dnsmasq (answers Kaspersky names with 10.77.0.1, everything else with
10.77.0.3), openssl s_server on :443, python http.server on :80 and :8080.
Clients: dig, openssl s_client, curl. Needs: ip, ethtool, dnsmasq, tcpdump, dig, openssl,
curl (bash .ci/system-packages.sh installs them).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLIENT, SERVER = "kwsample-cli", "kwsample-srv"
S4, S4_OTHER, C4, S6, C6 = "10.77.0.1", "10.77.0.3", "10.77.0.2", "fd77::1", "fd77::2"
DNS4, DNS6 = "10.77.0.53", "fd77::53"  # the resolver has an address of its own

KASPERSKY_DNS = [
    "dnl-03.geo.kaspersky.com",
    "ds.kaspersky.com",
    "ksn-file-geo.kaspersky-labs.com",
    "s07.upd.kaspersky.com",
]
LOOKALIKES = ["notkaspersky.com", "kaspersky.com.evil.example", "mykaspersky-labs.com.example"]
BENIGN = ["www.example.org", "updates.example.com"]


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=check, timeout=30)


def ns(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", name, *args, check=False)


def must(r: subprocess.CompletedProcess[str]) -> None:
    if r.returncode != 0:
        raise SystemExit(f"make_sample: {' '.join(map(str, r.args))} failed: {r.stdout}{r.stderr}")


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).with_name("sample.pcap"))
    missing = [
        t
        for t in ("ip", "ethtool", "dnsmasq", "tcpdump", "dig", "openssl", "curl")
        if not shutil.which(t)
    ]
    if missing:
        print(f"make_sample: missing {missing}: bash .ci/system-packages.sh", file=sys.stderr)
        return 2
    procs: list[subprocess.Popen[bytes]] = []
    tmp = Path(tempfile.mkdtemp(prefix="kwsample."))
    try:
        for n in (CLIENT, SERVER):
            sh("ip", "netns", "del", n, check=False)
            sh("ip", "netns", "add", n)
        sh(
            "ip",
            "link",
            "add",
            "kws-cli0",
            "netns",
            CLIENT,
            "type",
            "veth",
            "peer",
            "kws-srv0",
            "netns",
            SERVER,
        )
        links = (
            (CLIENT, "kws-cli0", "02:77:00:00:00:02", [f"{C4}/24", f"{C6}/64"]),
            (
                SERVER,
                "kws-srv0",
                "02:77:00:00:00:01",
                [f"{S4}/24", f"{S4_OTHER}/24", f"{DNS4}/24", f"{S6}/64", f"{DNS6}/64"],
            ),
        )
        for n, ifname, mac, addrs in links:
            sh("ip", "-n", n, "link", "set", "lo", "up")
            # no link-local address, ARP or neighbour discovery: nothing but unicast between
            # the two namespaces ends up on the wire (and in the capture)
            sh(
                "ip",
                "-n",
                n,
                "link",
                "set",
                ifname,
                "address",
                mac,
                "arp",
                "off",
                "multicast",
                "off",
            )
            sh("ip", "-n", n, "link", "set", ifname, "addrgenmode", "none")
            for a in addrs:
                sh("ip", "-n", n, "addr", "add", a, "dev", ifname, *(["nodad"] if ":" in a else []))
            sh("ip", "-n", n, "link", "set", ifname, "up")
            # checksums computed in software, so the capture holds valid ones
            ns(n, "ethtool", "-K", ifname, "tx", "off")
        for (n, ifname, _, _), (_, _, peer_mac, peer_addrs) in zip(
            links, reversed(links), strict=True
        ):
            for a in peer_addrs:
                sh(
                    "ip",
                    "-n",
                    n,
                    "neigh",
                    "replace",
                    a.split("/")[0],
                    "lladdr",
                    peer_mac,
                    "dev",
                    ifname,
                    "nud",
                    "permanent",
                )
        conf = tmp / "dnsmasq.conf"
        conf.write_text(
            "no-resolv\nno-hosts\nbind-interfaces\n"
            f"listen-address={DNS4}\nlisten-address={DNS6}\n"
            f"address=/kaspersky.com/{S4}\naddress=/kaspersky-labs.com/{S4}\n"
            f"address=/kaspersky.com/{S6}\n"
            f"address=/example.org/{S4_OTHER}\naddress=/example.com/{S4_OTHER}\n"
            f"address=/example.net/{S4_OTHER}\naddress=/example/{S4_OTHER}\n"
            f"address=/notkaspersky.com/{S4_OTHER}\n"
            # dnsmasq follows a cname only to a name it holds itself
            f"host-record=dnl-11.geo.kaspersky.com,{S4}\n"
            "cname=av-updates.example.net,dnl-11.geo.kaspersky.com\n"
        )
        sh(
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=sample",
            "-keyout",
            str(tmp / "k.pem"),
            "-out",
            str(tmp / "c.pem"),
        )
        (tmp / "www").mkdir()

        def spawn(name: str, *args: str) -> subprocess.Popen[bytes]:
            p = subprocess.Popen(
                ["ip", "netns", "exec", name, *args],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            procs.append(p)
            return p

        spawn(SERVER, "dnsmasq", "-k", f"--conf-file={conf}", f"--pid-file={tmp}/d.pid")
        spawn(
            SERVER,
            "openssl",
            "s_server",
            "-accept",
            "443",
            "-cert",
            str(tmp / "c.pem"),
            "-key",
            str(tmp / "k.pem"),
            "-www",
            "-quiet",
        )
        for port in ("80", "8080"):
            spawn(
                SERVER, sys.executable, "-m", "http.server", port, "--directory", str(tmp / "www")
            )
        dump = spawn(
            CLIENT,
            "tcpdump",
            "-i",
            "kws-cli0",
            "-s",
            "0",
            "-U",
            "--immediate-mode",
            "-Z",
            "root",
            "-w",
            str(out),
        )
        assert dump.stderr is not None
        if b"listening on" not in dump.stderr.readline():  # tcpdump says so once it captures
            print("make_sample: tcpdump did not start", file=sys.stderr)
            return 1
        time.sleep(1.0)  # servers up

        for name in [*KASPERSKY_DNS, "av-updates.example.net", *LOOKALIKES, *BENIGN]:
            must(ns(CLIENT, "dig", "+tries=1", "+time=2", f"@{DNS4}", name, "A"))
        must(
            ns(
                CLIENT,
                "dig",
                "+tries=1",
                "+time=2",
                f"@{DNS6}",
                "activation-v2.kaspersky.com",
                "AAAA",
            )
        )
        for sni in ("s01.upd.kaspersky.com", "www.example.org"):
            ip = S4 if "kaspersky" in sni else S4_OTHER
            r = subprocess.run(
                [
                    "ip",
                    "netns",
                    "exec",
                    CLIENT,
                    "openssl",
                    "s_client",
                    "-connect",
                    f"{ip}:443",
                    "-servername",
                    sni,
                ],
                input="",
                capture_output=True,
                text=True,
                timeout=10,
            )
            must(r)
        must(
            ns(
                CLIENT,
                "curl",
                "-sk",
                "--max-time",
                "5",
                "--resolve",
                f"dnl-05.geo.kaspersky.com:443:{S4}",
                "https://dnl-05.geo.kaspersky.com/",
            )
        )
        # 404s are fine: the request heads are what the capture is for
        ns(
            CLIENT,
            "curl",
            "-s",
            "--max-time",
            "5",
            "--resolve",
            f"downloads.kaspersky-labs.com:80:{S4}",
            "http://downloads.kaspersky-labs.com/bases/av/kdb/i386/dailyc.kdc",
        )
        must(
            ns(
                CLIENT,
                "curl",
                "-s",
                "--max-time",
                "5",
                "--resolve",
                f"www.example.org:80:{S4_OTHER}",
                "http://www.example.org/",
            )
        )
        must(
            ns(
                CLIENT,
                "curl",
                "-s",
                "--max-time",
                "5",
                "--resolve",
                f"cm.k.kaspersky-labs.com:8080:{S4}",
                "http://cm.k.kaspersky-labs.com:8080/",
            )
        )
        time.sleep(1.0)
        dump.send_signal(signal.SIGINT)  # ip netns exec execs tcpdump: this is its pid
        dump.wait(10)
        err = dump.stderr.read().decode()
        print(f"make_sample: tcpdump: {err.strip()}", file=sys.stderr)
        print(f"make_sample: wrote {out} ({out.stat().st_size} bytes)")
        return 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
        for n in (CLIENT, SERVER):
            sh("ip", "netns", "del", n, check=False)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
