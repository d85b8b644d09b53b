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
import random
from dataclasses import dataclass
from typing import Callable, ClassVar, Sequence

from director.dest import Dest


@dataclass(frozen=True, slots=True)
class Flow:
    """What a scheduler may know of the packet that opens a connection."""
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

    def __init__(self, flags: frozenset[str] = frozenset(), *,
                 rng: random.Random | None = None, **options) -> None:
        unknown = set(flags) - self.known_flags
        if unknown:
            raise ValueError(f"scheduler {self.name!r} does not take flags {sorted(unknown)}")
        self.flags = frozenset(flags)
        self.rng = rng or random.Random(0)
        self.options = options
        self.dests: list[Dest] = []

    def update(self, dests: Sequence[Dest]) -> None:
        """The destination list or a weight changed (ip_vs_scheduler.add/del/upd_dest)."""
        self.dests = list(dests)

    def schedule(self, flow: Flow) -> Dest | None:
        raise NotImplementedError


REGISTRY: dict[str, type[Scheduler]] = {}

# Modules imported on first use so each scheduler stays one file.
_MODULES = ("rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq",
            "fo", "ovf", "mh", "twos", "maglev")


def register(cls: type[Scheduler]) -> type[Scheduler]:
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} has no name")
    REGISTRY[cls.name] = cls
    return cls


def _load_all() -> None:
    for mod in _MODULES:
        try:
            importlib.import_module(f"director.sched.{mod}")
        except ModuleNotFoundError as exc:
            if exc.name != f"director.sched.{mod}":
                raise


def names() -> list[str]:
    _load_all()
    return sorted(REGISTRY)


def create(name: str, flags: frozenset[str] | set[str] = frozenset(), **kw) -> Scheduler:
    _load_all()
    try:
        cls = REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown scheduler {name!r} (known: {', '.join(sorted(REGISTRY))})") from None
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
