"""Connections, their binding to real servers and the accounting (ip_vs_conn.c).

`Conn` is one connection: both tuples, the precomputed rewrites, state,
flags and what sync needs per connection.  `Connections` owns the table and
does everything that binds, re-accounts or unbinds an entry: ip_vs_bind_dest
(a dest's active/inactive counts, its OVERLOAD flag), set_tcp_state's
active/inactive moves, releasing the local pair, early drop and expiry.  The
packet path, sync-apply and reconfiguration all go through it.
"""
from __future__ import annotations

import ipaddress
from typing import Mapping

from director.persist import Template
from director.protocol import Protocol
from director.client_address import State
from director.table import ConnTable
from proto.consts import (ASSURED, FLAG_NAMES, INACTIVE, NOOUTPUT, ONE_PACKET, PROTO_NAMES,
                          STATE_NAMES, SYNCED)
from proto.fullnat import Rewrite
from proto.packet import flow_key

__all__ = ["Conn", "Connections", "ConnTable", "make_rewrites",
           "INACTIVE", "NOOUTPUT", "SYNCED", "ASSURED", "ONE_PACKET", "PROTO_NAMES"]


class Conn:
    """One connection.  Addresses are packed bytes; ports are ints."""
    __slots__ = (
        "proto", "caddr", "cport", "vaddr", "vport", "laddr", "lport", "daddr", "dport",
        "orig_key", "reply_key", "rw_in", "rw_out", "state", "flags", "dest", "service",
        "expires", "timer_tick", "alive", "created",
        "in_pkts", "old_state", "sync_endtime", "control", "synack_seq", "client_address_state",
    )

    def __init__(self, proto, caddr, cport, vaddr, vport, laddr, lport, daddr, dport,
                 orig_key: bytes | None = None) -> None:
        """`orig_key`: the ORIGINAL tuple's key when the caller has it (the engine: the
        opening packet's own key, byte-identical to flow_key's), else computed."""
        self.proto = proto
        self.caddr, self.cport, self.vaddr, self.vport = caddr, cport, vaddr, vport
        self.laddr, self.lport, self.daddr, self.dport = laddr, lport, daddr, dport
        self.orig_key = flow_key(proto, caddr, vaddr, cport, vport) if orig_key is None else orig_key
        self.reply_key = flow_key(proto, daddr, laddr, dport, lport)
        self.rw_in: Rewrite | None = None      # both set by make_rewrites()
        self.rw_out: Rewrite | None = None
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
        self.control: Template | None = None     # the persistence template, if any
        self.synack_seq = -1    # TCP: the server's SYN-ACK sequence number, once seen
        #: how real servers learn the client's address (director.client_address: a PROXY
        #: header in the stream or on each datagram, or a TOA option), else None
        self.client_address_state: State | None = None

    def describe(self) -> dict:
        ip = ipaddress.ip_address
        names = STATE_NAMES.get(self.proto, ())
        return {
            "proto": PROTO_NAMES.get(self.proto, str(self.proto)),
            "client": f"{ip(self.caddr)}:{self.cport}",
            "vip": f"{ip(self.vaddr)}:{self.vport}",
            "local": f"{ip(self.laddr)}:{self.lport}",
            "real": f"{ip(self.daddr)}:{self.dport}",
            "state": names[self.state] if self.state < len(names) else str(self.state),
            "flags": [n for n, f in FLAG_NAMES if self.flags & f],
            "expires": self.expires,
            "created": self.created,
        }


def make_rewrites(conn: Conn) -> None:
    """The two precomputed rewrite templates: client->VIP becomes laddr->real
    server, and real server->laddr becomes VIP->client."""
    family = 4 if len(conn.vaddr) == 4 else 6
    conn.rw_in, conn.rw_out = Rewrite.pair(family, conn.proto, conn.caddr, conn.vaddr, conn.cport,
                                           conn.vport, conn.laddr, conn.daddr, conn.lport, conn.dport)


class Connections:
    """The table plus binding and accounting.

    stats: the engine's counters dict; this object counts `conns_expired` and
    `early_drops` in it.
    """

    def __init__(self, max_conns: int, protocols: Mapping[int, Protocol], stats: dict,
                 tick: float = 0.1, now: float = 0.0) -> None:
        self.table = ConnTable(max_conns, self._expired, tick, now)
        self._closing = self.table.closing_entries     # set_state writes it directly
        self.protocols = protocols
        self.stats = stats

    def bind(self, conn: Conn, svc, dest, now: float) -> None:
        """Rewrites and binding to the dest, as ip_vs_bind_dest."""
        make_rewrites(conn)
        conn.created = now
        conn.service = svc
        conn.dest = dest
        if conn.flags & INACTIVE:
            dest.inactive += 1
        else:
            dest.active += 1
        dest.conns_total += 1
        dest.update_overload()

    def keep_unbound(self, conn: Conn, now: float) -> None:
        """A connection with no local service or dest (from sync): forwarded
        with its rewrites, counted nowhere."""
        make_rewrites(conn)
        conn.created = now

    def set_state(self, conn: Conn, new: int, proto: Protocol | None = None) -> None:
        """Enter a new state; set_tcp_state's accounting: only the protocol's
        active states count as active.  `proto`: the connection's protocol, when
        the caller has it at hand.

        Every TCP connection changes state four or five times, so this is
        set_inactive and ConnTable.closing inlined (one call, not three; tuples
        indexed by state, not set lookups)."""
        if proto is None:
            proto = self.protocols[conn.proto]
        dest = conn.dest
        if dest is not None:
            inactive = proto.inactive_in[new]
            flags = conn.flags
            if bool(flags & INACTIVE) != inactive:
                if inactive:
                    dest.active -= 1
                    dest.inactive += 1
                else:
                    dest.inactive -= 1
                    dest.active += 1
                conn.flags = flags ^ INACTIVE
        conn.state = new
        if proto.closing_in[new]:
            self._closing[conn] = None
        else:
            self._closing.pop(conn, None)

    def track_state(self, conn: Conn) -> None:
        """Note a state set from outside (sync) for early drop."""
        proto = self.protocols.get(conn.proto)
        self.table.closing(conn, proto is not None and conn.state in proto.early_drop_states)

    @staticmethod
    def set_inactive(conn: Conn, inactive: bool) -> None:
        """Move a bound connection between its dest's active and inactive counts
        (as set_tcp_state, only when a dest is bound)."""
        dest = conn.dest
        if dest is None or bool(conn.flags & INACTIVE) == inactive:
            return
        if inactive:
            dest.active -= 1
            dest.inactive += 1
        else:
            dest.inactive -= 1
            dest.active += 1
        conn.flags ^= INACTIVE

    def assure(self, conn: Conn) -> None:
        self.table.assure(conn)

    def unbind(self, conn: Conn) -> None:
        """ip_vs_unbind_dest, plus the local pair and the persistence template."""
        dest = conn.dest
        if dest is not None:
            if conn.flags & INACTIVE:
                dest.inactive -= 1
            else:
                dest.active -= 1
            dest.update_overload()
            conn.dest = None
        svc = conn.service
        if svc is not None:
            svc.laddrs.release(conn.proto, conn.laddr, conn.daddr, conn.dport, conn.lport)
        if conn.control is not None:
            conn.control.n_control -= 1
            conn.control = None

    def drop(self, conn: Conn) -> None:
        """Remove now (replaced, early-dropped, its server or service removed)."""
        self.table.remove(conn)
        self.unbind(conn)

    def _expired(self, conn: Conn) -> None:
        self.unbind(conn)
        self.stats["conns_expired"] += 1

    def full(self) -> bool:
        return self.table.count >= self.table.max_conns

    def early_drop(self) -> bool:
        """Make room for one new entry; False if nothing may be evicted
        (see ConnTable.early_drop_candidate for what may be)."""
        victim = self.table.early_drop_candidate()
        if victim is None:
            return False
        self.drop(victim)
        self.stats["early_drops"] += 1
        return True

    def expire(self, now: float) -> int:
        return self.table.expire(now)

    def timeout_of(self, conn: Conn) -> float:
        return self.protocols[conn.proto].timeout_of(conn)
