#!/usr/bin/env bash
# make-sample.sh - build samples/sample.pcap, a small REAL capture for kaspwatch.
#
# Debian packages needed (apt-get install -y ...):
#   iproute2 ethtool dnsutils dnsmasq-base tcpdump curl openssl python3 coreutils
#   (dnsutils gives dig; the full "dnsmasq" package works too, dnsmasq-base is enough)
#
# Usage:   sudo samples/make-sample.sh [OUTPUT.pcap]     (default: samples/sample.pcap)
#
# What it does: creates two network namespaces joined by a veth pair
#   kwsample-srv  kws-srv0  10.77.0.1/24  fd77::1/64   (dnsmasq, openssl s_server, python http.server)
#   kwsample-cli  kws-cli0  10.77.0.2/24  fd77::2/64   (dig, openssl s_client, curl, tcpdump)
# runs real clients against real servers, and captures the client's veth with tcpdump
# (classic pcap, Ethernet link type, -s 0).
#
# Containment (traffic goes only between the namespaces' own addresses and loopback):
#   * each namespace has only lo and its veth end; the only routes are the connected
#     10.77.0.0/24 and fd77::/64 - NO default route, so any other destination is unreachable;
#   * the veths are NOARP with static permanent neighbour entries, IPv6 link-local
#     addresses, router solicitations and DAD are off: no ARP, ND, RS or MLD frames at all;
#   * proxy variables are unset and curl runs with --noproxy '*';
#   * the finished capture is checked: every packet must be between the four addresses above.
# Namespaces and processes are removed on exit (trap); re-running is safe (stale
# namespaces of an interrupted run are removed first, the output file is replaced).
set -euo pipefail

NS_S=kwsample-srv
NS_C=kwsample-cli
IF_S=kws-srv0
IF_C=kws-cli0
MAC_S=02:77:00:00:00:01
MAC_C=02:77:00:00:00:02
V4_S=10.77.0.1
V4_C=10.77.0.2
V6_S=fd77::1
V6_C=fd77::2

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=${1:-$SCRIPT_DIR/sample.pcap}

die() { echo "make-sample: ERROR: $*" >&2; exit 1; }
log() { echo "make-sample: $*" >&2; }

echo "make-sample: needs Debian packages: iproute2 ethtool dnsutils dnsmasq-base tcpdump curl openssl python3 coreutils" >&2

# --- tool check ---------------------------------------------------------------
declare -A PKG=(
  [ip]=iproute2 [ss]=iproute2 [ethtool]=ethtool [dig]=dnsutils [dnsmasq]=dnsmasq-base
  [tcpdump]=tcpdump [curl]=curl [openssl]=openssl [python3]=python3 [timeout]=coreutils
)
need() {
  local missing=() t
  for t in "$@"; do
    command -v "$t" >/dev/null 2>&1 || missing+=("$t (apt-get install -y ${PKG[$t]:-$t})")
  done
  if ((${#missing[@]})); then
    printf 'make-sample: ERROR: missing tool: %s\n' "${missing[@]}" >&2
    exit 1
  fi
}
need ip ss ethtool dig dnsmasq tcpdump curl openssl python3 timeout
python3 -c 'import http.server' 2>/dev/null || die "python3 cannot import http.server (apt-get install -y python3)"
[[ $EUID -eq 0 ]] || die "must run as root (network namespaces): sudo $0"

unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY ftp_proxy FTP_PROXY no_proxy NO_PROXY

# --- cleanup --------------------------------------------------------------------
PIDS=()
TMP=
drop_ns() {  # remove one of OUR namespaces, ending the processes still inside it
  local ns=$1 p
  ip netns list 2>/dev/null | awk '{print $1}' | grep -qx "$ns" || return 0
  for p in $(ip netns pids "$ns" 2>/dev/null); do kill "$p" 2>/dev/null || true; done
  sleep 0.2
  for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
  ip netns del "$ns" 2>/dev/null || true
}
cleanup() {
  local rc=$? p
  trap - EXIT INT TERM
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  drop_ns "$NS_C"
  drop_ns "$NS_S"
  [[ -n $TMP && -d $TMP ]] && rm -rf "$TMP"
  rm -f "$OUT.tmp.$$"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# idempotency: leftovers of an interrupted earlier run
drop_ns "$NS_C"
drop_ns "$NS_S"
TMP=$(mktemp -d /tmp/kwsample.XXXXXX)
chmod 0755 "$TMP"   # dnsmasq drops privileges after start

S() { ip netns exec "$NS_S" "$@"; }
C() { ip netns exec "$NS_C" "$@"; }

# wait until something listens in the server namespace; $1=u|t, $2=address:port as ss prints it
wait_listen() {
  local i
  for i in $(seq 1 100); do
    S ss -Hln"$1" 2>/dev/null | awk '{print $4}' | grep -qxF -- "$2" && return 0
    sleep 0.1
  done
  die "nothing listening on $2 ($1) in $NS_S; see logs in $TMP"
}

# --- network ----------------------------------------------------------------------
log "creating namespaces $NS_S / $NS_C"
ip netns add "$NS_S"
ip netns add "$NS_C"
ip link add "$IF_C" netns "$NS_C" address "$MAC_C" type veth peer name "$IF_S" netns "$NS_S" address "$MAC_S"

setup_end() {  # ns if v4 v6 peer_v4 peer_v6 peer_mac
  local ns=$1 ifc=$2 v4=$3 v6=$4 pv4=$5 pv6=$6 pmac=$7
  ip netns exec "$ns" sysctl -qw \
    net.ipv6.conf.all.accept_ra=0 net.ipv6.conf.default.accept_ra=0 \
    net.ipv6.conf.default.router_solicitations=0 \
    "net.ipv6.conf.$ifc.addr_gen_mode=1" "net.ipv6.conf.$ifc.accept_ra=0" \
    "net.ipv6.conf.$ifc.router_solicitations=0" "net.ipv6.conf.$ifc.accept_dad=0"
  ip -n "$ns" link set lo up
  ip -n "$ns" link set "$ifc" arp off                       # no ARP / neighbour discovery / MLD
  ip netns exec "$ns" ethtool -K "$ifc" tx off rx off sg off tso off gso off gro off >/dev/null 2>&1 \
    || log "warning: ethtool could not disable offloads on $ifc (checksums in capture may be partial)"
  ip -n "$ns" addr add "$v4/24" dev "$ifc"
  ip -n "$ns" addr add "$v6/64" dev "$ifc" nodad
  ip -n "$ns" neigh replace "$pv4" lladdr "$pmac" nud permanent dev "$ifc"
  ip -n "$ns" neigh replace "$pv6" lladdr "$pmac" nud permanent dev "$ifc"
  ip -n "$ns" link set "$ifc" up
}
setup_end "$NS_S" "$IF_S" "$V4_S" "$V6_S" "$V4_C" "$V6_C" "$MAC_C"
setup_end "$NS_C" "$IF_C" "$V4_C" "$V6_C" "$V4_S" "$V6_S" "$MAC_S"

for ns in "$NS_S" "$NS_C"; do
  [[ -z $(ip -n "$ns" -4 route show default) && -z $(ip -n "$ns" -6 route show default) ]] \
    || die "unexpected default route in $ns"
done

# --- servers -------------------------------------------------------------------------
log "generating self-signed certificate"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj "/CN=kaspwatch-sample.invalid" -keyout "$TMP/key.pem" -out "$TMP/cert.pem" >"$TMP/req.log" 2>&1 \
  || die "openssl req failed: $(cat "$TMP/req.log")"

mkdir -p "$TMP/www/bases/av/kdb/i386"
printf 'kaspwatch sample placeholder\n' >"$TMP/www/bases/av/kdb/i386/dailyc.kdc"

cat >"$TMP/dnsmasq.conf" <<EOF
# every name resolves to the server namespace
address=/dnl-03.geo.kaspersky.com/$V4_S
address=/dnl-03.geo.kaspersky.com/$V6_S
address=/ds.kaspersky.com/$V4_S
address=/ds.kaspersky.com/$V6_S
address=/ksn-file-geo.kaspersky-labs.com/$V4_S
address=/ksn-file-geo.kaspersky-labs.com/$V6_S
address=/activation-v2.kaspersky.com/$V4_S
address=/activation-v2.kaspersky.com/$V6_S
address=/s07.upd.kaspersky.com/$V4_S
address=/s07.upd.kaspersky.com/$V6_S
# CNAME chain: innocent name -> Kaspersky name -> server (a cname= target must be a
# locally known name: host-record, not address=)
cname=av-updates.example.net,dnl-11.geo.kaspersky.com
host-record=dnl-11.geo.kaspersky.com,$V4_S,$V6_S
# lookalikes (must NOT match)
address=/notkaspersky.com/$V4_S
address=/notkaspersky.com/$V6_S
address=/kaspersky.com.evil.example/$V4_S
address=/kaspersky.com.evil.example/$V6_S
address=/mykaspersky-labs.com.example/$V4_S
address=/mykaspersky-labs.com.example/$V6_S
# benign
address=/www.example.org/$V4_S
address=/www.example.org/$V6_S
address=/updates.example.com/$V4_S
address=/updates.example.com/$V6_S
EOF

log "starting dnsmasq, openssl s_server, http.server (80, 8080) in $NS_S"
S dnsmasq --keep-in-foreground --conf-file="$TMP/dnsmasq.conf" --pid-file="$TMP/dnsmasq.pid" \
  --no-resolv --no-hosts --bind-interfaces --listen-address="$V4_S" --listen-address="$V6_S" \
  --port=53 --local-ttl=300 --log-queries --log-facility="$TMP/dnsmasq.log" \
  </dev/null >"$TMP/dnsmasq.out" 2>&1 &
PIDS+=($!)
S openssl s_server -accept "$V4_S:443" -cert "$TMP/cert.pem" -key "$TMP/key.pem" -www -quiet \
  </dev/null >"$TMP/s_server.log" 2>&1 &
PIDS+=($!)
S python3 -m http.server 80 --bind "$V4_S" --directory "$TMP/www" </dev/null >"$TMP/http80.log" 2>&1 &
PIDS+=($!)
S python3 -m http.server 8080 --bind "$V4_S" --directory "$TMP/www" </dev/null >"$TMP/http8080.log" 2>&1 &
PIDS+=($!)

wait_listen u "$V4_S:53"
wait_listen u "[$V6_S]:53"
wait_listen t "$V4_S:443"
wait_listen t "$V4_S:80"
wait_listen t "$V4_S:8080"

# --- capture -------------------------------------------------------------------------
log "starting tcpdump on $IF_C"
C tcpdump -i "$IF_C" -s 0 -U --immediate-mode -Z root -w "$TMP/capture.pcap" \
  </dev/null >/dev/null 2>"$TMP/tcpdump.err" &
TCPDUMP_PID=$!
PIDS+=("$TCPDUMP_PID")
for i in $(seq 1 100); do
  grep -q 'listening on' "$TMP/tcpdump.err" 2>/dev/null && break
  kill -0 "$TCPDUMP_PID" 2>/dev/null || die "tcpdump exited: $(cat "$TMP/tcpdump.err")"
  sleep 0.1
done
grep -q 'listening on' "$TMP/tcpdump.err" || die "tcpdump did not start: $(cat "$TMP/tcpdump.err")"
sleep 0.3

# --- traffic ---------------------------------------------------------------------------
q() {  # q SERVER TYPE NAME
  local out
  out=$(C dig @"$1" "$2" "$3" +tries=1 +time=3 +noall +answer) || die "dig @$1 $2 $3 failed"
  [[ -n $out ]] || die "dig @$1 $2 $3: empty answer (see $TMP/dnsmasq.log)"
  printf '%s\n' "$out" | sed 's/^/  dig: /' >&2
  sleep 0.1
}
log "DNS queries"
q "$V4_S" A    dnl-03.geo.kaspersky.com
q "$V4_S" A    ds.kaspersky.com
q "$V4_S" A    ksn-file-geo.kaspersky-labs.com
q "$V6_S" AAAA activation-v2.kaspersky.com
q "$V4_S" A    s07.upd.kaspersky.com
q "$V4_S" A    av-updates.example.net
q "$V4_S" A    notkaspersky.com
q "$V4_S" A    kaspersky.com.evil.example
q "$V4_S" A    mykaspersky-labs.com.example
q "$V4_S" A    www.example.org
q "$V4_S" A    updates.example.com

log "TLS ClientHellos"
for sni in s01.upd.kaspersky.com www.example.org; do
  timeout 10 ip netns exec "$NS_C" openssl s_client -connect "$V4_S:443" -servername "$sni" \
    </dev/null >"$TMP/s_client.$sni.log" 2>&1 \
    || die "openssl s_client -servername $sni failed: $(tail -5 "$TMP/s_client.$sni.log")"
  log "  s_client SNI $sni: $(grep -m1 -E '^ *(Protocol|New,)' "$TMP/s_client.$sni.log" | sed 's/^ *//')"
  sleep 0.2
done

CURL=(curl -sS --noproxy '*' --max-time 5 -o /dev/null -w '%{http_code}')
code=$(C "${CURL[@]}" -k --http1.1 --resolve dnl-05.geo.kaspersky.com:443:"$V4_S" \
  https://dnl-05.geo.kaspersky.com/) || die "curl https://dnl-05.geo.kaspersky.com/ failed"
log "  curl https://dnl-05.geo.kaspersky.com/ -> $code"
sleep 0.2

log "HTTP requests"
for spec in \
  "downloads.kaspersky-labs.com:80|http://downloads.kaspersky-labs.com/bases/av/kdb/i386/dailyc.kdc" \
  "www.example.org:80|http://www.example.org/" \
  "cm.k.kaspersky-labs.com:8080|http://cm.k.kaspersky-labs.com:8080/"; do
  hp=${spec%%|*} url=${spec#*|}
  code=$(C "${CURL[@]}" --resolve "$hp:$V4_S" "$url") || die "curl $url failed"
  log "  curl $url -> $code"
  sleep 0.2
done

# --- stop capture ------------------------------------------------------------------------
sleep 1
kill -INT "$TCPDUMP_PID"
wait "$TCPDUMP_PID" || true
cat "$TMP/tcpdump.err" | sed 's/^/  tcpdump: /' >&2
grep -q '^0 packets dropped by kernel' "$TMP/tcpdump.err" || die "tcpdump dropped packets"

# --- check & install -----------------------------------------------------------------------
total=$(tcpdump -nn -r "$TMP/capture.pcap" 2>/dev/null | wc -l)
((total > 0)) || die "capture is empty"
foreign=$(tcpdump -nn -r "$TMP/capture.pcap" \
  "not ((src host $V4_S or src host $V4_C or src host $V6_S or src host $V6_C) and (dst host $V4_S or dst host $V4_C or dst host $V6_S or dst host $V6_C))" \
  2>/dev/null | wc -l)
((foreign == 0)) || die "capture contains $foreign packet(s) not between the namespace addresses"
dnsnames=$(tcpdump -nn -r "$TMP/capture.pcap" udp port 53 2>/dev/null)
for n in dnl-03.geo.kaspersky.com ds.kaspersky.com ksn-file-geo.kaspersky-labs.com \
         activation-v2.kaspersky.com s07.upd.kaspersky.com av-updates.example.net \
         dnl-11.geo.kaspersky.com notkaspersky.com kaspersky.com.evil.example \
         mykaspersky-labs.com.example www.example.org updates.example.com; do
  grep -qF " $n." <<<"$dnsnames" || die "DNS name $n not seen in capture"
done

mkdir -p "$(dirname "$OUT")"
cp "$TMP/capture.pcap" "$OUT.tmp.$$"
chmod 0644 "$OUT.tmp.$$"
mv -f "$OUT.tmp.$$" "$OUT"
log "wrote $OUT: $total packets, $(stat -c %s "$OUT") bytes"
