"""IPVS schedulers: one small module per scheduler, registered by name.

Interface (as struct ip_vs_scheduler): a scheduler is built with the service's
scheduler flags, told of every change to the destination list with `update`,
and asked for one destination per new connection with `schedule`.  It reads
only the Dest fields (weight, active, inactive, overloaded) and the flow; it
never changes a Dest.  Returning None refuses the connection (the engine
counts it and drops the packet).

Time and randomness are never read here: a scheduler that needs them gets them
injected (`flow.now`, the `rng` argument).
"""
from __future__ import annotations

import importlib
import pkgutil
import random
import re
import sys
from typing import Callable, ClassVar, NamedTuple, Sequence

from director.dest import Dest
from schema.core import Key, Section
from schema.keys import plugin_section, plugins


class Flow(NamedTuple):
    """What a scheduler may know of the packet that opens a connection.

    Immutable, as the frozen dataclass it was, but a named tuple: one is made for every
    new connection, and a frozen dataclass's __init__ (an object.__setattr__ per field)
    cost 1.1 us of the ~40 us a short TCP connection takes in the engine; this 0.3."""
    proto: int          # 6 TCP, 17 UDP
    src: bytes          # client address, packed (4 or 16 bytes)
    sport: int
    dst: bytes          # VIP, packed
    dport: int
    now: float = 0.0


class Scheduler:
    """Base class.  Subclasses set `name` and implement `schedule`."""
    name: ClassVar[str] = ""
    #: flags this scheduler understands (ipvsadm -b names)
    known_flags: ClassVar[frozenset[str]] = frozenset()
    #: its options, settable per service as `scheduler_options` (declared into the
    #: config schema by @register; defaults and ranges are read from there)
    option_keys: ClassVar[tuple[Key, ...]] = ()

    def __init__(self, flags: frozenset[str] = frozenset(), *,
                 rng: random.Random | None = None, **options) -> None:
        unknown = set(flags) - self.known_flags
        if unknown:
            raise ValueError(f"scheduler {self.name!r} does not take flags {sorted(unknown)}")
        self.flags = frozenset(flags)
        self.rng = rng or random.Random(0)
        declared = {k.name: k for k in self.option_keys}
        for opt, value in options.items():
            key = declared.get(opt)
            if key is None:
                raise ValueError(f"scheduler {self.name!r} has no option {opt!r}"
                                 f" (it takes: {', '.join(declared) or 'none'})")
            problem = key.check(value)
            if problem:
                raise ValueError(f"{self.name} {opt} {problem}")
        #: every option, given or default
        self.options = {**{k.name: k.default for k in self.option_keys}, **options}
        self.dests: list[Dest] = []

    def update(self, dests: Sequence[Dest]) -> None:
        """The destination list or a weight changed (ip_vs_scheduler.add/del/upd_dest)."""
        self.dests = list(dests)

    def schedule(self, flow: Flow) -> Dest | None:
        raise NotImplementedError


REGISTRY: dict[str, type[Scheduler]] = {}

#: a scheduler's name is its module's: director/sched/<name>.py, imported on first use
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


def register(cls: type[Scheduler]) -> type[Scheduler]:
    """Class decorator: the scheduler `cls.name`, with its options declared in the
    config schema (section scheduler.<name>) so the config reader and the docs know them."""
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} has no name")
    REGISTRY[cls.name] = cls
    doc = (sys.modules[cls.__module__].__doc__ or cls.name).strip().splitlines()[0]
    plugin_section("scheduler", cls.name, doc, cls.option_keys)
    return cls


def load(name: str) -> type[Scheduler]:
    """The scheduler class called `name`, importing its module on first use."""
    cls = REGISTRY.get(name)
    if cls is not None:
        return cls
    if isinstance(name, str) and _NAME.match(name) and name in _module_names():
        importlib.import_module(f"{__name__}.{name}")
        cls = REGISTRY.get(name)
        if cls is not None:
            return cls
    raise LookupError(f"unknown scheduler {name!r} (known: {', '.join(names())})")


def _module_names() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def names() -> list[str]:
    """Every scheduler that can be loaded (the modules of this package)."""
    return sorted(set(_module_names()) | set(REGISTRY))


def options(name: str) -> Section:
    """The schema section of the scheduler's options (loads the scheduler)."""
    cls = load(name)
    return plugins("scheduler")[cls.name]


def load_all() -> None:
    """Import every scheduler (the docs generator lists them all)."""
    for n in _module_names():
        load(n)


def create(name: str, flags: frozenset[str] | set[str] = frozenset(), **kw) -> Scheduler:
    try:
        cls = load(name)
    except LookupError as exc:
        raise ValueError(str(exc)) from None
    return cls(frozenset(flags), **kw)


#: The multiplicative hash constant IPVS uses in dh, sh, lblc and lblcr
#: (2654435761 = 0x9E3779B1, a prime near 2^32 / golden ratio).
GOLDEN_PRIME = 2654435761


def fold_addr(addr: bytes) -> int:
    """ntohl(addr_fold) as the IPVS hash functions compute it.

    IPv4: the address as a host-order integer.  IPv6: the four 32-bit words
    XORed together (XOR commutes with the byte swap, so folding the big-endian
    words gives the same number as ntohl of the folded network-order word).
    """
    if len(addr) == 4:
        return int.from_bytes(addr, "big")
    if len(addr) == 16:
        w = int.from_bytes(addr, "big")
        return ((w >> 96) ^ (w >> 64) ^ (w >> 32) ^ w) & 0xFFFFFFFF
    raise ValueError(f"address must be 4 or 16 bytes, not {len(addr)}")


def mult_hash(addr: bytes, mask: int) -> int:
    """(ntohl(addr_fold) * 2654435761) & mask: ip_vs_dh/lblc/lblcr_hashkey."""
    return (fold_addr(addr) * GOLDEN_PRIME) & mask


def usable(d: Dest) -> bool:
    """Weight > 0 and not OVERLOAD: the test almost every kernel scheduler applies."""
    return d.weight > 0 and not d.overloaded


def least(dests: Sequence[Dest], cost: Callable[[Dest], int]) -> Dest | None:
    """Minimise cost(d)/weight(d) by cross-multiplication, first in list wins ties.

    The shape of ip_vs_wlc_schedule, shared by wlc, sed, lblc and lblcr.  The
    kernel's second loop skips only OVERLOAD dests, not weight-0 ones, but a
    weight-0 dest can never win `best_cost * 0 > cost * best.weight` with
    non-negative costs, so skipping it here gives the same answer.
    """
    best = None
    for d in dests:
        if not usable(d):
            continue
        if best is None:
            best, best_cost = d, cost(d)
            continue
        c = cost(d)
        if best_cost * d.weight > c * best.weight:
            best, best_cost = d, c
    return best


def hashed_pick(table: Sequence, slot: Callable[..., int], flow: Flow, size: int,
                fallback: bool, dests: Sequence[Dest]) -> Dest | None:
    """The sh/mh lookup: the flow's own bucket; with the fallback flag, re-hash
    with offsets ihash+i (i = 0..size-1) until a usable dest turns up, as
    ip_vs_sh and ip_vs_mh both do.  `slot(flow, offset)` hashes into the table."""
    ihash = slot(flow, 0)
    d = table[ihash]
    if d is None:
        return None
    if usable(d):
        return d
    # with no usable dest at all the kernel's loop ends in NULL after `size`
    # misses; that is certain, so skip them
    if not fallback or not any(usable(x) for x in dests):
        return None
    for off in range(size):
        d = table[slot(flow, (off + ihash) % size)]
        if d is not None and usable(d):
            return d
    return None
