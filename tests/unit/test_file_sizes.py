"""Files stay small: no module of the product's packages runs past LIMIT lines unless its
docstring says why.

The project keeps files around 400 lines, one obvious place for each thing.  A file may
stay longer when splitting it would separate what has to be read together; it then says
so in its module docstring, on a line of its own starting with "Size:" followed by the
reason (e.g. "Size: one wire format, its constants and codec kept together").  Lines are
counted as `wc -l` counts them.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: the packages held to the limit
PACKAGES = ("proto", "director", "syncd", "ha", "schema", "tandem", "lab")

#: more lines than this need a "Size:" reason (~400, with a little slack for a fix)
LIMIT = 420

#: a reason is a few words at least, not a bare "Size:"
MIN_REASON = 20


def line_count(path: Path) -> int:
    return path.read_bytes().count(b"\n")


def size_reason(source: str) -> str | None:
    """The text after "Size:" on a line of the module docstring, if there is one."""
    doc = ast.get_docstring(ast.parse(source)) or ""
    for line in doc.splitlines():
        line = line.strip()
        if line.startswith("Size:"):
            return line[len("Size:"):].strip()
    return None


def oversized(root: Path = ROOT) -> list[str]:
    """Every file over LIMIT lines without a reason, as `path: N lines (why not)`."""
    bad = []
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            n = line_count(path)
            if n <= LIMIT:
                continue
            reason = size_reason(path.read_text())
            rel = path.relative_to(root)
            if reason is None:
                bad.append(f"{rel}: {n} lines, and no 'Size:' line in its docstring")
            elif len(reason) < MIN_REASON:
                bad.append(f"{rel}: {n} lines, and its 'Size:' reason is too short: {reason!r}")
    return bad


def test_no_file_over_the_limit_without_a_reason():
    bad = oversized()
    assert not bad, (f"files over {LIMIT} lines: split them along their concerns, or say why "
                     f"not on a docstring line starting with 'Size:'\n  " + "\n  ".join(bad))


def test_the_check_sees_a_long_file_and_accepts_a_stated_reason(tmp_path):
    """The check itself: a long file without a reason is named, with one it passes, and a
    'Size:' outside the module docstring (a comment, a later string) does not count."""
    body = "x = 1\n" * (LIMIT + 5)
    pkg = tmp_path / "director"
    pkg.mkdir()
    (pkg / "short.py").write_text('"""Short."""\n' + "x = 1\n" * 10)
    (pkg / "long.py").write_text('"""A long module."""\n# Size: only a comment\n' + body)
    (pkg / "kept.py").write_text('"""A long module.\n\nSize: one wire format and its codec, read '
                                 'together.\n"""\n' + body)
    (pkg / "terse.py").write_text('"""A long module.\n\nSize: big\n"""\n' + body)
    found = oversized(tmp_path)
    assert [line.split(":")[0] for line in found] == ["director/long.py", "director/terse.py"]
    assert "no 'Size:' line" in found[0] and "too short" in found[1]
    assert size_reason('"""Doc.\n\n    Size: indented is fine, still the docstring.\n"""') \
        == "indented is fine, still the docstring."
