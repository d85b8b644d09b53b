"""FULLNAT local addresses (laddrs) and local-port allocation.

A (laddr, lport) pair only has to be unique per real server, because the reply
tuple (real server -> laddr:lport) is what identifies the connection; so one
laddr carries a full port range per real server (the DPVS sa_pool insight).

Uniqueness is checked against the connection table's own index, not a second
set: the REPLY key *is* the pair in use, including entries installed by sync,
so no allocator can drift from the table.

`PortSpace` is the node's, not a service's: it outlives reloads and is shared
by every service using a laddr.  It keeps, per laddr, a cursor from which
ports are handed out round-robin, so a freed port is reused only after the
whole range has gone by (the real server's TIME_WAIT for the old pair has
long ended); a reload that adds a service, changes laddrs or the range keeps
the cursor where it was.  Per (proto, laddr, real server) it counts the pairs
in use inside the range, so exhaustion is seen at once; pairs outside the
range (synced from a peer with another range) are not counted against it.

Allocation is O(1) amortised whatever the table holds: while a pool is less
than half full, a scan from the cursor finds a free port in a few probes (it
skips each used port at most once per lap of the cursor); once a pool is half
full and a scan runs long, the pool switches to an explicit FIFO of its free
ports, built once, oldest-freed first, and kept until the pool is down to a
quarter full again.
"""
from __future__ import annotations

import struct
from collections import OrderedDict
from typing import Callable, Iterable, Sequence

#: probes a scan may take in a half-full pool before the pool switches to a free list
SCAN_LIMIT = 64

_PORT = tuple(struct.pack("!H", p) for p in range(65536))


class PortExhausted(Exception):
    pass


class _Pool:
    """The pairs of one (proto, laddr, real server ip:port)."""
    __slots__ = ("prefix", "used", "free")

    def __init__(self, prefix: bytes) -> None:
        self.prefix = prefix        # the reply key up to the local port
        self.used = 0               # pairs in use with a port inside the range
        self.free: OrderedDict | None = None    # dense pools: free ports, oldest first


class PortSpace:
    """Local ports of every laddr of the node (see the module docstring)."""

    def __init__(self, lport_min: int, lport_max: int, in_use: Callable[[bytes], bool]) -> None:
        self.in_use = in_use
        self.cursors: dict[bytes, int] = {}
        self.pools: dict[tuple, _Pool] = {}
        self.conflicts = 0
        self._set(lport_min, lport_max)

    def _set(self, lport_min: int, lport_max: int) -> None:
        if not 1 <= lport_min <= lport_max <= 65535:
            raise ValueError("need 1 <= lport_min <= lport_max <= 65535")
        self.lport_min, self.lport_max = lport_min, lport_max
        self.span = lport_max - lport_min + 1

    def set_range(self, lport_min: int, lport_max: int, bound: Iterable) -> None:
        """A new port range: keep the cursors (moved into the range if they
        fell out of it) and recount the pairs in use from `bound`, the live
        connections that hold a pair (the table's bound entries)."""
        if (lport_min, lport_max) == (self.lport_min, self.lport_max):
            return
        self._set(lport_min, lport_max)
        for laddr, port in self.cursors.items():
            if not lport_min <= port <= lport_max:
                self.cursors[laddr] = lport_min
        self.pools = {}
        for conn in bound:
            self.claim(conn.proto, conn.laddr, conn.daddr, conn.dport, conn.lport)

    def _pool(self, proto: int, laddr: bytes, daddr: bytes, dport: int) -> _Pool:
        key = (proto, laddr, daddr, dport)
        pool = self.pools.get(key)
        if pool is None:
            pool = self.pools[key] = _Pool(bytes((proto,)) + daddr + laddr + _PORT[dport])
        return pool

    def allocate(self, proto: int, laddr: bytes, daddr: bytes, dport: int) -> int | None:
        """A free local port on laddr towards daddr:dport, claimed; None if none."""
        pool = self._pool(proto, laddr, daddr, dport)
        span = self.span
        if pool.used >= span:
            return None
        in_use = self.in_use
        prefix = pool.prefix
        free = pool.free
        if free is not None:
            while free:
                port = free.popitem(last=False)[0]
                if not in_use(prefix + _PORT[port]):
                    pool.used += 1
                    return port
            pool.free = None        # held by entries never claimed: scan instead
        lo = self.lport_min
        off = self.cursors.get(laddr, lo) - lo
        dense = pool.used * 2 >= span
        for step in range(span):
            port = lo + (off + step) % span
            if not in_use(prefix + _PORT[port]):
                self.cursors[laddr] = lo + (off + step + 1) % span
                pool.used += 1
                return port
            self.conflicts += 1
            if dense and step >= SCAN_LIMIT:
                return self._go_dense(pool, lo + (off + step + 1) % span)
        return None

    def _go_dense(self, pool: _Pool, start: int) -> int | None:
        """Build the pool's free list once, in round-robin order from `start`
        (the ports the cursor reaches last were freed most recently), and
        hand out its first port."""
        lo, span, in_use, prefix = self.lport_min, self.span, self.in_use, pool.prefix
        off = start - lo
        order = (lo + (off + i) % span for i in range(span))
        pool.free = free = OrderedDict.fromkeys(p for p in order if not in_use(prefix + _PORT[p]))
        if not free:
            pool.free = None
            return None
        pool.used += 1
        return free.popitem(last=False)[0]

    def claim(self, proto: int, laddr: bytes, daddr: bytes, dport: int, lport: int) -> None:
        """Account a pair installed from outside (sync) so exhaustion stays exact."""
        if not self.lport_min <= lport <= self.lport_max:
            return
        pool = self._pool(proto, laddr, daddr, dport)
        pool.used += 1
        if pool.free is not None:
            pool.free.pop(lport, None)

    def release(self, proto: int, laddr: bytes, daddr: bytes, dport: int, lport: int) -> None:
        if not self.lport_min <= lport <= self.lport_max:
            return
        key = (proto, laddr, daddr, dport)
        pool = self.pools.get(key)
        if pool is None:
            return
        pool.used -= 1
        if pool.used <= 0:
            del self.pools[key]
        elif pool.free is not None:
            if pool.used * 4 < self.span:
                pool.free = None        # sparse again: the cursor scan is cheap
            else:
                pool.free[lport] = None

    def used(self, laddrs: Iterable[bytes]) -> dict[tuple, int]:
        """Pairs in use per (proto, laddr, daddr, dport), for the given laddrs."""
        want = set(laddrs)
        return {k: p.used for k, p in self.pools.items() if k[1] in want and p.used > 0}


class LaddrPool:
    """A service's laddrs, picked round-robin, over the node's PortSpace."""

    def __init__(self, laddrs: Sequence[bytes], ports: PortSpace) -> None:
        if not laddrs:
            raise ValueError("a FULLNAT service needs at least one laddr")
        self.laddrs = list(laddrs)
        self.ports = ports
        self._next_laddr = 0

    @property
    def lport_min(self) -> int:
        return self.ports.lport_min

    @property
    def lport_max(self) -> int:
        return self.ports.lport_max

    @property
    def used(self) -> dict[tuple, int]:
        return self.ports.used(self.laddrs)

    def allocate(self, proto: int, daddr: bytes, dport: int) -> tuple[bytes, int]:
        """Pick a laddr round-robin and a free local port on it; claim the pair."""
        n = len(self.laddrs)
        for i in range(n):
            laddr = self.laddrs[(self._next_laddr + i) % n]
            if len(laddr) != len(daddr):
                continue            # family mismatch: v4 laddr for a v6 real server
            port = self.ports.allocate(proto, laddr, daddr, dport)
            if port is not None:
                self._next_laddr = (self._next_laddr + i + 1) % n
                return laddr, port
        raise PortExhausted

    def pick(self, daddr: bytes) -> bytes:
        """The next laddr round-robin of daddr's family, without a port (kernel mode: the
        kernel's SNAT chooses the port)."""
        n = len(self.laddrs)
        for i in range(n):
            laddr = self.laddrs[(self._next_laddr + i) % n]
            if len(laddr) == len(daddr):
                self._next_laddr = (self._next_laddr + i + 1) % n
                return laddr
        raise PortExhausted

    def claim(self, proto: int, laddr: bytes, daddr: bytes, dport: int, lport: int) -> None:
        self.ports.claim(proto, laddr, daddr, dport, lport)

    def release(self, proto: int, laddr: bytes, daddr: bytes, dport: int, lport: int) -> None:
        self.ports.release(proto, laddr, daddr, dport, lport)

    def owns(self, addr: bytes) -> bool:
        return addr in self.laddrs

    def shared(self, addr: bytes) -> bytes:
        """The pool's own object for an equal address (so entries share it)."""
        for a in self.laddrs:
            if a == addr:
                return a
        return addr
