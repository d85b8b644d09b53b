"""NFQUEUE adapter: feeds queued packets to the engine and returns its verdicts.

It runs inside the asyncio loop: the queue's netlink socket is watched with
add_reader, and each wake-up handles a bounded batch of pending packets.  The
bound matters: draining until EAGAIN (run(block=False)) never returns under a
steady 50 kpps, and the same loop must send VRRP adverts on time, or the peer
takes over from a healthy master.  The batch is bounded in packets (BATCH) and in
time (TURN_BUDGET): a verdict is a syscall in which the kernel goes on with the packet
(NAT, conntrack's confirmation and its events, the transmit), so one packet may cost
200 us where an engine-mode packet costs 10.  A kernel-mode burst of 200 first packets
held the loop 40 ms, and the conntrack events those verdicts caused, hence the sync
entries of the new connections, waited behind it: a master killed in that window had
sent none of them.  The engine's clock is read once per batch; the budget's once per
packet: 35 ns more per packet (timeit here: 44 ns for the read and compare against 9 for
the count alone), 0.4 % of the ~8.8 us an engine-mode packet costs end to end.

Whole packets: the kernel reassembles fragments before the queue (director/rules.py), so
a queued UDP datagram may be up to 65,535 bytes.  netfilterqueue asks the kernel for at
most 4,016 bytes of each packet and reads 4,096-byte netlink messages; a larger packet
would reach the engine cut short (counted "truncated" and dropped), and a verdict with a
payload trims the real packet to what was sent.  So the bind raises the queue's copy
range to the kernel's maximum, 65,531 bytes (set_copy_range), and the adapter reads whole
messages.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import struct
import time
from typing import Callable

from netfilterqueue import NetfilterQueue

from director.engine import Mark

log = logging.getLogger("tandem.nfqueue")

QUEUE_MAXLEN = 8192                 # packets the kernel may hold for us
SOCK_RCVBUF = 16 * 1024 * 1024      # room for bursts between wake-ups
BATCH = 256                         # packets per wake-up (~3 ms) before other work runs
#: s, the most one wake-up spends on queued packets before other work (conntrack events,
#: sync, VRRP) runs; the packet under way is finished, so a turn may run one packet over
TURN_BUDGET = 0.002
#: packets per call of serve_pending: another reader's turn looks at the queue between its
#: slices of work, and takes what waited then
PENDING_BATCH = 32
#: s, the most one call of serve_pending spends: a first packet that waits behind a slice
#: of events is served, but a burst of them cannot take the event reader's turn.  With 2 ms
#: (this queue's own turn) a burst of 200 SYNs left each of the event reader's turns one
#: slice of 16 events: their sync entries trickled out ~20 per 4.5 ms, and a master killed
#: 40 ms after the burst had not sent 16-64 of 200 young connections (make bench,
#: toolchain: 136/200 kept)
PENDING_BUDGET = 0.0003
#: bytes of each queued packet the kernel copies to us: the most it can (NFQNL_MAX_COPY_RANGE:
#: a netlink attribute's 16-bit length less its 4-byte header).  Every packet up to 65,531
#: bytes arrives whole; the 4 largest sizes IPv4 allows (UDP payloads of 65,504 to 65,507
#: bytes) cannot cross NFQUEUE whole, and are counted `truncated` and dropped
COPY_RANGE = 0xFFFF - 4
#: the largest netlink message the queue sends: a whole packet and its attributes (about
#: 200 bytes: ids, marks, devices, timestamp, hardware address)
RECV_SIZE = COPY_RANGE + 4096

# nfnetlink_queue's configuration message (linux/netfilter/nfnetlink_queue.h)
_NFQNL_MSG_CONFIG = (3 << 8) | 2        # NFNL_SUBSYS_QUEUE << 8 | NFQNL_MSG_CONFIG
_NFQA_CFG_PARAMS = 2
_NFQNL_COPY_PACKET = 2
_NLM_F_REQUEST = 1


class _Budget:
    """A socket stand-in for NetfilterQueue.run_socket: it hands out at most `left`
    datagrams and none once `clock()` reaches `until`, then says EAGAIN, which makes
    run_socket return."""

    __slots__ = ("sock", "left", "until", "clock")

    def __init__(self, sock: socket.socket, clock: Callable[[], float]) -> None:
        self.sock = sock
        self.left = 0
        self.until = 0.0
        self.clock = clock

    def recv(self, size: int) -> bytes:
        if self.left <= 0 or self.clock() >= self.until:
            raise BlockingIOError(errno.EAGAIN, "batch done")
        self.left -= 1
        # not `size`: netfilterqueue asks for 4096 bytes, and a longer message would be cut
        return self.sock.recv(max(size, RECV_SIZE))


def config_message(queue_num: int, copy_range: int = COPY_RANGE) -> bytes:
    """NFQNL_MSG_CONFIG with NFQA_CFG_PARAMS: copy whole packets, up to `copy_range` bytes."""
    params = struct.pack("!IB", copy_range, _NFQNL_COPY_PACKET) + b"\0" * 3   # padded to 4
    attr = struct.pack("=HH", 4 + 5, _NFQA_CFG_PARAMS) + params
    body = struct.pack("!BBH", socket.AF_UNSPEC, 0, queue_num) + attr       # nfgenmsg, res_id
    return struct.pack("=IHHII", 16 + len(body), _NFQNL_MSG_CONFIG, _NLM_F_REQUEST, 0, 0) + body


def set_copy_range(fd: int, queue_num: int, copy_range: int = COPY_RANGE,
                   path: str = "/proc/net/netfilter/nfnetlink_queue") -> bool:
    """Set the copy range of the queue bound on netlink socket `fd` (only the socket that
    bound a queue may configure it), then read it back from the kernel's queue list: True
    when it is confirmed, OSError when the kernel holds another.  False when the list cannot
    be read: it is root's (mode 0440), and a node running as its own user with only
    CAP_NET_ADMIN trusts the kernel, which takes this message from the socket that bound the
    queue exactly as it took the bind (a refusal would come back as a netlink error that
    netfilterqueue's reader skips)."""
    with socket.socket(fileno=os.dup(fd)) as s:
        s.send(config_message(queue_num, copy_range))
    try:
        got = queue_copy_range(queue_num, path)
    except PermissionError:
        return False
    if got != copy_range:
        raise OSError(f"NFQUEUE {queue_num}: copy range is {got}, not {copy_range}: "
                      "larger packets would reach the engine cut short")
    return True


def bind_queue(queue_num: int, callback: Callable, max_len: int, sock_len: int) -> NetfilterQueue:
    """Bind `queue_num` with a copy range that carries whole packets (module docstring)."""
    nfq = NetfilterQueue()
    nfq.bind(queue_num, callback, max_len=max_len, sock_len=sock_len)
    try:
        set_copy_range(nfq.get_fd(), queue_num)
    except OSError:
        nfq.unbind()
        raise
    return nfq


_bind = bind_queue


class QueueAdapter:
    def __init__(self, handle: Callable[[bytes, float], bytes | Mark | None], queue_num: int,
                 clock: Callable[[], float] = time.monotonic,
                 bind: Callable[..., NetfilterQueue] | None = None) -> None:
        self._handle = handle
        self.queue_num = queue_num
        self._clock = clock
        self._now = clock()
        self._nfq: NetfilterQueue | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.wakeups = 0
        #: verdicts that failed inside another reader's turn (serve_pending), kept there
        self.serve_errors = 0
        #: binds the queue: (queue_num, callback, max_len, sock_len) -> a bound NetfilterQueue;
        #: the node passes its privileged interface's (tandem.kernel), tests a fake
        self._bind = bind or _bind

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        nfq = self._bind(self.queue_num, self._on_packet, QUEUE_MAXLEN, SOCK_RCVBUF)
        self._nfq, self._loop = nfq, loop
        sock = socket.socket(fileno=os.dup(nfq.get_fd()))
        sock.setblocking(False)
        self._budget = _Budget(sock, self._clock)
        loop.add_reader(nfq.get_fd(), self._on_readable)

    def _serve(self, limit: int, seconds: float) -> None:
        """Verdict what is queued, at most `limit` packets or `seconds` (the engine's clock
        read once for them all)."""
        assert self._nfq is not None        # only between start() and stop()
        self._now = self._clock()
        self._budget.left = limit
        self._budget.until = self._now + seconds
        # the stub wants a socket; run_socket only calls recv(), which _Budget provides
        self._nfq.run_socket(self._budget)  # type: ignore[arg-type]

    def _on_readable(self) -> None:
        self.wakeups += 1
        self._serve(BATCH, TURN_BUDGET)

    def serve_pending(self, limit: int = PENDING_BATCH) -> None:
        """The packets queued now, at most `limit`, verdicted from another reader's turn:
        the conntrack event reader calls it before each slice of events (tandem.kernel_mode,
        director.turn_slices), so a first packet that arrives meanwhile does not wait for
        the whole batch of events; at most PENDING_BUDGET of that turn, so a burst of them
        cannot starve the events.  Costs one recv that fails (EAGAIN) when none waits.
        Nothing before start() or after stop()."""
        if self._nfq is None:
            return
        try:
            self._serve(limit, PENDING_BUDGET)
        except Exception:
            # the queue's fault, not the caller's: a failed verdict must not pass for a
            # conntrack read error there (which rebuilds the whole view from a dump)
            self.serve_errors += 1
            if self.serve_errors <= 10:
                log.exception("NFQUEUE: serving the queued packets failed")

    def _on_packet(self, pkt) -> None:
        data = pkt.get_payload()
        out = self._handle(data, self._now)
        if out is None:
            pkt.drop()
        elif out is data:
            pkt.accept()
        elif out.__class__ is Mark:
            pkt.set_mark(out.mark)
            pkt.accept()
        else:
            pkt.set_payload(out)
            pkt.accept()

    def stop(self) -> None:
        if self._nfq is not None:
            assert self._loop is not None       # both set by start()
            try:
                self._loop.remove_reader(self._nfq.get_fd())
                self._budget.sock.close()
            finally:
                self._nfq.unbind()
                self._nfq = None


def queue_copy_range(queue_num: int, path: str = "/proc/net/netfilter/nfnetlink_queue") -> int | None:
    """The copy range the kernel holds for our queue (the list's fifth column), or None;
    PermissionError when the list is not ours to read."""
    try:
        with open(path) as f:
            for line in f:
                v = line.split()
                if len(v) >= 5 and int(v[0]) == queue_num:
                    return int(v[4])
    except PermissionError:
        raise
    except (OSError, ValueError):
        pass
    return None


def kernel_queue_stats(queue_num: int, path: str = "/proc/net/netfilter/nfnetlink_queue") -> dict:
    """The kernel's own counters for our queue: drops we never saw."""
    try:
        with open(path) as f:
            for line in f:
                v = line.split()
                if len(v) >= 7 and int(v[0]) == queue_num:
                    out = {"queue_total": int(v[2]), "queue_dropped": int(v[5]),
                           "user_dropped": int(v[6])}
                    if len(v) >= 8:         # the id sequence: packets handed to user space
                        out["queued"] = int(v[7])
                    return out
    except (OSError, ValueError):
        pass
    return {}
