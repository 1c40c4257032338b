"""A throw-away HTTP receiver on loopback for sink tests."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[int]:
    """Serve ``handler`` on 127.0.0.1 in a thread; yield the port; shut down after."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Posts:
    """What a ``webhook`` receiver got: each POST's JSON body and the status it answered."""

    bodies: list[Any] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)


@contextmanager
def webhook(answers: Sequence[int] = ()) -> Iterator[tuple[str, Posts]]:
    """A webhook receiver on loopback: the URL and its ``Posts``. It answers ``answers`` in
    turn (e.g. 503 first), then 200."""
    left = list(answers)
    posts = Posts()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            posts.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            status = left.pop(0) if left else 200
            posts.statuses.append(status)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    with serving(Handler) as port:
        yield f"http://127.0.0.1:{port}/hook", posts
