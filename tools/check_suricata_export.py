"""Load the exported rules into the real Suricata and check it alerts where kaspwatch does.

    tools/build_suricata.sh suricata-8.0.6.tar.gz        # once; prints the binary's path
    .venv/bin/python tools/check_suricata_export.py [--suricata BIN] [PCAP ...]

1. ``kaspwatch indicators export --format suricata`` (shipped packs);
2. ``suricata -T`` with only those rules: every rule must load (0 failed);
3. for each capture (default samples/sample.pcap), ``suricata -r`` (``-k none --runmode single``,
   ``stream.midstream: true``) and ``kaspwatch scan``: every name kaspwatch finds in a DNS query,
   TLS/QUIC SNI or HTTP Host, and every flow to a Kaspersky prefix, must raise a Suricata
   alert for that name (or address) and indicator. A generated capture of flows to Kaspersky
   prefixes (ip-flows.pcap) is always checked too. (DNS answers
   and DNS-attributed flows are kaspwatch-only; the rules' header says so.)

Exit 0 when all hold, 1 otherwise; prints what it ran and found. BIN defaults to $SURICATA, then
/opt/suricata/bin/suricata, then the newest build in the tools/build_suricata.sh cache.
"""

from __future__ import annotations

import argparse
import glob
import ipaddress
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KINDS = {"dns_query": "dns", "tls_sni": "tls", "quic_sni": "quic", "http_host": "http"}


def find_suricata(given: str | None) -> Path | None:
    candidates = [given, os.environ.get("SURICATA"), "/opt/suricata/bin/suricata"]
    cache = os.environ.get("KASPWATCH_PEERS_CACHE", "/var/cache/kaspwatch-peers")
    candidates += sorted(glob.glob(f"{cache}/suricata-*/bin/suricata"), reverse=True)
    candidates += sorted(
        glob.glob(os.path.expanduser("~/.cache/kaspwatch-peers/suricata-*/bin/suricata")),
        reverse=True,
    )
    for c in candidates:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return Path(c)
    return None


def run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    print("$ " + " ".join(cmd), flush=True)
    return subprocess.run(cmd, capture_output=True, text=True, check=False)  # noqa: S603 (our own tools)


def alert_name(ev: dict) -> tuple[str, str] | None:  # type: ignore[type-arg]
    """(protocol, name) of the app-layer record an EVE alert carries."""
    if "dns" in ev:
        dns = ev["dns"]
        queries = dns.get("queries") or dns.get("query") or [dns]
        name = queries[0].get("rrname") if queries else None
        return ("dns", name.lower()) if name else None
    if "tls" in ev and ev["tls"].get("sni"):
        return "tls", ev["tls"]["sni"].lower()
    if "quic" in ev and ev["quic"].get("sni"):
        return "quic", ev["quic"]["sni"].lower()
    if "http" in ev and ev["http"].get("hostname"):
        return "http", ev["http"]["hostname"].lower()
    return None


def ip_flows_pcap(path: Path) -> None:
    """Handshakes to a Kaspersky IPv4 and IPv6 prefix and to an innocent address: no capture
    at hand holds a flow to a Kaspersky prefix, so the IP rules are checked on this one."""
    sys.path.insert(0, str(ROOT / "bench"))
    from gen_mixed import Endpoint, tcp_frame

    frames = []
    for v6, cli, srv in (
        (False, "10.0.0.2", "91.198.230.7"),
        (True, "fd00::2", "2a03:2480:8020::5"),
        (False, "10.0.0.2", "93.184.215.14"),
    ):
        c, s = ipaddress.ip_address(cli).packed, ipaddress.ip_address(srv).packed
        a, b = Endpoint(v6, c, s, 40000, 443, False), Endpoint(v6, s, c, 443, 40000, True)
        frames += [tcp_frame(a, 1, 0, 0x02), tcp_frame(b, 100, 2, 0x12), tcp_frame(a, 2, 101, 0x10)]
    with path.open("wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        for i, f in enumerate(frames):
            out.write(struct.pack("<IIII", 1_700_000_000 + i, 0, len(f), len(f)) + f)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("pcaps", nargs="*", default=[str(ROOT / "samples" / "sample.pcap")])
    ap.add_argument("--suricata", help="the suricata binary (default: see above)")
    args = ap.parse_args()
    binary = find_suricata(args.suricata)
    if binary is None:
        print(
            "check_suricata_export: no suricata binary: build one with "
            "tools/build_suricata.sh SURICATA.tar.gz, or give --suricata BIN",
            file=sys.stderr,
        )
        return 2
    conf = binary.parent.parent / "etc" / "suricata" / "suricata.yaml"
    kaspwatch = str(Path(sys.executable).parent / "kaspwatch")
    version = run([str(binary), "-V"]).stdout.strip()
    print(version)
    failed = False
    with tempfile.TemporaryDirectory(prefix="kw-suricata-") as tmp:
        rules = Path(tmp) / "kaspwatch.rules"
        res = run([kaspwatch, "indicators", "export", "--format", "suricata", "--out", str(rules)])
        if res.returncode != 0:
            print(res.stderr, file=sys.stderr)
            return 1
        n_rules = sum(1 for ln in rules.read_text().splitlines() if ln.startswith("alert "))
        base = [str(binary), "-c", str(conf), "-S", str(rules), "--set", "stream.midstream=true"]
        res = run([*base, "-T", "-v", "-l", tmp])
        out = res.stdout + res.stderr
        m = re.search(r"(\d+) rules successfully loaded, (\d+) rules failed", out)
        print(m.group(0) if m else out[-2000:])
        if res.returncode != 0 or m is None or m.group(2) != "0" or int(m.group(1)) != n_rules:
            print(f"FAIL: suricata -T (exit {res.returncode}); {n_rules} rules exported")
            print("\n".join(ln for ln in out.splitlines() if "rror" in ln)[:4000])
            failed = True
        flows = Path(tmp) / "ip-flows.pcap"
        ip_flows_pcap(flows)
        for pcap in [*args.pcaps, str(flows)]:
            logdir = Path(tmp) / f"log-{Path(pcap).name}"
            logdir.mkdir()
            scan = run([kaspwatch, "scan", pcap])
            wanted = set()
            for line in scan.stdout.splitlines():
                ev = json.loads(line)
                if ev["kind"] in KINDS and ev.get("indicator"):
                    wanted.add((KINDS[ev["kind"]], ev["name"], ev["indicator"]["id"]))
                elif ev["kind"] == "ip_flow" and ev.get("indicator", {}).get("match") == "cidr":
                    wanted.add(("ip", ev["dst_ip"], ev["indicator"]["id"]))  # a prefix hit
            res = run([*base, "-k", "none", "--runmode", "single", "-r", pcap, "-l", str(logdir)])
            if res.returncode != 0:
                # a capture Suricata cannot read (NFLOG, empty) fails the check only when
                # kaspwatch finds something in it
                verdict = "FAIL" if wanted else "skip (no kaspwatch hits)"
                print(f"{verdict}: suricata -r {pcap} exit {res.returncode}: {res.stderr[-300:]}")
                failed |= bool(wanted)
                continue
            alerts: dict[tuple[str, str], set[str]] = {}
            for line in (logdir / "eve.json").read_text().splitlines():
                ev = json.loads(line)
                if ev.get("event_type") != "alert":
                    continue
                # EVE writes IPv6 addresses uncompressed; kaspwatch compressed
                where = alert_name(ev) or ("ip", str(ipaddress.ip_address(ev["dest_ip"])))
                meta = ev["alert"].get("metadata", {})
                alerts.setdefault(where, set()).update(meta.get("kaspwatch_id", []))
            n_alerts = sum(1 for _ in alerts)
            print(
                f"{pcap}: kaspwatch {len(wanted)} (kind, name) hits; suricata alerts on {n_alerts}"
            )
            for proto, name, ind in sorted(wanted):
                ok = ind in alerts.get((proto, name), set())
                print(f"  {'ok  ' if ok else 'MISS'} {proto:5} {name:40} {ind}")
                failed |= not ok
            extra = sorted(k for k in alerts if not any(k == (p, n) for p, n, _ in wanted))
            for proto, name in extra:
                print(f"  also {proto:5} {name:40} {','.join(sorted(alerts[(proto, name)]))}")
    print(
        "FAILED" if failed else "OK: every rule loaded; every name kaspwatch finds, Suricata alerts"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
