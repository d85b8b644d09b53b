"""FULLNAT local addresses (laddrs) and local-port allocation.

A (laddr, lport) pair only has to be unique per real server, because the reply
tuple (real server -> laddr:lport) is what identifies the connection; so one
laddr carries a full port range per real server (the DPVS sa_pool insight).

Uniqueness is checked against the connection table's own index, not a second
set: the REPLY key *is* the pair in use, including entries installed by sync,
so no allocator can drift from the table.  Ports are handed out round-robin
from a cursor per laddr, so a freed port is reused only after the whole range
has gone by: the real server's TIME_WAIT for the old pair has long ended.
"""
from __future__ import annotations

from typing import Callable, Sequence

from proto.packet import flow_key


class PortExhausted(Exception):
    pass


class LaddrPool:
    def __init__(self, laddrs: Sequence[bytes], lport_min: int, lport_max: int,
                 in_use: Callable[[bytes], bool]) -> None:
        if not laddrs:
            raise ValueError("a FULLNAT service needs at least one laddr")
        if not 1 <= lport_min <= lport_max <= 65535:
            raise ValueError("need 1 <= lport_min <= lport_max <= 65535")
        self.laddrs = list(laddrs)
        self.lport_min, self.lport_max = lport_min, lport_max
        self.span = lport_max - lport_min + 1
        self._in_use = in_use
        self._next_laddr = 0
        self._cursor = {a: 0 for a in self.laddrs}
        # (proto, laddr, daddr, dport) -> pairs in use, to see exhaustion at once
        self.used: dict[tuple, int] = {}
        self.conflicts = 0

    def allocate(self, proto: int, daddr: bytes, dport: int) -> tuple[bytes, int]:
        """Pick a laddr round-robin and a free local port on it; claim the pair."""
        n = len(self.laddrs)
        for i in range(n):
            laddr = self.laddrs[(self._next_laddr + i) % n]
            if len(laddr) != len(daddr):
                continue            # family mismatch: v4 laddr for a v6 real server
            pool = (proto, laddr, daddr, dport)
            if self.used.get(pool, 0) >= self.span:
                continue
            start = self._cursor[laddr]
            for step in range(self.span):
                off = (start + step) % self.span
                port = self.lport_min + off
                if not self._in_use(flow_key(proto, daddr, laddr, dport, port)):
                    self._cursor[laddr] = off + 1
                    self._next_laddr = (self._next_laddr + i + 1) % n
                    self.used[pool] = self.used.get(pool, 0) + 1
                    return laddr, port
                self.conflicts += 1
        raise PortExhausted

    def claim(self, proto: int, laddr: bytes, daddr: bytes, dport: int) -> None:
        """Account a pair installed from outside (sync) so exhaustion stays exact."""
        pool = (proto, laddr, daddr, dport)
        self.used[pool] = self.used.get(pool, 0) + 1

    def release(self, proto: int, laddr: bytes, daddr: bytes, dport: int) -> None:
        pool = (proto, laddr, daddr, dport)
        left = self.used.get(pool, 0) - 1
        if left > 0:
            self.used[pool] = left
        else:
            self.used.pop(pool, None)

    def owns(self, addr: bytes) -> bool:
        return addr in self._cursor

    def shared(self, addr: bytes) -> bytes:
        """The pool's own object for an equal address (so entries share it)."""
        for a in self.laddrs:
            if a == addr:
                return a
        return addr
