"""Hostile records on the bus (issue 21, finding 1): one poison message must never stop the
alerting. Forged times, names past the contract's limits and messages near the broker's size
limit are dead-lettered with a bounded envelope, and a genuine hit published after them is
still alerted. The real alerts consumer on the real broker, and ``kaspwatch run`` on a
capture stamped in year 9999."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from consumers.loop import ConsumerHealth, KnownFailure, consume, envelope
from kaspwatch.bus import Record
from kaspwatch.bus.memory import MemoryBus
from kaspwatch.event import Event, EventError, event_from_json
from tests import cliprocs, hitstream
from tests.cliprocs import Procs, cli_env
from tests.factories import hit
from tests.hitstream import first_contacts
from tests.kafkautil import producer, read_topic, standard_topics, wait_committed
from tests.testenv import KASPWATCH, SAMPLE

procs = cliprocs.procs  # fixtures
sample_hits = hitstream.sample_hits
KAFKA_MAX = 1_048_576  # the broker's and producer's default message limit


def pcapng_from(pcap: Path, out: Path, epoch_s: int) -> None:
    """The packets of a classic pcap as a pcapng, restamped one second apart from epoch_s
    (pcapng's 64-bit microseconds reach year 9999; the classic format's do not)."""
    data = pcap.read_bytes()
    assert struct.unpack("<I", data[:4])[0] == 0xA1B2C3D4
    linktype = struct.unpack("<I", data[20:24])[0]

    def block(btype: int, body: bytes) -> bytes:
        body += b"\0" * (-len(body) % 4)
        return struct.pack("<II", btype, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))

    blob = block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    blob += block(1, struct.pack("<HHI", linktype, 0, 65535))
    off, i = 24, 0
    while off + 16 <= len(data):
        _, usec, incl, orig = struct.unpack("<IIII", data[off : off + 16])
        packet = data[off + 16 : off + 16 + incl]
        off += 16 + incl
        t = (epoch_s + i) * 1_000_000 + usec
        i += 1
        blob += block(6, struct.pack("<IIIII", 0, t >> 32, t & 0xFFFFFFFF, incl, orig) + packet)
    out.write_bytes(blob)


# ---------------------------------------------------------------- the contract on read


def _good() -> dict[str, Any]:
    return json.loads(hit("10.0.0.1", 0).to_json())


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"name": "a" * 250 + ".kaspersky.com"}, "bad name"),
        ({"name": "Upper.kaspersky.com"}, "bad name"),
        ({"ts": "9999-12-31T23:30:00.000000Z"}, "outside 1990"),
        ({"ts": "1970-01-01T00:00:00.000000Z"}, "outside 1990"),
        ({"src_ip": "not-an-address"}, "not an IP address"),
        ({"dst_ip": "10.0.0.300"}, "not an IP address"),
        ({"answers": ["10.0.0.1", "\x1b[2J"]}, "not an IP address"),
        ({"answers": ["10.0.0.1"] * 300}, "answers"),
        ({"src_port": 70000}, "out of range"),
        ({"transport": "sctp"}, "unknown transport"),
        ({"event_id": "x"}, "bad event_id"),
        ({"sensor": "s" * 129}, "sensor"),
        ({"query": "q" * 300}, "bad query"),
        ({"padding": "x" * 70_000}, "over 65536"),
    ],
)
def test_the_contract_is_checked_on_read(change: dict[str, Any], reason: str) -> None:
    with pytest.raises(EventError, match=reason) as err:
        event_from_json(json.dumps({**_good(), **change}).encode())
    assert len(str(err.value)) < 200  # a reason never carries the forged bytes


def test_a_day_ahead_is_the_limit_of_the_future() -> None:
    ev = event_from_json(hit("10.0.0.1", 0).to_json(), now=1_750_000_000 - 86_000)
    assert ev.name == "s01.upd.kaspersky.com"
    with pytest.raises(EventError, match="outside"):
        event_from_json(hit("10.0.0.1", 0).to_json(), now=1_750_000_000 - 86_500)


# ---------------------------------------------------------------- the consume loop


class FailsOn:
    """A handler that raises ``exc`` on events of one host: a bug a record can trigger."""

    def __init__(self, host: str, exc: Exception) -> None:
        self.host, self.exc = host, exc
        self.events: list[Event] = []
        self.rollbacks = 0

    async def handle(self, events: list[Event]) -> None:
        if any(e.src_ip == self.host for e in events):
            raise self.exc
        self.events.extend(events)

    def rollback(self) -> None:
        self.rollbacks += 1


async def test_a_handler_error_dead_letters_that_event_and_the_batch_goes_on() -> None:
    bus = MemoryBus()
    for i in range(4):
        bus.append("hits", None, hit(f"10.0.0.{i}", i).to_json())
    bad: list[tuple[Record, str]] = []

    async def dead_letter(rec: Record, why: str) -> None:
        bad.append((rec, why))

    registry = CollectorRegistry()
    health = ConsumerHealth(registry).group("g")
    handler = FailsOn("10.0.0.2", OverflowError("date value out of range"))
    sub = bus.subscriber(["hits"], "g")
    await sub.start()
    await asyncio.wait_for(
        consume(sub, [handler], asyncio.Event(), dead_letter, lambda: True, health=health), 10
    )
    assert [e.src_ip for e in handler.events] == ["10.0.0.0", "10.0.0.1", "10.0.0.3"]
    assert [(r.offset, why) for r, why in bad] == [
        (2, "handler failed: OverflowError: date value out of range")
    ]
    assert bus.committed[("g", "hits")] == 4
    assert (
        registry.get_sample_value("kaspwatch_consumer_handler_failures_total", {"group": "g"}) == 1
    )


async def test_a_sink_failure_still_retries_the_whole_batch(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import consumers.loop

    monkeypatch.setattr(consumers.loop, "RETRY_PAUSE_S", 0.01)
    bus = MemoryBus()
    bus.append("hits", None, hit("10.0.0.1", 0).to_json())
    registry = CollectorRegistry()
    health = ConsumerHealth(registry).group("g")
    stop = asyncio.Event()

    class DownTwice(FailsOn):
        async def handle(self, events: list[Event]) -> None:
            if self.rollbacks < 2:
                raise KnownFailure("webhook down")
            await super().handle(events)

    handler = DownTwice("none", ValueError())
    sub = bus.subscriber(["hits"], "g")
    await sub.start()
    dead: list[str] = []

    async def dead_letter(rec: Record, why: str) -> None:
        dead.append(why)

    await asyncio.wait_for(
        consume(sub, [handler], stop, dead_letter, lambda: True, health=health), 10
    )
    assert [e.src_ip for e in handler.events] == ["10.0.0.1"] and dead == []
    assert registry.get_sample_value("kaspwatch_consumer_batch_failures_total", {"group": "g"}) == 2


def test_the_dead_letter_envelope_fits_the_broker_whatever_the_record() -> None:
    huge = Record("hits", 0, 7, b"k" * 900_000, b"v" * 900_000)
    doc = json.loads(envelope(huge, "r" * 900_000))
    assert len(envelope(huge, "r" * 900_000)) < KAFKA_MAX // 2
    assert (doc["truncated"], doc["size"], doc["offset"]) == (True, 900_000, 7)
    assert base64.b64decode(doc["value"]) == b"v" * 256 * 1024
    small = json.loads(envelope(Record("hits", 0, 1, None, b"{x"), "not JSON"))
    assert "truncated" not in small and base64.b64decode(small["value"]) == b"{x"


# ---------------------------------------------------------------- the real broker


@pytest.mark.kafka
@pytest.mark.timeout(90)
async def test_poison_never_stops_the_alerting_on_the_broker(
    kafka_bootstrap: str, sample_hits: list[dict[str, Any]], procs: Procs, tmp_path: Path
) -> None:
    genuine = next(iter(first_contacts(sample_hits).values()))
    names = await standard_topics(kafka_bootstrap, hits_partitions=1)

    def forged(**change: Any) -> bytes:
        return json.dumps({**genuine, "event_id": uuid.uuid4().hex, **change}).encode()

    poison = [
        forged(ts="9999-12-31T23:30:00.000000Z"),  # two of one host and category: the
        forged(ts="9999-12-31T23:45:00.000000Z"),  # window end overflowed the engine
        forged(name="a" * 700_000 + ".kaspersky.com"),  # a 2 MB alert
        forged(name="a" * 300 + ".kaspersky.com"),  # past the schema's 255
        b'{"junk":"' + b"x" * 800_000 + b'"}',  # over 1 MB once base64'd
    ]
    async with producer(kafka_bootstrap) as prod:
        for value in poison:
            await prod.send_and_wait(names["hits"], value, key=genuine["host"].encode())
        await prod.send_and_wait(names["hits"], json.dumps(genuine).encode(), key=b"h")
    cmd = [
        *KASPWATCH, "alerts", "--bus", f"kafka://{kafka_bootstrap}", "--topic", names["hits"],
        "--alerts-topic", names["alerts"], "--dead-letter-topic", names["dlq"],
        "--group", names["group"], "--state", str(tmp_path / "s.sqlite"),
    ]  # fmt: skip
    alerts = procs.start("alerts", cmd)
    findings = await read_topic(kafka_bootstrap, names["alerts"], 1)
    related = [json.loads(v)["finding_info"]["related_events"][0]["uid"] for _, v in findings]
    assert related == [genuine["event_id"]], alerts.stderr()
    dead = await read_topic(kafka_bootstrap, names["dlq"], len(poison))
    assert len(dead) == len(poison), alerts.stderr()
    assert all(len(v) < KAFKA_MAX for _, v in dead)
    reasons = sorted(json.loads(v)["reason"].split(" ")[0] for _, v in dead)
    assert reasons == ["bad", "message", "message", "ts", "ts"], reasons
    await wait_committed(kafka_bootstrap, names["group"], names["hits"])
    assert Procs.terminate(alerts) == 0, alerts.stderr()


@pytest.mark.timeout(120)
def test_run_on_a_capture_stamped_year_9999_ends(tmp_path: Path) -> None:
    capture = tmp_path / "y9999.pcapng"
    pcapng_from(SAMPLE, capture, 253_402_299_000)  # 9999-12-31T23:30Z: the window overflowed
    done = subprocess.run(
        [*KASPWATCH, "run", "--pcap", str(capture)],
        capture_output=True,
        text=True,
        timeout=60,
        env=cli_env(tmp_path),
    )
    assert done.returncode == 0, done.stderr
    assert "No Kaspersky traffic seen." in done.stdout
    assert "is outside 1990-01-01 .. a day from now" in done.stderr
    assert "Traceback" not in done.stderr


# ---------------------------------------------------------------- finding 2: claims


@pytest.mark.kafka
@pytest.mark.timeout(90)
async def test_the_alerts_consumer_rematches_what_a_hit_claims(
    kafka_bootstrap: str, sample_hits: list[dict[str, Any]], procs: Procs, tmp_path: Path
) -> None:
    firsts = list(first_contacts(sample_hits).values())
    genuine, tampered = firsts[0], firsts[-1]
    critical = {**genuine["indicator"], "category": "activation", "severity": "critical"}
    google = {**genuine, "event_id": uuid.uuid4().hex, "name": "www.google.com",
              "indicator": critical, "resolver_bypass": True}  # fmt: skip
    raised = {**tampered, "indicator": {**tampered["indicator"], "severity": "critical"}}
    names = await standard_topics(kafka_bootstrap, hits_partitions=1)
    async with producer(kafka_bootstrap) as prod:
        for doc in (google, genuine, raised):
            await prod.send_and_wait(names["hits"], json.dumps(doc).encode(), key=b"h")
    cmd = [
        *KASPWATCH, "alerts", "--bus", f"kafka://{kafka_bootstrap}", "--topic", names["hits"],
        "--alerts-topic", names["alerts"], "--dead-letter-topic", names["dlq"],
        "--group", names["group"], "--state", str(tmp_path / "s.sqlite"),
    ]  # fmt: skip
    alerts = procs.start("alerts", cmd)
    dead = await read_topic(kafka_bootstrap, names["dlq"], 1)
    assert len(dead) == 1, alerts.stderr()
    env = json.loads(dead[0][1])
    assert base64.b64decode(env["value"]) == json.dumps(google).encode()
    assert "www.google.com" in env["reason"] and "does not match" in env["reason"]
    await wait_committed(kafka_bootstrap, names["group"], names["hits"])
    assert Procs.terminate(alerts) == 0, alerts.stderr()
    printed = {a["event_id"]: a for a in map(json.loads, alerts.stdout().splitlines())}
    assert set(printed) == {genuine["event_id"], tampered["event_id"]}
    # acted on with the pack's severity, not the claimed critical
    assert printed[tampered["event_id"]]["indicator_severity"] == tampered["indicator"]["severity"]
    assert printed[tampered["event_id"]]["severity"] != "critical"


# ---------------------------------------------------------------- finding 5: control characters

NASTY = "x\x1b[2J\x07y\u2028z\u202e\x85\x0b=w.upd.kaspersky.com"
RAW_CONTROLS = ("\x1b", "\x07", "\u2028", "\u202e", "\x85", "\x0b", "\x00", "\n")


def test_query_table_escapes_and_csv_neutralises_formulas(tmp_path: Path) -> None:
    from consumers.store import open_store

    url = f"sqlite:///{tmp_path / 'hits.sqlite'}"
    store = open_store(url)
    recent = __import__("time").time() - 1_750_000_000 - 3600
    store.ingest(
        [
            hit("10.5.0.1", recent, name=NASTY),
            hit("10.5.0.2", recent, name="=cmd|x.upd.kaspersky.com"),
        ]
    )
    store.close()
    env = cli_env(tmp_path)
    table = subprocess.run([*KASPWATCH, "query", "host", "10.5.0.1", "--db", url], capture_output=True,
                           text=True, env=env, timeout=60)  # fmt: skip
    assert table.returncode == 0, table.stderr
    assert "\\x1b[2J\\x07y\\u2028z\\u202e\\x85\\x0b=w" in table.stdout
    assert not any(c in table.stdout.replace("\n", "") for c in RAW_CONTROLS), table.stdout
    csv_out = subprocess.run([*KASPWATCH, "query", "host", "10.5.0.2", "--db", url, "--format", "csv"],
                             capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
    assert "'=cmd|x.upd.kaspersky.com" in csv_out.stdout, csv_out.stdout


def test_syslog_cef_and_alertmanager_escape_for_their_own_rules() -> None:
    from consumers.alerts.engine import AlertEngine
    from consumers.alerts.sinks.alertmanager import to_am
    from consumers.alerts.sinks.syslog import cef, rfc5424

    [a] = AlertEngine().feed(hit("10.6.0.1", 0, name=NASTY + "\x00"))
    for line in (rfc5424(a, "sensor-1"), cef(a)):
        assert not any(c in line for c in RAW_CONTROLS), repr(line)
        assert "\\x1b[2J" in line and "\\u202e" in line
    labels = to_am(a, 0.0)["labels"]
    assert all(len(v) <= 128 and v.isprintable() for v in labels.values())


# ---------------------------------------------------------------- finding 6: modes and the spool


def test_a_spool_another_user_could_write_is_refused(tmp_path: Path) -> None:
    import os
    import pwd

    from kaspwatch.bus.spool import Spool, SpoolError

    nobody = pwd.getpwnam("nobody")
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o777)
    theirs.chmod(0o777)
    os.chown(theirs, nobody.pw_uid, nobody.pw_gid)
    with pytest.raises(SpoolError, match="owned by uid 65534, not by this sensor's user"):
        Spool(theirs)
    open_ = tmp_path / "open"
    open_.mkdir()
    open_.chmod(0o777)
    with pytest.raises(SpoolError, match=r"writable by group or others \(mode 0777\)"):
        Spool(open_)
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o755)
    Spool(mine)
    assert mine.stat().st_mode & 0o777 == 0o700


async def test_the_spool_replays_only_to_the_configured_topics(tmp_path: Path) -> None:
    from kaspwatch.bus.spool import Spool, SpoolRecord
    from kaspwatch.bus.spooling_publisher import SpoolingPublisher

    spool = Spool(tmp_path)
    spool.append(SpoolRecord("hits", b"h", b"1"))
    spool.append(SpoolRecord("kaspwatch.alerts.v1", b"h", b"forged"))
    spool.append(SpoolRecord("hits", b"h", b"2"))
    spool.sync()
    bus = MemoryBus()
    pub = SpoolingPublisher(bus.publisher, spool, topics=("hits",))
    await pub.start()
    await asyncio.wait_for(pub.flush(), 10)
    await pub.stop()
    assert [r.value for r in bus.topics["hits"]] == [b"1", b"2"]
    assert "kaspwatch.alerts.v1" not in bus.topics and pub.foreign == 1
    assert spool.depth_records == 0


def test_store_and_alert_state_are_for_their_owner_only(tmp_path: Path) -> None:
    import os

    from consumers.alerts.state import AlertState
    from consumers.store import open_store

    os.umask(0o022)
    state = AlertState(str(tmp_path / "alerts.sqlite"))
    state.db.close()
    store = open_store(f"sqlite:///{tmp_path / 'hits.sqlite'}")
    store.ingest([hit("10.7.0.1", 0)])
    for path in tmp_path.iterdir():
        assert path.stat().st_mode & 0o777 == 0o600, path
    store.close()
    env = {**cli_env(tmp_path), "KASPWATCH_STATE_DIR": str(tmp_path / "state")}
    subprocess.run([*KASPWATCH, "store", "--bus", "memory://x", "--until-caught-up"],
                   env=env, capture_output=True, timeout=60, check=True)  # fmt: skip
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700
    assert all(p.stat().st_mode & 0o077 == 0 for p in (tmp_path / "state").iterdir())


@pytest.mark.kafka
@pytest.mark.timeout(120)
def test_sense_with_user_makes_the_default_spool_before_the_drop(kafka_bootstrap: str) -> None:
    import os
    import pwd
    import shutil
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="kw-user-", dir="/tmp"))  # nobody can reach it
    base.chmod(0o755)
    try:
        env = {**cli_env(base), "KASPWATCH_STATE_DIR": str(base / "state")}
        err = base / "sense.err"
        with err.open("wb") as fh:
            proc = subprocess.Popen(
                [*KASPWATCH, "sense", "--interface", "lo", "--bpf", "udp and dst port 9",
                 "--user", "nobody", "--sensor", "u1", "--bus", f"kafka://{kafka_bootstrap}",
                 "--topic", f"hits-{uuid.uuid4().hex[:8]}"],
                env=env, stdout=subprocess.DEVNULL, stderr=fh,
            )  # fmt: skip
        try:
            for _ in range(600):
                if "capturing on" in err.read_text() or proc.poll() is not None:
                    break
                time.sleep(0.1)
        finally:
            proc.terminate()
            rc = proc.wait(60)
        assert rc in (0, 1), err.read_text()  # 1: nothing published is fine here
        assert "capturing on" in err.read_text(), err.read_text()
        spool = base / "state" / "spool-u1"
        st = spool.stat()
        assert (st.st_uid, st.st_mode & 0o777) == (pwd.getpwnam("nobody").pw_uid, 0o700)
        assert os.stat(base / "state").st_uid == 0
    finally:
        shutil.rmtree(base)


# ---------------------------------------------------------------- finding 7: secrets


def test_a_short_token_is_refused_and_a_url_password_never_printed(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("x\n")
    token.chmod(0o600)
    env = cli_env(tmp_path)
    short = subprocess.run([*KASPWATCH, "api", "--token-file", str(token), "--db",
                            f"sqlite:///{tmp_path / 'h.sqlite'}"],
                           env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert short.returncode == 2
    assert "the token has 1 characters, at least 16" in short.stderr
    assert "Traceback" not in short.stderr
    url = "postgresql://kw@127.0.0.1:1/kw?password=s3cr%C3%A9t-pw&sslmode=disable"
    bad = subprocess.run([*KASPWATCH, "query", "hosts", "--db", url],
                         env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert bad.returncode == 2, bad.stderr
    assert "password=***" in bad.stderr and "s3cr" not in bad.stderr + bad.stdout


# ---------------------------------------------------------------- findings 4 and 8: the API


@pytest.fixture
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    import threading

    import consumers.store.api as api_mod
    from consumers.store import open_store

    monkeypatch.setattr(api_mod, "MAX_CONNECTIONS", 4, raising=False)
    monkeypatch.setattr(api_mod, "HEADER_TIMEOUT_S", 0.5, raising=False)
    monkeypatch.setattr(api_mod, "MAX_PER_CLIENT", 3, raising=False)
    url = f"sqlite:///{tmp_path / 'api.sqlite'}"
    store = open_store(url)
    store.ingest([hit(f"10.8.0.{i}", i) for i in range(1, 6)])
    store.close()
    server = api_mod.make_server(url, ("127.0.0.1", 0))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    server.pool.close()


def _raw(port: int, data: bytes, timeout: float = 10) -> bytes:
    """Send ``data`` on one connection and read until the server closes it."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def _get(port: int, path: str, host: str = "127.0.0.1") -> tuple[int, dict[str, Any]]:
    reply = _raw(port, f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body) if body else {}


def test_api_bad_parameters_are_400_not_500(api: Any) -> None:
    port = api.server_address[1]
    assert _get(port, "/v1/hosts/10.8.0.1?limit=%C2%B9")[0] == 400  # ¹: isdigit, not int
    assert _get(port, "/v1/hosts?until=9999-12-31")[0] == 400
    assert _get(port, "/v1/names/kas%00persky.com")[0] == 400
    assert _get(port, "/v1/names/kaspersky.com?offset=-1")[0] == 400
    assert _get(port, "/v1/hosts/10.8.0.1?limit=5")[0] == 200


def test_api_request_bodies_are_refused_and_never_parsed_as_a_request(api: Any) -> None:
    port = api.server_address[1]
    smuggled = b"GET /v1/hosts HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    for method in ("GET /healthz", "POST /v1/hosts"):
        reply = _raw(port, f"{method} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: "
                     f"{len(smuggled)}\r\n\r\n".encode() + smuggled)  # fmt: skip
        assert reply.count(b"HTTP/1.1 ") == 1, reply  # one answer: the body was no request
        assert reply.split()[1] in (b"400", b"405")
    chunked = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    reply = _raw(port, chunked + b"2d\r\n" + smuggled + b"\r\n0\r\n\r\n")
    assert reply.count(b"HTTP/1.1 ") == 1 and reply.split()[1] == b"400"


def test_api_checks_host_and_pages_every_list(api: Any) -> None:
    port = api.server_address[1]
    assert _get(port, "/v1/hosts", host="attacker.example")[0] == 421  # DNS rebinding
    assert _get(port, "/v1/hosts", host=f"attacker.example:{port}")[0] == 421
    assert _get(port, "/healthz", host=f"localhost:{port}")[0] == 200
    assert _get(port, "/v1/hosts", host=f"[::1]:{port}")[0] == 200
    status, page = _get(port, "/v1/hosts?limit=2&offset=2")
    assert status == 200 and (page["count"], page["total"], page["next_offset"]) == (2, 5, 4)
    assert [r["host"] for r in page["results"]] == ["10.8.0.3", "10.8.0.4"]
    status, page = _get(port, "/v1/names/kaspersky.com?limit=4&offset=4")
    assert (page["count"], page["total"]) == (1, 5) and "next_offset" not in page


def test_api_caps_connections_and_cuts_off_slow_senders(api: Any) -> None:
    import socket

    port = api.server_address[1]
    slow = [  # 3 from one client (its limit), 1 from another: all 4 slots
        socket.create_connection(("127.0.0.1", port), 10, (src, 0))
        for src in ("127.0.0.2", "127.0.0.2", "127.0.0.2", "127.0.0.3")
    ]
    for s in slow:
        s.sendall(b"GET /v1/hosts HTTP/1.1\r\nHost: 127")  # and never the rest
    try:
        deadline = time.monotonic() + 10
        refused = b""
        while time.monotonic() < deadline and b" 503 " not in refused:  # the 5th: refused
            refused = _raw(port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert b" 503 " in refused
        for s in slow:  # each cut off at its header deadline: closed, no answer
            assert s.recv(100) == b""
    finally:
        for s in slow:
            s.close()
    assert _get(port, "/healthz")[0] == 200  # served again once the slots are free
    assert api.refused >= 1


def test_api_beyond_loopback_requires_a_token(tmp_path: Path) -> None:
    done = subprocess.run([*KASPWATCH, "api", "--listen", "0.0.0.0:9", "--db",
                           f"sqlite:///{tmp_path / 'x.sqlite'}"],
                          env=cli_env(tmp_path), capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 2
    assert "beyond loopback the API needs --token-file" in done.stderr


async def test_a_second_signal_gives_up_the_drain() -> None:
    from kaspwatch.cli.process import Stopper

    stopper = Stopper()
    stopper.trigger()
    assert stopper.stop.is_set() and stopper.halt.is_set() and not stopper.again.is_set()
    stopper.trigger()  # kaspwatch run: the consumers' stop, a sink down or not
    assert stopper.again.is_set()


async def test_a_parser_bug_dead_letters_that_record_only() -> None:
    from consumers.loop import parse_with

    bus = MemoryBus()
    for raw in (b"ok-1", b"boom", b"ok-2"):
        bus.append("hits", None, raw)

    def parse(raw: bytes) -> bytes:
        if raw == b"boom":
            raise KeyError("kind")
        return raw

    got: list[bytes] = []
    dead: list[str] = []

    class Keep:
        async def handle(self, events: list[bytes]) -> None:
            got.extend(events)

    async def dead_letter(rec: Record, why: str) -> None:
        dead.append(why)

    sub = bus.subscriber(["hits"], "g")
    await sub.start()
    await asyncio.wait_for(
        consume(sub, [Keep()], asyncio.Event(), dead_letter, lambda: True, parse_with(parse)), 10
    )
    assert got == [b"ok-1", b"ok-2"] and dead == ["parser failed: KeyError: 'kind'"]


@pytest.mark.kafka
@pytest.mark.timeout(90)
async def test_the_metrics_consumer_counts_only_what_its_pack_matches(
    kafka_bootstrap: str, sample_hits: list[dict[str, Any]], procs: Procs
) -> None:
    from tests.kafkautil import wait_metrics
    from tests.testenv import free_port

    genuine = next(iter(first_contacts(sample_hits).values()))
    google = {**genuine, "event_id": uuid.uuid4().hex, "name": "www.google.com"}
    names = await standard_topics(kafka_bootstrap, hits_partitions=1)
    async with producer(kafka_bootstrap) as prod:
        for doc in (google, genuine):
            await prod.send_and_wait(names["hits"], json.dumps(doc).encode(), key=b"h")
    port = free_port()
    metrics = procs.start("metrics", [
        *KASPWATCH, "metrics", "--bus", f"kafka://{kafka_bootstrap}", "--topic", names["hits"],
        "--group", names["group"], "--listen", f"127.0.0.1:{port}", "--lag-groups", "",
    ])  # fmt: skip

    def hits(m: dict[str, float]) -> float:
        return sum(v for k, v in m.items() if k.startswith("kaspwatch_hits_total{"))

    got = await wait_metrics(port, lambda m: m.get("kaspwatch_invalid_messages_total") == 1)
    await wait_committed(kafka_bootstrap, names["group"], names["hits"])
    got = await wait_metrics(port, lambda m: hits(m) == 1)
    assert (got.get("kaspwatch_invalid_messages_total"), hits(got)) == (1.0, 1.0), got
    assert Procs.terminate(metrics) == 0, metrics.stderr()
    assert "www.google.com" in metrics.stderr() and "does not match" in metrics.stderr()


def test_api_one_client_cannot_take_every_slot(api: Any) -> None:
    import socket

    port = api.server_address[1]
    slow = [socket.create_connection(("127.0.0.1", port), 10, ("127.0.0.2", 0)) for _ in range(3)]
    try:
        for s in slow:
            s.sendall(b"GET /v1/hosts HTTP/1.1\r\nHost: 127")
        deadline = time.monotonic() + 10
        fourth = b""
        while time.monotonic() < deadline and b" 503 " not in fourth:
            with socket.create_connection(("127.0.0.1", port), 10, ("127.0.0.2", 0)) as s:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                fourth = s.recv(100)
        assert b" 503 " in fourth  # the flooding client's fourth connection
        assert _get(port, "/healthz")[0] == 200  # anyone else is still served
    finally:
        for s in slow:
            s.close()
