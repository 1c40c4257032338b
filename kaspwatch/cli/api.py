"""``kaspwatch api``: the store's queries as a read-only HTTP JSON API (for SOAR and Grafana).

kaspwatch api [--db URL] [--listen 127.0.0.1:9110] [--token-file PATH] [--assets FILE]
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading

from consumers.assets import load_assets
from consumers.store import StoreError
from consumers.store.api import LOOPBACK, make_server
from kaspwatch.cli.options import add_assets_option, add_db_option, db_url, listen_addr
from kaspwatch.secretfile import read_secret_file

log = logging.getLogger("kaspwatch")
MIN_TOKEN = 16  # a guessable token is no token


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_db_option(p)
    p.add_argument(
        "--listen",
        type=listen_addr,
        default=("127.0.0.1", 9110),
        metavar="HOST:PORT",
        help="where to listen (default 127.0.0.1:9110: loopback only)",
    )
    p.add_argument(
        "--token-file",
        metavar="PATH",
        help="require 'Authorization: Bearer <token>' with the token in this file",
    )
    add_assets_option(p)


def read_token(path: str) -> str:
    """The bearer token: one word, from a file other users cannot read (the same policy
    as every secret file of kaspwatch, ``kaspwatch.secretfile``)."""
    try:
        text = read_secret_file(path, "token file").decode("utf-8").strip()
    except OSError as exc:
        raise StoreError(f"{path}: cannot read the token: {exc.strerror}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise StoreError(str(exc)) from None
    if not text or any(c.isspace() for c in text):
        raise StoreError(f"{path}: the token file must hold one token (no spaces)")
    if len(text) < MIN_TOKEN:
        raise StoreError(
            f"{path}: the token has {len(text)} characters, at least {MIN_TOKEN} are needed "
            "(e.g. openssl rand -hex 32 > FILE)"
        )
    return text


def run(args: argparse.Namespace) -> int:
    token = read_token(args.token_file) if args.token_file else None
    assets = load_assets(args.assets) if args.assets else None
    host, port = args.listen
    if token is None and host not in LOOPBACK:
        raise StoreError(
            f"--listen {host}: beyond loopback the API needs --token-file (anyone who can "
            "reach it could read the inventory)"
        )
    server = make_server(db_url(args), (host, port), token, assets)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    thread = threading.Thread(target=server.serve_forever, name="kaspwatch-api", daemon=True)
    thread.start()
    shown = f"[{host}]" if ":" in host else host
    log.info(
        "serving the store API on http://%s:%d (%s)",
        shown,
        server.server_address[1],
        "bearer token required" if token else "no token",
    )
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.shutdown()
        server.server_close()
        server.pool.close()
    return 0
