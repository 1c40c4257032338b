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
With a token, every ``/v1`` request needs ``Authorization: Bearer <token>`` (compared in
constant time; 401 otherwise, and the token is never echoed or logged). Only GET and
HEAD; every connection gets read-only database sessions from a small pool.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from consumers.assets import AssetMap
from consumers.store import queries
from consumers.store.backends import open_backend
from consumers.store.base import Backend, StoreError
from consumers.store.names import PatternError, parse_pattern

log = logging.getLogger("kaspwatch.store.api")

MAX_LIMIT = 100_000


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
        super().__init__(addr, _Handler)


class BadRequest(Exception):
    pass


def _many(params: dict[str, list[str]], key: str) -> list[str]:
    return [v for raw in params.get(key, []) for v in raw.split(",") if v]


def _one(params: dict[str, list[str]], key: str) -> str | None:
    values = params.get(key)
    return values[-1] if values else None


def _time(params: dict[str, list[str]], key: str, end_of_day: bool = False) -> int | None:
    value = _one(params, key)
    return queries.parse_time(value, end_of_day) if value else None


class _Handler(BaseHTTPRequestHandler):
    server: StoreServer
    server_version = "kaspwatch-store"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    timeout = 30

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def _send(self, status: int, doc: dict[str, Any], head: bool = False) -> None:
        body = json.dumps(doc, separators=(",", ":")).encode()
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
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, {"error": "read-only API: GET only"})

    do_POST = do_PUT = do_DELETE = do_PATCH = _refuse

    def _answer(self, head: bool) -> None:
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
            self._send(status, result.to_json(), head)
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
                limit_text = _one(params, "limit") or str(queries.DEFAULT_LIMIT)
                if not limit_text.isdigit() or not 0 < int(limit_text) <= MAX_LIMIT:
                    raise BadRequest(f"limit must be 1..{MAX_LIMIT}")
                return queries.host_timeline(
                    b,
                    parts[1],
                    _time(params, "since"),
                    _time(params, "until", end_of_day=True),
                    int(limit_text),
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
