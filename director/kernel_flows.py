"""The flows the kernel forwards for kernel-mode services, as conntrack events tell them.

A sans-IO core: `apply(message)` takes one decoded ctnetlink event (proto.ctnetlink),
`overrun()` notes that the kernel dropped events (ENOBUFS on the event socket), and
`resync(entries)` replaces the view with a table dump, counting what the dump repaired.
Only flows carrying one of tandem's marks (director.kernel_rules.MARK_BASE) are kept: each
mark names a (real server, laddr) binding, and the active/inactive counts per mark are what
the schedulers that count connections (lc, wlc, sed, nq, ...) need.  A TCP flow is active
in ESTABLISHED, inactive otherwise, as IPVS counts; a UDP flow is always inactive.

An event lost is never silent: the adapter (director.ct_events) reports ENOBUFS here, the
view is marked `needs_resync`, and the node answers with a dump, as conntrackd does.
"""
from __future__ import annotations

from typing import Iterable, NamedTuple

from director.kernel_rules import MARK_BASE, MARK_PREFIX_MASK
from proto import ctnetlink as ct


class Flow(NamedTuple):
    mark: int
    active: bool
    tcp_state: int | None


def _flow(c: ct.Conntrack) -> Flow | None:
    mark = c.mark or 0
    if mark & MARK_PREFIX_MASK != MARK_BASE or c.orig is None:
        return None
    state = c.tcp.state if c.tcp is not None else None
    return Flow(mark, state == ct.TCP_CT_ESTABLISHED, state)


class KernelFlows:
    def __init__(self) -> None:
        self.flows: dict[ct.Tuple, Flow] = {}
        #: mark -> [active, inactive]
        self.counts: dict[int, list[int]] = {}
        self.needs_resync = False
        self.stats = dict.fromkeys(("events", "new", "destroyed", "ignored", "overruns",
                                    "resyncs", "repaired"), 0)

    def _count(self, f: Flow, delta: int) -> None:
        c = self.counts.setdefault(f.mark, [0, 0])
        c[0 if f.active else 1] += delta

    def _set(self, key: ct.Tuple, f: Flow | None) -> None:
        old = self.flows.pop(key, None)
        if old is not None:
            self._count(old, -1)
        if f is not None:
            self.flows[key] = f
            self._count(f, +1)

    def apply(self, msg: ct.Message) -> None:
        """One event: a new flow, a change (state, mark), or its end."""
        self.stats["events"] += 1
        key = msg.ct.orig
        if key is None:
            self.stats["ignored"] += 1
            return
        if msg.event == "destroy":
            if key in self.flows:
                self.stats["destroyed"] += 1
            self._set(key, None)
            return
        f = _flow(msg.ct)          # the kernel sends the mark in every event when it is set
        if f is None:
            self.stats["ignored"] += 1
            self._set(key, None)
            return
        if key not in self.flows:
            self.stats["new"] += 1
        self._set(key, f)

    def overrun(self) -> None:
        """The kernel dropped events: the view may be wrong until the next resync."""
        self.stats["overruns"] += 1
        self.needs_resync = True

    def resync(self, entries: Iterable[ct.Conntrack]) -> int:
        """Replace the view with a dump of the kernel's table; return how many flows it
        added, removed or changed."""
        fresh = {}
        for c in entries:
            f = _flow(c)
            if f is not None:
                assert c.orig is not None       # _flow checked it
                fresh[c.orig] = f
        changed = sum(1 for k, f in fresh.items() if self.flows.get(k) != f)
        changed += sum(1 for k in self.flows if k not in fresh)
        self.flows = {}
        self.counts = {}
        for k, f in fresh.items():
            self._set(k, f)
        self.stats["resyncs"] += 1
        self.stats["repaired"] += changed
        self.needs_resync = False
        return changed

    def active_inactive(self, mark: int) -> tuple[int, int]:
        a, i = self.counts.get(mark, (0, 0))
        return a, i
