"""Load the exported rules into the real Suricata and check it alerts where kaspwatch does.

    tools/build_suricata.sh suricata-8.0.6.tar.gz        # once; prints the binary's path
    .venv/bin/python tools/check_suricata_export.py [--suricata BIN] [PCAP ...]

1. ``kaspwatch indicators export --format suricata`` (shipped packs);
2. ``suricata -T`` with only those rules: every rule must load (0 failed);
3. for each capture (default samples/sample.pcap), ``suricata -r`` (``-k none --runmode single``,
   ``stream.midstream: true``) and ``kaspwatch scan``: every name kaspwatch finds in a DNS query,
   TLS/QUIC SNI or HTTP Host must raise a Suricata alert for that name and indicator. (DNS answers
   and DNS-attributed flows are kaspwatch-only; the rules' header says so.)

Exit 0 when all hold, 1 otherwise; prints what it ran and found. BIN defaults to $SURICATA, then
/opt/suricata/bin/suricata, then the newest build in the tools/build_suricata.sh cache.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
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
        for pcap in args.pcaps:
            logdir = Path(tmp) / Path(pcap).name
            logdir.mkdir()
            scan = run([kaspwatch, "scan", pcap])
            wanted = set()
            for line in scan.stdout.splitlines():
                ev = json.loads(line)
                if ev["kind"] in KINDS and ev.get("indicator"):
                    wanted.add((KINDS[ev["kind"]], ev["name"], ev["indicator"]["id"]))
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
                where = alert_name(ev) or ("ip", str(ev.get("dest_ip")))
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
