"""Argument types shared by every command's parser."""

from __future__ import annotations

import argparse


def listen_addr(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) for a listening socket; an empty host is loopback."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT, e.g. 127.0.0.1:9108")
    return host.strip("[]") or "127.0.0.1", int(port)
