#!/usr/bin/env python3
"""Rewrite the generated reference tables of docs/configuration.md from the config schema.

    .venv/bin/python scripts/config_docs.py          # rewrite the file
    .venv/bin/python scripts/config_docs.py --check  # exit 1 if it is stale
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "configuration.md"


def rendered() -> str:
    sys.path.insert(0, str(ROOT))
    from director import health, sched
    from schema import docs
    health.load_all_kinds()     # each kind registers its keys when it loads
    sched.load_all()
    return docs.render()


def main(argv: list[str]) -> int:
    from_schema = rendered()
    from schema import docs
    text = DOC.read_text()
    if "--check" in argv:
        if docs.generated_part(text) != from_schema:
            print(f"{DOC} is stale: run scripts/config_docs.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(docs.splice(text, from_schema))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
