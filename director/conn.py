"""The connection table, modelled on nf_conn.

One entry per connection holds both tuples: ORIGINAL (client -> VIP) and REPLY
(real server -> laddr).  Both keys live in one dict, so one lookup per packet
finds the entry, and which key matched gives the direction.
"""
from __future__ import annotations

import ipaddress
from typing import Callable, Iterator

from director.timer import TimerWheel
from proto.packet import flow_key

# Connection flags, named after IP_VS_CONN_F_*.
INACTIVE = 0x01     # counted in the dest's inactive, not active, connections
NOOUTPUT = 0x02     # no reply seen yet: the TCP state machine uses INPUT_ONLY
SYNCED = 0x04       # created from a sync message, not by this node's scheduler
ASSURED = 0x08      # has seen its handshake complete (TCP) or a reply (UDP)
ONE_PACKET = 0x10   # one-packet scheduling: only the REPLY tuple is indexed

PROTO_NAMES = {6: "tcp", 17: "udp"}


class Conn:
    """One connection.  Addresses are packed bytes; ports are ints."""
    __slots__ = (
        "proto", "caddr", "cport", "vaddr", "vport", "laddr", "lport", "daddr", "dport",
        "orig_key", "reply_key", "rw_in", "rw_out", "state", "flags", "dest", "service",
        "expires", "timer_tick", "alive", "created",
        "in_pkts", "old_state", "sync_endtime", "control",
    )

    def __init__(self, proto, caddr, cport, vaddr, vport, laddr, lport, daddr, dport) -> None:
        self.proto = proto
        self.caddr, self.cport, self.vaddr, self.vport = caddr, cport, vaddr, vport
        self.laddr, self.lport, self.daddr, self.dport = laddr, lport, daddr, dport
        self.orig_key = flow_key(proto, caddr, vaddr, cport, vport)
        self.reply_key = flow_key(proto, daddr, laddr, dport, lport)
        self.rw_in = self.rw_out = None
        self.state = 0
        self.flags = NOOUTPUT
        self.dest = None
        self.service = None
        self.expires = 0.0
        self.timer_tick = 0
        self.alive = True
        self.created = 0.0
        # what ip_vs_sync_conn_needed keeps per connection
        self.in_pkts = 0
        self.old_state = 0
        self.sync_endtime = 0.0
        self.control = None     # the persistence template, if any

    def describe(self) -> dict:
        from director.tcp_state import STATES
        ip = ipaddress.ip_address
        return {
            "proto": PROTO_NAMES.get(self.proto, str(self.proto)),
            "client": f"{ip(self.caddr)}:{self.cport}",
            "vip": f"{ip(self.vaddr)}:{self.vport}",
            "local": f"{ip(self.laddr)}:{self.lport}",
            "real": f"{ip(self.daddr)}:{self.dport}",
            "state": STATES[self.state] if self.proto == 6 else "UDP",
            "flags": [n for n, f in (("inactive", INACTIVE), ("nooutput", NOOUTPUT),
                                     ("synced", SYNCED), ("assured", ASSURED),
                                     ("one_packet", ONE_PACKET)) if self.flags & f],
            "expires": self.expires,
            "created": self.created,
        }


class ConnTable:
    """Both-tuple index, expiry wheel and the set of not-yet-assured entries."""

    def __init__(self, max_conns: int, on_expire: Callable[[Conn], None],
                 tick: float = 0.1, start: float = 0.0) -> None:
        self.max_conns = max_conns
        self.index: dict[bytes, Conn] = {}
        self.count = 0
        self.wheel = TimerWheel(tick, start)
        self._on_expire = on_expire
        # Insertion-ordered, so the first key is the oldest unassured entry:
        # early drop takes it in O(1), as conntrack's early_drop takes a
        # non-ASSURED entry before refusing a new one.
        self.unassured: dict[Conn, None] = {}

    def get(self, key: bytes) -> Conn | None:
        return self.index.get(key)

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[Conn]:
        # every entry has its REPLY key indexed (one-packet entries have only that);
        # a caller that changes the table while iterating takes list() first
        for key, conn in self.index.items():
            if key is conn.reply_key:
                yield conn

    def has_key(self, key: bytes) -> bool:
        return key in self.index

    def insert(self, conn: Conn, expires: float, *, reply_only: bool = False) -> None:
        """Index both tuples; `reply_only` for one-packet scheduling, where the
        next datagram with the same ORIGINAL tuple must be scheduled afresh."""
        if (not reply_only and conn.orig_key in self.index) or conn.reply_key in self.index:
            raise KeyError("tuple already in the table")
        if not reply_only:
            self.index[conn.orig_key] = conn
        self.index[conn.reply_key] = conn
        self.count += 1
        conn.expires = expires
        self.wheel.schedule(conn)
        if not conn.flags & ASSURED:
            self.unassured[conn] = None

    def assure(self, conn: Conn) -> None:
        conn.flags |= ASSURED
        self.unassured.pop(conn, None)

    def remove(self, conn: Conn) -> None:
        """Unhash now (the wheel entry is dropped lazily: `alive` goes False)."""
        if self.index.get(conn.reply_key) is conn:
            del self.index[conn.reply_key]
            if self.index.get(conn.orig_key) is conn:
                del self.index[conn.orig_key]
            self.count -= 1
        self.unassured.pop(conn, None)
        conn.alive = False

    def early_drop_candidate(self) -> Conn | None:
        for conn in self.unassured:
            return conn
        return None

    def expire(self, now: float) -> int:
        return self.wheel.advance(now, self._expired)

    def _expired(self, conn: Conn) -> None:
        self.remove(conn)
        self._on_expire(conn)
