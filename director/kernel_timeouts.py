"""The `ct timeout` objects of kernel mode: their policies, names and generations.

A kernel-forwarded flow gets IPVS's timeouts (the node's [timeouts]) from one `ct timeout`
object per protocol and family, attached by chain new_flow (director.kernel_rules).  An
object cannot be changed in place, so a change of [timeouts] (a reload, or a restart over
a predecessor's table) adds the next generation of objects; the older ones stay while
flows may use them (docs/kernel-fast-path.md, "Timeouts on reload").
"""
from __future__ import annotations

import math
import re
from typing import Callable, Iterable, Mapping

from director.rules import TABLE

#: conntrack's timeout-policy state -> the [timeouts] key that gives its value.  conntrack
#: names TCP states as the tracker sees them: its SYN_SENT is the client's SYN unanswered
#: (IPVS's SYN_RECV at the director), its SYN_RECV the server's SYN-ACK (IPVS's SYNACK).
TIMEOUT_POLICY = {
    "tcp": {"syn_sent": "tcp_syn_recv", "syn_recv": "tcp_synack",
            "established": "tcp_established", "fin_wait": "tcp_fin_wait",
            "close_wait": "tcp_close_wait", "last_ack": "tcp_last_ack",
            "time_wait": "tcp_time_wait", "close": "tcp_close", "syn_sent2": "tcp_syn_sent"},
    "udp": {"unreplied": "udp", "replied": "udp"},
}


def timeout_name(proto: str, family: int, generation: int = 1) -> str:
    """The `ct timeout` object of a protocol and family: `tcp4`, and `tcp4_2`, ... for the
    policies a reload of [timeouts] adds (an object cannot be changed in place: nft accepts
    the same name with another policy and keeps the old one, measured)."""
    return f"{proto}{family}" + (f"_{generation}" if generation > 1 else "")


_TIMEOUT_NAME = re.compile(r"(?:tcp|udp)[46](?:_([0-9]+))?")


def timeout_generation(name: str) -> int | None:
    """The generation a `ct timeout` object's name gives (`tcp4` 1, `udp6_3` 3); None for
    a name tandem does not make."""
    m = _TIMEOUT_NAME.fullmatch(name)
    return None if m is None else int(m.group(1) or 1)


def policies(timeouts: Mapping[str, float]) -> dict[str, str]:
    """Each protocol's policy text; values in whole seconds (>= 1)."""
    return {proto: ", ".join(f"{state} : {max(1, math.ceil(timeouts[key]))}"
                             for state, key in states.items())
            for proto, states in TIMEOUT_POLICY.items()}


def timeout_objects(timeouts: Mapping[str, float], generation: int = 1) -> list[str]:
    """One `ct timeout` object per protocol and family."""
    out = []
    for proto, policy in policies(timeouts).items():
        for fam, l3 in ((4, "ip"), (6, "ip6")):
            out.append(f"\tct timeout {timeout_name(proto, fam, generation)} {{\n"
                       f"\t\tprotocol {proto}\n\t\tl3proto {l3}\n"
                       f"\t\tpolicy = {{ {policy} }}\n\t}}")
    return out


def delete_timeouts(names: Iterable[str]) -> str:
    """The nft script that deletes these `ct timeout` objects (each must be in the table)."""
    return "".join(f"delete ct timeout inet {TABLE} {name}\n" for name in sorted(names))


#: seconds after new_flow switched to another generation during which a flow seen new may
#: still carry the generation it left: its first packet passed the old rule just before
#: the commit and its NEW event was read after.  That takes microseconds (rule, NAT and
#: confirmation run in one pass of the packet), so the window is wide; it closes at the
#: first read that finds the event socket empty this long after the switch.
SWITCH_GRACE = 1.0
#: seconds after a switch at which its window closes even if the event socket was never
#: read empty (sustained load): the reader is then at most a socket buffer behind the
#: kernel (an overrun beyond that means a repair, which holds every flow in the view)
SWITCH_WINDOW_MAX = 5.0


class _Retired:
    """One retired set of objects and the flows (view keys) that may still use it."""
    __slots__ = ("names", "keys", "since", "open")

    def __init__(self, names: Iterable[str], keys: Iterable[int], since: float) -> None:
        self.names = set(names)
        self.keys = set(keys)
        self.since = since
        self.open = True


class RetiredTimeouts:
    """The `ct timeout` objects new flows no longer get, each held while a flow may use it.

    A sans-IO core.  Nothing tells which object an entry uses (ctnetlink has no attribute
    for it), but every flow that started before a switch of chain new_flow is in the view
    by then, and no flow starts on a retired object after it.  So `retire(names, keys,
    now)` takes the view's keys at the switch (after its commit) as the flows that may use
    those objects; `seen_new(key)` adds the flows seen new while its window is open (see
    SWITCH_GRACE; `read_empty(now)` closes it, `tick(now)` at the latest SWITCH_WINDOW_MAX
    after the switch); `ended(key)` forgets a flow that left the view (its DESTROY, or the
    expiry checks' retirement); `resynced(keys)` makes every flow a repair leaves in the
    view the ones held (one whose NEW event was lost may be older than the switch, and
    one that left the view unseen is gone); and `collect()` returns the objects no flow
    may use any more, for the adapter to delete: a look at each set, not at its flows.
    A set is released only once its window is closed; a flow kept too long only delays
    it.  Deleting an object still in use would put its flows on conntrack's own timeouts
    (5 days established).
    """

    def __init__(self) -> None:
        self.pending: list[_Retired] = []

    @property
    def window_open(self) -> bool:
        return any(r.open for r in self.pending)

    def held(self) -> list[str]:
        """The names of every object still held, sorted."""
        return sorted(n for r in self.pending for n in r.names)

    def flows_held(self) -> int:
        """Flow keys held, over every set (a flow may be in several)."""
        return sum(len(r.keys) for r in self.pending)

    def retire(self, names: Iterable[str], keys: Iterable[int], now: float) -> None:
        names = set(names)
        if names:
            self.pending.append(_Retired(names, keys, now))

    def seen_new(self, key: int) -> None:
        for r in self.pending:
            if r.open:
                r.keys.add(key)

    def ended(self, key: int) -> None:
        """Flow `key` left the view: no object is held for it any more."""
        for r in self.pending:
            r.keys.discard(key)

    def read_empty(self, now: float) -> None:
        """The event socket was read empty at `now`."""
        for r in self.pending:
            if r.open and now >= r.since + SWITCH_GRACE:
                r.open = False

    def tick(self, now: float) -> None:
        """Close the windows open SWITCH_WINDOW_MAX, read empty or not."""
        for r in self.pending:
            if r.open and now >= r.since + SWITCH_WINDOW_MAX:
                r.open = False

    def resynced(self, keys: set[int], before: Iterable[_Retired] | None = None) -> None:
        """A repair left the flows `keys` in the view: each set retired `before` it began
        (all when None) holds those, one retired since holds them too."""
        old = {id(r) for r in (self.pending if before is None else before)}
        for r in self.pending:
            if id(r) in old:
                r.keys = set(keys)
            else:
                r.keys |= keys

    def collect(self) -> list[str]:
        """The names of the objects no flow may use any more (forgotten here)."""
        out: list[str] = []
        keep = []
        for r in self.pending:
            if r.open or r.keys:
                keep.append(r)
            else:
                out += r.names
        self.pending = keep
        return sorted(out)
