"""The pack in the peers' formats: ``kaspwatch indicators export --format FORMAT``.

Each format is one small module with ``write(view, out_name) -> {file name: text}``; the first
file is the one ``--out`` names (or stdout), any others are companions written next to it (the
Zeek suffix script). Every writer is deterministic: the same packs give byte-identical files.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

from sensor.rules.export import rpz, suricata, tabular, zeek
from sensor.rules.export.view import PackView
from sensor.rules.indicators import Pack

__all__ = ["FORMATS", "PackView", "export"]

Writer = Callable[[PackView, str], dict[str, str]]

FORMATS: Final[dict[str, Writer]] = {
    "suricata": suricata.write,
    "zeek-intel": zeek.write,
    "rpz": rpz.write,
    "csv": tabular.write_csv,
    "json": tabular.write_json,
}

DEFAULT_NAMES: Final = {
    "suricata": "kaspwatch.rules",
    "zeek-intel": "kaspwatch.intel",
    "rpz": "rpz.kaspwatch.zone",
    "csv": "kaspwatch-indicators.csv",
    "json": "kaspwatch-indicators.json",
}


def export(
    packs: Sequence[Pack], fmt: str, out_name: str | None = None, rpz_action: str = "nxdomain"
) -> dict[str, str]:
    """The files of ``fmt`` for the layered ``packs``, main file first."""
    view, name = PackView.of(packs), out_name or DEFAULT_NAMES[fmt]
    if fmt == "rpz":
        return rpz.write(view, name, rpz_action)
    return FORMATS[fmt](view, name)
