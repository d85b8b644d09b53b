"""Putting synced connections of kernel-mode services into the kernel's conntrack table.

A backup in kernel forwarding mode holds the master's connections where the kernel will
look for them after a takeover: as conntrack entries with their NAT, so that taking over
is only addresses and gratuitous ARP.  `Injector` is the sans-IO core: sync entries in,
ctnetlink requests out, acknowledgements back in.

    inj.offer(entry, bulk=False)         # a received entry of a kernel-mode service
    for raw in inj.requests(limit): ...  # netlink messages to send now (at most `limit`)
    inj.on_ack(seq, errno)               # each acknowledgement (proto.ctnetlink.Ack)

What each entry becomes (docs/kernel-fast-path.md says why each part is needed):
- a connection not yet injected: CT_NEW, exclusive, with the ORIGINAL tuple (client ->
  VIP) and NAT attributes (DNAT to the real server, SNAT to laddr:lport), so the kernel
  derives the translated reply tuple and sets the NAT bits; status CONFIRMED (with
  SEEN_REPLY and ASSURED); the entry's timeout (mandatory); for TCP the state
  (proto.ctnetlink.CT_STATE_OF_IPVS) and BE_LIBERAL in both directions, since ctnetlink
  cannot set window tracking; the mark of the binding on this node (`mark_of`);
- one already injected with the same binding: an update (timeout, TCP state, mark): the
  master's state changes and its periodic refreshes keep the entry alive here;
- one whose binding changed (a client port reused for a new connection), or whose entry here
  the kernel view (`binding_of`) shows with another binding than the one injected (this node
  forwarded a newer connection on those ports while it was master): delete, create;
- the end (timeout 0, syncd.kernel_source.END_TIMEOUT): delete.

Entries are coalesced per connection until sent: a burst of changes to one connection
costs one request, with its latest state.  `requests(limit)` hands out at most `limit`
messages, so the node's loop stays bounded.  Answers: EEXIST on a create means the kernel
already has an entry for that tuple.  One the kernel view shows with the entry's own
binding is kept and updated, from normal sync as from a bulk: it is the same connection
(in a cluster, a director's own flow that a peer now forwards and tells of).  Otherwise,
from normal sync the peer wins, as in the engine (the entry is deleted and created again,
once).  From a bulk resync the existing entry is
kept when it has the peer's binding (`binding_of`: this node's own flows from before a
restart, as its kernel view knows them), updated with the peer's timeout, state and
BE_LIBERAL; one with another binding is replaced like a normal sync's (counted `stale`): the
client port was reused for a new connection while this node was down (its old entry was in
TIME_WAIT here, the kernel made a new one on the peer), and keeping the old NAT would send
that connection to the old real server once this node takes over (it resets it).  An entry
the view does not know is kept, as before.  ENOENT on an update means the
entry expired here: it is created.  ENOENT on a delete is what was wanted.  Any other
error is counted by errno and the connection forgotten, so the next entry starts afresh.
"""
from __future__ import annotations

import errno
import math
from collections import deque
from typing import Callable

from proto import ctnetlink as ct
from proto.consts import TCP, UDP
from proto.sync import SyncEntry

#: requests handed out per call of `requests()` unless told otherwise
BATCH = 256

_Key = tuple  # (proto, caddr, cport, vaddr, vport)
_NEW, _UPDATE, _DELETE = "new", "update", "delete"


def _key(e: SyncEntry) -> _Key:
    return (e.proto, e.caddr, e.cport, e.vaddr, e.vport)


def _binding(e: SyncEntry) -> tuple:
    return (e.daddr, e.dport, e.laddr, e.lport)


def _orig(e: SyncEntry) -> ct.Tuple:
    return ct.Tuple(e.proto, e.caddr, e.vaddr, e.cport, e.vport)


def _timeout(e: SyncEntry) -> int:
    return max(1, math.ceil(e.timeout))


def _ct_state(e: SyncEntry) -> int | None:
    if e.proto != TCP:
        return None
    states = ct.CT_STATE_OF_IPVS
    return states[e.state] if e.state < len(states) else ct.TCP_CT_ESTABLISHED


class Injector:
    def __init__(self, mark_of: Callable[[SyncEntry], int | None] | None = None,
                 binding_of: Callable[[ct.Tuple], tuple | None] | None = None) -> None:
        self.mark_of = mark_of or (lambda e: None)
        #: ORIGINAL tuple -> the binding (real server, port, laddr, lport) of this node's own
        #: entry for it, or None when not known (syncd.kernel_source.KernelSyncSource.binding)
        self.binding_of = binding_of or (lambda orig: None)
        self._pending: dict[_Key, tuple[SyncEntry, bool]] = {}   # coalesced, in arrival order
        self._again: deque[tuple[str, _Key, SyncEntry, bool, bool]] = deque()  # from answers
        self.known: dict[_Key, tuple] = {}        # injected by us: key -> binding
        self._inflight: dict[int, tuple[str, _Key, SyncEntry, bool, bool]] = {}
        self._seq = 0
        self.stats = dict.fromkeys(("offered", "coalesced", "skipped", "created", "updated",
                                    "deleted", "replaced", "recreated", "kept", "stale",
                                    "gone", "failed"), 0)
        self.errors: dict[str, int] = {}

    # -- in ----------------------------------------------------------------------------

    def offer(self, entry: SyncEntry, bulk: bool = False) -> None:
        """A received entry for a kernel-mode service (templates and other protocols are
        not conntrack entries: skipped)."""
        if entry.template or entry.proto not in (TCP, UDP):
            self.stats["skipped"] += 1
            return
        self.stats["offered"] += 1
        key = _key(entry)
        if key in self._pending:
            self.stats["coalesced"] += 1
            bulk = bulk and self._pending[key][1]
        self._pending[key] = (entry, bulk)

    @property
    def backlog(self) -> int:
        """Connections waiting for a request (and requests waiting for an answer)."""
        return len(self._pending) + len(self._again) + len(self._inflight)

    # -- out ---------------------------------------------------------------------------

    def requests(self, limit: int = BATCH) -> list[bytes]:
        """At most `limit` netlink messages to send now, in order."""
        out: list[bytes] = []
        while self._again and len(out) < limit:
            self._emit(*self._again.popleft(), out)
        pending = self._pending
        while pending and len(out) < limit:
            key = next(iter(pending))
            entry, bulk = pending[key]
            ops = self._plan(key, entry)
            if out and len(out) + len(ops) > limit:
                break                               # a replacement's two go together
            del pending[key]
            if entry.timeout <= 0:
                self.known.pop(key, None)
            elif len(ops) == 2:
                self.stats["replaced"] += 1
            for op in ops:
                self._emit(op, key, entry, bulk, False, out)
        return out

    def _plan(self, key: _Key, entry: SyncEntry) -> tuple[str, ...]:
        if entry.timeout <= 0:
            return (_DELETE,)
        binding = self.known.get(key)
        if binding is None:
            return (_NEW,)
        here = self.binding_of(_orig(entry))
        if binding != _binding(entry) or (here is not None and here != binding):
            # a new binding, or the kernel's entry is no longer the one injected (this node
            # forwarded a newer connection on the same ports meanwhile): an update would
            # leave that entry's NAT
            return (_DELETE, _NEW)
        return (_UPDATE,)

    def _emit(self, op: str, key: _Key, entry: SyncEntry, bulk: bool, retried: bool,
              out: list[bytes]) -> None:
        self._seq = self._seq % 0xFFFFFFFF + 1
        seq = self._seq
        orig = _orig(entry)
        if op == _DELETE:
            raw = ct.delete_request(orig, seq)
        elif op == _UPDATE:
            raw = ct.update_request(ct.refresh(orig, _timeout(entry), tcp_state=_ct_state(entry),
                                               mark=self.mark_of(entry)), seq)
        else:
            raw = ct.new_request(ct.injection(orig, ct.NatRange(entry.daddr, entry.dport),
                                              ct.NatRange(entry.laddr, entry.lport),
                                              _timeout(entry), tcp_state=_ct_state(entry),
                                              mark=self.mark_of(entry)), seq)
        self._inflight[seq] = (op, key, entry, bulk, retried)
        out.append(raw)

    # -- answers -----------------------------------------------------------------------

    def answers_lost(self) -> int:
        """The socket lost answers: forget every request waiting for one (the next entry of
        each connection starts afresh); return how many."""
        n = len(self._inflight)
        for _op, key, *_ in self._inflight.values():
            self.known.pop(key, None)
        self._inflight.clear()
        return n

    def on_ack(self, seq: int, err: int) -> None:
        """The kernel's answer to request `seq` (0: done, else the errno)."""
        req = self._inflight.pop(seq, None)
        if req is None:
            return
        op, key, entry, bulk, retried = req
        st = self.stats
        if err == 0:
            if op == _DELETE:
                st["deleted"] += 1
            else:
                st["created" if op == _NEW else "updated"] += 1
                self.known[key] = _binding(entry)
            return
        if op == _NEW and err == errno.EEXIST and not retried:
            here = self.binding_of(_orig(entry))
            if here == _binding(entry) or (bulk and here is None):
                # already as the peer has it (this node's own flow, from before a restart,
                # or, in a cluster, one a peer forwards now and tells of), or from a bulk
                # unknown to the view: keep its NAT, take the peer's timeout and state, and
                # BE_LIBERAL (its window data is stale)
                self._again.append((_UPDATE, key, entry, bulk, True))
                st["kept"] += 1
                return
            if bulk:
                st["stale"] += 1    # an older connection on the same ports: the peer's wins
        if op == _NEW and err == errno.EEXIST and not retried:
            self._again.append((_DELETE, key, entry, bulk, True))
            self._again.append((_NEW, key, entry, bulk, True))
            st["replaced"] += 1
            return
        if op == _UPDATE and err == errno.ENOENT:
            self.known.pop(key, None)
            self._again.append((_NEW, key, entry, bulk, True))
            st["recreated"] += 1
            return
        if op == _DELETE and err == errno.ENOENT:
            st["gone"] += 1
            return
        st["failed"] += 1
        name = errno.errorcode.get(err, str(err))
        self.errors[name] = self.errors.get(name, 0) + 1
        self.known.pop(key, None)


# -- the adapter ----------------------------------------------------------------------------

#: setsockopt(SOL_NETLINK, NETLINK_CAP_ACK): an error answer carries only the request's
#: header, not the whole request back
SOL_NETLINK, NETLINK_CAP_ACK = 270, 10


class InjectSocket:
    """A ctnetlink socket that sends an Injector's requests and hands it the answers.

    The kernel handles a request while it is being sent, so the answers are waiting when
    `send` returns; several requests go in one datagram (the kernel walks them in order).
    `portid` is the port id the kernel puts in the events these requests cause
    (syncd.kernel_source's `own_pid`)."""

    def __init__(self, rcvbuf: int = 1 << 20) -> None:
        import socket
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, ct.NETLINK_NETFILTER)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        self.sock.bind((0, 0))
        self.sock.setblocking(False)
        self.portid: int = self.sock.getsockname()[0]
        self.lost_answers = 0

    def run(self, inj: Injector, limit: int = BATCH) -> int:
        """Send up to `limit` requests and read their answers; return how many were sent."""
        reqs = inj.requests(limit)
        if not reqs:
            return 0
        self.sock.send(b"".join(reqs))
        self.read(inj)
        return len(reqs)

    def read(self, inj: Injector) -> None:
        while True:
            try:
                data = self.sock.recv(1 << 16)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:        # answers lost: nothing waits for them
                    self.lost_answers += inj.answers_lost()
                    continue
                raise
            for m in ct.decode(data):
                if isinstance(m, ct.Ack):
                    inj.on_ack(m.seq, m.errno)

    def drain(self, inj: Injector, limit: int = BATCH) -> int:
        """Run until nothing is pending (for tools and tests); return requests sent."""
        sent = 0
        while True:
            n = self.run(inj, limit)
            if not n:
                return sent
            sent += n

    def close(self) -> None:
        self.sock.close()
