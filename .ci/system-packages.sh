#!/usr/bin/env bash
# Debian packages the tests need. Installs only what is missing; needs root (or sudo) to install.
set -euo pipefail
# README "The two commands" lists every package named here; keep the two in step.
need=()
have() { command -v "$1" >/dev/null 2>&1; }
# `python3 -m venv` (make's first step) needs ensurepip, which stock Debian ships in python3-venv
python3 -c 'import ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
have java || need+=(openjdk-17-jre-headless)
have mvn || need+=(maven)
have ip || need+=(iproute2)
have dig || need+=(dnsutils)
have dnsmasq || need+=(dnsmasq-base)
# tests/test_identity.py: a real DHCP client sending its host name
[[ -x /sbin/dhclient ]] || need+=(isc-dhcp-client)
have tcpdump || need+=(tcpdump)
# tests/test_identity_sources.py: a real MIT KDC and kinit (Kerberos AS-REQ machine accounts)
[[ -x /usr/sbin/krb5kdc ]] || need+=(krb5-kdc)
[[ -x /usr/sbin/kadmin.local ]] || need+=(krb5-admin-server)
have kinit || need+=(krb5-user)
# bench/scan_bench.py: the peers it times, and GNU time for each child's CPU time and peak RSS
have tshark || need+=(tshark)
# tests/test_variety.py and tools/make_variety.py: multi-interface pcapng (tshark pulls it in)
have mergecap || need+=(wireshark-common)
[[ -x /usr/bin/time ]] || need+=(time)
have curl || need+=(curl)
have openssl || need+=(openssl)
have ethtool || need+=(ethtool)
have kdig || need+=(knot-dnsutils)
have nginx || need+=(nginx-light)
have tinyproxy || need+=(tinyproxy)
have chromium || need+=(chromium)
have tcpreplay || need+=(tcpreplay)
have prometheus-alertmanager || need+=(prometheus-alertmanager)
have promtool || need+=(prometheus)
# kaspwatch indicators export --format rpz: the zone is loaded by real resolvers in tests
have named-checkzone || need+=(bind9-utils)
have unbound || need+=(unbound)
# PostgreSQL server for the store tests: its binaries live in /usr/lib/postgresql/*/bin
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need+=(postgresql)
if ((${#need[@]})); then
  echo "system-packages: installing ${need[*]}" >&2
  SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
