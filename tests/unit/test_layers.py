"""The package order holds and nothing imports in a circle.

Layers, lowest first (a module may import its own layer or a lower one):

    0  proto                           wire formats and constants
    1  director, syncd, ha, schema     the sans-IO cores and their adapters
    2  tandem                          the node wiring
    3  tandem.cli, lab, bench          what drives a node

On top of the order: no cycle between packages (director <-> syncd, say), and no
cycle between files.  Imports are read from the source with `ast`, wherever they
stand: a function-level import is a dependency too.  One under `if TYPE_CHECKING:`
is never executed, so it makes no cycle, but it must still respect the order.  A
failure names every offending import with its file and line.
"""
from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: the unit a module belongs to -> its layer; `tandem.cli` is a unit of its own (the CLI)
LAYERS = {
    "proto": 0,
    "director": 1, "syncd": 1, "ha": 1, "schema": 1,
    "tandem": 2,
    "tandem.cli": 3, "lab": 3, "bench": 3,
}
PACKAGES = sorted({unit.split(".")[0] for unit in LAYERS})


@dataclass(frozen=True)
class Import:
    source: str     # importing module
    target: str     # imported module (one of ours)
    path: str       # file, relative to the repository
    line: int
    typing_only: bool = False   # under `if TYPE_CHECKING:`: never executed

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.source} imports {self.target}"


def module_files() -> dict[str, Path]:
    """Every module of the product's packages, by dotted name."""
    mods = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            mods[".".join(parts)] = path
    return mods


def unit_of(module: str) -> str:
    """The longest LAYERS entry that is `module` or a package holding it."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        name = ".".join(parts[:n])
        if name in LAYERS:
            return name
    raise KeyError(module)


def _resolve(name: str, mods: dict[str, Path]) -> str | None:
    """The module of ours `name` refers to (itself, or the package holding it), if any."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in mods:
            return candidate
    return None


def imports_of(module: str, source: str, rel: str, mods: dict[str, Path]) -> list[Import]:
    """The imports of ours in `source` (the text of `module`, file `rel`)."""
    tree = ast.parse(source, filename=rel)
    is_package = rel.endswith("__init__.py")
    found = []
    typing_only = {id(n) for block in ast.walk(tree)
                   if isinstance(block, ast.If) and _is_type_checking(block)
                   for stmt in block.body for n in ast.walk(stmt)}

    def add(target: str | None, node: ast.stmt) -> None:
        if target is not None and target != module:
            found.append(Import(module, target, rel, node.lineno, id(node) in typing_only))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(_resolve(alias.name, mods), node)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            for alias in node.names:
                # `from pkg import mod` imports the submodule; `from mod import name` the module
                add(_resolve(f"{origin}.{alias.name}", mods) or _resolve(origin, mods), node)
    return found


def _is_type_checking(node: ast.If) -> bool:
    """`if TYPE_CHECKING:` or `if typing.TYPE_CHECKING:`."""
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


@functools.cache
def all_imports() -> tuple[Import, ...]:
    mods = module_files()
    return tuple(imp for mod, path in mods.items()
            for imp in imports_of(mod, path.read_text(), str(path.relative_to(ROOT)), mods))


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan), each
    as one cycle through it, so a failure shows a concrete loop."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return [_loop_in(comp, edges) for comp in components]


def _loop_in(comp: list[str], edges: dict[str, set[str]]) -> list[str]:
    """A shortest loop from comp[0] back to itself inside the component (BFS)."""
    inside, start = set(comp), comp[0]
    prev: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(edges.get(v, set()) & inside):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(prev[path[-1]])
                    return path[::-1] + [start]
                if w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    return comp + [start]       # not reached: every member of a component lies on a loop


def _explain(loop: list[str], imports: list[Import], key) -> str:
    lines = [" -> ".join(loop)]
    for a, b in zip(loop, loop[1:]):
        edge = sorted({f"    {imp}" for imp in imports
                       if key(imp.source) == a and key(imp.target) == b})
        lines += edge[:5] + ([f"    ... and {len(edge) - 5} more"] if len(edge) > 5 else [])
    return "\n".join(lines)


def test_the_checker_reads_imports_as_python_does():
    """The reader itself: absolute, relative, submodule and function-level imports
    resolve to our modules, others are left out; cycles are found as loops."""
    mods = {name: ROOT for name in ("proto", "proto.consts", "proto.sync", "director",
                                    "director.conn", "director.sched", "director.probe")}
    source = ("import os\nfrom proto import consts\nfrom .conn import Conn\n"
              "from . import sched\ndef f():\n    import proto.consts as c\n"
              "from proto.consts import TCP\nfrom director import probe\n"
              "if TYPE_CHECKING:\n    from proto import sync\n")
    found = sorted((i.target, i.line, i.typing_only)
                   for i in imports_of("director.probe", source, "director/probe.py", mods))
    assert found == [("director.conn", 3, False), ("director.sched", 4, False),
                     ("proto.consts", 2, False), ("proto.consts", 6, False),
                     ("proto.consts", 7, False), ("proto.sync", 10, True)]
    assert unit_of("tandem.cli") == "tandem.cli" and unit_of("tandem.node") == "tandem"
    assert unit_of("director.health.tcp") == "director"
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_every_module_is_in_a_layer():
    assert {unit_of(m) for m in module_files()} <= set(LAYERS)


def test_no_import_points_up():
    upward = [imp for imp in all_imports()
              if LAYERS[unit_of(imp.target)] > LAYERS[unit_of(imp.source)]]
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(map(str, upward))


def test_no_cycle_between_packages():
    imports = [imp for imp in all_imports() if not imp.typing_only]
    edges: dict[str, set[str]] = {}
    for imp in imports:
        a, b = unit_of(imp.source), unit_of(imp.target)
        if a != b:
            edges.setdefault(a, set()).add(b)
    found = cycles(edges)
    assert not found, "package cycles:\n" + "\n".join(_explain(c, imports, unit_of) for c in found)


def test_no_cycle_between_modules():
    imports = [imp for imp in all_imports() if not imp.typing_only]
    edges: dict[str, set[str]] = {}
    for imp in imports:
        edges.setdefault(imp.source, set()).add(imp.target)
    found = cycles(edges)
    assert not found, "module cycles:\n" + "\n".join(_explain(c, imports, str) for c in found)
