"""The ``kaspwatch`` command line: one module per command, each with ``add_parser`` (its
flags; the parser's ``run`` default) and ``run(args) -> exit status``.

``main`` parses, settles every option from flags, the configuration file and the
environment (``kaspwatch.cli.config.resolve``), and runs the command. Bad input of any
kind is one line on stderr naming the place, exit 2; tracebacks only with ``-v``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence

from consumers.alerts.sinks import SinkOptionError
from consumers.store import StoreError
from kaspwatch import __version__
from kaspwatch.bus import BusError
from kaspwatch.bus.security import RedactSecrets
from kaspwatch.bus.spool import SpoolError
from kaspwatch.cli import alerts, api, indicators, metrics, query, run, scan, sense, store
from kaspwatch.cli.config import resolve
from kaspwatch.yamlfile import YamlError
from sensor.sources.base import CaptureError

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_USAGE = 2

# in the order ``kaspwatch --help`` lists them
COMMANDS = (scan, sense, alerts, metrics, run, indicators, store, query, api)
# errors that are the user's input (a file, a flag, a URL, an unreachable bus): one line
USER_ERRORS = (CaptureError, YamlError, BusError, SpoolError, StoreError, SinkOptionError)

log = logging.getLogger("kaspwatch")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kaspwatch",
        description="Find machines still running Kaspersky software from their network traffic.",
    )
    parser.add_argument("--version", action="version", version=f"kaspwatch {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=os.environ.get("KASPWATCH_CONFIG"),
        help="configuration file (env KASPWATCH_CONFIG); flags override it",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


class _RateLimit(logging.Filter):
    """Each distinct message at most once per ``interval`` seconds: a client retrying an
    unreachable broker ten times a second must not flood the log (or block on a full pipe)."""

    def __init__(self, interval: float) -> None:
        super().__init__()
        self.interval = interval
        self.last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = str(record.msg)
        now = time.monotonic()
        if now - self.last.get(key, -self.interval) < self.interval:
            return False
        if len(self.last) > 1000:
            self.last.clear()
        self.last[key] = now
        return True


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="kaspwatch: %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactSecrets())  # a secret never reaches a log line
    logging.getLogger("aiokafka").setLevel(logging.DEBUG if verbose else logging.ERROR)
    if not verbose:
        logging.getLogger("aiokafka").addFilter(_RateLimit(30.0))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _logging(args.verbose)
    command: Callable[[argparse.Namespace], int] = args.run
    try:
        resolve(args)
        return command(args)
    except USER_ERRORS as exc:
        if args.verbose:
            log.exception("%s", type(exc).__name__)
        print(f"kaspwatch: error: {RedactSecrets.scrub(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
