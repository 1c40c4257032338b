"""Reading the project's YAML files (packs, allowlists, configuration) safely, with lines.

Safe loading only; every mapping remembers its line as ``__line__`` so validation errors
can say ``file:line: message``; every failure to read or parse is ``YamlError`` (or the
caller's subclass: packs, allowlists, asset maps, configuration) naming the file.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any


class YamlError(ValueError):
    """A YAML file of the project is invalid. ``str()`` is ``file:line: message``."""


@functools.cache
def line_loader() -> Any:
    """The safe loader (libyaml when present) that records each mapping's line as
    ``__line__``. Made, and PyYAML imported, on the first file read: a scan whose packs
    come from the cache (sensor/rules/packcache.py) never needs it."""
    import yaml

    base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    def construct_mapping(loader: Any, node: yaml.MappingNode) -> dict[str, Any]:
        mapping = loader.construct_mapping(node, deep=True)
        mapping["__line__"] = node.start_mark.line + 1
        return mapping  # type: ignore[no-any-return]

    loader: Any = type("LineLoader", (base,), {})
    loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    return loader


def load_yaml(path: str | Path, error: type[YamlError] = YamlError) -> tuple[Any, str]:
    """(document, text) of a YAML file; ``error`` names the file (and line) on failure."""
    where = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{where}: no such file") from None
    except IsADirectoryError:
        raise error(f"{where}: is a directory") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{where}: cannot read: {exc}") from None
    import yaml

    try:
        return yaml.load(text, Loader=line_loader()), text  # noqa: S506 - a SafeLoader
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else 0
        raise error(f"{where}:{line}: YAML syntax: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise error(f"{where}: YAML: {exc}") from None
