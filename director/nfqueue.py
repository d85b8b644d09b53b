"""NFQUEUE adapter: feeds queued packets to the engine and returns its verdicts.

It runs inside the asyncio loop: the queue's netlink socket is watched with
add_reader, and each wake-up handles a bounded batch of pending packets.  The
bound matters: draining until EAGAIN (run(block=False)) never returns under a
steady 50 kpps, and the same loop must send VRRP adverts on time, or the peer
takes over from a healthy master.  The clock is read once per batch.
"""
from __future__ import annotations

import asyncio
import errno
import os
import socket
import time
from typing import Callable

from netfilterqueue import NetfilterQueue

QUEUE_MAXLEN = 8192                 # packets the kernel may hold for us
SOCK_RCVBUF = 16 * 1024 * 1024      # room for bursts between wake-ups
BATCH = 256                         # packets per wake-up (~3 ms) before other work runs


class _Budget:
    """A socket stand-in for NetfilterQueue.run_socket: it hands out at most
    `batch` datagrams, then says EAGAIN, which makes run_socket return."""

    __slots__ = ("sock", "left")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.left = 0

    def recv(self, size: int) -> bytes:
        if self.left <= 0:
            raise BlockingIOError(errno.EAGAIN, "batch done")
        self.left -= 1
        return self.sock.recv(size)


def _bind(queue_num: int, callback: Callable, max_len: int, sock_len: int) -> NetfilterQueue:
    nfq = NetfilterQueue()
    nfq.bind(queue_num, callback, max_len=max_len, sock_len=sock_len)
    return nfq


class QueueAdapter:
    def __init__(self, handle: Callable[[bytes, float], bytes | None], queue_num: int,
                 clock: Callable[[], float] = time.monotonic,
                 bind: Callable[..., NetfilterQueue] | None = None) -> None:
        self._handle = handle
        self.queue_num = queue_num
        self._clock = clock
        self._now = clock()
        self._nfq: NetfilterQueue | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.wakeups = 0
        #: binds the queue: (queue_num, callback, max_len, sock_len) -> a bound NetfilterQueue;
        #: the node passes its privileged interface's (tandem.kernel), tests a fake
        self._bind = bind or _bind

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        nfq = self._bind(self.queue_num, self._on_packet, QUEUE_MAXLEN, SOCK_RCVBUF)
        self._nfq, self._loop = nfq, loop
        sock = socket.socket(fileno=os.dup(nfq.get_fd()))
        sock.setblocking(False)
        self._budget = _Budget(sock)
        loop.add_reader(nfq.get_fd(), self._on_readable)

    def _on_readable(self) -> None:
        self.wakeups += 1
        self._now = self._clock()
        self._budget.left = BATCH
        assert self._nfq is not None        # readable only between start() and stop()
        # the stub wants a socket; run_socket only calls recv(), which _Budget provides
        self._nfq.run_socket(self._budget)  # type: ignore[arg-type]

    def _on_packet(self, pkt) -> None:
        data = pkt.get_payload()
        out = self._handle(data, self._now)
        if out is None:
            pkt.drop()
        elif out is data:
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


def kernel_queue_stats(queue_num: int, path: str = "/proc/net/netfilter/nfnetlink_queue") -> dict:
    """The kernel's own counters for our queue: drops we never saw."""
    try:
        with open(path) as f:
            for line in f:
                v = line.split()
                if len(v) >= 7 and int(v[0]) == queue_num:
                    return {"queue_total": int(v[2]), "queue_dropped": int(v[5]),
                            "user_dropped": int(v[6])}
    except (OSError, ValueError):
        pass
    return {}
