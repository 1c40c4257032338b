"""Read-only HTTP JSON API over the store, for SOAR tools and Grafana.

    GET /healthz                           {"status": "ok"} (no token needed)
    GET /v1/hosts?since=&until=&category=&site=
    GET /v1/hosts/{ip}?since=&until=&limit=  404 when the store has no hits for it
    GET /v1/names/{pattern}?exact=1        who contacted it (zone, *.zone or exact name)
    GET /v1/dns/{pattern}?exact=1          passive DNS: answers, first and last seen
    GET /v1/after-ban?date=YYYY-MM-DD      hosts active on or after the date (2024-09-29)
                                           running Kaspersky (``all_verdicts=1``: every host)

Answers are ``{"query", "count", "results": [rows...], "note"?}`` with the same rows as
``kaspwatch query --format json``. ``category`` and ``site`` repeat or take commas.
Every list is paged: ``limit`` (default 1,000, at most 100,000) and ``offset``; an
answer cut short says ``total`` and ``next_offset``.
With a token, every ``/v1`` request needs ``Authorization: Bearer <token>`` (compared in
constant time; 401 otherwise, and the token is never echoed or logged). Only GET and
HEAD, without a body (a body is refused and the connection closed: nothing of it can be
read as a next request); every connection gets read-only database sessions from a small
pool.

Hostile clients: at most ``MAX_CONNECTIONS`` connections are served at once, and
``MAX_PER_CLIENT`` from one address (the next gets 503 and is closed); a request's line and headers must arrive within
``HEADER_TIMEOUT_S`` of its first byte being awaited (a slow sender is cut off); a
connection that drops is one debug line, not a traceback. On loopback the ``Host`` header
must name loopback (a web page that rebinds its DNS name to 127.0.0.1 gets 421); beyond
loopback the command requires a token.
"""

from __future__ import annotations

import hmac
import io
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final
from urllib.parse import parse_qs, unquote, urlsplit

from consumers.assets import AssetMap
from consumers.store import queries
from consumers.store.backends import open_backend
from consumers.store.base import Backend, StoreError
from consumers.store.names import PatternError, parse_pattern

log = logging.getLogger("kaspwatch.store.api")

MAX_LIMIT = 100_000
PAGE: Final = 1_000
MAX_CONNECTIONS: Final = 64
MAX_PER_CLIENT: Final = 16
HEADER_TIMEOUT_S: Final = 10.0
WRITE_TIMEOUT_S: Final = 30.0
LOOPBACK: Final = frozenset({"127.0.0.1", "::1", "localhost"})
_HOST: Final = re.compile(r"(\[[0-9a-fA-F:.]+\]|[^:\[\]]+)(:[0-9]{1,5})?")


class _DeadlineReader(io.RawIOBase):
    """The socket as the handler reads it, with a deadline the handler moves: a request's
    line and headers must all arrive before it, however slowly they trickle in."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.deadline = time.monotonic() + HEADER_TIMEOUT_S

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("request not received in time")
        self.sock.settimeout(left)
        return self.sock.recv_into(buf)


class ReaderPool:
    """Read-only connections, reused across requests; a connection that failed is dropped."""

    def __init__(self, url: str, keep: int = 8) -> None:
        self.url = url
        self.keep = keep
        self._idle: list[Backend] = []
        self._lock = threading.Lock()

    @contextmanager
    def reader(self) -> Iterator[Backend]:
        with self._lock:
            backend = self._idle.pop() if self._idle else None
        if backend is None:
            backend = open_backend(self.url, readonly=True)
        try:
            yield backend
        except (BadRequest, queries.QueryError, PatternError):
            self._release(backend)  # the request was wrong, not the connection
            raise
        except BaseException:
            backend.close()
            raise
        self._release(backend)

    def _release(self, backend: Backend) -> None:
        with self._lock:
            if len(self._idle) < self.keep:
                self._idle.append(backend)
                return
        backend.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for backend in idle:
            backend.close()


class StoreServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the listen backlog (the stdlib's 5 dropped bursts)

    def __init__(
        self,
        addr: tuple[str, int],
        pool: ReaderPool,
        token: str | None,
        assets: AssetMap | None,
    ) -> None:
        self.pool = pool
        self.token = token
        self.assets = assets
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.per_client: dict[str, int] = {}
        self._lock = threading.Lock()
        self.loopback = addr[0] in LOOPBACK
        self.refused = 0
        super().__init__(addr, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        """A thread per connection, at most MAX_CONNECTIONS in all and MAX_PER_CLIENT from
        one address (one client cannot take every slot): past that, 503 and close."""
        peer = client_address[0]
        with self._lock:
            ok = self.per_client.get(peer, 0) < MAX_PER_CLIENT and self.slots.acquire(False)
            if ok:
                self.per_client[peer] = self.per_client.get(peer, 0) + 1
        if not ok:
            self.refused += 1
            try:
                request.settimeout(1.0)
                request.sendall(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                    b"Connection: close\r\nRetry-After: 1\r\n\r\n"
                )
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release(peer)
            raise

    def _release(self, peer: str) -> None:
        with self._lock:
            left = self.per_client.pop(peer, 1) - 1
            if left:
                self.per_client[peer] = left
            self.slots.release()

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release(client_address[0])

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away or was too slow: one debug line, no traceback."""
        log.debug("store API: connection from %s ended", client_address, exc_info=True)


class BadRequest(Exception):
    pass


def _many(params: dict[str, list[str]], key: str) -> list[str]:
    return [v for raw in params.get(key, []) for v in raw.split(",") if v]


def _one(params: dict[str, list[str]], key: str) -> str | None:
    values = params.get(key)
    return values[-1] if values else None


def _number(params: dict[str, list[str]], key: str, default: int, least: int) -> int:
    """A whole number from ``least`` to MAX_LIMIT; ASCII digits only (``¹`` is a digit to
    ``str.isdigit`` and an error to ``int``)."""
    text = _one(params, key)
    if text is None:
        return default
    if not (text.isascii() and text.isdigit() and len(text) <= 9) or not (
        least <= int(text) <= MAX_LIMIT if key == "limit" else least <= int(text)
    ):
        raise BadRequest(f"{key} must be a whole number, {least}..{MAX_LIMIT}")
    return int(text)


def _page(result: queries.Result, params: dict[str, list[str]]) -> dict[str, Any]:
    """One page of a list answer (``limit``, ``offset``); the host timeline has its own."""
    doc = result.to_json()
    if result.query == "host":
        return doc
    limit = _number(params, "limit", PAGE, 1)
    offset = _number(params, "offset", 0, 0)
    rows = result.rows[offset : offset + limit]
    if offset or len(rows) < len(result.rows):
        doc.update(results=rows, count=len(rows), total=len(result.rows), offset=offset)
        if offset + limit < len(result.rows):
            doc["next_offset"] = offset + limit
    return doc


def _time(params: dict[str, list[str]], key: str, end_of_day: bool = False) -> int | None:
    value = _one(params, key)
    return queries.parse_time(value, end_of_day) if value else None


class _Handler(BaseHTTPRequestHandler):
    server: StoreServer
    server_version = "kaspwatch-store"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        self.reader = _DeadlineReader(self.connection)
        self.rfile = io.BufferedReader(self.reader)

    def handle_one_request(self) -> None:
        self.reader.deadline = time.monotonic() + HEADER_TIMEOUT_S  # also the keep-alive idle
        try:
            super().handle_one_request()
        except (TimeoutError, ConnectionError):
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def _no_body(self) -> bool:
        """Refuse a request that carries a body (400, connection closed): never read, it
        would be parsed as the next request (request smuggling behind a proxy)."""
        length = self.headers.get("Content-Length", "0").strip()
        if not self.headers.get("Transfer-Encoding") and length in ("", "0"):
            return True
        self.close_connection = True
        self._send(HTTPStatus.BAD_REQUEST, {"error": "request bodies are not accepted"})
        return False

    def _host_ok(self) -> bool:
        """On loopback only loopback names: a page whose DNS name was rebound to 127.0.0.1
        sends its own name as Host (DNS rebinding)."""
        if not self.server.loopback:
            return True
        m = _HOST.fullmatch(self.headers.get("Host", "").strip())
        if m is not None and m.group(1).strip("[]").lower() in LOOPBACK:
            return True
        self.close_connection = True
        self._send(HTTPStatus.MISDIRECTED_REQUEST, {"error": "Host must be a loopback address"})
        return False

    def _send(self, status: int, doc: dict[str, Any], head: bool = False) -> None:
        body = json.dumps(doc, separators=(",", ":")).encode()
        self.connection.settimeout(WRITE_TIMEOUT_S)  # reads set their own deadline
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        if status == HTTPStatus.UNAUTHORIZED:
            self.send_header("WWW-Authenticate", 'Bearer realm="kaspwatch"')
        if status == HTTPStatus.METHOD_NOT_ALLOWED:
            self.send_header("Allow", "GET, HEAD")
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _authorised(self) -> bool:
        token = self.server.token
        if token is None:
            return True
        scheme, _, value = self.headers.get("Authorization", "").partition(" ")
        # compare_digest on both branches: the time does not depend on the token's content
        ok = hmac.compare_digest(value.strip().encode(), token.encode())
        return scheme.lower() == "bearer" and ok

    def do_GET(self) -> None:
        self._answer(head=False)

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def _refuse(self) -> None:
        self.close_connection = True  # whatever body it sent is never read
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, {"error": "read-only API: GET only"})

    do_POST = do_PUT = do_DELETE = do_PATCH = _refuse

    def _answer(self, head: bool) -> None:
        if not self._no_body() or not self._host_ok():
            return
        url = urlsplit(self.path)
        path = url.path.rstrip("/") or "/"
        params = parse_qs(url.query)
        try:
            if path == "/healthz":
                with self.server.pool.reader() as b:
                    b.query("SELECT 1")
                self._send(HTTPStatus.OK, {"status": "ok"}, head)
                return
            if not path.startswith("/v1/"):
                self._send(HTTPStatus.NOT_FOUND, {"error": "not found"}, head)
                return
            if not self._authorised():
                self._send(HTTPStatus.UNAUTHORIZED, {"error": "bearer token required"}, head)
                return
            result = self._route(path, params)
            if result is None:
                self._send(HTTPStatus.NOT_FOUND, {"error": "not found"}, head)
                return
            status = HTTPStatus.OK
            if result.query == "host" and not result.rows:
                status = HTTPStatus.NOT_FOUND
            self._send(status, _page(result, params), head)
        except (BadRequest, queries.QueryError, PatternError) as exc:
            self._send(HTTPStatus.BAD_REQUEST, {"error": str(exc)}, head)
        except StoreError as exc:
            log.error("store API: %s", exc)
            self._send(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "store unavailable"}, head)
        except Exception:
            log.exception("store API: %s failed", url.path)
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error"}, head)

    def _route(self, path: str, params: dict[str, list[str]]) -> queries.Result | None:
        parts = [unquote(p) for p in path.split("/")[2:]]
        assets = self.server.assets
        with self.server.pool.reader() as b:
            if parts == ["hosts"]:
                return queries.hosts(
                    b,
                    _time(params, "since"),
                    _time(params, "until", end_of_day=True),
                    _many(params, "category"),
                    _many(params, "site"),
                    assets,
                )
            if len(parts) == 2 and parts[0] == "hosts":
                return queries.host_timeline(
                    b,
                    parts[1],
                    _time(params, "since"),
                    _time(params, "until", end_of_day=True),
                    _number(params, "limit", queries.DEFAULT_LIMIT, 1),
                )
            exact = (_one(params, "exact") or "").lower() in ("1", "true", "yes")
            if len(parts) == 2 and parts[0] == "names":
                return queries.name_contacts(b, parse_pattern(parts[1], exact), assets)
            if len(parts) == 2 and parts[0] == "dns":
                return queries.passive_dns(b, parse_pattern(parts[1], exact))
            if parts == ["after-ban"]:
                day_text = _one(params, "date")
                try:
                    day = date.fromisoformat(day_text) if day_text else queries.BAN_DATE
                except ValueError:
                    raise BadRequest(f"date {day_text!r}: expected YYYY-MM-DD") from None
                every = (_one(params, "all_verdicts") or "").lower() in ("1", "true", "yes")
                return queries.after_ban(
                    b, day, _many(params, "category"), _many(params, "site"), assets, every
                )
        return None


def make_server(
    url: str,
    listen: tuple[str, int] = ("127.0.0.1", 9110),
    token: str | None = None,
    assets: AssetMap | None = None,
) -> StoreServer:
    """Bind the API (not yet serving: call ``serve_forever``). Checks the store opens."""
    pool = ReaderPool(url)
    with pool.reader():
        pass
    try:
        return StoreServer(listen, pool, token, assets)
    except OSError as exc:
        pool.close()
        raise StoreError(f"cannot listen on {listen[0]}:{listen[1]}: {exc.strerror}") from None
