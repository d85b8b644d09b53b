"""Installing connections learned from the peer (ip_vs_sync.c's ip_vs_proc_conn).

The receiver hands each decoded entry to `SyncApplier.apply` (through
`Engine.apply_synced`); this module decides whether it creates, updates,
replaces or is ignored, and does the binding through `Connections`, so the
accounting is the same as for a connection this node scheduled itself.
"""
from __future__ import annotations

from director import client_address_kinds, proxy_insert
from director.conn import Conn, Connections
from director.persist import Templates, template_key
from proto.consts import (ASSURED, CLOSE, ESTABLISHED, INACTIVE, NOOUTPUT, SYN_RECV, SYNC_FLAGS, SYNCED,
                          TCP, TIME_WAIT, UDP)
from proto.packet import flow_key
from proto.sync import OPT_SEQ, OPT_TOA

#: what `apply` can answer; each has a counter of the same name in `stats`
OUTCOMES = ("created", "updated", "replaced", "ignored", "unbound", "conflicts")


class SyncApplier:
    def __init__(self, conns: Connections, services: dict, templates: Templates) -> None:
        self.conns = conns
        self.table = conns.table
        self.services = services        # the engine's own dict, changed in place on reload
        self.templates = templates
        self.stats = dict.fromkeys(("applied",) + OUTCOMES, 0)
        #: a "seq" option whose header we cannot write at the peer's length: the
        #: connection is installed without a shift (it breaks, as without the option)
        self.stats["seq_refused"] = 0

    def apply(self, *, proto: int, state: int, flags: int, caddr: bytes, cport: int,
              vaddr: bytes, vport: int, laddr: bytes, lport: int, daddr: bytes,
              dport: int, timeout: float, now: float, in_pkts: int = 3,
              template: bool = False, seq: tuple | None = None, toa: int | None = None) -> str:
        """Create or update a connection from a sync entry; return what happened.

        As ip_vs_proc_conn: an entry whose real server or local pair changed
        replaces ours unless it is only an expiry notice (INACTIVE); the
        INACTIVE bit moves the dest's active/inactive counts; a connection
        whose service or real server we do not have is kept unbound (and
        still forwarded) and counted; the timer restarts at the sent timeout.
        The peer's choice of laddr:lport wins over a local entry holding the
        same pair: the master's view is the one clients are using.  `seq`, the
        entry's option of that name, is the PROXY header's sequence shift: the
        connection takes it (see _take_seq); `toa`, a TOA connection's real
        server's first sequence number (see _take_toa).
        """
        st = self.stats
        st["applied"] += 1
        if template:
            return self._apply_template(proto, caddr, vaddr, vport, daddr, dport, timeout, now)
        conns = self.conns
        index = self.table.index
        sync_flags = flags & SYNC_FLAGS
        key = flow_key(proto, caddr, vaddr, cport, vport)
        conn = index.get(key)
        if conn is not None and key != conn.orig_key:
            conn = None     # our laddr:lport seen as a client tuple: not the same flow
        if conn is not None and (conn.daddr, conn.dport, conn.laddr, conn.lport) != (daddr, dport, laddr, lport):
            # an expiry notice does not replace a live entry; but a new connection
            # (SYN_RECV) on a closed one does, as a SYN on TIME_WAIT/CLOSE does on the
            # master (conn_reuse_mode)
            new_on_closed = (proto == TCP and state == SYN_RECV
                             and conn.state in (TIME_WAIT, CLOSE))
            if sync_flags & INACTIVE and state != ESTABLISHED and not new_on_closed:
                st["ignored"] += 1
                return "ignored"
            conns.drop(conn)
            st["replaced"] += 1
            conn = None
        if conn is None:
            holder = index.get(flow_key(proto, daddr, laddr, dport, lport))
            if holder is not None:
                conns.drop(holder)
                st["conflicts"] += 1
            svc = self.services.get((proto, vaddr, vport))
            dest = svc.find_dest(daddr, dport) if svc is not None else None
            if svc is not None:       # share address objects (see Engine._new)
                vaddr = svc.vip
                laddr = svc.laddrs.shared(laddr)
            if dest is not None:
                daddr, dport = dest.addr, dest.port
            conn = Conn(proto, caddr, cport, vaddr, vport, laddr, lport, daddr, dport)
            conn.flags = sync_flags | SYNCED
            if svc is not None and dest is not None:
                conns.bind(conn, svc, dest, now)
                svc.laddrs.claim(proto, laddr, daddr, dport, lport)
                if svc.client_address != "none":
                    conn.client_address_state = client_address_kinds.synced(svc, conn)
            else:
                conns.keep_unbound(conn, now)
                st["unbound"] += 1
            conn.state = conn.old_state = state
            conn.in_pkts = in_pkts
            self.table.insert(conn, now + timeout)
            conns.track_state(conn)
            if sync_flags & ASSURED:
                conns.assure(conn)
            if seq is not None:
                self._take_seq(conn, seq)
            if toa is not None:
                self._take_toa(conn, toa)
            st["created"] += 1
            return "created"
        conns.set_inactive(conn, bool(sync_flags & INACTIVE))
        conn.flags = (conn.flags & ~(INACTIVE | NOOUTPUT)) | sync_flags | SYNCED
        if sync_flags & ASSURED:
            conns.assure(conn)
        conn.state = conn.old_state = state
        conns.track_state(conn)
        conn.in_pkts = in_pkts
        self.table.wheel.refresh(conn, now + timeout)
        if seq is not None:
            self._take_seq(conn, seq)
        if toa is not None:
            self._take_toa(conn, toa)
        st["updated"] += 1
        return "updated"

    def _take_seq(self, conn: Conn, seq: tuple) -> None:
        """The peer's shift for this connection, as ip_vs_proc_conn copies
        IPVS_OPT_SEQ_DATA into cp->in_seq.  A shift we hold for the same insertion
        point keeps its own counts; it only learns that the header went out (an
        insertion point can move only with a new connection, which replaced ours)."""
        if conn.proto != TCP:       # no stream to shift: a datagram flow ignores the option
            return
        held = conn.client_address_state
        if held is not None and held.take_sync(OPT_SEQ, seq):
            return
        adj = proxy_insert.resume(seq, conn.caddr, conn.cport, conn.vaddr, conn.vport)
        if adj is None:
            self.stats["seq_refused"] += 1
        conn.client_address_state = adj

    @staticmethod
    def _take_toa(conn: Conn, first_byte: int) -> None:
        """The real server's first sequence number of a TOA connection, as the peer saw it
        in the SYN-ACK: a segment that acknowledges it may still complete the server's
        handshake, so after a takeover this node writes the option on it too.  A
        connection whose service here has no TOA (or that is unbound) ignores it."""
        held = conn.client_address_state
        if held is not None:
            held.take_sync(OPT_TOA, first_byte)

    def _apply_template(self, proto, caddr, vaddr, vport, daddr, dport, timeout, now) -> str:
        """A persistence template from the peer: pin the client here too, keyed
        with our own netmask for the service; refresh or re-point an existing one."""
        st = self.stats
        svc = self.services.get((proto, vaddr, vport))
        dest = svc.find_dest(daddr, dport) if svc is not None and svc.persistent else None
        if svc is None or dest is None:
            st["ignored"] += 1
            return "ignored"
        key = template_key(proto, caddr, svc.persist_mask, vaddr, vport)
        t = self.templates.by_key.get(key)
        if t is not None and t.dest is not dest:
            self.templates.remove(t)
            t = None
        if t is None:
            self.templates.create(key, caddr, dest, svc, now, timeout)
            st["created"] += 1
            return "created"
        self.templates.touch(t, now, timeout)
        st["updated"] += 1
        return "updated"
