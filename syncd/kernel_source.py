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
"""
from __future__ import annotations

from collections import deque
from typing import Callable, Iterable, Iterator

from proto import ctnetlink as ct
from proto.consts import ASSURED, CLOSE, ESTABLISHED, INACTIVE, NOOUTPUT, NONE, TCP, TCP_SYNC_STATES, UDP
from proto.sync import SyncEntry
from syncd.policy import URGENT, SyncPolicy

#: s, the shortest refresh interval, as IPVS's bound on sync_refresh_period's difference
MIN_REFRESH = 10.0
#: s, the timeout that tells the peer a flow has ended (IPVS's shortest real one is 2 s)
END_TIMEOUT = 0.0
#: dump entries per step of a resync done in steps (`resync_steps`)
RESYNC_STEP = 128
#: refreshes handed out per poll at most (the rest stay due for the next one)
POLL_LIMIT = 2048

Out = list[tuple[SyncEntry, bool]]


class _Flow:
    """One kernel flow as the policy sees a connection (the attributes SyncPolicy reads).

    `key` is the flow's original tuple as first seen (the object the view's dict holds:
    refresh slots name it, never a later event's equal copy); `reply` is the binding in
    the entry's order (laddr, lport, real server, port), its addresses and port shared
    with every other flow of that binding (bench.kmem: a Tuple per flow cost ~250 bytes)."""
    __slots__ = ("key", "proto", "state", "old_state", "sync_endtime", "created", "reply",
                 "status", "sent", "due")
    client_address_state = None     # a kernel-forwarded flow never carries a PROXY sequence shift

    def __init__(self, key: ct.Tuple, now: float) -> None:
        self.key = key
        self.proto = key.proto
        self.state = self.old_state = NONE
        self.created = self.sync_endtime = now
        self.reply: tuple[bytes, int, bytes, int] | None = None
        self.status = 0
        self.sent = False           # the peer may hold it: its end must be sent
        self.due: float | None = None


class KernelSyncSource:
    def __init__(self, policy: SyncPolicy, timeout_of: Callable[[int, int], float],
                 is_ours: Callable[[int], bool], *, own_pid: int = 0,
                 active: bool = False) -> None:
        self.policy = policy
        self.timeout_of = timeout_of        # (proto, IPVS state) -> full timeout, s
        self.is_ours = is_ours              # mark -> is it one of tandem's bindings
        self.own_pid = own_pid              # the injecting socket's netlink port id (0: none)
        self.active = active
        self.flows: dict[ct.Tuple, _Flow] = {}
        self._shared: dict = {}          # addresses, ports and status values, kept once
        self._due: dict[float, deque[tuple[float, ct.Tuple]]] = {}
        self.stats = dict.fromkeys(("events", "ignored", "own", "entries", "urgent", "refreshes",
                                    "ends", "resyncs"), 0)

    # -- the entry ---------------------------------------------------------------------

    def _entry(self, key: ct.Tuple, f: _Flow, timeout: float) -> SyncEntry:
        reply = f.reply
        assert reply is not None        # a flow is kept only with its reply tuple
        flags = 0 if f.state == ESTABLISHED and f.proto == TCP else INACTIVE
        if f.status & ct.IPS_ASSURED:
            flags |= ASSURED
        if not f.status & ct.IPS_SEEN_REPLY:
            flags |= NOOUTPUT
        return SyncEntry(f.proto, f.state, flags, key.src, key.sport, key.dst, key.dport,
                         *reply, timeout, False, self.policy.threshold)

    def _interval(self, f: _Flow) -> float:
        half = max(self.timeout_of(f.proto, f.state) / 2, MIN_REFRESH)
        r = self.policy.refresh_period
        return min(r, half) if r > 0 else half

    def _syncable(self, f: _Flow) -> bool:
        return f.proto != TCP or f.state in TCP_SYNC_STATES

    def _schedule(self, key: ct.Tuple, f: _Flow, now: float, first: float | None = None) -> None:
        if not self.active or not self._syncable(f):
            f.due = None
            return
        interval = self._interval(f)
        f.due = now + (interval if first is None else first)
        q = self._due.get(interval)
        if q is None:
            q = self._due[interval] = deque()
        q.append((f.due, key))

    def _send(self, key: ct.Tuple, f: _Flow, now: float, decision: int, out: Out) -> None:
        out.append((self._entry(key, f, self.timeout_of(f.proto, f.state)), decision == URGENT))
        f.sent = True
        self.stats["entries"] += 1
        self.stats["urgent"] += decision == URGENT
        self._schedule(key, f, now)

    def _ask(self, f: _Flow, now: float) -> int:
        return self.policy.needed(f, self.policy.threshold, now, self.timeout_of(f.proto, f.state))

    # -- events ------------------------------------------------------------------------

    def apply(self, msg: ct.Message, now: float) -> Out:
        """One conntrack event; the entries it makes due, each with its urgency."""
        out: Out = []
        self.stats["events"] += 1
        key = msg.ct.orig
        if key is None:
            self.stats["ignored"] += 1
            return out
        own = self.own_pid != 0 and msg.pid == self.own_pid
        self.stats["own"] += own
        if msg.event == "destroy":
            self._end(key, now, out, quiet=own)
            return out
        c = msg.ct
        if (c.reply is None or key.proto not in (TCP, UDP) or c.mark is None
                or not self.is_ours(c.mark)):
            self.stats["ignored"] += 1
            self._end(key, now, out, quiet=True)     # no longer ours, if it was
            return out
        f = self.flows.get(key)
        fresh = f is None
        if f is None:
            f = self.flows[key] = _Flow(key, now)
        key = f.key
        share = self._shared.setdefault
        r = c.reply
        f.reply = (share(r.dst, r.dst), r.dport, share(r.src, r.src), share(r.sport, r.sport))
        if c.status is not None:
            f.status = share(c.status, c.status)
        if key.proto == TCP:
            if c.tcp is not None and c.tcp.state is not None and c.tcp.state < len(ct.IPVS_STATE_OF_CT):
                f.state = ct.IPVS_STATE_OF_CT[c.tcp.state]
        if own:
            # the peer's flow, injected here: the peer has it; note it as sent, so that if
            # this node takes over, its end is sent back
            f.sent = True
            f.old_state = f.state
            return out
        if not self.active:
            return out
        if key.proto == TCP:
            if fresh or f.state != f.old_state:
                decision = self._ask(f, now)
                if decision:
                    self._send(key, f, now, decision, out)
                elif not self._syncable(f):
                    f.due = None
        elif not f.sent and f.status & ct.IPS_ASSURED:
            decision = self._ask(f, now)
            if decision:
                self._send(key, f, now, decision, out)
        return out

    def _end(self, key: ct.Tuple, now: float, out: Out, quiet: bool) -> None:
        f = self.flows.pop(key, None)
        if f is None or quiet or not self.active or not f.sent or f.reply is None:
            return
        if f.proto == TCP:
            f.state = CLOSE
        f.status &= ~ct.IPS_ASSURED
        out.append((self._entry(key, f, END_TIMEOUT), False))
        self.stats["ends"] += 1

    # -- refresh -----------------------------------------------------------------------

    def next_deadline(self) -> float:
        """When poll() next has something to do (infinity: nothing scheduled)."""
        return min((q[0][0] for q in self._due.values() if q), default=float("inf"))

    def poll(self, now: float, limit: int = POLL_LIMIT) -> Out:
        """The refreshes due by now (at most `limit`), as the policy decides each."""
        out: Out = []
        n = 0
        for q in self._due.values():
            while q and q[0][0] <= now and n < limit:
                due, key = q.popleft()
                f = self.flows.get(key)
                if f is None or f.due != due:
                    continue                # ended, or rescheduled since
                n += 1
                decision = self._ask(f, now)
                if decision:
                    self.stats["refreshes"] += 1
                    self._send(key, f, now, decision, out)
                else:
                    self._schedule(key, f, now)
        return out

    def set_active(self, active: bool, now: float) -> None:
        """Produce entries (this node forwards) or only keep the view.  A node that becomes
        active schedules a refresh of every flow it holds (its own and those it inherited),
        spread over each one's interval so a large table does not go out in one burst."""
        if active == self.active:
            return
        self.active = active
        self._due.clear()
        if not active:
            for f in self.flows.values():
                f.due = None
            return
        items = [(k, f) for k, f in self.flows.items() if self._syncable(f)]
        for i, (k, f) in enumerate(items):
            self._schedule(k, f, now, first=self._interval(f) * (i + 1) / (len(items) + 1))
        # one deque per interval must stay in due order: sort each once
        for interval, q in self._due.items():
            self._due[interval] = deque(sorted(q, key=lambda item: item[0]))

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
        for i in range(0, len(entries), step):
            out: Out = []
            for c in entries[i:i + step]:
                if c.orig is None:
                    continue
                seen.add(c.orig)
                out += self.apply(ct.Message(ct.MSG_NEW, 0, 0, c.orig.family, c), now)
            yield out
        gone = [k for k in self.flows if k not in seen]
        for i in range(0, len(gone), step):
            out = []
            for key in gone[i:i + step]:
                if key in self.flows:
                    self._end(key, now, out, quiet=False)
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

    def to_entry(self, key: ct.Tuple, now: float) -> SyncEntry | None:
        """The entry of flow `key` now, or None if it has ended or is not worth sending."""
        f = self.flows.get(key)
        if f is None or f.reply is None or (f.proto == TCP and f.state == NONE):
            return None
        f.sent = True
        return self._entry(key, f, self.timeout_of(f.proto, f.state))
