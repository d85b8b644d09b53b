"""A health check's configuration, and the registry of check kinds (the plug-ins).

A kind is one module of director/health/kinds/, loaded by name when a config
first names it.  At import it calls `register_kind` with its schema keys (the
`health.<kind>` section: type, default, range, doc), a `parse` that turns the
checked values into HealthCheckConfig fields, and its `probe` coroutine.  The
keys every kind shares (interval, timeout, rise, fall, ...) are the schema's
`services.health` section.
"""
from __future__ import annotations

import importlib
import pkgutil
import re
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from schema.core import Key, Reader
from schema.keys import HEALTH, plugin_section, plugins

_C = HEALTH.default


@dataclass(frozen=True)
class HealthCheckConfig:
    kind: str
    interval: float = _C("interval")
    timeout: float = _C("timeout")
    rise: int = _C("rise")
    fall: int = _C("fall")
    port: int | None = None             # probe this port instead of the real server's
    path: str = "/"
    expect_status: tuple[int, ...] = (200,)
    host: str | None = None             # Host header; default the server's addr:port
    payload: bytes = b""
    expect: bytes | None = None         # None: any reply will do
    command: tuple[str, ...] = ()
    action: str = _C("action")
    initial: str = _C("initial")


#: (check, addr, port) -> a one-line detail on success; raises on failure
Probe = Callable[[HealthCheckConfig, str, int], Awaitable[str]]
#: (reader of the check's table, checked values of the kind's keys) -> HealthCheckConfig fields
Parse = Callable[[Reader, dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class Kind:
    name: str
    parse: Parse
    probe: Probe


KINDS: dict[str, Kind] = {}
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


def register_kind(name: str, doc: str, keys: tuple[Key, ...], parse: Parse, probe: Probe) -> Kind:
    plugin_section("health", name, doc, keys)
    KINDS[name] = kind = Kind(name, parse, probe)
    return kind


#: the order kinds are listed in (errors, docs): the simplest first; others follow by name
_LISTED_FIRST = ("tcp", "http", "udp", "command")


def kind_names() -> list[str]:
    from director.health import kinds
    names = {m.name for m in pkgutil.iter_modules(kinds.__path__)} | set(KINDS)
    return sorted(names, key=lambda n: (_LISTED_FIRST.index(n) if n in _LISTED_FIRST
                                        else len(_LISTED_FIRST), n))


def load_kind(name: str) -> Kind:
    got = KINDS.get(name)
    if got is None and isinstance(name, str) and _NAME.match(name) and name in kind_names():
        importlib.import_module(f"director.health.kinds.{name}")
        got = KINDS.get(name)
    if got is None:
        raise LookupError(f"must be one of {', '.join(kind_names())}, got {name!r}")
    return got


def load_all_kinds() -> None:
    for name in kind_names():
        load_kind(name)


def parse_health(table: Any, source: str = "<config>", prefix: str = "health") -> HealthCheckConfig:
    """Validate a health-check sub-table; errors are ConfigError(source, field, problem)."""
    load_all_kinds()        # a key of another kind is named as such, not as a misspelling
    r = Reader(source, prefix, table, HEALTH)
    name = r.take("kind")
    try:
        kind = load_kind(name)
    except LookupError as exc:
        r.fail("kind", str(exc))
    own = plugins("health")[name]
    for other, section in plugins("health").items():
        for key in section:
            if other != name and key.name not in own and key.name in r.table:
                r.fail(key.name, f"only applies to kind = \"{other}\", this check is \"{name}\"")
    common = {k.name: r.take(k) for k in HEALTH if k.name != "kind"}
    if "timeout" not in r.table:
        common["timeout"] = min(HEALTH.default("timeout"), common["interval"])
    own_values = {k.name: r.take(k) for k in own}
    kw = {**common, **kind.parse(r, own_values)}
    r.finish()
    return HealthCheckConfig(kind=name, **kw)
