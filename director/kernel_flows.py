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

A flow's end is not left to conntrack's garbage collection alone (its DESTROY comes tens
of seconds after the timeout): given the time (`apply(msg, now)`, `resync(entries, now)`),
the view keeps each flow's deadline from the time its entry had left
(director.kernel_expiry); `due(now)` gives the flows past it, for the node to ask the
kernel about, and `checked(asked, found, now)` retires those the kernel no longer holds
(counted `expired`; their DESTROY, if it comes after, `late_destroys`) and re-arms the
others.

An event lost is never silent: the adapter (director.ct_events) reports ENOBUFS here, the
view is marked `needs_resync`, and the node answers with a dump, as conntrackd does.
"""
from __future__ import annotations

import ipaddress
import logging
import socket
from typing import Callable, Generator, Iterable, Iterator, NamedTuple

from proto.flow_table import (DEADLINE_BITS, F16, MARK, VIEW, VIEW_FIELDS, VTCP, VTCP_NONE,
                              FlowTable, Members)
from director.kernel_expiry import FlowDeadlines
from director.kernel_rules import MARK_BASE, MARK_PREFIX_MASK, Marks
from proto import ctnetlink as ct

log = logging.getLogger("tandem.kernel_flows")
#: entries per step of a resync done in steps (KernelFlows.resync_steps)
RESYNC_STEP = 256
#: s a flow retired at its deadline is remembered, for its DESTROY to count as late (it
#: comes within milliseconds: the GET that found the entry gone had reaped it, or the
#: garbage collection had, and sent it before)
RETIRED_FOR = 5.0
#: the view's fields an event or a dump entry gives (its deadline is kept across them)
_GIVEN = VIEW_FIELDS & ~DEADLINE_BITS


def _lasting(row: int) -> bool:
    """Whether a flow's deadline is left to conntrack's garbage collection: an ESTABLISHED
    TCP flow, refreshed by its data without an event, and ending by a FIN or RST (events)
    far more often than by an idle timeout.  Its row keeps no deadline, so its int stays
    as small as before (bench.kmem: 1M established flows) and it costs no GET per
    tcp_established it lives; one that does go idle is reported by the collector, as
    before (tens of seconds after a 900 s timeout)."""
    return row >> VTCP & 0xFF == ct.TCP_CT_ESTABLISHED


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


#: every distinct Flow value, kept once (marks x TCP states)
_FLOWS: dict[Flow, Flow] = {}


#: TCP states the view does not tell apart, each -> the state it is kept as.  The node's
#: event socket filters their updates out in the kernel (director.ct_events.state_filter):
#: none changes a count (IPVS counts only ESTABLISHED active) or sync's ESTABLISHED and end.
#: A dump's entries are read the same way, so a repair compares like with like.
MERGED_TCP_STATES = {ct.TCP_CT_SYN_RECV: ct.TCP_CT_SYN_SENT, ct.TCP_CT_CLOSE_WAIT: ct.TCP_CT_FIN_WAIT,
                     ct.TCP_CT_LAST_ACK: ct.TCP_CT_FIN_WAIT, ct.TCP_CT_TIME_WAIT: ct.TCP_CT_FIN_WAIT}


def _fields(c: ct.Conntrack) -> int | None:
    """The view's fields of a row for conntrack entry c, or None if it is not tandem's."""
    mark = c.mark or 0
    if mark & MARK_PREFIX_MASK != MARK_BASE or c.orig is None:
        return None
    state = c.tcp.state if c.tcp is not None else None
    if state is not None:
        state = MERGED_TCP_STATES.get(state, state)
    code = VTCP_NONE if state is None or not 0 <= state < VTCP_NONE else state
    return VIEW | code << VTCP | (mark & F16) << MARK


def _mark(row: int) -> int:
    """The mark a row's view fields name."""
    return MARK_BASE | row >> MARK & F16


def _decode(row: int) -> Flow:
    code = row >> VTCP & 0xFF
    state = None if code == VTCP_NONE else code
    f = Flow(_mark(row), state == ct.TCP_CT_ESTABLISHED, state)
    return _FLOWS.setdefault(f, f)


def _tally(counts: dict[int, list[int]], by_service: dict[tuple[int, bytes, int, int], list[int]],
           t: ct.Tuple, row: int, delta: int) -> tuple[int, bytes, int, int]:
    """Add `delta` to the [active, inactive] counts of flow t's mark and service (IPVS
    counts only ESTABLISHED active); return the service key."""
    i = 0 if row >> VTCP & 0xFF == ct.TCP_CT_ESTABLISHED else 1
    mark = _mark(row)
    counts.setdefault(mark, [0, 0])[i] += delta
    skey = (t.proto, t.dst, t.dport, mark)
    by_service.setdefault(skey, [0, 0])[i] += delta
    return skey


def _flow(c: ct.Conntrack) -> Flow | None:
    """The Flow the view keeps for conntrack entry c (None: not tandem's)."""
    fields = _fields(c)
    return None if fields is None else _decode(fields)


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
    def __init__(self, table: FlowTable | None = None) -> None:
        #: the rows, shared with the sync source (proto.flow_table: one int key and one
        #: int value per flow)
        self.table = table if table is not None else FlowTable()
        #: original Tuple -> Flow, read-only (len, iteration, lookups, comparison)
        self.flows: Members = self.table.members(VIEW, _decode)
        #: mark -> [active, inactive]
        self.counts: dict[int, list[int]] = {}
        #: (proto, vip, vport, mark) -> [active, inactive]
        self.by_service: dict[tuple[int, bytes, int, int], list[int]] = {}
        self.dirty: set[tuple[int, bytes, int, int]] = set()
        self.needs_resync = False
        self.stats = dict.fromkeys(("events", "new", "destroyed", "ignored", "overruns",
                                    "resyncs", "repaired", "adopted", "watcher_errors",
                                    "expired", "late_destroys"), 0)
        #: when each flow's time in conntrack runs out, as its last event or dump entry
        #: said (director.kernel_expiry); armed only when the caller gives the time
        self.deadlines = FlowDeadlines(self.table.rows)
        #: keys of flows retired at their deadline, whose DESTROY may still come (then
        #: counted `late_destroys`, not `destroyed`): key -> when retired
        self._retired: dict[int, float] = {}
        self._watchers: list[Callable[[ct.Message, Flow | None], None]] = []
        self._resync_watchers: list[Callable[[Members, list[ct.Conntrack]],
                                             Iterator[None] | None]] = []

    def watch(self, fn: Callable[[ct.Message, Flow | None], None]) -> None:
        """Call fn(message, flow) for every event about one of tandem's flows."""
        self._watchers.append(fn)

    def watch_resync(self, fn: Callable[[Members, list[ct.Conntrack]],
                                        Iterator[None] | None]) -> None:
        """Call fn(flows, entries) after every resync (the view rebuilt from dump `entries`).
        A watcher with much to do returns an iterator: its work, one small step per next(),
        run as part of the resync's steps (all at once by `resync` and `adopt`)."""
        self._resync_watchers.append(fn)

    def _count(self, t: ct.Tuple, row: int, delta: int) -> None:
        self.dirty.add(_tally(self.counts, self.by_service, t, row, delta))

    def _forget(self, t: ct.Tuple) -> bool:
        """Take flow t out of the view (and its counts); False when the view did not hold it."""
        k, row = self.table.find(t)
        if not row & VIEW:
            return False
        self._count(t, row, -1)
        self.table.release(k, row, VIEW)          # its deadline goes with the view's fields
        return True

    def take_dirty(self) -> set[tuple[int, bytes, int, int]]:
        """The (proto, vip, vport, mark) whose counts changed since the last call."""
        dirty, self.dirty = self.dirty, set()
        return dirty

    def service_counts(self, proto: int, vip: bytes, vport: int, mark: int) -> tuple[int, int]:
        a, i = self.by_service.get((proto, vip, vport, mark), (0, 0))
        return a, i

    def flows_of(self, marks: set[int]) -> list[ct.Tuple]:
        """The original tuples of the flows carrying one of `marks` (a walk of the view)."""
        idx = {m & F16 for m in marks if m & MARK_PREFIX_MASK == MARK_BASE}
        tuple_of = self.table.tuple_of
        return [tuple_of(k) for k, r in self.table.rows.items()
                if r & VIEW and r >> MARK & F16 in idx]

    def apply(self, msg: ct.Message, now: float | None = None) -> None:
        """One event: a new flow, a change (state, mark), or its end.  With `now` (the
        time it was read), the flow's deadline is armed from the time it has left."""
        self.stats["events"] += 1
        t = msg.ct.orig
        if t is None:
            self.stats["ignored"] += 1
            return
        table = self.table
        if msg.event == "destroy":
            if self._forget(t):
                self.stats["destroyed"] += 1
                self._tell(msg, None)
            elif self._retired and self._retired.pop(table.find(t)[0], None) is not None:
                self.stats["late_destroys"] += 1
            return
        fields = _fields(msg.ct)    # the kernel sends the mark in every event when it is set
        if fields is None:
            self.stats["ignored"] += 1
            self._forget(t)
            return
        k = table.key(t)
        old = table.rows.get(k, 0)
        if old & VIEW:
            self._count(t, old, -1)
        else:
            self.stats["new"] += 1
        row = old & ~_GIVEN | fields
        if now is not None and msg.ct.timeout is not None and not _lasting(row):
            row = self.deadlines.stamp(k, row, now + msg.ct.timeout)
        else:
            row &= ~DEADLINE_BITS
        table.put(k, row, VIEW)
        self._count(t, row, +1)
        self._tell(msg, _decode(row))

    # -- deadlines: flows whose time ran out, asked of the kernel (director.kernel_expiry) --

    def due(self, now: float, limit: int | None = None) -> list[ct.Tuple]:
        """The flows whose time in conntrack ran out by `now`, as the view last heard: the
        caller asks the kernel which are gone and hands the answer to `checked`.  With
        `limit`, at most that many of the wheel's filings are looked at; the rest come
        at the next calls (FlowDeadlines.due)."""
        rows, tuple_of = self.table.rows, self.table.tuple_of
        self._prune_retired(now)
        return [tuple_of(k) for k in self.deadlines.due(now, limit) if rows.get(k, 0) & VIEW]

    def checked(self, asked: Iterable[ct.Tuple], found: dict[ct.Tuple, ct.Conntrack],
                now: float) -> int:
        """The kernel's answer for flows `due` gave: those it still holds are armed again
        from the time they have left; those it does not are retired from the view, as
        their DESTROY would (and watchers hear of the end); a DESTROY that comes after is
        counted `late_destroys`.  A flow an event re-armed meanwhile stays.  Returns how
        many were retired."""
        retired = 0
        for t in asked:
            k, row = self.table.find(t)
            if not row & VIEW or self.deadlines.armed(k) or _lasting(row):
                continue            # ended, or an event came meanwhile
            c = found.get(t)
            if c is not None:
                if not _lasting(row):
                    self.deadlines.arm(k, now + (c.timeout or 0))
                continue
            self._forget(t)
            self._retired[k] = now
            self.stats["expired"] += 1
            retired += 1
            family = socket.AF_INET if len(t.src) == 4 else socket.AF_INET6
            self._tell(ct.Message(ct.MSG_DELETE, 0, 0, family,
                                  ct.Conntrack(orig=t, mark=_mark(row))), None)
        return retired

    def _prune_retired(self, now: float) -> None:
        """Forget retired flows whose DESTROY did not come after them (read before the
        GET's answer, or lost) after RETIRED_FOR seconds; oldest first, as they came."""
        retired = self._retired
        while retired:
            k, at = next(iter(retired.items()))
            if at >= now - RETIRED_FOR:
                break
            del retired[k]

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

    def resync(self, entries: Iterable[ct.Conntrack], now: float | None = None) -> int:
        """Replace the view with a dump of the kernel's table; return how many flows it
        added, removed or changed.  With `now` (when the dump was read), each flow's
        deadline is armed from the time its entry has left."""
        return _finish(self.resync_steps(list(entries), now=now))

    def resync_steps(self, entries: list[ct.Conntrack], step: int = RESYNC_STEP,
                     now: float | None = None) -> Generator[None, None, int]:
        """The same repair as `resync`, in small steps: each next() does the work of at most
        `step` entries (director.kernel_repair runs it a slice per loop turn); returns what
        `resync` returns.  The view stays the old one until every entry is read and compared;
        then its rows change, a step at a time, and its counts are swapped in whole; the
        resync watchers' steps follow."""
        changed = yield from self._replace(entries, step, now)
        self.stats["resyncs"] += 1
        self.stats["repaired"] += changed
        return changed

    def adopt(self, entries: Iterable[ct.Conntrack], now: float | None = None) -> int:
        """At start: take the flows of a dump that carry tandem's marks (a predecessor's,
        still forwarded by the kernel) as the view; return how many.  Not a repair: the
        view was empty because the node had just started, not because events were lost."""
        _finish(self._replace(list(entries), RESYNC_STEP, now))
        self.stats["adopted"] += len(self.flows)
        return len(self.flows)

    def _replace(self, entries: list[ct.Conntrack], step: int,
                 now: float | None = None) -> Generator[None, None, int]:
        table, rows = self.table, self.table.rows
        fresh: dict[int, tuple[ct.Tuple, int]] = {}
        left: dict[int, int] = {}           # key -> the time its entry had left
        changed = 0
        for i in range(0, len(entries), step):
            for c in entries[i:i + step]:
                fields = _fields(c)
                if fields is not None:
                    assert c.orig is not None       # _fields checked it
                    k = table.key(c.orig)
                    fresh[k] = (c.orig, fields)
                    if c.timeout is not None:
                        left[k] = c.timeout
            yield
        new = list(fresh.items())
        for i in range(0, len(new), step):
            changed += sum(1 for k, (_, fields) in new[i:i + step]
                           if rows.get(k, 0) & _GIVEN != fields)
            yield
        gone = [(k, r) for k, r in rows.items() if r & VIEW and k not in fresh]
        changed += len(gone)
        yield
        # the counts are built aside and swapped in at once; the rows (shared with the sync
        # source, which keeps its own fields in them) change in place, a step at a time
        counts: dict[int, list[int]] = {}
        by_service: dict[tuple[int, bytes, int, int], list[int]] = {}
        for i in range(0, len(gone), step):
            for k, r in gone[i:i + step]:
                r = rows.get(k, 0)
                if r & VIEW and k not in fresh:
                    table.release(k, r, VIEW)
            yield
        for i in range(0, len(new), step):
            for k, (t, fields) in new[i:i + step]:
                row = rows.get(k, 0) & ~(_GIVEN if not _lasting(fields) else VIEW_FIELDS) | fields
                table.put(k, row, VIEW)
                _tally(counts, by_service, t, fields, +1)
                if now is not None and k in left and not _lasting(fields):
                    self.deadlines.arm(k, now + left[k])
            yield
        self.dirty |= set(self.by_service) | set(by_service)
        self.counts, self.by_service = counts, by_service
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
