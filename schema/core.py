"""The machinery of the config schema: keys, sections, the checked reader, the TOML writer.

Nothing here (or anywhere in `schema`) imports runtime code: the cores and the
plug-ins (health-check kinds, schedulers) import this package and register
their keys into it, never the other way round.
"""
from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, NoReturn


class ConfigError(ValueError):
    """A bad config: names the file, the field and the problem, never a secret's value."""

    def __init__(self, source: str, field: str, problem: str) -> None:
        super().__init__(f"{source}: {field}: {problem}")
        self.source, self.field, self.problem = source, field, problem


class FieldError(ValueError):
    """A problem of one key found after the file was read (when the node starts, on this
    host: an address it cannot listen on, an interface without an address).  Whoever knows
    the file reports it as `FILE: FIELD: PROBLEM`; `path` is the key's full path."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path, self.problem = path, problem


def os_reason(exc: OSError) -> str:
    """An OSError in words: the system's text for its errno (uvloop's strerror also
    carries a Python tuple of the address)."""
    import os
    return os.strerror(exc.errno) if exc.errno else str(exc)


class _Required:
    def __repr__(self) -> str:
        return "required"


#: the default of a key that must be given
REQUIRED: Any = _Required()

#: value types a key may declare; "address" is an IP address written as a string
ADDRESS = "address"
_TYPE_NAMES = {int: "int", float: "float", bool: "bool", str: "str", list: "list",
               dict: "table", ADDRESS: "IP address"}


@dataclass(frozen=True)
class Key:
    """One config key, declared once: everything else reads it from here."""
    name: str
    type: Any                       # int float bool str list dict ADDRESS, or a tuple of them
    default: Any = REQUIRED
    doc: str = ""
    unit: str = ""                  # "s", "bytes", "entries/s", ...
    lo: float | None = None         # inclusive bounds, for numbers
    hi: float | None = None
    above: float | None = None      # exclusive lower bound ("> 0")
    choices: tuple = ()             # the only values allowed (str or int)
    secret: bool = False            # its value never appears in an error, a repr or a log
    #: a change takes effect only on a restart (a reload that changes it is refused)
    restart: bool = False
    #: how the default reads in the docs when it is not a plain value
    shown: str | None = None

    @property
    def types(self) -> tuple:
        return self.type if isinstance(self.type, tuple) else (self.type,)

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def type_name(self) -> str:
        return " or ".join(_TYPE_NAMES.get(t, getattr(t, "__name__", str(t))) for t in self.types)

    def range_text(self) -> str:
        if self.choices:
            return " ".join(map(str, self.choices))
        lo = self.lo if self.above is None else None
        if lo is not None and self.hi is not None:
            return f"{_num(lo)}..{_num(self.hi)}"
        if lo is not None:
            return f">= {_num(lo)}"
        if self.above is not None:
            return f"> {_num(self.above)}" + (f", <= {_num(self.hi)}" if self.hi is not None else "")
        if self.hi is not None:
            return f"<= {_num(self.hi)}"
        return ""

    def default_text(self) -> str:
        if self.shown is not None:
            return self.shown
        if self.required:
            return "required"
        return toml_value(self.default) if self.default is not None else "none"

    def check(self, value: Any) -> str | None:
        """Why `value` is not acceptable (None: it is).  Never quotes a secret."""
        types = self.types
        if isinstance(value, bool) and bool not in types:
            return f"must be {self.type_name()}, not a boolean"
        ok = any(_is(value, t) for t in types)
        if not ok and ADDRESS in types and isinstance(value, str) and not self.secret:
            return f"{value!r} is not an IP address"
        if not ok:
            return f"must be {self.type_name()}, got {_TYPE_NAMES.get(type(value), type(value).__name__)}"
        if self.secret:
            return None
        if self.choices and value not in self.choices:
            return f"must be one of {', '.join(map(str, self.choices))}, got {value!r}"
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if isinstance(value, float) and not math.isfinite(value):
                return f"must be a finite number, got {value}"
            if self.above is not None and not value > self.above:
                return f"must be > {_num(self.above)}, got {value}"
            if self.lo is not None and value < self.lo:
                return f"must be >= {_num(self.lo)}, got {value}"
            if self.hi is not None and value > self.hi:
                return f"must be <= {_num(self.hi)}, got {value}"
        return None


def _is(value: Any, t: Any) -> bool:
    if t is ADDRESS:
        if not isinstance(value, str):
            return False
        try:
            ipaddress.ip_address(value)
        except ValueError:
            return False
        return True
    if t is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, t)


def _num(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


class Section:
    """A table of the config file: its keys in declaration order."""

    def __init__(self, path: str, doc: str = "", *, restart: bool = False,
                 keys: Iterable[Key] = ()) -> None:
        self.path, self.doc = path, doc
        #: a change to this section takes effect only on a restart (a reload refuses it)
        self.restart = restart
        self.keys: dict[str, Key] = {}
        for k in keys:
            self.add(k)

    def add(self, key: Key) -> Key:
        if key.name in self.keys:
            raise ValueError(f"[{self.path}] {key.name} is declared twice")
        self.keys[key.name] = key
        return key

    def __getitem__(self, name: str) -> Key:
        return self.keys[name]

    def __contains__(self, name: str) -> bool:
        return name in self.keys

    def __iter__(self) -> Iterator[Key]:
        return iter(self.keys.values())

    def default(self, name: str) -> Any:
        return self.keys[name].default

    def defaults(self) -> dict[str, Any]:
        """Every key's default (required keys left out)."""
        return {k.name: k.default for k in self if not k.required}


class Reader:
    """Checked access to one table of the document, naming the field on error."""

    def __init__(self, source: str, prefix: str, table: Any, section: Section) -> None:
        self.source, self.prefix, self.section = source, prefix, section
        if not isinstance(table, dict):
            self.fail("", "must be a table")
        self.table = table
        self.used: set[str] = set()

    def field(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix and key else (self.prefix or key)

    def fail(self, key: str, problem: str) -> NoReturn:
        raise ConfigError(self.source, self.field(key), problem)

    def has(self, key: str) -> bool:
        return key in self.table

    def take(self, key: Key | str, default: Any = ...) -> Any:
        """The value of a declared key (its default when absent), checked against
        its type and range; ints are accepted where a float is declared."""
        if isinstance(key, str):
            key = self.section[key]
        self.used.add(key.name)
        if key.name not in self.table:
            default = key.default if default is ... else default
            if default is REQUIRED:
                self.fail(key.name, "is required" + (f" ({key.doc})" if key.doc else ""))
            return default
        value = self.table[key.name]
        problem = key.check(value)
        if problem:
            self.fail(key.name, problem)
        if float in key.types and int not in key.types and isinstance(value, int):
            value = float(value)
        return value

    def get(self, name: str, kind: Any, default: Any = REQUIRED, *, lo=None, hi=None,
            secret: bool = False) -> Any:
        """An ad-hoc key (one not worth declaring, e.g. an item of a list)."""
        return self.take(Key(name, kind, default, lo=lo, hi=hi, secret=secret))

    def choice(self, name: str, options: Iterable[str], default: Any = REQUIRED) -> str:
        return self.take(Key(name, str, default, choices=tuple(options)))

    def address(self, name: str, value: Any = ..., family: int | None = None) -> str:
        raw = self.get(name, str) if value is ... else value
        if not isinstance(raw, str):
            self.fail(name, f"must be an IP address string, got {type(raw).__name__}")
        try:
            ip = ipaddress.ip_address(raw)
        except ValueError:
            self.fail(name, f"{raw!r} is not an IP address")
        if family and ip.version != family:
            self.fail(name, f"{raw} is IPv{ip.version}, the service is IPv{family}")
        return str(ip)

    def finish(self) -> None:
        unknown = sorted(set(self.table) - self.used)
        if unknown:
            self.fail(unknown[0], "unknown key (misspelt?)")


# -- the one TOML writer ---------------------------------------------------------------------

def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"cannot write {v} to TOML")
        return repr(v)
    if isinstance(v, str):
        return '"' + "".join(_ESCAPES.get(c, c if c >= " " else f"\\u{ord(c):04x}") for c in v) + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_key(k)} = {toml_value(x)}" for k, x in v.items()
                               if x is not None) + "}"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r", "\x7f": "\\u007f"}


def _key(k: str) -> str:
    return k if k and all(c.isalnum() or c in "_-" for c in k) and k.isascii() else toml_value(k)


def _is_table_array(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and bool(v) and all(isinstance(x, dict) for x in v)


def _table(lines: list[str], path: str, table: dict, array: bool = False) -> None:
    lines.append("")
    lines.append(f"[[{path}]]" if array else f"[{path}]")
    for k, v in table.items():
        if v is not None and not isinstance(v, dict) and not _is_table_array(v):
            lines.append(f"{_key(k)} = {toml_value(v)}")
    for k, v in table.items():
        if isinstance(v, dict):
            _table(lines, f"{path}.{_key(k)}", v)
        elif _is_table_array(v):
            for item in v:
                _table(lines, f"{path}.{_key(k)}", item, array=True)


def dump_toml(doc: dict[str, Any]) -> str:
    """A node config (or any document of tables, arrays of tables and scalars) as TOML.

    A None value is left out, so the node's default applies."""
    lines: list[str] = []
    for k, v in doc.items():
        if v is not None and not isinstance(v, dict) and not _is_table_array(v):
            lines.append(f"{_key(k)} = {toml_value(v)}")
    for k, v in doc.items():
        if isinstance(v, dict):
            _table(lines, _key(k), v)
        elif _is_table_array(v):
            for item in v:
                _table(lines, _key(k), item, array=True)
    return "\n".join(lines).lstrip("\n") + "\n"
