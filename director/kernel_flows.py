"""The flows the kernel forwards for kernel-mode services, as conntrack events tell them.

A sans-IO core: `apply(message)` takes one decoded ctnetlink event (proto.ctnetlink),
`overrun()` notes that the kernel dropped events (ENOBUFS on the event socket), and
`resync(entries)` replaces the view with a table dump, counting what the dump repaired.
Only flows carrying one of tandem's marks (director.kernel_rules.MARK_BASE) are kept: each
mark names a (real server, laddr) binding, and the active/inactive counts per mark are what
the schedulers that count connections (lc, wlc, sed, nq, ...) need.  A TCP flow is active
in ESTABLISHED, inactive otherwise, as IPVS counts; a UDP flow is always inactive.

Counts are also kept per service and mark (`by_service`, keyed (proto, vip, vport, mark)
from the flow's original tuple), since two services may share a binding, and the keys
changed since the last `take_dirty()` are kept for the node to refresh its real servers'
counts from.  Whoever else needs the flows (connection sync) subscribes: `watch(fn)` calls
`fn(message, flow)` for each event about one of tandem's flows, after the view took it
(`flow` is None for its end), and `watch_resync(fn)` calls `fn(flows, entries)` after each
dump replaced the view (`entries`: the dump itself, which has the reply tuples the view
does not keep).

At start, `adopt(entries)` takes a dump as the view: a restarted node's predecessor left
its flows in conntrack, and the kernel goes on forwarding them.

An event lost is never silent: the adapter (director.ct_events) reports ENOBUFS here, the
view is marked `needs_resync`, and the node answers with a dump, as conntrackd does.
"""
from __future__ import annotations

import ipaddress
import logging
from typing import Callable, Generator, Iterable, Iterator, NamedTuple

from director.kernel_rules import MARK_BASE, MARK_PREFIX_MASK, Marks
from proto import ctnetlink as ct

log = logging.getLogger("tandem.kernel_flows")
#: entries per step of a resync done in steps (KernelFlows.resync_steps)
RESYNC_STEP = 256


def _finish(steps: Generator[None, None, int]) -> int:
    """Run steps to their end, all at once; their result."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


class Flow(NamedTuple):
    mark: int
    active: bool
    tcp_state: int | None


#: every distinct Flow value, kept once: a view of 1M flows holds a few hundred of them
#: (marks x TCP states), not a tuple and a mark int per flow (~96 bytes each; bench.kmem)
_FLOWS: dict[Flow, Flow] = {}


def _flow(c: ct.Conntrack) -> Flow | None:
    mark = c.mark or 0
    if mark & MARK_PREFIX_MASK != MARK_BASE or c.orig is None:
        return None
    state = c.tcp.state if c.tcp is not None else None
    f = Flow(mark, state == ct.TCP_CT_ESTABLISHED, state)
    return _FLOWS.setdefault(f, f)


def adoptable(entries: Iterable[ct.Conntrack], marks: Marks) -> tuple[list[ct.Conntrack], int]:
    """The entries of a start-up dump that carry tandem's marks, each mark given back to the
    binding its entry's NAT shows (reply tuple: real server address and port -> laddr), and
    how many were left out because their mark already names another binding."""
    kept, conflicts = [], 0
    for c in entries:
        mark = c.mark or 0
        if mark & MARK_PREFIX_MASK != MARK_BASE or c.orig is None or c.reply is None:
            continue
        r = c.reply
        if marks.adopt(mark, str(ipaddress.ip_address(r.src)), r.sport,
                       str(ipaddress.ip_address(r.dst))):
            kept.append(c)
        else:
            conflicts += 1
    return kept, conflicts


class KernelFlows:
    def __init__(self) -> None:
        self.flows: dict[ct.Tuple, Flow] = {}
        #: mark -> [active, inactive]
        self.counts: dict[int, list[int]] = {}
        #: (proto, vip, vport, mark) -> [active, inactive]
        self.by_service: dict[tuple[int, bytes, int, int], list[int]] = {}
        self.dirty: set[tuple[int, bytes, int, int]] = set()
        self.needs_resync = False
        self.stats = dict.fromkeys(("events", "new", "destroyed", "ignored", "overruns",
                                    "resyncs", "repaired", "adopted", "watcher_errors"), 0)
        self._watchers: list[Callable[[ct.Message, Flow | None], None]] = []
        self._resync_watchers: list[Callable[[dict[ct.Tuple, Flow], list[ct.Conntrack]],
                                             Iterator[None] | None]] = []

    def watch(self, fn: Callable[[ct.Message, Flow | None], None]) -> None:
        """Call fn(message, flow) for every event about one of tandem's flows."""
        self._watchers.append(fn)

    def watch_resync(self, fn: Callable[[dict[ct.Tuple, Flow], list[ct.Conntrack]],
                                        Iterator[None] | None]) -> None:
        """Call fn(flows, entries) after every resync (the view rebuilt from dump `entries`).
        A watcher with much to do returns an iterator: its work, one small step per next(),
        run as part of the resync's steps (all at once by `resync` and `adopt`)."""
        self._resync_watchers.append(fn)

    def _count(self, key: ct.Tuple, f: Flow, delta: int) -> None:
        i = 0 if f.active else 1
        self.counts.setdefault(f.mark, [0, 0])[i] += delta
        skey = (key.proto, key.dst, key.dport, f.mark)
        self.by_service.setdefault(skey, [0, 0])[i] += delta
        self.dirty.add(skey)

    def _set(self, key: ct.Tuple, f: Flow | None) -> None:
        # assigned in place, never popped and re-inserted: the dict keeps the key object of
        # the flow's first event, the one the sync source keeps too (one tuple, not two)
        old = self.flows.get(key)
        if old is not None:
            self._count(key, old, -1)
        if f is not None:
            self.flows[key] = f
            self._count(key, f, +1)
        elif old is not None:
            del self.flows[key]

    def take_dirty(self) -> set[tuple[int, bytes, int, int]]:
        """The (proto, vip, vport, mark) whose counts changed since the last call."""
        dirty, self.dirty = self.dirty, set()
        return dirty

    def service_counts(self, proto: int, vip: bytes, vport: int, mark: int) -> tuple[int, int]:
        a, i = self.by_service.get((proto, vip, vport, mark), (0, 0))
        return a, i

    def flows_of(self, marks: set[int]) -> list[ct.Tuple]:
        """The original tuples of the flows carrying one of `marks` (a walk of the view)."""
        return [k for k, f in self.flows.items() if f.mark in marks]

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
                self._tell(msg, None)
            return
        f = _flow(msg.ct)          # the kernel sends the mark in every event when it is set
        if f is None:
            self.stats["ignored"] += 1
            self._set(key, None)
            return
        if key not in self.flows:
            self.stats["new"] += 1
        self._set(key, f)
        self._tell(msg, f)

    def _tell(self, msg: ct.Message, f: Flow | None) -> None:
        """The watchers, each on its own: one that fails is counted and logged and takes
        neither the view nor the other watchers down with it."""
        for fn in self._watchers:
            try:
                fn(msg, f)
            except Exception:
                self.stats["watcher_errors"] += 1
                if self.stats["watcher_errors"] <= 10:
                    log.exception("kernel flows: a watcher failed on an event")

    def overrun(self) -> None:
        """The kernel dropped events: the view may be wrong until the next resync."""
        self.stats["overruns"] += 1
        self.needs_resync = True

    def resync(self, entries: Iterable[ct.Conntrack]) -> int:
        """Replace the view with a dump of the kernel's table; return how many flows it
        added, removed or changed."""
        return _finish(self.resync_steps(list(entries)))

    def resync_steps(self, entries: list[ct.Conntrack],
                     step: int = RESYNC_STEP) -> Generator[None, None, int]:
        """The same repair as `resync`, in small steps: each next() does the work of at most
        `step` entries (director.kernel_repair runs it a slice per loop turn); returns what
        `resync` returns.  The view stays the old one until every entry is in, then it is
        swapped whole; the resync watchers' steps follow."""
        changed = yield from self._replace(entries, step)
        self.stats["resyncs"] += 1
        self.stats["repaired"] += changed
        return changed

    def adopt(self, entries: Iterable[ct.Conntrack]) -> int:
        """At start: take the flows of a dump that carry tandem's marks (a predecessor's,
        still forwarded by the kernel) as the view; return how many.  Not a repair: the
        view was empty because the node had just started, not because events were lost."""
        _finish(self._replace(list(entries), RESYNC_STEP))
        self.stats["adopted"] += len(self.flows)
        return len(self.flows)

    def _replace(self, entries: list[ct.Conntrack], step: int) -> Generator[None, None, int]:
        fresh: dict[ct.Tuple, Flow] = {}
        changed = 0
        old = self.flows
        for i in range(0, len(entries), step):
            for c in entries[i:i + step]:
                f = _flow(c)
                if f is not None:
                    assert c.orig is not None       # _flow checked it
                    fresh[c.orig] = f
            yield
        new = list(fresh.items())
        for i in range(0, len(new), step):
            changed += sum(1 for k, f in new[i:i + step] if old.get(k) != f)
            yield
        keys = list(old)
        for i in range(0, len(keys), step):
            changed += sum(1 for k in keys[i:i + step] if k not in fresh)
            yield
        # nothing reads a half-built view: the counts are built aside, then swapped in at once
        counts: dict[int, list[int]] = {}
        by_service: dict[tuple[int, bytes, int, int], list[int]] = {}
        items = list(fresh.items())
        for i in range(0, len(items), step):
            for k, f in items[i:i + step]:
                j = 0 if f.active else 1
                counts.setdefault(f.mark, [0, 0])[j] += 1
                by_service.setdefault((k.proto, k.dst, k.dport, f.mark), [0, 0])[j] += 1
            yield
        self.dirty |= set(self.by_service) | set(by_service)
        self.flows, self.counts, self.by_service = fresh, counts, by_service
        self.needs_resync = False
        for rfn in self._resync_watchers:
            try:
                more = rfn(self.flows, entries)
                while more is not None:
                    yield
                    next(more)
            except StopIteration:
                pass
            except Exception:
                self.stats["watcher_errors"] += 1
                log.exception("kernel flows: a watcher failed on a resync")
        return changed

    def active_inactive(self, mark: int) -> tuple[int, int]:
        a, i = self.counts.get(mark, (0, 0))
        return a, i
