"""Suricata 8 as the peer in bench/scan_bench.py: find the binary, write a minimal
configuration (EVE alerts only, no other output, stats off), export kaspwatch's pack as
rules, read the Kaspersky names out of the alerts.

Two configurations are timed: ``parsers=4`` enables only the app-layer parsers the rules
use (DNS, TLS, HTTP, QUIC: the least work Suricata can do for this pack), ``parsers=all``
leaves every parser of the shipped suricata.yaml on (as a deployed Suricata runs). Both
keep the shipped stream settings that matter for cost (reassembly depth 1 MB).
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
from pathlib import Path

PARSERS = ("dns", "tls", "http", "quic")
OTHER_PARSERS = [
    "telnet",
    "rfb",
    "mqtt",
    "krb5",
    "bittorrent-dht",
    "snmp",
    "ike",
    "pgsql",
    "dcerpc",
    "ftp",
    "websocket",
    "rdp",
    "ssh",
    "doh2",
    "http2",
    "smtp",
    "imap",
    "pop3",
    "smb",
    "nfs",
    "tftp",
    "modbus",
    "dnp3",
    "enip",
    "ntp",
    "dhcp",
    "sip",
    "ldap",
    "mdns",
]
CONFIG_HEAD = """%YAML 1.1
---
vars:
  address-groups:
    HOME_NET: "[10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7]"
    EXTERNAL_NET: "any"
  port-groups:
    HTTP_PORTS: "80"
    SHELLCODE_PORTS: "!80"
    ORACLE_PORTS: 1521
    SSH_PORTS: 22
    DNP3_PORTS: 20000
    MODBUS_PORTS: 502
    FILE_DATA_PORTS: "[$HTTP_PORTS,110,143]"
    FTP_PORTS: 21
    GENEVE_PORTS: 6081
    VXLAN_PORTS: 4789
    TEREDO_PORTS: 3544
    SIP_PORTS: "[5060, 5061]"
stats:
  enabled: no
outputs:
  - eve-log:
      enabled: yes
      filetype: regular
      filename: eve.json
      types:
        - alert
logging:
  default-log-level: notice
  outputs:
    - console:
        enabled: yes
stream:
  memcap: 64mb
  reassembly:
    memcap: 256mb
    depth: 1mb
app-layer:
  protocols:
"""


def find_suricata(given: str | None) -> Path | None:
    """--suricata PATH, else $SURICATA, else the newest tools/build_suricata.sh build."""
    cache = os.environ.get("KASPWATCH_PEERS_CACHE", "/var/cache/kaspwatch-peers")
    candidates = [given, os.environ.get("SURICATA")]
    candidates += sorted(glob.glob(f"{cache}/suricata-*/bin/suricata"), reverse=True)
    for c in candidates:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return Path(c)
    return None


def version(binary: Path) -> str:
    out = subprocess.run([str(binary), "-V"], capture_output=True, text=True, check=False)
    return out.stdout.strip().removeprefix("This is ").removesuffix(" RELEASE")


def write_config(workdir: Path, parsers: str) -> Path:
    """A suricata.yaml in ``workdir``: ``parsers`` is ``4`` or ``all`` (see above)."""
    lines = [CONFIG_HEAD]
    for name in PARSERS:
        lines.append(f"    {name}:\n      enabled: yes\n")
    if parsers == "4":
        lines += [f"    {name}:\n      enabled: no\n" for name in OTHER_PARSERS]
    path = workdir / f"suricata-{parsers}.yaml"
    path.write_text("".join(lines))
    return path


def export_rules(kaspwatch: list[str], workdir: Path) -> tuple[Path, int]:
    """``kaspwatch indicators export --format suricata``: (file, number of rules)."""
    rules = workdir / "kaspwatch.rules"
    cmd = [*kaspwatch, "indicators", "export", "--format", "suricata", "--out", str(rules)]
    subprocess.run(cmd, check=True, capture_output=True)
    return rules, sum(1 for ln in rules.read_text().splitlines() if ln.startswith("alert "))


def command(binary: Path, config: Path, rules: Path, pcap: Path, logdir: Path) -> list[str]:
    """One core's worth of Suricata: ``--runmode single``, no checksum checks."""
    return [str(binary), "-c", str(config), "-S", str(rules), "-k", "none", "--runmode",
            "single", "-r", str(pcap), "-l", str(logdir)]  # fmt: skip


def alert_names(eve: Path) -> tuple[set[str], int]:
    """(names in DNS/TLS/QUIC/HTTP alerts, number of alerts) of an eve.json."""
    names: set[str] = set()
    alerts = 0
    for line in eve.read_text().splitlines():
        ev = json.loads(line)
        if ev.get("event_type") != "alert":
            continue
        alerts += 1
        for proto, key in (("dns", None), ("tls", "sni"), ("quic", "sni"), ("http", "hostname")):
            rec = ev.get(proto)
            if not rec:
                continue
            if key is None:
                queries = rec.get("queries") or rec.get("query") or [rec]
                name = queries[0].get("rrname") if queries else None
            else:
                name = rec.get(key)
            if name:
                names.add(str(name).lower().rstrip("."))
    return names, alerts
