"""`make lint`'s size rule: no production module over 500 lines, so each can be read in one
sitting (import-linter checks the layers; this checks the rooms' size)."""

from __future__ import annotations

import sys
from pathlib import Path

LIMIT = 500
PACKAGES = ("kaspwatch", "sensor", "consumers")


def main() -> int:
    root = Path(__file__).resolve().parent.parent
    over = [
        (n, path)
        for pkg in PACKAGES
        for path in sorted((root / pkg).rglob("*.py"))
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > LIMIT
    ]
    for n, path in over:
        print(f"{path.relative_to(root)}: {n} lines, over {LIMIT}: split it by stage or concern")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
