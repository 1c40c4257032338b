"""The ``kaspwatch`` command line: one module per command, each with ``add_arguments`` (its
flags) and ``run(args) -> exit status``; ``COMMANDS`` lists them.

Only the module of the command being run is imported (``scan`` never loads asyncio,
prometheus_client or the consumers), the way mitmproxy loads only the addons in use;
``--help`` without a command lists them all from ``COMMANDS`` alone.

``main`` parses, settles every option from flags, the configuration file and the
environment (``kaspwatch.cli.config.resolve``), and runs the command. Bad input of any
kind is one line on stderr naming the place, exit 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence

from kaspwatch import __version__
from kaspwatch.bus.security import RedactSecrets
from kaspwatch.cli.config import resolve

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_USAGE = 2

# name -> one line of help, in the order ``kaspwatch --help`` lists them; the module is
# kaspwatch.cli.<name>
COMMANDS: dict[str, str] = {
    "scan": "scan captures offline and print hits as NDJSON or a table",
    "sense": "run the sensor and publish hits to the bus",
    "alerts": "consume hits, raise alerts to every configured sink",
    "metrics": "consume hits and serve Prometheus metrics",
    "run": "embedded mode: sensor and consumers in one process",
    "indicators": "check, explain, list and export indicator packs",
    "store": "consume hits into the incident-response store",
    "query": "ask the store: hosts, host IP, name, dns, after-ban",
    "api": "serve the store's queries as a read-only HTTP JSON API",
}
# errors that are the user's input (a file, a flag, a URL, an unreachable bus): one line.
# (module, class) and looked up in sys.modules only when something was raised: an error
# class whose module was never imported cannot have been raised, and importing them all
# up front would load asyncio, prometheus_client and the store into ``scan``.
USER_ERRORS: tuple[tuple[str, str], ...] = (
    ("sensor.sources.base", "CaptureError"),
    ("kaspwatch.yamlfile", "YamlError"),
    ("kaspwatch.bus", "BusError"),
    ("kaspwatch.bus.spool", "SpoolError"),
    ("consumers.store.base", "StoreError"),
    ("consumers.alerts.sinks", "SinkOptionError"),
)

log = logging.getLogger("kaspwatch")


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` is one of ``USER_ERRORS`` (of a module already imported)."""
    for module, name in USER_ERRORS:
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type) and isinstance(exc, cls):
            return True
    return False


def _command_in(argv: Sequence[str]) -> str | None:
    """The command named in ``argv`` (after the global options), if it is one of ours."""
    it = iter(argv)
    for arg in it:
        if arg == "--config":
            next(it, None)
        elif not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The whole parser; with ``argv``, only the command it names gets its flags (and its
    module imported), every other one is listed with its help line."""
    wanted = _command_in(argv) if argv is not None else None
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
    for name, text in COMMANDS.items():
        p = sub.add_parser(name, help=text)
        if wanted is None or name == wanted:
            module = importlib.import_module(f"kaspwatch.cli.{name}")
            module.add_arguments(p)
            p.set_defaults(run=module.run)
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
    # aiokafka.conn's debug log dumps every request and response, the SASL exchange
    # included: never on, -v or not (RedactSecrets withholds such records structurally too).
    logging.getLogger("aiokafka.conn").setLevel(
        max(logging.INFO, logging.getLogger("aiokafka").level)
    )
    if not verbose:
        logging.getLogger("aiokafka").addFilter(_RateLimit(30.0))


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    _logging(args.verbose)
    command: Callable[[argparse.Namespace], int] = args.run
    try:
        resolve(args)
        return command(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except Exception as exc:
        if not is_user_error(exc):
            raise
        print(f"kaspwatch: error: {RedactSecrets.scrub(str(exc))}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    raise SystemExit(main())
