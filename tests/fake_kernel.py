"""A fake of the node's privileged interface (tandem.kernel.Kernel) for tests without root.

It keeps the state the real kernel would (addresses per interface, the node's rules, link
state) and records every call in order, so a test asserts what was asked of the kernel and
in which order.  `fail` makes the next call of a named operation raise the given OSError, as
the kernel would (a missing interface, a permission refused).
"""
from __future__ import annotations

import errno
import socket
from typing import Any, Callable, Iterable


class FakeQueue:
    """A bound NFQUEUE: datagrams written to `feed` are the queued packets.

    Mirrors the one part of netfilterqueue.NetfilterQueue the adapter uses: run_socket(sock)
    reads datagrams from sock until it raises BlockingIOError, and hands each to the callback
    as a packet with get_payload / accept / drop / set_payload; the verdicts are recorded in
    `verdicts` as ("accept", bytes) or ("drop", bytes)."""

    def __init__(self, queue: int, callback: Callable[[Any], None]) -> None:
        self.queue = queue
        self.callback = callback
        self._ours, self.feed = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.feed.setblocking(False)
        self.verdicts: list[tuple[str, bytes]] = []
        self.marks: list[int] = []      # the marks set on verdicts, in order
        self.bound = True

    def get_fd(self) -> int:
        return self._ours.fileno()

    def run_socket(self, sock: Any) -> None:
        while True:
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                return
            self.callback(_FakePacket(self, data))

    def unbind(self) -> None:
        self.bound = False
        self._ours.close()
        self.feed.close()


class _FakePacket:
    def __init__(self, q: FakeQueue, data: bytes) -> None:
        self.q, self.data = q, data

    def get_payload(self) -> bytes:
        return self.data

    def set_payload(self, data: bytes) -> None:
        self.data = data

    def set_mark(self, mark: int) -> None:      # kernel mode: the verdict carries a mark
        self.q.marks.append(mark)

    def accept(self) -> None:
        self.q.verdicts.append(("accept", self.data))

    def drop(self) -> None:
        self.q.verdicts.append(("drop", self.data))


class FakeInject:
    """director.ct_inject.InjectSocket as a kernel that accepts every request: `sent` holds
    the decoded requests (proto.ctnetlink.Message), in order.  With `table` set (the
    ORIGINAL tuples conntrack holds) it answers as the kernel does: EEXIST to an exclusive
    create of an entry there, ENOENT to an update or delete of one that is not."""
    portid = 777

    def __init__(self) -> None:
        self.sent: list[Any] = []
        self.closed = False
        self.table: set | None = None

    def run(self, inj: Any, limit: int) -> int:
        from proto import ctnetlink as ct
        reqs = inj.requests(limit)
        for raw in reqs:
            for m in ct.decode(raw):
                self.sent.append(m)
                inj.on_ack(m.seq, self._answer(m, ct))
        return len(reqs)

    def _answer(self, m: Any, ct: Any) -> int:
        import errno
        table, key = self.table, m.ct.orig
        if table is None:
            return 0
        if m.msg_type == ct.MSG_DELETE:
            if key not in table:
                return errno.ENOENT
            table.discard(key)
        elif m.flags & ct.NLM_F_CREATE:
            if key in table:
                return errno.EEXIST
            table.add(key)
        elif key not in table:
            return errno.ENOENT
        return 0

    def close(self) -> None:
        self.closed = True


class FakeEvents:
    """A conntrack event socket: `push(messages)` or `overrun()` as the kernel would send;
    read(limit) hands them back as director.ct_events.EventSocket.read does."""

    def __init__(self) -> None:
        self._ours, self._wake = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._ours.setblocking(False)
        self.pending: list[list[Any] | None] = []      # datagrams; None: ENOBUFS
        self.closed = False
        self.empty = False          # the last read ended on an empty socket

    def push(self, messages: list[Any]) -> None:
        self.pending.append(list(messages))
        self._wake.send(b"x")

    def overrun(self) -> None:
        self.pending.append(None)
        self._wake.send(b"x")

    def fileno(self) -> int:
        return self._ours.fileno()

    def read(self, limit: int = 64) -> tuple[list[Any], bool]:
        out: list[Any] = []
        self.empty = False
        for _ in range(limit):
            try:
                self._ours.recv(16)
            except BlockingIOError:
                self.empty = True
                break
            got = self.pending.pop(0)
            if got is None:
                return out, True
            out += got
        return out, False

    def close(self) -> None:
        self.closed = True
        self._ours.close()
        self._wake.close()


class FakeDump:
    """director.ct_events.DumpReader over a snapshot of FakeKernel.conntrack, `per_datagram`
    entries a datagram; `pause()` holds the rest back (as a kernel slow to walk its table)
    until `resume()`."""

    def __init__(self, entries: list[Any], per_datagram: int = 100) -> None:
        self._ours, self._wake = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._ours.setblocking(False)
        self._parts = [entries[i:i + per_datagram] for i in range(0, len(entries), per_datagram)]
        self.done = self.interrupted = self.closed = False
        self.paused = False
        self._signal()

    def _signal(self) -> None:
        if not self.paused and not self.closed:
            self._wake.send(b"x")

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        self._signal()

    def fileno(self) -> int:
        return self._ours.fileno()

    def read(self, limit: int = 1) -> list[Any]:
        out: list[Any] = []
        for _ in range(limit):
            if self.done or self.paused:
                break
            try:
                self._ours.recv(16)
            except BlockingIOError:
                break
            if self._parts:
                out += self._parts.pop(0)
            else:
                self.done = True
            self._signal()
        return out

    def close(self) -> None:
        self.closed = True
        self._ours.close()
        self._wake.close()


class FakeKernel:
    """Implements every method of tandem.kernel.Kernel (tests/unit/test_kernel.py checks)."""

    def __init__(self, links: Iterable[str] = ("front", "back")) -> None:
        self.links: dict[str, bool] = {name: True for name in links}     # name -> up
        self.addresses: dict[str, set[str]] = {name: set() for name in links}
        self.rules: tuple[tuple[str, ...], int] | None = None            # (addrs, queue)
        self.calls: list[tuple[str, Any]] = []
        self.announced: list[tuple[str, tuple[str, ...]]] = []
        self.queues: list[FakeQueue] = []
        self.vrrp_sockets: list[tuple[str, Any]] = []
        #: the kernel-mode table as last loaded: (services, bindings, queue, timeouts)
        self.kernel_rules: tuple[tuple, tuple, int, Any] | None = None
        self.timeout_generation = 0
        #: the `ct timeout` objects in the table by name (a fresh load keeps them, as
        #: director.kernel_rules does; a test sets a predecessor's)
        self.timeout_objects: set[str] = set()
        #: whether the kernel-mode part was in the table after each rule operation (both
        #: modes share one table, as tandem.kernel.LinuxKernel loads it: the first load of
        #: a kernel object replaces whatever a killed predecessor left, unless the
        #: kernel-mode load follows and replaces it)
        self.kernel_part_history: list[bool] = []
        self._kernel_loaded = False
        #: the table's drop counters (director.kernel_rules.DROP_COUNTERS), as a test sets them
        self.drops = {"invalid": 0, "untranslated": 0}
        self.events: list[FakeEvents] = []
        #: the conntrack table a dump returns (proto.ctnetlink.Conntrack entries)
        self.conntrack: list[Any] = []
        self.dumps: list[FakeDump] = []
        #: conntrack's default timeouts in the namespace (set_ct_timeouts), as the kernel's
        self.ct_timeouts: dict[str, int] = {}
        self._fail: dict[str, OSError] = {}

    def fail(self, op: str, exc: Exception) -> None:
        """The next call of `op` raises `exc`."""
        self._fail[op] = exc

    def _call(self, op: str, *args: Any) -> None:
        self.calls.append((op, args))
        exc = self._fail.pop(op, None)
        if exc is not None:
            raise exc

    def install_rules(self, addrs: Iterable[str], queue: int, kernel_follows: bool = False) -> None:
        addrs = tuple(sorted(set(addrs)))
        self._call("install_rules", addrs, queue)
        if self.rules is None and not self._kernel_loaded and not kernel_follows:
            self.kernel_rules = None        # the table replaced by the engine-mode part alone
            self.timeout_objects = set()
        self.rules = (addrs, queue)
        self.kernel_part_history.append(self.kernel_rules is not None)

    def remove_rules(self) -> None:
        self._call("remove_rules")
        self.rules = None
        self.kernel_part_history.append(self.kernel_rules is not None)

    def install_kernel_rules(self, services: list, bindings: list, queue: int,
                             timeouts: Any, fresh: bool, generation: int = 1) -> None:
        self._call("install_kernel_rules", tuple(services), tuple(bindings), queue, fresh)
        if not fresh and self.kernel_rules is None:
            raise OSError(errno.ENOENT, "no table inet tandem to update")
        keep = timeouts if fresh or timeouts is not None else self.kernel_rules[3]
        self.kernel_rules = (tuple(services), tuple(bindings), queue, keep)
        self._kernel_loaded = True
        self.kernel_part_history.append(True)
        self.timeout_generation = generation if timeouts is not None else self.timeout_generation
        if timeouts is not None:
            from director.kernel_rules import TIMEOUT_POLICY, timeout_name
            names = {timeout_name(p, f, generation) for p in TIMEOUT_POLICY for f in (4, 6)}
            if fresh and names & self.timeout_objects:
                raise OSError(errno.EEXIST, "timeout objects already in the table")
            self.timeout_objects |= names
        if fresh:
            self.drops = dict.fromkeys(self.drops, 0)     # a new table's counters

    def kernel_timeout_objects(self) -> list[str]:
        self._call("kernel_timeout_objects")
        return sorted(self.timeout_objects)

    def remove_timeouts(self, names: list[str]) -> list[str]:
        self._call("remove_timeouts", tuple(sorted(names)))
        gone = sorted(set(names) & self.timeout_objects)
        self.timeout_objects -= set(gone)
        return gone

    def remove_kernel_rules(self) -> None:
        self._call("remove_kernel_rules")
        self.kernel_rules = None
        self.timeout_objects = set()
        self._kernel_loaded = False
        self.kernel_part_history.append(False)

    def kernel_drop_counters(self) -> dict:
        self._call("kernel_drop_counters")
        if self.kernel_rules is None:
            raise OSError(errno.ENOENT, "no table inet tandem")
        return dict(self.drops)

    def open_ct_events(self) -> FakeEvents:
        self._call("open_ct_events")
        ev = FakeEvents()
        self.events.append(ev)
        return ev

    def set_ct_timeouts(self, values: dict[str, int]) -> dict[str, int]:
        self._call("set_ct_timeouts", dict(values))
        old = {k: self.ct_timeouts.get(k, 432000 if "established" in k else 120) for k in values}
        self.ct_timeouts.update(values)
        return old

    def open_ct_inject(self) -> "FakeInject":
        self._call("open_ct_inject")
        self.inject = FakeInject()
        return self.inject

    def dump_conntrack(self) -> list:
        self._call("dump_conntrack")
        return list(self.conntrack)

    def open_ct_dump(self) -> FakeDump:
        """A snapshot of the table as dump_conntrack takes it (a test's stand-in for that
        method is honoured), read a datagram at a time; `dumps` keeps each one."""
        self.dumps.append(FakeDump(self.dump_conntrack()))
        return self.dumps[-1]

    def delete_conntrack(self, tuples: list) -> int:
        tuples = list(tuples)
        self._call("delete_conntrack", tuple(tuples))
        gone = set(tuples)
        before = len(self.conntrack)
        self.conntrack = [c for c in self.conntrack if c.orig not in gone]
        return before - len(self.conntrack)

    def get_conntrack(self, tuples: list) -> dict:
        tuples = list(tuples)
        self._call("get_conntrack", tuple(tuples))
        by_orig = {c.orig: c for c in self.conntrack}
        return {t: by_orig[t] for t in tuples if t in by_orig}

    def add_addresses(self, ifname: str, addrs: Iterable[str]) -> None:
        addrs = tuple(addrs)
        self._call("add_addresses", ifname, addrs)
        if ifname not in self.links:
            raise OSError(errno.ENODEV, f"no interface {ifname}")
        self.addresses[ifname].update(addrs)

    def del_addresses(self, ifname: str, addrs: Iterable[str]) -> None:
        addrs = tuple(addrs)
        self._call("del_addresses", ifname, addrs)
        self.addresses.get(ifname, set()).difference_update(addrs)

    def links_down(self, ifnames: Iterable[str]) -> list[str]:
        ifnames = list(ifnames)
        self._call("links_down", tuple(ifnames))
        return [n for n in ifnames if not self.links.get(n, False)]

    def announce(self, ifname: str, addrs: Iterable[str]) -> int:
        addrs = tuple(addrs)
        self._call("announce", ifname, addrs)
        if ifname not in self.links:
            raise OSError(errno.ENODEV, f"no interface {ifname}")
        if addrs:
            self.announced.append((ifname, addrs))
        return len(addrs)

    def bind_queue(self, queue: int, callback: Callable[[Any], None], max_len: int,
                   sock_len: int) -> FakeQueue:
        self._call("bind_queue", queue, max_len, sock_len)
        q = FakeQueue(queue, callback)
        self.queues.append(q)
        return q

    def open_vrrp_socket(self, ifname: str, cfg: Any) -> tuple[socket.socket, int]:
        self._call("open_vrrp_socket", ifname)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        ours.setblocking(False)
        self.vrrp_sockets.append((ifname, theirs))
        return ours, 1 + list(self.links).index(ifname) if ifname in self.links else 1
