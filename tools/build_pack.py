#!/usr/bin/env python3
"""Build sensor/packs/kaspersky.yaml from the reference endpoint list.

Usage:
    python3 tools/build_pack.py [--reference PATH] [--out PATH]

Defaults: --reference <repo>/tools/reference/kaspersky-endpoints.yaml,
--out <repo>/sensor/packs/kaspersky.yaml.

Every decision about a reference row is made in this file. The script fails if
a reference row is not placed (in indicators, not_yet_matchable or exclusions)
or if a placement names a reference pattern that does not exist. Sources are
copied verbatim from the reference rows.

Confidence mapping (from the reference row a pack row is derived from):
  documented-by-vendor                                  -> high
  verified: false (UNVERIFIED)                          -> low
  public-blocklist with corroboration: multi-source     -> medium
  anything else (single-source, inferred)               -> low
CIDR rows are medium (low for the prefix the reference says may be withdrawn).
"""

import argparse
import ipaddress
import json
import sys
import textwrap
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
DEFAULT_REF = REPO / "tools" / "reference" / "kaspersky-endpoints.yaml"
DEFAULT_OUT = REPO / "sensor" / "packs" / "kaspersky.yaml"

SCHEMA = "kaspwatch-indicator-pack/1"
VERSION = "2026.11.27.2"
NAMES = ["dns", "sni", "http"]
IPS = ["ip"]

PACK_DESCRIPTION = (
    "Kaspersky network indicators (DNS, TLS SNI, HTTP Host, IP) for finding machines "
    "that still run Kaspersky software, or products embedding a Kaspersky engine, after "
    "the 2024 US ban. Built by tools/build_pack.py from the reference "
    "kaspersky-endpoints.yaml (generated 2026-11-27); every row keeps its reference "
    "sources. Specific rows come first; catch-all zones and CIDRs last, so prefer the "
    "most specific match when several rows hit."
)

# What to do next, per category: the pack's top-level ``remediation`` table, which every
# indicator of that category carries into its hits and alerts unless it has its own.
# Dates: US Commerce (BIS) Final Determination of June 2024 on Kaspersky Lab: no new sales
# to US persons from 20 July 2024, no updates or signature deliveries from 29 September 2024.
REMEDIATION = {
    "update": (
        "Removal. A Kaspersky product (or an embedded Kaspersky engine) on this machine is "
        "still trying to update; since 29 September 2024 it gets no signatures or fixes, so it "
        "is unmaintained security software with kernel access. Identify the machine and its "
        "owner, install the replacement endpoint protection first so the machine is never "
        "unprotected, then uninstall Kaspersky (the product's uninstaller, Kaspersky's "
        "kavremover tool, or a remote uninstall task in Kaspersky Security Center while it still "
        "runs) and confirm that the hits stop."
    ),
    "telemetry": (
        "Contain, then remove. The machine sends Kaspersky Security Network (KSN) telemetry: "
        "file, URL and system data leave the network for Kaspersky. Block the KSN endpoints at "
        "the egress firewall or proxy now, then remove the product as for an update hit, and "
        "ask the data-protection officer to assess what was sent."
    ),
    "activation": (
        "Licence. The machine activates or checks a Kaspersky licence. Do not renew or buy "
        "licences (sales to US persons have been prohibited since 20 July 2024): find who holds "
        "the licence (procurement records, the keys in Kaspersky Security Center), retire it, "
        "and remove the product. A consumer licence on a company machine is unmanaged "
        "software: handle it as shadow IT with the machine's owner."
    ),
    "management": (
        "Migration. The machine talks to Kaspersky Security Center or Kaspersky's cloud "
        "console: it is a managed endpoint or the administration server itself. Export the "
        "managed-device list from Security Center, roll out the replacement product with its "
        "own management, uninstall Kaspersky through Security Center's remote uninstall task, "
        "then decommission the administration server and its database."
    ),
    "portal": (
        "Ask and check. Someone reached a Kaspersky web site (downloads, licensing, support, "
        "My Kaspersky). Browsing alone installs nothing, but downloading an installer or "
        "renewing a licence precedes an installation: ask the machine's user why, check the "
        "machine for Kaspersky software and remove any found."
    ),
    "oem": (
        "OEM appliance engine swap. An appliance or third-party product with an embedded "
        "Kaspersky engine (firewall, UTM, mail or web gateway) fetches Kaspersky signatures. "
        "Switch the appliance's anti-virus engine to a non-Kaspersky engine the vendor offers, "
        "or disable the Kaspersky engine and plan the appliance's replacement; ask the vendor "
        "for its statement on the Kaspersky ban and keep it with the asset record."
    ),
    "infrastructure": (
        "Identify the product. Traffic went to Kaspersky-owned address space without a "
        "matching name. Look for DNS, SNI or HTTP hits from the same host to learn which "
        "product it is; if there are none, inspect the machine's installed software and "
        "services for Kaspersky components (including ones embedded in other products) and "
        "remove or migrate them as for an update hit."
    ),
}
JUNIPER_REMEDIATION = (
    "OEM appliance engine swap. Change the SRX's UTM anti-virus profile from the Kaspersky "
    "'full AV' engine to an engine Junos still supports (Sophos or Avira, depending on the "
    "release), commit, and confirm that requests for /AV/ stop; an SRX too old for another "
    "engine needs replacing."
)
STORMSHIELD_REMEDIATION = (
    "Check, then swap. Look at the SNS appliance's anti-virus engine (Configuration > "
    "Security policy > Antivirus): if it is Kaspersky, switch it to ClamAV or the Advanced "
    "Antivirus option and turn off the KASPERSKY-KSN setting; if it is not, allowlist this "
    "appliance for these hosts."
)

ANALYTICS = (
    "Website analytics host for Kaspersky web sites (Adobe/Omniture style): someone browsed "
    "a Kaspersky web site; NOT evidence of an installed product."
)

UNVERIFIED_AEGIS = (
    "UNVERIFIED: named only by one public routing list (AEGIS label: '{label}'); ownership "
    "and purpose not confirmed, validate (WHOIS / passive DNS) before alerting."
)


# evidence role of an indicator (the pack schema's closed list): what a hit says about the
# host. Derived from the category unless a placement says otherwise.
EVIDENCE_BY_CATEGORY = {
    "update": "install", "telemetry": "install", "activation": "install",
    "management": "management", "oem": "oem", "portal": "portal",
    "infrastructure": "infrastructure",
}


class Builder:
    def __init__(self, ref):
        self.ref = ref
        self.rows = {}
        for r in ref["indicators"]:
            if r["pattern"] in self.rows:
                sys.exit(f"duplicate reference pattern: {r['pattern']!r}")
            self.rows[r["pattern"]] = r
        self.used = set()
        self.groups = []  # (comment, [items])
        self.not_yet = []
        self.exclusions = []

    # -- helpers -------------------------------------------------------------
    def row(self, pattern):
        if pattern not in self.rows:
            sys.exit(f"placement names unknown reference pattern: {pattern!r}")
        self.used.add(pattern)
        return self.rows[pattern]

    @staticmethod
    def sources(*rows):
        out = []
        for r in rows:
            for s in r.get("source") or r.get("sources") or []:
                if s not in out:
                    out.append(s)
        return out

    @staticmethod
    def auto_conf(r):
        if r["confidence"] == "documented-by-vendor":
            return "high"
        if not r["verified"]:
            return "low"
        if r["confidence"] == "public-blocklist" and r["corroboration"] == "multi-source":
            return "medium"
        return "low"

    def group(self, comment):
        self.groups.append((comment, []))

    def ind(self, id_, pattern, match, category, severity, ref, description,
            confidence=None, where=None, path_prefix=None, evidence=None, remediation=None):
        refs = [ref] if isinstance(ref, str) else list(ref)
        rows = [self.row(p) for p in refs]
        if confidence is None:
            confidence = self.auto_conf(rows[0])
        if not rows[0]["verified"] and "UNVERIFIED" not in description:
            sys.exit(f"{id_}: reference row is UNVERIFIED but description does not say so")
        where = where or (IPS if match == "cidr" else NAMES)
        if path_prefix is not None:
            if not isinstance(path_prefix, str) or not path_prefix.startswith("/"):
                sys.exit(f"{id_}: path_prefix must be a string starting with '/'")
            if where != ["http"]:
                sys.exit(f"{id_}: path_prefix is only allowed with where: [http]")
        item = {
            "id": id_,
            "pattern": pattern,
            "match": match,
            "where": where,
        }
        if path_prefix is not None:
            item["path_prefix"] = path_prefix
        item.update({
            "category": category,
            "severity": severity,
            "confidence": confidence,
            "evidence": evidence or EVIDENCE_BY_CATEGORY[category],
            "sources": self.sources(*rows),
            "description": description,
        })
        if remediation is not None:
            item["remediation"] = remediation
        self.groups[-1][1].append(item)

    def content(self, id_, pattern, match, severity, confidence, sources, description,
                with_path_signal=False):
        """A content signal (request path, User-Agent, body magic): not a reference row
        (the reference lists names and addresses); its sources are the documents in
        tools/reference/real-traffic-notes.md, written out here."""
        where = {"path": "http_path", "user_agent": "http_user_agent", "magic": "http_body"}
        item = {"id": id_, "pattern": pattern, "match": match, "where": [where[match]]}
        if with_path_signal:
            item["with_path_signal"] = True
        item.update({"category": "update", "severity": severity, "confidence": confidence,
                     "evidence": "install", "sources": list(sources),
                     "description": description})
        self.groups[-1][1].append(item)

    def sourced(self, id_, pattern, match, category, severity, confidence, evidence, sources,
                description):
        """A name indicator the reference does not list, with its sources written here."""
        self.groups[-1][1].append({
            "id": id_, "pattern": pattern, "match": match, "where": NAMES,
            "category": category, "severity": severity, "confidence": confidence,
            "evidence": evidence, "sources": list(sources), "description": description})

    def nym(self, ref, reason):
        r = self.row(ref)
        self.not_yet.append({"pattern": ref, "reason": reason, "sources": self.sources(r)})

    def excl(self, pattern, match, reason, sources):
        self.exclusions.append({"pattern": pattern, "match": match, "reason": reason,
                                "sources": list(sources)})

    def check_all_placed(self):
        without = {it["category"] for _, items in self.groups for it in items} - set(REMEDIATION)
        if without:
            sys.exit(f"categories without a REMEDIATION text: {', '.join(sorted(without))}")
        missing = [p for p in self.rows if p not in self.used]
        if missing:
            sys.exit("reference rows not placed:\n  " + "\n  ".join(missing))


def build(b):
    ref = b.ref

    # ------------------------------------------------------------------ update
    b.group("update")
    b.ind("kw-update-snn", "s{00..19}.upd.kaspersky.com", "range", "update", "high",
          r"^s(0[0-9]|1[0-9])\.upd\.kaspersky\.com$",
          "Kaspersky update servers s00..s19 (HTTPS/443), documented by Kaspersky for "
          "downloading anti-virus databases and application modules. A hit means an installed "
          "Kaspersky product (or embedded Kaspersky engine) is still trying to update: find "
          "the source host.")
    b.ind("kw-update-downloads-upd", "downloads.upd.kaspersky.com", "exact", "update", "high",
          "downloads.upd.kaspersky.com",
          "Documented Kaspersky update host (HTTPS/443), also used by the product to check that "
          "Kaspersky servers are reachable. A hit means an installed Kaspersky product; if its "
          "lookups fail it falls back to public DNS resolvers (see not_yet_matchable).")
    b.ind("kw-update-cm-k", "cm.k.kaspersky-labs.com", "exact", "update", "high",
          "cm.k.kaspersky-labs.com",
          "Documented by Kaspersky next to the sNN.upd hosts for database and module updates "
          "(HTTPS/443). A hit means an installed Kaspersky product is updating.")
    b.ind("kw-update-pnn", "p{00..19}.upd.kaspersky.com", "range", "update", "high",
          r"^p(0[0-9]|1[0-9])\.upd\.kaspersky\.com$",
          "Update-zone hosts p00..p19, listed together with the sNN.upd hosts by two public "
          "lists; no vendor page found states their purpose. Treat a hit as a Kaspersky product "
          "contacting update infrastructure.")
    b.ind("kw-update-dnl-01-geo", "dnl-01.geo.kaspersky.com", "exact", "update", "high",
          "dnl-01.geo.kaspersky.com",
          "Kaspersky documentation gives http://dnl-01.geo.kaspersky.com/ as an update-source "
          "example (plain HTTP). A hit means a Kaspersky product, KSC update task or update "
          "mirror is pulling signatures; HTTP requests typically carry /bases/ paths.")
    b.ind("kw-update-dnl-nn-geo", "dnl-{00..19}.geo.kaspersky.com", "range", "update", "high",
          r"^dnl-(0[0-9]|1[0-9])\.geo\.kaspersky\.com$",
          "Legacy geo-balanced Kaspersky update mirrors dnl-00..dnl-19 (public lists and "
          "AV-update caching configs). A hit means a Kaspersky product, update utility or "
          "update-caching proxy is fetching signatures.")
    b.nym(r"^https?://[^/]*dnl[^/]*\.geo\.kaspersky\.(com|ru)/.*\.(zip|avc|kdc|nhg|klz|dat|dif)",
          "needs URL path; HTTP path matching comes later (the dnl-NN host names are already "
          "covered by kw-update-dnl-nn-geo and kw-update-geo-zone)")
    b.nym(r"^https?://[^/]*\.kaspersky(-labs)?\.(com|ru)/.*\.(cab|zip|exe|msi|msp|avc)$",
          "needs URL path; HTTP path matching comes later (the hosts are covered by the "
          "kaspersky.com / kaspersky-labs.com / kaspersky.ru catch-alls)")
    b.nym("/bases/",
          "needs URL path; HTTP path matching comes later (only meaningful together with a "
          "Kaspersky Host header or a known internal KSC/KUU update mirror)")
    b.ind("kw-update-ds", "ds.kaspersky.com", "exact", "update", "high", "ds.kaspersky.com",
          "Labelled 'main update domain' by a public routing list and seen in an AV-update "
          "allow-list, a firewall log and hosts-file tampering samples; not found in vendor "
          "pages. A hit very likely means a Kaspersky product updating.")
    b.ind("kw-update-downloads-labs", "downloads.kaspersky-labs.com", "exact", "update", "high",
          "downloads.kaspersky-labs.com",
          "Legacy Kaspersky update/download host named by several third-party lists. A hit "
          "suggests an older Kaspersky product or update utility.")
    b.ind("kw-update-downloads2-labs", "downloads2.kaspersky-labs.com", "exact", "update", "high",
          "downloads2.kaspersky-labs.com",
          "Legacy Kaspersky update host (Metasploit AV-update wordlist and a public routing "
          "list). A hit suggests an older Kaspersky product updating.")
    b.ind("kw-update-downloads-n-labs", "downloads{0..9}.kaspersky-labs.com", "range", "update",
          "medium", r"^downloads[0-9]\.kaspersky-labs\.com$",
          "UNVERIFIED: only one public routing list names the full downloads0..downloads9 range "
          "(downloads2 is corroborated separately). A hit probably means a legacy Kaspersky "
          "product updating; confirm with host inventory.")
    b.ind("kw-update-dnl-test-labs", "dnl-test.kaspersky-labs.com", "exact", "update", "high",
          "dnl-test.kaspersky-labs.com",
          "Observed serving Kaspersky Endpoint Security 11 update files under "
          "/tim2/updates/bin/ (single source). A hit means a KES install or mirror is fetching "
          "updates.")
    b.ind("kw-update-ssl-labs", "ssl.kaspersky-labs.com", "suffix", "update", "medium",
          "ssl.kaspersky-labs.com",
          UNVERIFIED_AEGIS.format(label="secure update") +
          " If real, a hit suggests a Kaspersky product updating.")
    b.ind("kw-update-moebius-labs", "moebius.kaspersky-labs.com", "suffix", "update", "medium",
          "moebius.kaspersky-labs.com",
          UNVERIFIED_AEGIS.format(label="internal mirror") +
          " If real, a hit suggests Kaspersky update traffic.")
    b.ind("kw-update-upd-zone", "upd.kaspersky.com", "suffix", "update", "high",
          "*.upd.kaspersky.com",
          "upd.kaspersky.com and every name below it: the documented Kaspersky update zone "
          "(generalisation of the sNN/downloads.upd hosts; a third-party PAC list uses the same "
          "wildcard). A hit means Kaspersky update traffic from an installed product.")
    b.ind("kw-update-geo-zone", "geo.kaspersky.com", "suffix", "update", "high",
          "*.geo.kaspersky.com",
          "geo.kaspersky.com and every name below it. The zone mixes purposes (dnl-NN update "
          "mirrors, activation-v2.geo licensing, edge.geo undocumented), so read the full name; "
          "any hit still points to a Kaspersky product.")

    # --------------------------------------------------------------- telemetry
    content_signals(b)

    b.group("telemetry (KSN, injected script)")
    ksn_geo = {
        "file": "Kaspersky Security Network (KSN) file-reputation host (by name); blocking it in "
                "a public DNS list broke Kaspersky VPN/KSN for users. A hit means a running "
                "Kaspersky product with KSN enabled.",
        "url": "KSN URL-reputation host (by name); public lists carry it and a blocklist "
               "maintainer calls it tracking-oriented. A hit means a running Kaspersky product "
               "with KSN enabled.",
        "verdict": "KSN verdict host (by name); public lists carry it and a blocklist maintainer "
                   "calls it tracking-oriented. A hit means a running Kaspersky product with "
                   "KSN enabled.",
        "info": None, "cinfo": None, "tcert": None,
        "stat": "KSN statistics host, blocked in a public DNS list as a 'geo tracker' (single "
                "source). A hit means a running Kaspersky product sending KSN statistics.",
    }
    for name, desc in ksn_geo.items():
        host = f"ksn-{name}-geo.kaspersky-labs.com"
        b.ind(f"kw-telemetry-ksn-{name}-geo", host, "exact", "telemetry", "high", host,
              desc or "KSN host from the v2fly Kaspersky list (single source); purpose not "
                      "documented beyond the name. A hit means a running Kaspersky product "
                      "contacting KSN.")
    crypto_ref = r"^ksn-crypto-(info|kas|tcert|url|verdict|wifiplus)-geo\.kaspersky-labs\.com$"
    for host in b.rows[crypto_ref]["expands_to"]:
        part = host.split(".")[0][len("ksn-crypto-"):-len("-geo")]
        b.ind(f"kw-telemetry-ksn-crypto-{part}-geo", host, "exact", "telemetry", "high",
              crypto_ref,
              f"KSN host ksn-crypto-{part}-geo from the v2fly Kaspersky list (single source); "
              "purpose not documented. A hit means a running Kaspersky product contacting KSN.")
    b.ind("kw-telemetry-ksn-any-geo", "ksn-*-geo.kaspersky-labs.com", "wildcard", "telemetry",
          "high", r"^ksn-[a-z0-9-]+-geo\.kaspersky-labs\.com$",
          "Generalisation of every ksn-*-geo host seen (file, url, verdict, info, cinfo, tcert, "
          "stat, crypto-*) to catch KSN hosts not listed yet. A hit means a running Kaspersky "
          "product contacting KSN.")
    b.ind("kw-telemetry-dc1-ksn", "dc1.ksn.kaspersky-labs.com", "exact", "telemetry", "high",
          "dc1.ksn.kaspersky-labs.com",
          "KSN data-centre host; one list recorded it resolving to 119.255.133.28 (China), so "
          "match the name, not the IP. A hit means a running Kaspersky product using KSN.")
    b.ind("kw-telemetry-dc1-cert-ksn", "dc1-cert.ksn.kaspersky-labs.com", "exact", "telemetry",
          "high", "dc1-cert.ksn.kaspersky-labs.com",
          "KSN host used for cloud-based certificate validation (per a blocklist maintainer); "
          "blocking it broke Kaspersky VPN for users. A hit means a running Kaspersky product.")
    b.ind("kw-telemetry-dc1-file-ksn", "dc1-file.ksn.kaspersky-labs.com", "exact", "telemetry",
          "high", "dc1-file.ksn.kaspersky-labs.com",
          "KSN file host (by name); blocking it broke Kaspersky VPN for users. A hit means a "
          "running Kaspersky product using KSN.")
    b.ind("kw-telemetry-dc1-pp-ksn", "dc1-pp.ksn.kaspersky-labs.com", "exact", "telemetry",
          "high", "dc1-pp.ksn.kaspersky-labs.com",
          "KSN host from the v2fly Kaspersky list (single source); purpose undocumented. A hit "
          "means a running Kaspersky product using KSN.")
    b.ind("kw-telemetry-dc1-st-ksn", "dc1-st.ksn.kaspersky-labs.com", "exact", "telemetry",
          "high", "dc1-st.ksn.kaspersky-labs.com",
          "KSN host; one list recorded it at 79.133.169.139 (inside AS200107). A hit means a "
          "running Kaspersky product using KSN.")
    b.ind("kw-telemetry-mdr-ksn", "mdr.ksn.kaspersky-labs.com", "exact", "telemetry", "high",
          "mdr.ksn.kaspersky-labs.com",
          "KSN host whose name suggests the Kaspersky MDR telemetry channel (vendor doc says MDR "
          "requires KPSN but does not name this host). A hit suggests an MDR-enrolled Kaspersky "
          "endpoint.")
    geoksn_ref = (r"^ksn-(cinfo|dc1|dc1-cert|dc1-file|file|info|kas|mdr|tcert|url|verdict"
                  r"|crypto-wifiplus)\.geoksn\.kaspersky\.com$")
    for host in b.rows[geoksn_ref]["expands_to"]:
        label = host.split(".")[0]
        b.ind(f"kw-telemetry-geoksn-{label}", host, "exact", "telemetry", "high", geoksn_ref,
              f"KSN host {label} on the newer geoksn.kaspersky.com zone (v2fly list; from China "
              "these names resolve into 119.255.133.0/24). A hit means a running Kaspersky "
              "product using KSN.")
    b.ind("kw-telemetry-statistic-ipm-klca", "statistic.content.ipm-klca.kaspersky.com", "exact",
          "telemetry", "high", "statistic.content.ipm-klca.kaspersky.com",
          "A Kaspersky Internet Security user reported this host is requested every time a web "
          "site is opened; a public blocklist added it (single source). A hit means a running "
          "Kaspersky consumer product.")
    b.nym("TCP 13111 / UDP 15111 / HTTPS 17111 to an internal KSC server or distribution point",
          "port-based behaviour (internal KSN proxy on KSC); later issue")
    b.ind("kw-telemetry-rthosts-labs", "rthosts.kaspersky-labs.com", "suffix", "telemetry",
          "medium", "rthosts.kaspersky-labs.com",
          UNVERIFIED_AEGIS.format(label="threat-intel service") +
          " If real, a hit suggests a Kaspersky product contacting cloud services.")
    b.ind("kw-telemetry-screenshots-v2", "screenshots-v2.kaspersky.com", "suffix", "telemetry",
          "medium", "screenshots-v2.kaspersky.com",
          UNVERIFIED_AEGIS.format(label="remote analysis") +
          " If real, a hit suggests a Kaspersky product uploading data.")
    b.ind("kw-telemetry-telemetry", "telemetry.kaspersky.com", "suffix", "telemetry", "medium",
          "telemetry.kaspersky.com",
          UNVERIFIED_AEGIS.format(label="telemetry") +
          " If real, a hit suggests a Kaspersky product sending telemetry.")
    # web-AV script tags: on an install the product answers these requests locally, so
    # on the wire they come from pages saved with the tag (real-traffic-notes.md section 2)
    inject = ("Web artefact, not an install: Kaspersky's web protection injects this script "
              "into pages and answers the request locally on a real install; pages saved "
              "with the tag baked in (dozens in public repositories) make every visitor's "
              "browser fetch it, with the page as Referer. Alone it never means Kaspersky "
              "runs on the host (ids keep their old 'telemetry' names for allowlists).")
    b.ind("kw-telemetry-kis-scr-gc", "gc.kis.v2.scr.kaspersky-labs.com", "exact", "portal",
          "low", "gc.kis.v2.scr.kaspersky-labs.com",
          "Host of the script Kaspersky injects into web pages ('Inject script into web "
          "traffic'), also over wss://. " + inject, evidence="web")
    b.ind("kw-telemetry-kis-scr-ff", "ff.kis.v2.scr.kaspersky-labs.com", "exact", "portal",
          "low", "ff.kis.v2.scr.kaspersky-labs.com",
          "Injected-script host, ff. prefix (same mechanism as gc.). " + inject,
          evidence="web")
    b.ind("kw-telemetry-kis-scr-me", "me.kis.v2.scr.kaspersky-labs.com", "exact", "portal",
          "low", "me.kis.v2.scr.kaspersky-labs.com",
          "Injected-script host, me. prefix (same mechanism as gc.; single source). " + inject,
          evidence="web")
    b.ind("kw-telemetry-ksn-zone", "ksn.kaspersky-labs.com", "suffix", "telemetry", "high",
          "*.ksn.kaspersky-labs.com",
          "ksn.kaspersky-labs.com and every name below it (dc1*, mdr seen). A hit means a "
          "running Kaspersky product using KSN.")
    b.ind("kw-telemetry-geoksn-zone", "geoksn.kaspersky.com", "suffix", "telemetry", "high",
          "*.geoksn.kaspersky.com",
          "geoksn.kaspersky.com and every name below it, the newer KSN zone (from China it "
          "resolves into 119.255.133.0/24). A hit means a running Kaspersky product using KSN.")
    b.ind("kw-telemetry-kis-scr-zone", "kis.v2.scr.kaspersky-labs.com", "suffix", "portal",
          "low", "*.kis.v2.scr.kaspersky-labs.com",
          "kis.v2.scr.kaspersky-labs.com and every name below it (gc., ff., me. seen). " + inject,
          evidence="web")
    b.sourced("kw-web-fraud-prevention", "fp.kaspersky-labs.com", "suffix", "portal", "low",
              "medium", "web", FRAUD_PREVENTION,
              "Kaspersky Fraud Prevention, embedded by banks and other sites (e.g. "
              "ru.fp.kaspersky-labs.com, w-NNNNN.fp.kaspersky-labs.com): their customers' "
              "browsers call it. Web artefact: not a Kaspersky install on the host.")

    # -------------------------------------------------------------- activation
    b.group("activation")
    b.ind("kw-activation-activation-v2", "activation-v2.kaspersky.com", "exact", "activation",
          "high", "activation-v2.kaspersky.com",
          "Documented Kaspersky activation service (HTTPS/443, "
          "/activationservice/activationservice.svc); KSC also needs it to activate KES. A hit "
          "means a Kaspersky product or KSC server activating or renewing a licence.")
    b.nym(r"^https://activation-v2\.kaspersky\.com/activationservice/activationservice\.svc",
          "needs URL path (and TLS inspection or proxy logs); HTTP path matching comes later. "
          "The host is covered by kw-activation-activation-v2")
    b.ind("kw-activation-activate", "activate.activation-v2.kaspersky.com", "exact",
          "activation", "high", "activate.activation-v2.kaspersky.com",
          "Activation host below activation-v2 (v2fly list, single source). A hit means a "
          "Kaspersky product activating a licence.")
    b.ind("kw-activation-refresh-bkg", "refresh-bkg.activation-v2.kaspersky.com", "exact",
          "activation", "high", "refresh-bkg.activation-v2.kaspersky.com",
          "Background licence refresh host (by name; v2fly list, single source). A hit means an "
          "installed Kaspersky product periodically checking its licence.")
    b.ind("kw-activation-activation-v2-geo", "activation-v2.geo.kaspersky.com", "exact",
          "activation", "high", "activation-v2.geo.kaspersky.com",
          "Geo-balanced activation host (v2fly list, single source). A hit means a Kaspersky "
          "product activating a licence.")
    b.ind("kw-activation-activation-v2-zone", "activation-v2.kaspersky.com", "suffix",
          "activation", "high", "*.activation-v2.kaspersky.com",
          "activation-v2.kaspersky.com and every name below it. A hit means Kaspersky licensing "
          "traffic from an installed product or a KSC server.")

    # -------------------------------------------------------------- management
    b.group("management")
    b.ind("kw-management-ksc-cloud-console", "ksc.kaspersky.com", "exact", "management", "high",
          "ksc.kaspersky.com",
          "Kaspersky Security Center Cloud Console login/console URL (third-party integration "
          "doc, single source). A hit means someone administering a cloud-managed Kaspersky "
          "deployment; the agent-to-cloud server names are not known.")
    for p in ["TCP (TLS) dst port 13000 (internal KSC)", "TCP dst port 14000 (internal KSC)",
              "UDP dst port 15000 (internal KSC)", "TCP (TLS) dst port 13291 (internal KSC)",
              "TCP (TLS) dst port 13292 (internal KSC)", "TCP (TLS) dst port 13299 (internal KSC)",
              "TCP (TLS) dst port 8080 (internal KSC)"]:
        b.nym(p, "port-based behaviour (internal KSC east-west traffic); later issue")

    # --------------------------------------------------------------------- oem
    b.group("oem (appliances embedding a Kaspersky engine)")
    # Same exact pattern twice: the first row whose conditions hold wins, so the /AV/ path
    # row must come before the host-level row. Both are derived from the reference URL
    # regex row, which the path row now places (it used to be in not_yet_matchable).
    juniper_ref = r"^https?://update\.juniper-updates\.net/AV/"
    b.ind("kw-oem-juniper-kaspersky-av", "update.juniper-updates.net", "exact", "oem", "high",
          juniper_ref,
          "Juniper SRX/J-series box fetching Kaspersky-engine ('full AV', kaspersky-lab-engine) "
          "pattern updates over HTTP from http://update.juniper-updates.net/AV/<model>. The scan "
          "engine is Kaspersky's: plan its removal or migration (the feature was removed in "
          "Junos 15.1X49-D10+).",
          confidence="medium", where=["http"], path_prefix="/AV/",
          remediation=JUNIPER_REMEDIATION)
    b.ind("kw-oem-juniper-update", "update.juniper-updates.net", "exact", "oem", "low",
          juniper_ref,
          "Juniper box using Juniper's update server. The same host serves Sophos (/SAV/) and "
          "Avira (/avira) pattern updates, so this alone does not show a Kaspersky engine: "
          "check the box's AV engine, or look for a kw-oem-juniper-kaspersky-av hit (HTTP path "
          "/AV/).",
          confidence="low")
    stormshield = ("SNS offers a Kaspersky AV engine and a KASPERSKY-KSN setting, but that "
                   "Kaspersky signatures come through these hosts is inferred and every SNS box "
                   "uses them: a hit means 'a Stormshield appliance; check whether its AV engine "
                   "is Kaspersky', not Kaspersky presence.")
    b.ind("kw-oem-stormshield-v3-update", "update{1..4}.stormshield.eu", "range", "oem", "low",
          r"^update[1-4]\.stormshield\.eu$",
          "Stormshield SNS v3 Active Update hosts (vendor doc). " + stormshield,
          confidence="low", remediation=STORMSHIELD_REMEDIATION)
    b.ind("kw-oem-stormshield-v4-update", "update{1..4}-sns.stormshieldcs.eu", "range", "oem",
          "low", r"^update[1-4]-sns\.stormshieldcs\.eu$",
          "Stormshield SNS v4 Active Update hosts (vendor doc). " + stormshield,
          confidence="low", remediation=STORMSHIELD_REMEDIATION)

    # ------------------------------------------------------------------ portal
    b.group("portal (web sites, downloads, support)")
    web = "Web browsing, not evidence of an installed product."
    b.ind("kw-portal-click", "click.kaspersky.com", "exact", "portal", "low",
          "click.kaspersky.com",
          "Kaspersky link redirector used by online-help links in Kaspersky software and docs. "
          "A hit means someone followed a Kaspersky help link, possibly from an installed "
          "product; on its own it is web traffic, not proof of an install.")
    b.ind("kw-portal-support", "support.kaspersky.com", "exact", "portal", "low",
          "support.kaspersky.com",
          "Kaspersky support and documentation web site. Someone read Kaspersky documentation; "
          + web)
    b.ind("kw-portal-support-cn", "support.kaspersky.cn", "exact", "portal", "low",
          "support.kaspersky.cn",
          "Kaspersky China support web site (single source). " + web)
    b.ind("kw-portal-my", "my.kaspersky.com", "exact", "portal", "low", "my.kaspersky.com",
          "My Kaspersky consumer/SMB licence portal (single source). Someone used a Kaspersky "
          "account portal; it may accompany an install but is not proof of one.")
    b.ind("kw-portal-privacy", "privacy.kaspersky.com", "exact", "portal", "low",
          "privacy.kaspersky.com",
          "Kaspersky privacy web host (single source, from an ad-filter change). " + web)
    b.ind("kw-portal-products-s", "products.s.kaspersky-labs.com", "exact", "portal", "low",
          "products.s.kaspersky-labs.com",
          "Kaspersky installer distribution (KIS/KAV/KTS online installers, Kaspersky Update "
          "Utility). A hit means someone downloading Kaspersky software: follow up to stop a "
          "new install or an offline update mirror.")
    b.ind("kw-portal-aes", "aes.kaspersky-labs.com", "exact", "portal", "low",
          "aes.kaspersky-labs.com",
          "Business installer distribution (KES 10; single source). A hit means someone "
          "downloading Kaspersky business installers: follow up.")
    b.ind("kw-portal-aes-s", "aes.s.kaspersky-labs.com", "exact", "portal", "low",
          "aes.s.kaspersky-labs.com",
          "Business installer distribution (KES 11/12, klcfginst.msi, web plug-ins; single "
          "source). A hit means someone downloading Kaspersky business installers: follow up.")
    b.ind("kw-portal-rescuedisk", "rescuedisk.kaspersky-labs.com", "exact", "portal", "low",
          "rescuedisk.kaspersky-labs.com",
          "Kaspersky Rescue Disk ISO download (single source). A hit means someone downloading "
          "the Kaspersky boot-time scanner.")
    b.ind("kw-portal-content", "content.kaspersky-labs.com", "exact", "portal", "low",
          "content.kaspersky-labs.com",
          "Kaspersky web content and images host (single source); reseller shops show "
          "product images from it. " + web, evidence="web")
    b.ind("kw-portal-media", "media.kaspersky.com", "exact", "portal", "low",
          "media.kaspersky.com",
          "Kaspersky web media host (single source). " + web)
    b.ind("kw-portal-utils", "utils.kaspersky.com", "exact", "portal", "low",
          "utils.kaspersky.com",
          "Kaspersky documentation and utility downloads, e.g. /special/ksos2/ (single source). "
          "Someone fetched Kaspersky utilities or docs; check what was downloaded.")
    b.ind("kw-portal-redirect-labs", "redirect.kaspersky-labs.com", "suffix", "portal", "low",
          "redirect.kaspersky-labs.com",
          UNVERIFIED_AEGIS.format(label="redirect service") + " Web traffic if real.")
    b.ind("kw-portal-login", "login.kaspersky.com", "suffix", "portal", "low",
          "login.kaspersky.com",
          UNVERIFIED_AEGIS.format(label="account login") + " Web traffic if real.")
    b.nym("||kaspersky.com/assets/logSender.",
          "needs URL path; HTTP path matching comes later (web-site log sender, browsing "
          "signal only; host covered by the kaspersky.com catch-all)")

    b.group("portal: website analytics (browsing only, severity info)")
    for id_, host in [("counter", "counter.kaspersky.com"), ("tr1", "tr1.kaspersky.com"),
                      ("tr2", "tr2.kaspersky.com"), ("otr-es", "otr.kaspersky.es"),
                      ("omtrdc-d3", "kaspersky.d3.sc.omtrdc.net"),
                      ("omtrdc-d2-ssl", "kaspersky.com.ssl.d2.sc.omtrdc.net"),
                      ("2o7", "kaspersky.122.2o7.net"), ("demdex", "kaspersky.demdex.net")]:
        b.ind(f"kw-portal-analytics-{id_}", host, "exact", "portal", "info", host, ANALYTICS)

    b.group("portal: Kaspersky country web sites (kaspersky.ru is in the catch-alls)")
    country_ref = (r"^(.+\.)?kaspersky\.(be|ca|co\.in|co\.jp|co\.kr|co\.th|co\.uk|co\.za|com\.au"
                   r"|com\.br|com\.cn|com\.hk|com\.pl|com\.tr|com\.tw|com\.vn|cz|de|dk|dz|es|fi"
                   r"|fr|gr|it|kz|ma|my|nl|pt|ro|rs|ru|se)$")
    b.row(country_ref)
    tlds = country_ref.split("kaspersky\\.(")[1].rsplit(")$", 1)[0].replace("\\.", ".").split("|")
    for tld in tlds:
        if tld == "ru":
            continue  # kaspersky.ru is emitted once, as a catch-all zone
        b.ind(f"kw-portal-country-{tld.replace('.', '-')}", f"kaspersky.{tld}", "suffix",
              "portal", "low", country_ref,
              f"Kaspersky country web site zone kaspersky.{tld} and every name below it (v2fly "
              "'Global Showcase' list, single source). Mostly web browsing; not by itself "
              "evidence of an installed product.")

    # ---------------------------------------------------------- infrastructure
    b.group("infrastructure (PKI, threat-intel APIs, other specific hosts)")
    b.ind("kw-infrastructure-touch", "touch.kaspersky.com", "exact", "infrastructure", "high",
          "touch.kaspersky.com",
          "Listed by Kaspersky in the Safe Kids network-settings table (HTTP/80); its purpose "
          "text is truncated in the stored page. A hit means a Kaspersky consumer product (at "
          "least Safe Kids) is installed.")
    b.ind("kw-infrastructure-crl", "crl.kaspersky.com", "exact", "infrastructure", "medium",
          "crl.kaspersky.com",
          "Kaspersky certificate revocation list (PKI) host. A hit means something is checking a "
          "Kaspersky-issued certificate, most likely an installed product; less specific than "
          "update/KSN names.")
    b.ind("kw-infrastructure-ocsp", "ocsp.kaspersky.com", "exact", "infrastructure", "medium",
          "ocsp.kaspersky.com",
          "UNVERIFIED: OCSP (PKI) host from a single public routing list. If real, a hit means "
          "something is checking a Kaspersky-issued certificate; validate before alerting.")
    b.ind("kw-infrastructure-edge-geo", "edge.geo.kaspersky.com", "exact", "infrastructure",
          "medium", "edge.geo.kaspersky.com",
          "Host in the geo-balanced Kaspersky service zone; purpose undocumented (v2fly list, "
          "single source). A hit points to Kaspersky software; look for other Kaspersky names "
          "from the same host.")
    ti = "Indicates a TI integration (SIEM/SOAR/TIP or analyst scripts), not endpoint AV."
    b.ind("kw-infrastructure-opentip", "opentip.kaspersky.com", "exact", "infrastructure",
          "medium", "opentip.kaspersky.com",
          "Kaspersky OpenTIP threat-intelligence API (/api/v1/search, /scan/file), per "
          "Kaspersky-authored code. " + ti)
    b.ind("kw-infrastructure-tip-taxii", "taxii.tip.kaspersky.com", "exact", "infrastructure",
          "medium", "taxii.tip.kaspersky.com",
          "Kaspersky TI feeds TAXII 2 root (/v2), per Kaspersky's OpenCTI connector. " + ti)
    b.ind("kw-infrastructure-tip", "tip.kaspersky.com", "exact", "infrastructure", "medium",
          "tip.kaspersky.com",
          "Kaspersky TI portal / feeds API (/api/feeds/), from one third-party feed downloader. "
          + ti)
    b.nym(r"^https?://[a-z]{2}\.kis\.v2\.scr\.kaspersky-labs\.com/[0-9A-F]{8}-[0-9A-F]{4}"
          r"-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}/(main\.js|abn/main\.css)",
          "needs URL path; HTTP path matching comes later (hosts covered by the "
          "kis.v2.scr.kaspersky-labs.com rows)")
    b.nym("CSP violation report with blocked-uri/source-file on *.kaspersky-labs.com",
          "needs HTTP body (CSP report content) inspection; not a name indicator, later issue")
    b.nym("DNS queries for Kaspersky names sent directly to 8.8.8.8, 1.1.1.1, 223.6.6.6, 9.9.9.9 "
          "or 185.228.168.168",
          "behaviour (resolver choice for Kaspersky names), needs DNS-server correlation; "
          "later issue")

    # -------------------------------------------------------------- catch-alls
    b.group("catch-all zones (so nothing below goes unseen; prefer a specific row when one hits)")
    catch = ("Catch-all: {zone} and every name below it, so unlisted Kaspersky names are still "
             "seen. Mixes web sites and product endpoints; read the full name, and add a "
             "specific row for any new product-like name.")
    b.ind("kw-infrastructure-zone-kaspersky-com", "kaspersky.com", "suffix", "infrastructure",
          "low", "*.kaspersky.com", catch.format(zone="kaspersky.com"))
    b.ind("kw-infrastructure-zone-kaspersky-labs-com", "kaspersky-labs.com", "suffix",
          "infrastructure", "low", "*.kaspersky-labs.com",
          catch.format(zone="kaspersky-labs.com") +
          " Corporate mail relays mx12/mx13 are listed under exclusions.")
    b.ind("kw-infrastructure-zone-kaspersky-ru", "kaspersky.ru", "suffix", "infrastructure", "low",
          country_ref,
          "Catch-all: kaspersky.ru and every name below it (Kaspersky's Russian zone, listed as "
          "a country web site in the v2fly list, single source). Mostly web browsing; read the "
          "full name.")
    b.ind("kw-infrastructure-zone-kaspersky-cn", "kaspersky.cn", "suffix", "infrastructure", "low",
          "support.kaspersky.cn",
          "Catch-all: kaspersky.cn and every name below it, derived from support.kaspersky.cn "
          "(the only kaspersky.cn name in the sources, single source). Mostly web browsing; "
          "read the full name.")
    for zone, ref_p, label in [
            ("kasperskyupdate.com", "kasperskyupdate.com", "update service"),
            ("kasperskycontent.com", "kasperskycontent.com", "content distribution"),
            ("kasperskyapi.com", "kasperskyapi.com", "API"),
            ("kaspersky-lab.com", "kaspersky-lab.com", "historic service domain"),
            ("kas.pr", "kas.pr", "short links")]:
        b.ind(f"kw-infrastructure-zone-{zone.replace('.', '-')}", zone, "suffix",
              "infrastructure", "low", ref_p,
              f"Catch-all for {zone} and every name below it. " +
              UNVERIFIED_AEGIS.format(label=label))
    b.ind("kw-infrastructure-zone-kasperskylabs-net", "kasperskylabs.net", "suffix",
          "infrastructure", "low", "kasperskylabs.net",
          "Catch-all for kasperskylabs.net and every name below it. UNVERIFIED: in one public "
          "routing list and blocked by 1Hosts Xtra, but ownership is not confirmed; validate "
          "(WHOIS / passive DNS) before alerting.")
    legacy_ref = r"^(.+\.)?(avp\.ru|avp\.com|avp\.ch|viruslist\.ru)$"
    for zone in ["avp.ru", "avp.com", "avp.ch", "viruslist.ru"]:
        b.ind(f"kw-infrastructure-legacy-{zone.replace('.', '-')}", zone, "suffix",
              "infrastructure", "low", legacy_ref,
              f"Legacy Kaspersky brand domain {zone} and every name below it. UNVERIFIED: "
              "evidenced only by a malware hosts file that blocks AV vendors; a hit most likely "
              "means an old product, link or bookmark. Validate ownership before alerting.")

    # ---------------------------------------------------------------- IP space
    ips = ref["ip_space"]
    asn_by = {a["asn"]: a for a in ips["asns"]}
    b.group("IP space (IP-only hits: Kaspersky names are also served from third-party/CDN "
            "hosting, so correlate with the name rows)")
    for fam, key in (("v4", "ipv4"), ("v6", "ipv6")):
        for p in ips[key]:
            net = ipaddress.ip_network(p["prefix"], strict=True)
            asn = p["asn"]
            if fam == "v4":
                slug = str(net.network_address).replace(".", "-")
            else:
                slug = "-".join(x for x in net.network_address.compressed.split(":") if x)
            notes = p.get("notes") or ""
            withdrawn = "may be withdrawn" in notes
            desc = (f"{net.with_prefixlen} announced by {asn} (Kaspersky Lab per third-party "
                    "RIPE-derived ASN lists). An IP-only hit means traffic to Kaspersky-hosted "
                    "infrastructure (update, KSN, web or mail); correlate with DNS/SNI rows and "
                    "re-check the prefix in RIPEstat.")
            if withdrawn:
                desc += " Only in one list and absent from the 2026 RIPE RIS snapshot: may be withdrawn."
            if "mx12" in notes:
                desc += (" Contains corporate mail relays mx12/mx13 (91.103.66.155/.164): "
                         "their names are excluded, but IP flows to them (e.g. SMTP) still "
                         "hit this row and are not product traffic.")
            b.groups[-1][1].append({
                "id": f"kw-infrastructure-{asn.lower()}-{fam}-{slug}-{net.prefixlen}",
                "pattern": net.with_prefixlen,
                "match": "cidr",
                "where": IPS,
                "category": "infrastructure",
                "severity": "medium",
                "confidence": "low" if withdrawn else "medium",
                "sources": b.sources(p) or b.sources(asn_by[asn]),
                "description": desc,
            })

    for p in ips["point_in_time_ips_outside_kaspersky_asns"]:
        name = p["name"].strip("()")
        if name.endswith(".com"):
            reason = ("point-in-time resolution of " + name + " on third-party/in-country "
                      "hosting (" + p["notes"] + "); an IP alone is not sufficient, needs "
                      "DNS-answer correlation; later issue")
        else:
            reason = ("update-source example IP from a vendor doc, ownership unknown; an IP "
                      "alone is not sufficient, needs DNS-answer correlation; later issue")
        b.not_yet.append({"pattern": f"{p['ip']} ({name})", "reason": reason,
                          "sources": b.sources(p)})

    # -------------------------------------------------------------- exclusions
    mx = b.row("mx12.kaspersky-labs.com / mx13.kaspersky-labs.com")
    for host in ("mx12.kaspersky-labs.com", "mx13.kaspersky-labs.com"):
        b.excl(host, "exact", "corporate mail, not a product", b.sources(mx))
    # The mail relays' IPs (91.103.66.155/.164) are not excluded here: exclusions are
    # name-only (exact | suffix), so IP flows to them still hit the 91.103.64.0/21 row.
    for lk in ref["excluded_lookalikes"]:
        names = [n.strip() for n in lk["pattern"].split("/")]
        # "a / www.a" and "a / static.a" pairs become one suffix row on a
        pattern = names[0]
        match = "suffix" if len(names) > 1 or pattern == "antivirus365.net" else "exact"
        if len(names) > 1:
            assert all(n == pattern or n.endswith("." + pattern) for n in names), names
        b.excl(pattern, match, "look-alike, not Kaspersky infrastructure: " + lk["reason"],
               b.sources(lk))

    b.check_all_placed()


FRAUD_PREVENTION = [
    "https://blog.kaspersky.com/cloud-vs-fraud/6650/ (Kaspersky Fraud Prevention Cloud, "
    "2017-03-14: analyses data from banks' web and mobile channels)",
    "https://pdfcoffee.com/kaspersky-fraud-prevention-automated-analytics-en-pdf-pdf-free.html "
    "(Kaspersky Fraud Prevention datasheet: session, device and behaviour analysis in the "
    "customer's browser; kfp.kaspersky.com)",
    "Public client code calling https://w-22900.fp.kaspersky-labs.com/oxwdsq?cid=22900 (pass.rzd.ru "
    "ticket clients) and https://ru.fp.kaspersky-labs.com/oxwdsq, and test-automation "
    "blacklists of '.*ru.fp.kaspersky-labs.com.*' (public source code; repositories not "
    "recorded); tools/reference/real-traffic-notes.md section 2",
]
ZEEK_PACKAGE = (
    "Zeek package initconf/detect-kaspersky (LBNL, 2018): scripts/kaspersky_urls.zeek (~190 "
    "updater paths: /index/u1313g.xml.klz, /updates/<component>/<component>-1313g.xml.dif, "
    "/bases/av/kdb/i386/*.kdc, /diffs/bases/..., /updaters/...) and its test trace of a real "
    "updater (plain HTTP/1.0 to a bare IPv4 Host, no DNS, no TLS); "
    "tools/reference/real-traffic-notes.md section 1")
PROXY_PLUGIN = (
    "C++ cache/rewrite plugin 'Kaspersky updates plugin - last check: 2012-07-10' rewriting "
    "dnl-NN.geo.kaspersky.com/bases/... and /diffs/... paths (public source code; repository "
    "not recorded); tools/reference/real-traffic-notes.md section 1")
GIGAMON = (
    "Gigamon blog 'Finding Kaspersky traffic' (2017-10-06): User-Agent '@hEKzPRNa0lItsGIjysY', "
    "matched with 'User-Agent:\\s*@\\w*'; tools/reference/real-traffic-notes.md section 1")
ZEEK_MAGIC = (
    "zeek/zeek scripts/base/frameworks/files/magic/general.sig: ^KLZF application/x-kaspavdb, "
    "^KLD2 application/x-kaspavupdate, ^DIFF application/bindiff ('mostly kaspersky'); the "
    "captured updater responses start with KLD2 and KLZF (initconf/detect-kaspersky trace)")
SDK_UA = (
    "https://support.kaspersky.com/scanengine/218188 (Scan Engine/KAV SDK updates send an "
    "encrypted User-Agent; integrators update from their own mirrors)")


def content_signals(b):
    """Updates that name nothing: matched whatever the Host (a name, a bare address, a
    proxy's absolute-form target)."""
    b.group("update: content signals (request path, User-Agent, file magic; no name needed)")
    b.content("kw-content-update-index", r"/index/u[0-9]{4}[a-z]?\.xml\.(klz|dif)$", "path",
              "high", "high", [ZEEK_PACKAGE],
              "Request for a Kaspersky update index (/index/uNNNNg.xml.klz|dif), whatever the "
              "Host: a Kaspersky updater, or an OEM engine updating from its vendor's mirror.")
    b.content("kw-content-update-updaters", r"/updaters/[^/]+\.(klz|dif)$", "path",
              "high", "high", [ZEEK_PACKAGE],
              "Request for the Kaspersky updater's own index (/updaters/updater.xml.dif|klz), as "
              "in the only public capture of a real updater (HTTP/1.0 to a bare address).")
    b.content("kw-content-update-files",
              r"/(updates|bases|diffs)/([^/?]+/)+[^/?]+\.(kdc|klz|klzu|dif)$", "path",
              "high", "medium", [ZEEK_PACKAGE, PROXY_PLUGIN],
              "Request for Kaspersky update files (/updates/<component>/..., /bases/..., "
              "/diffs/... ending in .kdc, .klz, .klzu or .dif), whatever the Host.")
    b.content("kw-content-updater-agent", r"[*@][A-Za-z0-9+/=_-]{12,}", "user_agent",
              "medium", "low", [ZEEK_PACKAGE, GIGAMON, SDK_UA],
              "User-Agent that is one opaque token starting with '*' or '@', as Kaspersky "
              "updaters send: a weaker signal than the path; confirm with the path or the "
              "file magic.")
    b.content("kw-content-magic-klzf", "KLZF", "magic", "high", "high", [ZEEK_MAGIC],
              "An HTTP response body starting with KLZF (Kaspersky anti-virus database "
              "container): the host downloaded a Kaspersky update, whatever it asked for.")
    b.content("kw-content-magic-kld2", "KLD2", "magic", "high", "high", [ZEEK_MAGIC],
              "An HTTP response body starting with KLD2 (Kaspersky update container): the "
              "host downloaded a Kaspersky update, whatever it asked for.")
    b.content("kw-content-magic-diff", "DIFF", "magic", "high", "medium", [ZEEK_MAGIC],
              "An HTTP response body starting with DIFF (Kaspersky binary diff of a database) "
              "to a request for an updater path; alone, DIFF is too common to count.",
              with_path_signal=True)


# ----------------------------------------------------------------- emitting
def q(s):
    return json.dumps(s, ensure_ascii=False)


def folded(text, indent):
    pad = " " * indent
    return "\n".join(pad + line for line in textwrap.wrap(text, width=100 - indent,
                                                          break_long_words=False,
                                                          break_on_hyphens=False))


def emit(b, ref_path):
    out = []
    w = out.append
    w("# Kaspersky indicator pack for kaspwatch.")
    w(f"# GENERATED by tools/build_pack.py from {ref_path}.")
    w("# Edit the generator and re-run it; do not hand-edit this file.")
    w(f"schema: {SCHEMA}")
    w("name: kaspersky")
    w(f"version: {q(VERSION)}")
    w("description: >-")
    w(folded(PACK_DESCRIPTION, 2))
    w("# What to do next per category; an indicator's own remediation overrides it.")
    w("remediation:")
    for category, text in REMEDIATION.items():
        w(f"  {category}: >-")
        w(folded(text, 4))
    w("indicators:")
    for comment, items in b.groups:
        w(f"  # --- {comment} ---")
        for it in items:
            w(f"  - id: {it['id']}")
            w(f"    pattern: {q(it['pattern'])}")
            w(f"    match: {it['match']}")
            w(f"    where: [{', '.join(it['where'])}]")
            if "path_prefix" in it:
                w(f"    path_prefix: {q(it['path_prefix'])}")
            if it.get("with_path_signal"):
                w("    with_path_signal: true")
            w(f"    category: {it['category']}")
            w(f"    severity: {it['severity']}")
            w(f"    confidence: {it['confidence']}")
            w(f"    evidence: {it.get('evidence') or EVIDENCE_BY_CATEGORY[it['category']]}")
            w("    sources:")
            for s in it["sources"]:
                w(f"      - {q(s)}")
            w("    description: >-")
            w(folded(it["description"], 6))
            if "remediation" in it:
                w("    remediation: >-")
                w(folded(it["remediation"], 6))
    w("")
    w("# Reference rows that are not name/IP indicators (URL paths, ports, behaviour,")
    w("# point-in-time IPs). Kept here so nothing from the reference is silently dropped.")
    w("not_yet_matchable:")
    for it in b.not_yet:
        w(f"  - pattern: {q(it['pattern'])}")
        w(f"    reason: {q(it['reason'])}")
        w("    sources:")
        for s in it["sources"]:
            w(f"      - {q(s)}")
    w("")
    w("# Names that must not raise a hit even though a catch-all covers them or")
    w("# public lists carry them.")
    w("exclusions:")
    for it in b.exclusions:
        w(f"  - pattern: {q(it['pattern'])}")
        w(f"    match: {it['match']}")
        w(f"    reason: {q(it['reason'])}")
        w("    sources:")
        for s in it["sources"]:
            w(f"      - {q(s)}")
    w("")
    w("asns:")
    for a in b.ref["ip_space"]["asns"]:
        w(f"  - asn: {q(a['asn'])}")
        w(f"    holder: {q(a['holder'])}")
        w("    sources:")
        for s in a["sources"]:
            w(f"      - {q(s)}")
    return "\n".join(out) + "\n"


def display_path(path):
    """The reference path as printed in the pack: relative to the repo
    (e.g. tools/reference/kaspersky-endpoints.yaml), so the output does not depend on
    where the repo is checked out. Paths outside the repo are shown as given."""
    try:
        return path.resolve().relative_to(REPO).as_posix()
    except ValueError:
        return str(path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", type=Path, default=DEFAULT_REF)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    ref = yaml.safe_load(args.reference.read_text())
    b = Builder(ref)
    build(b)
    text = emit(b, display_path(args.reference))
    yaml.safe_load(text)  # must parse
    args.out.write_text(text)
    n = sum(len(items) for _, items in b.groups)
    print(f"wrote {args.out}: {n} indicators, {len(b.not_yet)} not_yet_matchable, "
          f"{len(b.exclusions)} exclusions")


if __name__ == "__main__":
    main()
