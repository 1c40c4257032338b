#!/usr/bin/env bash
# kafka-local.sh - single-node Apache Kafka 4.x broker (KRaft, combined broker+controller) on
# 127.0.0.1, run from Maven Central jars with plain `java -cp`. Meant for tests and local dev.
#
# usage: deploy/kafka/kafka-local.sh fetch|start|stop|status|version|cds
#   fetch    download the broker runtime jars into libs/ (mvn copy-dependencies) and sanity-check them
#   start    wipe data/logs under $KAFKA_RUN_DIR, format KRaft storage, start the broker in the
#            background, wait until it really serves requests; last stdout line: 127.0.0.1:<port>
#   stop     SIGTERM, wait up to $KAFKA_STOP_TIMEOUT s, then SIGKILL (no-op when not running)
#   status   exit 0 when running, 3 when stopped
#   version  print the Kafka version of the jars in libs/
#   cds      (re)build libs/kafka-broker.jsa, a class-data-sharing archive that makes start ~1 s
#            faster; `fetch` does this already. Optional: start works without it.
#
# env (all optional):
#   KAFKA_RUN_DIR          config/data/logs/pid dir          (default: <this dir>/run)
#   KAFKA_PORT             client PLAINTEXT port             (default: 19092)
#   KAFKA_CONTROLLER_PORT  KRaft controller port             (default: 19093)
#   KAFKA_HEAP_OPTS        broker heap flags                 (default: -Xms256m -Xmx512m)
#   KAFKA_EXTRA_JVM_OPTS   extra JVM flags, appended last    (default: none)
#   KAFKA_START_TIMEOUT    seconds to wait for readiness     (default: 120)
#   KAFKA_STOP_TIMEOUT     seconds before SIGKILL            (default: 60)
#   KAFKA_LOG_LEVEL        root log level of logs/server.log (default: WARN; INFO to debug)
#   KAFKA_EXTRA_PROPERTIES file appended to the generated server.properties; a key given again
#                          there wins (java.util.Properties keeps the last), e.g. listeners=...
#                          to add a SASL_SSL listener next to PLAINTEXT  (default: none)
#   KAFKA_SCRAM_CREDENTIALS file, one 'SCRAM-SHA-512=[name=U,password=P]' per line, stored by
#                          StorageTool format --add-scram (test brokers only: the password is
#                          on the format tool's command line for a moment)  (default: none)
#   KAFKA_KEEP_DATA        1: `start` keeps the topics and offsets an earlier start left in
#                          $KAFKA_RUN_DIR (same ports; no wipe, no format) - a broker restart,
#                          as in a real outage; formats as usual when there is no data yet
#   JAVA_HOME              use $JAVA_HOME/bin/java instead of java on PATH
set -euo pipefail
shopt -s nullglob

KAFKA_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
KAFKA_LIBS="$KAFKA_DIR/libs"
KAFKA_RUN_DIR="${KAFKA_RUN_DIR:-$KAFKA_DIR/run}"
[[ "$KAFKA_RUN_DIR" == /* ]] || KAFKA_RUN_DIR="$PWD/$KAFKA_RUN_DIR"   # pid check matches on the path
KAFKA_PORT="${KAFKA_PORT:-19092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-19093}"
KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms256m -Xmx512m}"
KAFKA_EXTRA_JVM_OPTS="${KAFKA_EXTRA_JVM_OPTS:-}"
KAFKA_START_TIMEOUT="${KAFKA_START_TIMEOUT:-120}"
KAFKA_STOP_TIMEOUT="${KAFKA_STOP_TIMEOUT:-60}"
KAFKA_EXTRA_PROPERTIES="${KAFKA_EXTRA_PROPERTIES:-}"
KAFKA_SCRAM_CREDENTIALS="${KAFKA_SCRAM_CREDENTIALS:-}"
export KAFKA_LOG_LEVEL="${KAFKA_LOG_LEVEL:-WARN}"   # read by log4j2.xml via ${env:KAFKA_LOG_LEVEL}
JAVA="${JAVA_HOME:+$JAVA_HOME/bin/}java"
# Cluster membership (kafka-cluster.sh sets these for each of its nodes; a lone broker needs none):
#   KAFKA_NODE_ID        node.id                                     (default: 1)
#   KAFKA_QUORUM_VOTERS  controller.quorum.voters                    (default: this node alone)
#   KAFKA_CLUSTER_ID     cluster id given to StorageTool format      (default: a random one)
KAFKA_NODE_ID="${KAFKA_NODE_ID:-1}"
KAFKA_QUORUM_VOTERS="${KAFKA_QUORUM_VOTERS:-}"
KAFKA_CLUSTER_ID="${KAFKA_CLUSTER_ID:-}"
SELF="deploy/kafka/kafka-local.sh"

set_paths() {
  CONF="$KAFKA_RUN_DIR/server.properties"
  LOG4J_CONF="$KAFKA_RUN_DIR/log4j2.xml"
  DATA="$KAFKA_RUN_DIR/data"
  LOGS="$KAFKA_RUN_DIR/logs"
  TMPD="$KAFKA_RUN_DIR/tmp"
  PIDFILE="$KAFKA_RUN_DIR/kafka.pid"
  ADDRFILE="$KAFKA_RUN_DIR/bootstrap"
}
set_paths
# AppCDS archive of the broker's classes (built by `fetch`/`cds`, lives with the jars it matches)
CDS_ARCHIVE="$KAFKA_LIBS/kafka-broker.jsa"
CDS_DUMP=""   # set by cmd_cds: broker JVM writes the archive to this path at exit
READY_MARK="Kafka Server started"   # logged by kafka.server.KafkaRaftServer at INFO

# Start-up speed, measured on a 2-core box (Java 17, wall time of `start` incl. format, median):
#   JVM defaults (G1, C2)                          3.6 s, broker CPU 3.9 s
#   -XX:TieredStopAtLevel=1 (C1 only)              3.1 s, broker CPU 2.7 s
#   + AppCDS archive of Kafka's classes (`cds`)    1.6 s, broker CPU 1.2 s   <- what we use
#   -XX:+UseSerialGC / -Xshare:off made no measurable difference, so they are not set.
# A short-lived test broker never reaches steady state, so C2 only burns the 2 cores.
# -Xshare:auto (the JDK default, made explicit): a missing/stale archive is ignored, never fatal.
JVM_COMMON=(-XX:TieredStopAtLevel=1 -Xshare:auto -Djava.awt.headless=true)
JVM=()

log() { echo "kafka-local: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

need_java() {
  command -v "$JAVA" >/dev/null 2>&1 \
    || die "java not found ($JAVA); install a Java 17+ JDK (e.g. apt-get install openjdk-17-jre-headless) or set JAVA_HOME"
}
need_mvn() {
  command -v mvn >/dev/null 2>&1 \
    || die "mvn not found; install Maven (e.g. apt-get install maven), then run: $SELF fetch"
}
java_major() { "$JAVA" -version 2>&1 | sed -E -n 's/.* version "(1\.)?([0-9]+).*/\2/p' | head -n 1; }

check_port() {  # $1 = name, $2 = value; callers must pass a real free port (0 is not allowed)
  if ! [[ "$2" =~ ^[0-9]+$ ]] || (( $2 < 1 || $2 > 65535 )); then
    die "$1='$2' must be a port number 1-65535"
  fi
}
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

check_libs() {
  [[ -d "$KAFKA_LIBS" ]] || die "$KAFKA_LIBS is missing; run: $SELF fetch"
  local k=("$KAFKA_LIBS"/kafka_2.13-*.jar) s=("$KAFKA_LIBS"/slf4j-api-*.jar)
  local b=("$KAFKA_LIBS"/log4j-slf4j-impl-*.jar) c=("$KAFKA_LIBS"/log4j-core-*.jar)
  local bad=("$KAFKA_LIBS"/log4j-slf4j2-impl-*.jar "$KAFKA_LIBS"/slf4j-reload4j-*.jar
             "$KAFKA_LIBS"/logback-classic-*.jar "$KAFKA_LIBS"/slf4j-simple-*.jar)
  [[ ${#k[@]} -eq 1 ]] || die "expected 1 kafka_2.13-*.jar in $KAFKA_LIBS, found ${#k[@]}; run: $SELF fetch"
  [[ ${#s[@]} -eq 1 && "${s[0]##*/}" == slf4j-api-1.7.* ]] \
    || die "expected exactly 1 slf4j-api-1.7.x jar in $KAFKA_LIBS (Kafka 4.x uses SLF4J 1.7), found: ${s[*]##*/}; run: $SELF fetch"
  [[ ${#b[@]} -eq 1 && ${#c[@]} -eq 1 ]] \
    || die "expected 1 log4j-slf4j-impl and 1 log4j-core jar in $KAFKA_LIBS (else the broker logs nothing); run: $SELF fetch"
  [[ ${#bad[@]} -eq 0 ]] || die "conflicting SLF4J binding(s) in $KAFKA_LIBS: ${bad[*]##*/}; run: $SELF fetch"
}

alive() {  # pid exists and is not a zombie
  [[ -r "/proc/$1/stat" ]] || return 1
  local stat; stat="$(<"/proc/$1/stat")"; stat="${stat##*) }"
  [[ "${stat:0:1}" != Z ]]
}
read_pid() { [[ -s "$PIDFILE" ]] && cat "$PIDFILE"; }
is_running() {  # our broker = pid alive AND its command line is kafka.Kafka with our config
  local pid; pid="$(read_pid)" || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] && alive "$pid" || return 1
  tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qxF "$CONF"
}

dump_logs() {
  local f
  for f in "$LOGS/stdout.log" "$LOGS/server.log"; do
    if [[ -s "$f" ]]; then echo "----- tail -n 40 $f" >&2; tail -n 40 "$f" >&2; fi
  done
  return 0
}

# Kafka ApiVersions v0 request (api_key 18, header v1); true iff the broker answers error_code 0.
# Port open is not enough: sockets are bound long before request processing is enabled.
probe() {
  if command -v python3 >/dev/null 2>&1; then
    python3 - "$KAFKA_PORT" <<'PY'
import socket, struct, sys
cid = b"kafka-local-probe"
body = struct.pack(">hhih", 18, 0, 42, len(cid)) + cid
try:
    with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=3) as s:
        s.settimeout(3)
        s.sendall(struct.pack(">i", len(body)) + body)
        buf = b""
        while len(buf) < 10:
            chunk = s.recv(10 - len(buf))
            if not chunk:
                sys.exit(1)
            buf += chunk
        _size, corr, err = struct.unpack(">iih", buf)
        sys.exit(0 if corr == 42 and err == 0 else 1)
except OSError:
    sys.exit(1)
PY
  else  # same request with bash /dev/tcp; reply starts with size(4) correlation_id(4)=42 error_code(2)=0
    local hex
    hex="$( { exec 3<>"/dev/tcp/127.0.0.1/$KAFKA_PORT" || exit 1
              printf '\x00\x00\x00\x1b\x00\x12\x00\x00\x00\x00\x00\x2a\x00\x11kafka-local-probe' >&3
              timeout 5 head -c 10 <&3 | od -An -tx1; } 2>/dev/null | tr -d ' \n')" || return 1
    [[ "${hex:8:12}" == "0000002a0000" ]]
  fi
}

write_config() {
  cat >"$CONF" <<EOF
# generated by kafka-local.sh on every start - do not edit
process.roles=broker,controller
node.id=${KAFKA_NODE_ID}
controller.quorum.voters=${KAFKA_QUORUM_VOTERS:-${KAFKA_NODE_ID}@127.0.0.1:${KAFKA_CONTROLLER_PORT}}
controller.listener.names=CONTROLLER
listeners=PLAINTEXT://127.0.0.1:${KAFKA_PORT},CONTROLLER://127.0.0.1:${KAFKA_CONTROLLER_PORT}
advertised.listeners=PLAINTEXT://127.0.0.1:${KAFKA_PORT}
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=${DATA}

# one node: every internal topic needs RF 1 (defaults are 3 -> consumer groups/transactions hang)
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
default.replication.factor=1
min.insync.replicas=1

# fast tests
group.initial.rebalance.delay.ms=0
offsets.topic.num.partitions=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.num.partitions=1
# a topic some other client auto-creates gets 1 partition; kaspwatch creates its own topics
# with --partitions (default 12) and never relies on this
num.partitions=1
auto.create.topics.enable=true
delete.topic.enable=true

# small footprint (2 cores, 512 MiB heap)
num.network.threads=2
num.io.threads=2
group.coordinator.threads=1
background.threads=2
num.replica.fetchers=1
num.recovery.threads.per.data.dir=1
log.cleaner.threads=1
log.cleaner.dedupe.buffer.size=8388608
EOF
  if [[ -n "$KAFKA_EXTRA_PROPERTIES" ]]; then
    [[ -r "$KAFKA_EXTRA_PROPERTIES" ]] || die "KAFKA_EXTRA_PROPERTIES=$KAFKA_EXTRA_PROPERTIES is not a readable file"
    { echo; echo "# from KAFKA_EXTRA_PROPERTIES=$KAFKA_EXTRA_PROPERTIES (later keys win)"
      cat "$KAFKA_EXTRA_PROPERTIES"; } >>"$CONF"
  fi
  cat >"$LOG4J_CONF" <<'EOF'
<?xml version="1.0" encoding="UTF-8"?>
<!-- generated by kafka-local.sh. Root level from $KAFKA_LOG_LEVEL (default WARN) into
     ${kafka.logs.dir}/server.log; ERROR+ also to stderr (= logs/stdout.log).
     kafka.server.KafkaRaftServer stays at INFO: it logs the readiness line "Kafka Server started". -->
<Configuration status="WARN">
  <Properties>
    <Property name="logPattern">[%d] %p %m (%c)%n</Property>
  </Properties>
  <Appenders>
    <File name="SERVER" fileName="${sys:kafka.logs.dir}/server.log" append="true">
      <PatternLayout pattern="${logPattern}"/>
    </File>
    <Console name="STDERR" target="SYSTEM_ERR">
      <ThresholdFilter level="ERROR" onMatch="ACCEPT" onMismatch="DENY"/>
      <PatternLayout pattern="${logPattern}"/>
    </Console>
  </Appenders>
  <Loggers>
    <Root level="${env:KAFKA_LOG_LEVEL:-WARN}">
      <AppenderRef ref="SERVER"/>
      <AppenderRef ref="STDERR"/>
    </Root>
    <Logger name="kafka.server.KafkaRaftServer" level="INFO"/>
  </Loggers>
</Configuration>
EOF
}

jvm_args() {  # JVM flags shared by StorageTool and the broker
  local extra=()
  read -r -a extra <<<"$KAFKA_EXTRA_JVM_OPTS"
  JVM=("${JVM_COMMON[@]}")
  JVM+=("-Djava.io.tmpdir=$TMPD" "-Dkafka.logs.dir=$LOGS" "-Dlog4j2.configurationFile=$LOG4J_CONF"
        -Dlog4j2.shutdownHookEnabled=false)
  if [[ -z "$CDS_DUMP" && -s "$CDS_ARCHIVE" ]]; then JVM+=("-XX:SharedArchiveFile=$CDS_ARCHIVE"); fi
  JVM+=("${extra[@]}")
}

cluster_id() {  # 16 random bytes, base64url without padding (= Uuid.toString); must not start with '-'
  local id
  if [[ -n "$KAFKA_CLUSTER_ID" ]]; then echo "$KAFKA_CLUSTER_ID"; return; fi
  while :; do
    id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | cut -c1-22)"
    [[ "$id" != -* && ${#id} -eq 22 ]] && { echo "$id"; return; }
  done
}

cmd_fetch() {
  need_mvn
  need_java
  [[ -f "$KAFKA_DIR/pom.xml" ]] || die "$KAFKA_DIR/pom.xml is missing"
  ! is_running || die "broker in $KAFKA_RUN_DIR is running; run '$SELF stop' first"
  rm -rf "$KAFKA_LIBS"
  mvn -B -q -Dstyle.color=never -f "$KAFKA_DIR/pom.xml" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$KAFKA_LIBS" >&2 \
    || die "mvn copy-dependencies failed (needs access to Maven Central)"
  check_libs
  local jars=("$KAFKA_LIBS"/*.jar)
  log "${#jars[@]} jars in $KAFKA_LIBS, Kafka $(cmd_version)"
  ( cmd_cds ) || log "WARNING: no class-data-sharing archive; start works but takes ~1 s longer"
}

# Build $CDS_ARCHIVE: start a throw-away broker (temp run dir, free ports) with
# -XX:ArchiveClassesAtExit, stop it, then check the archive really maps (-Xshare:on).
cmd_cds() {
  need_java
  check_libs
  local tmp ports=()
  tmp="$(mktemp -d "${TMPDIR:-/tmp}/kafka-cds.XXXXXX")"
  if command -v python3 >/dev/null 2>&1; then
    read -r -a ports < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(2)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])')
  fi
  rm -f "$CDS_ARCHIVE" "$CDS_ARCHIVE.tmp"
  log "building class-data-sharing archive (one throw-away broker start/stop) ..."
  if ! KAFKA_RUN_DIR="$tmp" KAFKA_PORT="${ports[0]:-$KAFKA_PORT}" \
       KAFKA_CONTROLLER_PORT="${ports[1]:-$KAFKA_CONTROLLER_PORT}" \
       bash "$KAFKA_DIR/kafka-local.sh" _cds-train "$CDS_ARCHIVE.tmp"; then
    rm -rf "$tmp" "$CDS_ARCHIVE.tmp"
    return 1
  fi
  rm -rf "$tmp"
  if [[ -s "$CDS_ARCHIVE.tmp" ]] && "$JAVA" "${JVM_COMMON[@]}" -Xshare:on -XX:SharedArchiveFile="$CDS_ARCHIVE.tmp" \
       -cp "$KAFKA_LIBS/*" kafka.Kafka --version >/dev/null 2>&1; then
    mv -f "$CDS_ARCHIVE.tmp" "$CDS_ARCHIVE"
    log "class-data-sharing archive: $CDS_ARCHIVE"
  else
    rm -f "$CDS_ARCHIVE.tmp"
    log "ERROR: class-data-sharing archive was not written or does not map"
    return 1
  fi
}

cmd_version() {
  need_java
  check_libs
  "$JAVA" -Xshare:auto -XX:TieredStopAtLevel=1 -cp "$KAFKA_LIBS/*" kafka.Kafka --version 2>/dev/null \
    | head -n 1
}

cmd_start() {
  need_java
  check_libs
  check_port KAFKA_PORT "$KAFKA_PORT"
  check_port KAFKA_CONTROLLER_PORT "$KAFKA_CONTROLLER_PORT"
  [[ "$KAFKA_PORT" != "$KAFKA_CONTROLLER_PORT" ]] || die "KAFKA_PORT and KAFKA_CONTROLLER_PORT must differ"
  [[ "$KAFKA_NODE_ID" =~ ^[0-9]+$ ]] || die "KAFKA_NODE_ID='$KAFKA_NODE_ID' must be a whole number"
  [[ -z "$KAFKA_EXTRA_PROPERTIES" || -r "$KAFKA_EXTRA_PROPERTIES" ]] \
    || die "KAFKA_EXTRA_PROPERTIES=$KAFKA_EXTRA_PROPERTIES is not a readable file"
  [[ "$KAFKA_START_TIMEOUT" =~ ^[0-9]+$ ]] || die "KAFKA_START_TIMEOUT='$KAFKA_START_TIMEOUT' must be whole seconds"
  local major; major="$(java_major)"
  [[ -n "$major" ]] || die "cannot run '$JAVA -version'"
  (( major >= 17 )) || die "Kafka 4.x broker needs Java 17+, found Java $major ($JAVA)"

  if is_running; then
    log "already running (pid $(read_pid)); run '$SELF stop' first for a fresh broker"
    cat "$ADDRFILE" 2>/dev/null || echo "127.0.0.1:$KAFKA_PORT"
    return 0
  fi
  ! port_busy "$KAFKA_PORT" || die "port $KAFKA_PORT (KAFKA_PORT) is already in use"
  ! port_busy "$KAFKA_CONTROLLER_PORT" || die "port $KAFKA_CONTROLLER_PORT (KAFKA_CONTROLLER_PORT) is already in use"

  # fresh state on every start (stale data/logs never break a run), unless KAFKA_KEEP_DATA=1
  local keep=0
  [[ "${KAFKA_KEEP_DATA:-0}" == 1 && -s "$DATA/meta.properties" ]] && keep=1
  mkdir -p "$KAFKA_RUN_DIR"
  if (( keep )); then
    rm -f "$PIDFILE" "$ADDRFILE" "$LOGS/server.log"
  else
    rm -rf "$DATA" "$LOGS" "$TMPD" "$PIDFILE" "$ADDRFILE"
  fi
  mkdir -p "$DATA" "$LOGS" "$TMPD"
  write_config
  jvm_args

  # SCRAM users exist before the first start (KRaft: stored in the bootstrap metadata)
  local scram=() line
  if [[ -n "$KAFKA_SCRAM_CREDENTIALS" ]]; then
    [[ -r "$KAFKA_SCRAM_CREDENTIALS" ]] || die "KAFKA_SCRAM_CREDENTIALS=$KAFKA_SCRAM_CREDENTIALS is not a readable file"
    while IFS= read -r line || [[ -n "$line" ]]; do
      [[ -z "$line" || "$line" == \#* ]] || scram+=(--add-scram "$line")
    done <"$KAFKA_SCRAM_CREDENTIALS"
  fi

  # static voter (controller.quorum.voters) => format needs no --standalone
  local t0=$SECONDS
  (( keep )) || "$JAVA" -Xmx128m "${JVM[@]}" -cp "$KAFKA_LIBS/*" kafka.tools.StorageTool \
      format -t "$(cluster_id)" -c "$CONF" "${scram[@]}" >"$LOGS/format.log" 2>&1 \
    || { tail -n 40 "$LOGS/format.log" >&2; die "kafka.tools.StorageTool format failed (see above)"; }

  local heap=()
  read -r -a heap <<<"$KAFKA_HEAP_OPTS"
  # stdout/stderr to a file and stdin from /dev/null: callers capturing our stdout don't hang
  local dump=()
  if [[ -n "$CDS_DUMP" ]]; then dump=("-XX:ArchiveClassesAtExit=$CDS_DUMP"); fi
  nohup "$JAVA" "${heap[@]}" "${JVM[@]}" "${dump[@]}" -cp "$KAFKA_LIBS/*" kafka.Kafka "$CONF" \
      >"$LOGS/stdout.log" 2>&1 </dev/null &
  local pid=$!
  echo "$pid" >"$PIDFILE"

  local deadline=$((t0 + KAFKA_START_TIMEOUT))
  while :; do
    if ! alive "$pid"; then
      local rc=0; wait "$pid" || rc=$?
      rm -f "$PIDFILE"
      dump_logs
      die "broker (pid $pid) exited with code $rc during startup"
    fi
    if grep -qF "$READY_MARK" "$LOGS/server.log" 2>/dev/null && probe; then
      break
    fi
    if (( SECONDS >= deadline )); then
      dump_logs
      log "ERROR: broker not ready after ${KAFKA_START_TIMEOUT}s; stopping it"
      cmd_stop || true
      exit 1
    fi
    sleep 0.1
  done
  if grep -qF "Unable to use shared archive" "$LOGS/stdout.log" 2>/dev/null; then
    # e.g. libs/ copied from another checkout: the archive records the jars' absolute paths
    log "WARNING: $CDS_ARCHIVE does not match these jars (start ~1 s slower); rebuild it: $SELF cds"
  fi
  echo "127.0.0.1:$KAFKA_PORT" >"$ADDRFILE"
  log "ready on 127.0.0.1:$KAFKA_PORT (pid $pid, $((SECONDS - t0))s, logs in $LOGS)"
  echo "127.0.0.1:$KAFKA_PORT"
}

cmd_stop() {
  [[ "$KAFKA_STOP_TIMEOUT" =~ ^[0-9]+$ ]] || die "KAFKA_STOP_TIMEOUT='$KAFKA_STOP_TIMEOUT' must be whole seconds"
  if ! is_running; then
    rm -f "$PIDFILE" "$ADDRFILE"
    log "not running"
    return 0
  fi
  local pid deadline=$((SECONDS + KAFKA_STOP_TIMEOUT))
  pid="$(read_pid)"
  kill -TERM "$pid" 2>/dev/null || true   # shutdown hook: controlled shutdown, then exit
  while alive "$pid" && (( SECONDS < deadline )); do sleep 0.2; done
  if alive "$pid"; then
    log "pid $pid still alive after ${KAFKA_STOP_TIMEOUT}s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    while alive "$pid"; do sleep 0.1; done
  fi
  rm -f "$PIDFILE" "$ADDRFILE"
  log "stopped (pid $pid)"
}

cmd_status() {
  if is_running; then
    echo "running pid $(read_pid) $(cat "$ADDRFILE" 2>/dev/null || echo "127.0.0.1:$KAFKA_PORT")"
  else
    echo "stopped"
    return 3
  fi
}

case "${1:-}" in
  fetch)   cmd_fetch ;;
  start)   cmd_start ;;
  stop)    cmd_stop ;;
  status)  cmd_status ;;
  version) cmd_version ;;
  cds)     cmd_cds ;;
  _cds-train) CDS_DUMP="${2:?}"; cmd_start >/dev/null; cmd_stop ;;   # internal, used by cmd_cds
  *) echo "usage: $SELF fetch|start|stop|status|version|cds" >&2; exit 2 ;;
esac
