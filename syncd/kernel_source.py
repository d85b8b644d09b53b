"""Sync entries for the flows the kernel forwards (`forwarding = "kernel"`), sans-IO.

In kernel mode only a flow's first packet reaches the engine, so the engine's sync hook
(syncd.policy.make_hook, called per packet) never sees the flow again.  What the node does
see are conntrack events: the flow's binding when it is confirmed (its reply tuple is then
already translated: real server -> laddr:lport), each TCP state change, and its end.  This
module turns those into the same sync entries, by the same SyncPolicy:

    src = KernelSyncSource(policy, timeout_of, is_ours)
    out = src.apply(msg, now)      # one decoded ctnetlink event -> [(entry, urgent), ...]
    out = src.poll(now)            # refreshes due (call at src.next_deadline() or later)
    out = src.resync(dump, now)    # after lost events: the table as a dump shows it
    src.set_active(True, now)      # this node forwards: produce entries (False: keep the view)
    src.take_over(laddrs, now)     # cluster: refresh the flows of a dead peer's adopted laddrs
    src.confirm(tuple)             # a peer's entry for this flow arrived
    ends = src.prune(now)          # the peer's bulk came whole: what it did not confirm

What is sent when:
- a new TCP flow (the tracker's SYN_SENT, IPVS's SYN_RECV) at once, URGENT (`on_syn`); each
  change of its IPVS state as SyncPolicy decides: into ESTABLISHED at once and URGENT
  (`on_established`), into FIN_WAIT, CLOSE, CLOSE_WAIT or TIME_WAIT at once;
- a UDP flow when the kernel marks it ASSURED (a reply seen, then one more datagram from
  the client): the kernel path's nearest moment to IPVS's third inbound packet;
- a refresh, as IPVS's `sync_refresh_period`: no packet of an established flow reaches
  tandem, so a live flow would expire on the peer after its timeout.  Each flow sent is
  offered again to the policy after min(refresh_period, max(timeout / 2, MIN_REFRESH))
  (IPVS's own bound; refresh_period 0 leaves timeout / 2), and goes if the policy says so;
- the flow's end (the kernel's DESTROY) as the entry with timeout END_TIMEOUT (0 s): the
  peer removes it at once.  IPVS never sends a timeout of 0 (its shortest is 2 s), and an
  engine-mode peer simply lets such an entry expire.

The entry is the engine path's (proto.sync.SyncEntry): the ORIGINAL tuple gives the client
and the VIP, the translated reply tuple the real server and laddr:lport.  Its flags:
INACTIVE unless ESTABLISHED (a UDP flow is always inactive, as IPVS counts it), ASSURED as
the kernel's status bit, NOOUTPUT until a reply was seen.

Echoes are avoided twice over.  A node produces entries only while active (it forwards:
the master), so the backup's injected entries never travel back.  And an event caused by
this node's own ctnetlink requests (its port id is `own_pid`) only updates the view: it is
the peer's flow, injected here, which the peer already has.  The view keeps every flow, so
that a node which takes over refreshes the flows it inherited and can answer a bulk
resync with its whole kernel table (`snapshot` and `to_entry`, as the engine's source).

Its flows are rows of proto.flow_table.FlowTable, the table the node's KernelFlows view
holds too (`table=`; one of its own otherwise): one int key and one int value per flow
(state, old_state, status bits, binding, sync_endtime in jiffies, refresh due time).
Refreshes are filed by the second they fall due, each as the row's key; a row's own due
time tells a slot still valid from one left behind by a reschedule.

Size: one sans-IO core over one packed row layout (proto.flow_table): events, refreshes,
repair and a cluster's take-over all read and write the same bits of the same rows.
"""
from __future__ import annotations

import itertools
import math
from array import array
from typing import Callable, Iterable, Iterator, NamedTuple

from proto.flow_table import (ASSURED, BINDING, DUE, END, F4, F16, F24, F48, F52, LPORT, OLD_STATE,
                                 SEEN_REPLY, SENT, SOURCE, STATE, FlowTable, Members)
from proto import ctnetlink as ct
from proto.consts import ASSURED as F_ASSURED, CLOSE, ESTABLISHED, INACTIVE, NOOUTPUT, NONE, TCP, \
    TCP_SYNC_STATES, UDP
from proto.sync import SyncEntry
from syncd.policy import HZ, URGENT, SyncPolicy

#: s, the shortest refresh interval, as IPVS's bound on sync_refresh_period's difference
MIN_REFRESH = 10.0
#: s, the timeout that tells the peer a flow has ended (IPVS's shortest real one is 2 s)
END_TIMEOUT = 0.0
#: dump entries per step of a resync done in steps (`resync_steps`)
RESYNC_STEP = 128
#: refreshes handed out per poll at most (the rest stay due for the next one)
POLL_LIMIT = 2048
#: µs per second: a refresh's due time is kept in µs
_US = 1_000_000

Out = list[tuple[SyncEntry, bool]]
_STATE_BITS = F4 << STATE | F4 << OLD_STATE
_REPLY_BITS = F16 << LPORT | F24 << BINDING
_END_BITS, _DUE_BITS = F48 << END, F52 << DUE


class SourceFlow(NamedTuple):
    """One flow as the source holds it (decoded from its row: `flows` values)."""
    proto: int
    state: int
    old_state: int
    reply: tuple[bytes, int, bytes, int] | None
    assured: bool
    seen_reply: bool
    sent: bool
    sync_endtime: float
    due: float | None


class _Conn:
    """What SyncPolicy.needed reads and writes, for one flow while it decides.  `created`
    is never equal to sync_endtime: the row keeps the stamp the policy would read."""
    __slots__ = ("proto", "state", "old_state", "sync_endtime")
    client_address_state = None     # a kernel-forwarded flow never carries a PROXY sequence shift
    created = None

    def __init__(self, proto: int, row: int) -> None:
        self.proto = proto
        self.state = row >> STATE & F4
        self.old_state = row >> OLD_STATE & F4
        self.sync_endtime = (row >> END & F48) / HZ

    def into(self, row: int) -> int:
        return (row & ~(F4 << OLD_STATE | _END_BITS) | self.old_state << OLD_STATE
                | round(self.sync_endtime * HZ) << END)


class _Slots:
    """The keys of the rows filed under one second.  A key of up to 64 bits (every IPv4
    TCP/UDP flow's) is kept as 8 bytes of an array, not as an int object: the event that
    files a flow brings its own copy of the key, and keeping that copy would hold a second
    32-byte int per flow besides the one the table's dict holds."""
    __slots__ = ("short", "long")

    def __init__(self) -> None:
        self.short = array("Q")
        self.long: list[int] = []

    def append(self, k: int) -> None:
        (self.short if k < 1 << 64 else self.long).append(k)

    def __len__(self) -> int:
        return len(self.short) + len(self.long)

    def __iter__(self) -> Iterator[int]:
        return itertools.chain(self.short, self.long)


def _due_of(row: int) -> int:
    """The row's refresh due time in µs, -1 if none."""
    return (row >> DUE & F52) - 1


class KernelSyncSource:
    def __init__(self, policy: SyncPolicy, timeout_of: Callable[[int, int], float],
                 is_ours: Callable[[int], bool], *, own_pid: int = 0,
                 active: bool = False, table: FlowTable | None = None,
                 pair: bool = True) -> None:
        self.policy = policy
        #: a pair's node (False: a cluster director): a pair's master refreshes the peer's
        #: entries injected while it is active (a bulk that came after it took over); a
        #: cluster director leaves its peers' flows to their owners
        self.pair = pair
        self.timeout_of = timeout_of        # (proto, IPVS state) -> full timeout, s
        self.is_ours = is_ours              # mark -> is it one of tandem's bindings
        self.own_pid = own_pid              # the injecting socket's netlink port id (0: none)
        self.active = active
        self.table = table if table is not None else FlowTable()
        #: original Tuple -> SourceFlow, read-only
        self.flows: Members = self.table.members(SOURCE, self._decode)
        #: second -> keys of the rows whose refresh falls due in it
        self._due: dict[int, _Slots] = {}
        #: keys of the flows this node's own kernel showed it while inactive (a restart's
        #: table): all of them (`_start`), and those no peer entry has confirmed yet, which
        #: `prune` ends
        self._start: set[int] = set()
        self._unconfirmed: set[int] | None = set()
        self.stats = dict.fromkeys(("events", "ignored", "own", "entries", "urgent", "refreshes",
                                    "ends", "resyncs", "pruned"), 0)

    def _decode(self, row: int, proto: int | None = None) -> SourceFlow:
        b = self.table.binding_of(row >> BINDING & F24)
        reply = None if b is None else (b[0], row >> LPORT & F16, b[1], b[2])
        due = _due_of(row)
        return SourceFlow(proto if proto is not None else -1, row >> STATE & F4,
                          row >> OLD_STATE & F4, reply, bool(row & ASSURED),
                          bool(row & SEEN_REPLY), bool(row & SENT), (row >> END & F48) / HZ,
                          None if due < 0 else due / _US)

    # -- the entry ---------------------------------------------------------------------

    def _entry(self, t: ct.Tuple, row: int, timeout: float) -> SyncEntry:
        laddr, rs, rs_port = self.table.binding_of(row >> BINDING & F24) or (b"", b"", 0)
        state = row >> STATE & F4
        flags = 0 if state == ESTABLISHED and t.proto == TCP else INACTIVE
        if row & ASSURED:
            flags |= F_ASSURED
        if not row & SEEN_REPLY:
            flags |= NOOUTPUT
        return SyncEntry(t.proto, state, flags, t.src, t.sport, t.dst, t.dport,
                         laddr, row >> LPORT & F16, rs, rs_port, timeout, False,
                         self.policy.threshold)

    def _interval(self, proto: int, state: int) -> float:
        half = max(self.timeout_of(proto, state) / 2, MIN_REFRESH)
        r = self.policy.refresh_period
        return min(r, half) if r > 0 else half

    @staticmethod
    def _syncable(proto: int, row: int) -> bool:
        return proto != TCP or row >> STATE & F4 in TCP_SYNC_STATES

    def _schedule(self, k: int, proto: int, row: int, now: float,
                  first: float | None = None) -> int:
        """The row with its next refresh set (filed under its second), or cleared."""
        row &= ~_DUE_BITS
        if not self.active or not self._syncable(proto, row):
            return row
        interval = self._interval(proto, row >> STATE & F4)
        due = max(0, round((now + (interval if first is None else first)) * _US))
        slots = self._due.get(due // _US)
        if slots is None:
            slots = self._due[due // _US] = _Slots()
        slots.append(k)
        return row | (due + 1) << DUE

    def _send(self, t: ct.Tuple, k: int, row: int, now: float, decision: int, out: Out) -> int:
        out.append((self._entry(t, row, self.timeout_of(t.proto, row >> STATE & F4)),
                    decision == URGENT))
        self.stats["entries"] += 1
        self.stats["urgent"] += decision == URGENT
        return self._schedule(k, t.proto, row | SENT, now)

    def _ask(self, proto: int, row: int, now: float) -> tuple[int, int]:
        """The policy's decision for the row, and the row as the decision left it."""
        c = _Conn(proto, row)
        decision = self.policy.needed(c, self.policy.threshold, now,
                                      self.timeout_of(proto, c.state))
        return decision, c.into(row)

    # -- events ------------------------------------------------------------------------

    def apply(self, msg: ct.Message, now: float) -> Out:
        """One conntrack event; the entries it makes due, each with its urgency."""
        out: Out = []
        self.stats["events"] += 1
        t = msg.ct.orig
        if t is None:
            self.stats["ignored"] += 1
            return out
        own = self.own_pid != 0 and msg.pid == self.own_pid
        self.stats["own"] += own
        if msg.event == "destroy":
            self._end(t, now, out, quiet=own)
            return out
        c = msg.ct
        if (c.reply is None or t.proto not in (TCP, UDP) or c.mark is None
                or not self.is_ours(c.mark)):
            self.stats["ignored"] += 1
            self._end(t, now, out, quiet=True)     # no longer ours, if it was
            return out
        table = self.table
        k = table.key(t)
        row = table.rows.get(k, 0)
        fresh = not row & SOURCE
        if fresh:
            # state and old_state NONE; sync_endtime the creation stamp (jiffies & ~3)
            row = row & ~(_STATE_BITS | ASSURED | SEEN_REPLY | SENT | _END_BITS | _DUE_BITS) \
                | SOURCE | (max(0, math.floor(now * HZ)) & ~3) << END
        r = c.reply
        row = row & ~_REPLY_BITS | r.dport << LPORT | table.binding(r.dst, r.src, r.sport) << BINDING
        if c.status is not None:
            row = (row & ~(ASSURED | SEEN_REPLY) | (ASSURED if c.status & ct.IPS_ASSURED else 0)
                   | (SEEN_REPLY if c.status & ct.IPS_SEEN_REPLY else 0))
        if t.proto == TCP:
            if c.tcp is not None and c.tcp.state is not None and c.tcp.state < len(ct.IPVS_STATE_OF_CT):
                row = row & ~(F4 << STATE) | ct.IPVS_STATE_OF_CT[c.tcp.state] << STATE
        if own:
            # the peer's flow, injected here: the peer has it; note it as sent, so that if
            # this node takes over, its end is sent back
            row = row & ~(F4 << OLD_STATE) | (row >> STATE & F4) << OLD_STATE | SENT
            if self.active and not row & _DUE_BITS and (self.pair or k in self._start):
                row = self._schedule(k, t.proto, row, now)
        elif self.active:
            row = self._decide(t, k, row, fresh, now, out)
        elif fresh and self._unconfirmed is not None:
            self._unconfirmed.add(k)
            self._start.add(k)
        table.put(k, row, SOURCE)
        return out

    def _decide(self, t: ct.Tuple, k: int, row: int, fresh: bool, now: float, out: Out) -> int:
        if t.proto == TCP:
            if fresh or row >> STATE & F4 != row >> OLD_STATE & F4:
                decision, row = self._ask(t.proto, row, now)
                if decision:
                    row = self._send(t, k, row, now, decision, out)
                elif not self._syncable(t.proto, row):
                    row &= ~_DUE_BITS
        elif not row & SENT and row & ASSURED:
            decision, row = self._ask(t.proto, row, now)
            if decision:
                row = self._send(t, k, row, now, decision, out)
        return row

    def _end(self, t: ct.Tuple, now: float, out: Out, quiet: bool) -> None:
        table = self.table
        k, row = table.find(t)
        if not row & SOURCE:
            return
        table.release(k, row, SOURCE)
        if self._start:
            self._start.discard(k)
            if self._unconfirmed:
                self._unconfirmed.discard(k)
        if quiet or not self.active or not row & SENT:
            return
        if t.proto == TCP:
            row = row & ~(F4 << STATE) | CLOSE << STATE
        out.append((self._entry(t, row & ~ASSURED, END_TIMEOUT), False))
        self.stats["ends"] += 1

    # -- refresh -----------------------------------------------------------------------

    def _valid(self, k: int, second: int) -> int:
        """Row k if its slot in `second` is the one that counts (0: ended or moved)."""
        row = self.table.rows.get(k, 0)
        if not row & SOURCE:
            return 0
        due = _due_of(row)
        return row if due >= 0 and due // _US == second else 0

    def next_deadline(self) -> float:
        """When poll() next has something to do (infinity: nothing scheduled)."""
        for second in sorted(self._due):
            dues = [_due_of(r) for r in (self._valid(k, second) for k in self._due[second]) if r]
            if dues:
                return min(dues) / _US
            del self._due[second]           # only slots left behind
        return float("inf")

    def poll(self, now: float, limit: int = POLL_LIMIT) -> Out:
        """The refreshes due by now (at most `limit`), as the policy decides each."""
        out: Out = []
        n = 0
        now_us = round(now * _US)
        table, tuple_of = self.table, self.table.tuple_of
        for second in sorted(s for s in self._due if s <= now_us // _US):
            keys = list(self._due.pop(second))
            later: list[int] = []
            for i, k in enumerate(keys):
                if n >= limit:
                    later += keys[i:]
                    break
                row = self._valid(k, second)
                if not row:
                    continue                # ended, or rescheduled since
                if _due_of(row) > now_us:
                    later.append(k)
                    continue
                n += 1
                t = tuple_of(k)
                decision, row = self._ask(t.proto, row, now)
                if decision:
                    self.stats["refreshes"] += 1
                    row = self._send(t, k, row, now, decision, out)
                else:
                    row = self._schedule(k, t.proto, row, now)
                table.rows[k] = row
            if later:
                slots = self._due.setdefault(second, _Slots())
                for k in later:
                    slots.append(k)
            if n >= limit:
                break
        return out

    def set_active(self, active: bool, now: float) -> None:
        """Produce entries (this node forwards) or only keep the view.  A node that becomes
        active schedules a refresh of every flow the peer holds too (its own, sent, and
        those it inherited, injected), spread over each one's interval so a large table
        does not go out in one burst.

        Not of a flow only its own kernel table showed it after a restart, which no peer
        entry has confirmed: the peer may have seen it end while this node was down, and
        a refresh of this node's stale copy would bring it back there, ESTABLISHED, until this
        node's copy ends (a node that takes over before the peer's bulk has come whole did
        that).  The peer's entry for it, when the bulk brings it, confirms it (SENT) and
        schedules its refresh; a real change of it on this node's kernel is sent as ever.
        A cluster director, active from its start, waits the same way for its peers'
        bulks."""
        if active == self.active:
            return
        self.active = active
        self._due.clear()
        rows = self.table.rows
        if not active:
            for k, r in rows.items():
                if r & SOURCE:
                    rows[k] = r & ~_DUE_BITS
            return
        self._spread([(k, r) for k, r in rows.items() if r & SOURCE and r & SENT], now)

    def _spread(self, held: list[tuple[int, int]], now: float) -> int:
        """Schedule a refresh of each held (key, row) that can be synced, spread over each
        one's interval so a large table does not go out in one burst; how many."""
        rows, proto_of = self.table.rows, self.table.proto_of
        items = [(k, proto_of(k), r) for k, r in held]
        items = [(k, proto, r) for k, proto, r in items if self._syncable(proto, r)]
        for i, (k, proto, r) in enumerate(items):
            first = self._interval(proto, r >> STATE & F4) * (i + 1) / (len(items) + 1)
            rows[k] = self._schedule(k, proto, r, now, first=first)
        return len(items)

    def _of_laddrs(self, laddrs: frozenset[bytes]) -> list[tuple[int, int]]:
        binding_of = self.table.binding_of
        return [(k, r) for k, r in self.table.rows.items()
                if r & SOURCE and (binding_of(r >> BINDING & F24) or (b"",))[0] in laddrs]

    def take_over(self, laddrs: frozenset[bytes], now: float) -> int:
        """Cluster mode: this node adopted these laddrs (packed), whose owner is gone, so it
        refreshes their flows from now on, as a pair's new master refreshes the flows it
        inherited (nobody else would: a node refreshes only the flows it sent); how many."""
        return self._spread([(k, r) for k, r in self._of_laddrs(laddrs) if not r & _DUE_BITS],
                            now)

    def release(self, laddrs: frozenset[bytes]) -> None:
        """Cluster mode: these laddrs went back to their owner, who refreshes their flows."""
        for k, r in self._of_laddrs(laddrs):
            self.table.rows[k] = r & ~_DUE_BITS

    # -- a restart's table --------------------------------------------------------------

    def confirm(self, t: ct.Tuple) -> None:
        """A peer's entry for flow `t` (original tuple) arrived: the peer holds it."""
        if self._unconfirmed:
            self._unconfirmed.discard(self.table.find(t)[0])

    def prune(self, now: float) -> list[SyncEntry]:
        """The peer's bulk answering this node's start-up request came whole: the flows
        its kernel table held when it started that no peer entry confirmed, each as its
        end (timeout 0) for the injector to delete; once only.

        The peer forwarded while this node was down, so those flows ended there (or the
        peer never knew them and could not forward them).  Left in this node's table they
        would keep their NAT for up to their timeout, and send a new connection on a
        reused client port to the old real server when this node takes over.  Not when
        this node is already active: it took over without the bulk (startup_sync_wait) and
        forwards what its kernel holds, which only the peer's bulk could prove stale, and
        a peer restarted meanwhile answers with an empty table."""
        waiting, self._unconfirmed = self._unconfirmed, None
        if self.active or not waiting:
            return []
        rows, tuple_of = self.table.rows, self.table.tuple_of
        out = [self._entry(tuple_of(k), row & ~ASSURED, END_TIMEOUT)
               for k in waiting if (row := rows.get(k, 0)) & SOURCE and not row & SENT]
        self.stats["pruned"] += len(out)
        return out

    # -- repair and bulk -----------------------------------------------------------------

    def resync(self, entries: Iterable[ct.Conntrack], now: float) -> Out:
        """After lost events: make the view what a dump of the kernel's table shows, and
        send what changed (new flows, state changes, ends), as the events would have."""
        return [x for out in self.resync_steps(list(entries), now) for x in out]

    def resync_steps(self, entries: list[ct.Conntrack], now: float,
                     step: int = RESYNC_STEP) -> Iterator[Out]:
        """`resync` in steps of at most `step` entries, each step's entries yielded (the
        node runs them a slice per loop turn, between which nothing else changes the view
        but refreshes)."""
        self.stats["resyncs"] += 1
        seen = set()
        find = self.table.find
        for i in range(0, len(entries), step):
            out: Out = []
            for c in entries[i:i + step]:
                if c.orig is None:
                    continue
                out += self.apply(ct.Message(ct.MSG_NEW, 0, 0, c.orig.family, c), now)
                seen.add(find(c.orig)[0])
            yield out
        gone = [k for k, r in self.table.rows.items() if r & SOURCE and k not in seen]
        tuple_of = self.table.tuple_of
        for i in range(0, len(gone), step):
            out = []
            for k in gone[i:i + step]:
                self._end(tuple_of(k), now, out, quiet=False)
            yield out

    def binding(self, key: ct.Tuple) -> tuple | None:
        """The binding of this node's own conntrack entry for connection `key` as the view
        knows it, in director.ct_inject's order (real server, port, laddr, lport), or None
        if the view does not hold it: what a bulk's entry is compared with (a client port
        reused for a new connection while this node was down gets another binding)."""
        f = self.flows.get(key)
        if f is None or f.reply is None:
            return None
        laddr, lport, rs, rport = f.reply
        return (rs, rport, laddr, lport)

    def snapshot(self) -> list[ct.Tuple]:
        """Every flow held (a bulk resync walks it; `to_entry` builds each as it goes)."""
        return list(self.flows)

    def to_entry(self, t: ct.Tuple, now: float) -> SyncEntry | None:
        """The entry of flow `t` now, or None if it has ended or is not worth sending."""
        k, row = self.table.find(t)
        if not row & SOURCE or not row >> BINDING & F24 or (t.proto == TCP and row >> STATE & F4 == NONE):
            return None
        if not row & SENT and self.active and not row & _DUE_BITS:
            row = self._schedule(k, t.proto, row, now)     # the peer holds it from now on
        self.table.rows[k] = row | SENT
        return self._entry(t, row, self.timeout_of(t.proto, row >> STATE & F4))
