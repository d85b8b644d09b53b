"""Operator overrides: the weight and drain changes made through the API, pair-wide and durable.

A sans-IO map (service, addr, port) -> Override.  Each entry carries a version, (gen, by):
`gen` is a hybrid logical clock (the larger of "one above every generation this node has
seen" and the wall clock in milliseconds) and `by` the node that made the change.  Both
nodes keep the entry with the larger version, so:

* the newer change wins on both nodes, whichever node it was made on and in whatever order
  the two hear of it (a change made after seeing another always has the larger gen, even
  if the clocks disagree; with no causal link between two changes, the later wall clock
  wins, and equal gens are decided by the node name);
* an explicit clear is an entry too (a tombstone: no weight, no drain), so a node that
  restarts with an old override in its state file, or hears an old message again, does not
  bring a cleared override back: the tombstone's version is larger.

`set_at` (epoch seconds) is shown to the operator and never compared.  Time comes in as an
argument; nothing here reads a clock or a file.  The state file's bytes are made and read
here too (`dumps`, `loads`); writing them is the node wiring's business (tandem/state_file.py).
"""
from __future__ import annotations

import ipaddress
import json
import math
from dataclasses import dataclass
from typing import Iterable

from schema.keys import WEIGHT

Key = tuple[str, str, int]          # (service name, canonical address, port)

#: the state file's format version
FILE_VERSION = 1
MAX_NAME = 256                      # a service name or node name in a file or a message
U64 = (1 << 64) - 1


class BadOverride(ValueError):
    """An override entry (from a file or the peer) that does not make sense."""


def canonical(addr: str) -> str:
    """One spelling per address (`::1`, never `0:0::1`); ValueError if it is none."""
    return str(ipaddress.ip_address(addr.strip("[]")))


def real_name(addr: str, port: int) -> str:
    """addr:port as the API spells it ([v6]:port for IPv6)."""
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


@dataclass(frozen=True, slots=True)
class Override:
    service: str
    addr: str
    port: int
    gen: int                # the hybrid logical clock of the change (ms-scale)
    by: str                 # the node the change was made on
    set_at: float           # epoch seconds, for people
    weight: int | None      # None (with drain False): cleared
    drain: bool = False

    @property
    def key(self) -> Key:
        return (self.service, self.addr, self.port)

    @property
    def version(self) -> tuple[int, str]:
        return (self.gen, self.by)

    @property
    def cleared(self) -> bool:
        return self.weight is None

    @property
    def real(self) -> str:
        return real_name(self.addr, self.port)

    def to_json(self) -> dict | None:
        """What /services shows per real server: null, or the override in force."""
        if self.cleared:
            return None
        return {"weight": self.weight, "drain": self.drain, "set_at": round(self.set_at, 3),
                "by": self.by}

    def describe(self) -> str:
        """One phrase for the log."""
        what = "drain" if self.drain else ("clear" if self.cleared else f"weight {self.weight}")
        return f"{what} of {self.real} in {self.service}"

    # -- the one tuple layout of a file record and a wire entry ------------------------------

    def to_list(self) -> list:
        return [self.service, self.addr, self.port, self.gen, self.by, float(self.set_at),
                self.weight, self.drain]

    @classmethod
    def from_list(cls, v) -> "Override":
        """Checked: raises BadOverride for anything that is not a well-formed entry."""
        if type(v) is not list or len(v) != 8:
            raise BadOverride("an entry is a list of 8 fields")
        service, addr, port, gen, by, set_at, weight, drain = v
        if type(service) is not str or not 1 <= len(service) <= MAX_NAME:
            raise BadOverride("service must be a name")
        if type(addr) is not str or len(addr) > 64:
            raise BadOverride("addr must be an address")
        try:
            if canonical(addr) != addr:
                raise BadOverride("addr is not in canonical form")
        except ValueError:
            raise BadOverride("addr must be an address") from None
        if type(port) is not int or not 1 <= port <= 65535:
            raise BadOverride("port must be 1..65535")
        if type(gen) is not int or not 0 <= gen <= U64:
            raise BadOverride("gen must be 0..2**64-1")
        if type(by) is not str or not 1 <= len(by) <= MAX_NAME:
            raise BadOverride("by must be a node name")
        if type(set_at) not in (int, float) or not math.isfinite(set_at):
            raise BadOverride("set_at must be a number")
        if weight is not None and (type(weight) is not int or WEIGHT.check(weight)):
            raise BadOverride(f"weight must be null or {WEIGHT.range_text()}")
        if type(drain) is not bool or (drain and weight != 0):
            raise BadOverride("drain must be a boolean, and true only with weight 0")
        return cls(service, addr, port, gen, by, float(set_at), weight, drain)


class Overrides:
    """The pair's operator overrides as this node knows them."""

    def __init__(self, node: str, entries: Iterable[Override] = ()) -> None:
        self.node = node
        self._map: dict[Key, Override] = {}
        self.gen = 0                    # the largest generation seen
        self.merge(entries)

    def __len__(self) -> int:
        return len(self._map)

    def get(self, key: Key) -> Override | None:
        """The override in force for a real server (a cleared one is none)."""
        o = self._map.get(key)
        return None if o is None or o.cleared else o

    def active(self) -> list[Override]:
        return [o for o in self._map.values() if not o.cleared]

    def entries(self) -> list[Override]:
        """Every entry, clears included: what the peer and the state file get."""
        return list(self._map.values())

    def _next(self, now_wall: float) -> int:
        self.gen = max(self.gen + 1, int(now_wall * 1000))
        return self.gen

    def set(self, key: Key, weight: int, now_wall: float, *, drain: bool = False) -> Override:
        """A change made on this node: always the newest."""
        if drain:
            weight = 0
        o = Override(*key, self._next(now_wall), self.node, now_wall, weight, drain)
        self._map[key] = o
        return o

    def clear(self, key: Key, now_wall: float) -> tuple[Override, bool]:
        """Clear on this node: a tombstone, newer than anything seen; and whether an
        override was in force."""
        was = self.get(key) is not None
        o = Override(*key, self._next(now_wall), self.node, now_wall, None, False)
        self._map[key] = o
        return o, was

    def merge(self, entries: Iterable[Override]) -> list[tuple[Override | None, Override]]:
        """Take the entries that are newer than ours (from the peer or a file); return
        (old, new) for each one that changed something."""
        changed = []
        for o in entries:
            self.gen = max(self.gen, o.gen)
            old = self._map.get(o.key)
            if old is not None and old.version >= o.version:
                continue
            self._map[o.key] = o
            changed.append((old, o))
        return changed

    # -- the state file's bytes ----------------------------------------------------------------

    def dumps(self) -> bytes:
        return json.dumps({"version": FILE_VERSION, "node": self.node,
                           "overrides": [o.to_list() for o in self._map.values()]},
                          indent=1).encode() + b"\n"


def loads(data: bytes) -> list[Override]:
    """The entries of a state file; BadOverride says what is wrong with it."""
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadOverride(f"not JSON ({exc})") from None
    if not isinstance(obj, dict) or obj.get("version") != FILE_VERSION:
        raise BadOverride(f"not a version {FILE_VERSION} overrides file")
    items = obj.get("overrides")
    if not isinstance(items, list):
        raise BadOverride("overrides must be a list")
    out = []
    for i, v in enumerate(items):
        try:
            out.append(Override.from_list(v))
        except BadOverride as exc:
            raise BadOverride(f"overrides[{i}]: {exc}") from None
    return out
