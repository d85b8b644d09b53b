"""The sans-IO FULLNAT engine: (packet bytes, now) -> verdict.

`handle` returns None to drop, the same object to accept unchanged, or new
bytes to accept rewritten.  Everything it needs to know about time arrives as
`now`; it performs no I/O and reads no clock, so the NFQUEUE adapter, the
tests and the benchmarks drive the very same object.

The packet path, in order: parse; one dict lookup on the flow key, which finds
a connection by either of its tuples; state transition and timer refresh;
rewrite with the connection's precomputed template.  Only a miss takes the
slow path (ICMP error, or a new connection through the scheduler).
"""
from __future__ import annotations

import logging
from typing import Callable

from director import tcp_state
from director.config import NodeConfig
from director.conn import ASSURED, INACTIVE, NOOUTPUT, ONE_PACKET, SYNCED, Conn, ConnTable
from director.laddr import PortExhausted
from director.sched import Flow
from director.persist import Templates, template_key
from director.service import Service
from director.tcp_state import ESTABLISHED, INPUT, INPUT_ONLY, NEXT, OUTPUT
from proto import packet as P
from proto.fullnat import Rewrite, apply, rewrite_icmp_error

log = logging.getLogger("tandem.engine")

TCP, UDP = 6, 17
SYN, RST, ACK = 0x02, 0x04, 0x10
CLOSE, TIME_WAIT = tcp_state.CLOSE, tcp_state.TIME_WAIT

#: Why a packet was dropped.  Parse failures use proto.packet's reason codes.
DROP_REASONS = P.REASONS + (
    "bad_checksum",   # L4 (or IPv4 header) checksum wrong on a packet that would open a connection
    "no_service",     # TCP/UDP to a VIP port no service listens on
    "no_conn",        # matches no connection and cannot open one (TCP without SYN, reply to a laddr)
    "icmp_no_conn",   # an ICMP error about no known connection
    "no_dest",        # the scheduler found no usable real server
    "no_lport",       # every laddr's port range to that real server is in use
    "table_full",     # at max_conns with nothing to early-drop
    "not_ours",       # queued, but addressed to neither a VIP nor a laddr
    "internal_error",  # a bug: counted and logged, never raised
)


class Engine:
    def __init__(self, cfg: NodeConfig, now: float = 0.0) -> None:
        self.templates = Templates(cfg.tick, now, cfg.expire_quiescent_template)
        self.table = ConnTable(cfg.max_conns, self._expired, cfg.tick, now)
        self.index = self.table.index          # the hot path reads the dict directly
        self._refresh = self.table.wheel.refresh
        self.services: dict[tuple[int, bytes, int], Service] = {}
        for sc in cfg.services:
            svc = Service(sc, cfg.lport_min, cfg.lport_max, self.table.has_key)
            self.services[svc.key] = svc
        self._take_settings(cfg)
        self.drops = dict.fromkeys(DROP_REASONS, 0)
        self.stats = dict.fromkeys((
            "packets", "forwarded_in", "forwarded_out", "conns_new", "conns_expired",
            "conns_reused", "early_drops", "icmp_errors", "passed_local"), 0)
        self._errors_logged = 0
        #: called as hook(conn, pkts, now) after every client->VIP packet of a
        #: connection, as ip_vs_in calls ip_vs_sync_conn; syncd decides.
        self.sync_hook: Callable[[Conn, int, float], None] | None = None
        self.sync_stats = dict.fromkeys(("applied", "created", "updated", "replaced",
                                         "ignored", "unbound", "conflicts"), 0)

    # -- the packet path -------------------------------------------------------

    def handle(self, data: bytes, now: float) -> bytes | None:
        self.stats["packets"] += 1
        try:
            pkt = P.parse(data)
        except P.Malformed as exc:
            self.drops[exc.reason] += 1
            return None
        try:
            conn = self.index.get(pkt.key)
            if conn is not None:
                return self._forward(conn, data, pkt, now)
            if pkt.inner is not None:
                return self._icmp_error(data, pkt)
            return self._new(data, pkt, now)
        except Exception:       # nothing a packet holds may take the engine down
            self.drops["internal_error"] += 1
            if self._errors_logged < 10:
                self._errors_logged += 1
                log.exception("engine error on a %d-byte packet (dropped)", len(data))
            return None

    def _forward(self, conn: Conn, data: bytes, pkt, now: float) -> bytes | None:
        if self.verify_all and not P.l4_checksum_ok(data, pkt):
            self.drops["bad_checksum"] += 1
            return None
        inbound = pkt.key == conn.orig_key
        dest = conn.dest
        if conn.proto == TCP:
            flags = pkt.flags
            if inbound:
                if flags & SYN and not flags & (ACK | RST) and conn.state in (TIME_WAIT, CLOSE):
                    # conn_reuse_mode 1: a new SYN on a closing entry is a new connection
                    self._drop(conn)
                    self.stats["conns_reused"] += 1
                    return self._new(data, pkt, now)
                direction = INPUT_ONLY if conn.flags & NOOUTPUT else INPUT
            else:
                direction = OUTPUT
                conn.flags &= ~NOOUTPUT
            new = NEXT[direction][flags][conn.state]
            if new != conn.state:
                self._set_state(conn, new)
            timeout = self.tcp_timeouts[conn.state]
        else:
            if not inbound and conn.flags & NOOUTPUT:
                conn.flags &= ~NOOUTPUT
                self.table.assure(conn)
            timeout = self.ops_timeout if conn.flags & ONE_PACKET else self.udp_timeout
        self._refresh(conn, now + timeout)
        if inbound:
            self.stats["forwarded_in"] += 1
            if dest is not None:
                dest.packets_in += 1
                dest.bytes_in += len(data)
            conn.in_pkts += 1
            if self.sync_hook is not None:
                self.sync_hook(conn, conn.in_pkts, now)
            return apply(data, pkt, conn.rw_in)
        self.stats["forwarded_out"] += 1
        if dest is not None:
            dest.packets_out += 1
            dest.bytes_out += len(data)
        return apply(data, pkt, conn.rw_out)

    def _new(self, data: bytes, pkt, now: float) -> bytes | None:
        proto = pkt.proto
        svc = self.services.get((proto, pkt.dst, pkt.dport))
        if svc is None:
            return self._unowned(data, pkt)
        if proto == TCP and (not pkt.flags & SYN or pkt.flags & RST):
            self.drops["no_conn"] += 1
            return None
        if self.verify_new and not (P.l4_checksum_ok(data, pkt)
                                    and (pkt.family == 6 or P.ipv4_header_ok(data))):
            self.drops["bad_checksum"] += 1
            return None
        if self.table.count >= self.table.max_conns and not self._early_drop():
            self.drops["table_full"] += 1
            return None
        template = None
        if svc.persistent:
            tkey = template_key(proto, pkt.src, svc.persist_mask, pkt.dst, pkt.dport)
            template = self.templates.lookup(tkey)
            dest = template.dest if template is not None else self._schedule(svc, pkt, now)
        else:
            dest = self._schedule(svc, pkt, now)
        if dest is None:
            self.drops["no_dest"] += 1
            return None
        try:
            laddr, lport = svc.laddrs.allocate(proto, dest.addr, dest.port)
        except PortExhausted:
            self.drops["no_lport"] += 1
            return None
        if svc.persistent:
            if template is None:
                template = self.templates.create(tkey, pkt.src, dest, svc, now, svc.persistent)
            else:
                self.templates.touch(template, now, svc.persistent)
        # the service's, pool's and dest's own address objects, not per-packet
        # copies: a million connections share them
        conn = Conn(proto, pkt.src, pkt.sport, svc.vip, pkt.dport, laddr, lport, dest.addr, dest.port)
        # __ip_vs_update_dest puts INACTIVE in every dest's conn_flags: a new
        # connection counts as inactive until TCP reaches ESTABLISHED; UDP stays so.
        conn.flags |= INACTIVE
        self._install(conn, svc, dest, now)
        if template is not None:
            conn.control = template
            template.n_control += 1
        if proto == TCP:
            self._set_state(conn, tcp_state.next_state(conn.state, INPUT_ONLY, pkt.flags))
            expires = now + self.tcp_timeouts[conn.state]
        elif svc.ops:
            conn.flags |= ONE_PACKET
            expires = now + self.ops_timeout
        else:
            expires = now + self.udp_timeout
        self.table.insert(conn, expires, reply_only=svc.ops)
        self.stats["conns_new"] += 1
        self.stats["forwarded_in"] += 1
        dest.packets_in += 1
        dest.bytes_in += len(data)
        conn.in_pkts = 1
        conn.sync_endtime = now
        if self.sync_hook is not None:
            self.sync_hook(conn, 1, now)
        return apply(data, pkt, conn.rw_in)

    @staticmethod
    def _schedule(svc: Service, pkt, now: float):
        return svc.scheduler.schedule(Flow(pkt.proto, pkt.src, pkt.sport, pkt.dst, pkt.dport, now))

    def _unowned(self, data: bytes, pkt) -> bytes | None:
        if pkt.dst not in self.owned:
            self.drops["not_ours"] += 1
            return None
        if pkt.proto in (1, 58):
            # echo and other informational ICMP to a VIP or laddr: the host answers
            self.stats["passed_local"] += 1
            return data
        # Never let TCP/UDP to our addresses reach the local stack: it would
        # answer with RST or port-unreachable for a flow it knows nothing of.
        self.drops["no_service" if pkt.dst in self.vips else "no_conn"] += 1
        return None

    def _icmp_error(self, data: bytes, pkt) -> bytes | None:
        inner = pkt.inner
        key = P.flow_key(inner.proto, inner.dst, inner.src, inner.dport, inner.sport)
        conn = self.index.get(key)
        if conn is None:
            self.drops["icmp_no_conn"] += 1
            return None
        self.stats["icmp_errors"] += 1
        if key == conn.orig_key:
            # about a packet we sent the client: pass it on to the real server
            return rewrite_icmp_error(data, pkt, conn.laddr, conn.daddr,
                                      conn.daddr, conn.laddr, conn.dport, conn.lport)
        return rewrite_icmp_error(data, pkt, conn.vaddr, conn.caddr,
                                  conn.caddr, conn.vaddr, conn.cport, conn.vport)

    # -- connection life -------------------------------------------------------

    @staticmethod
    def _rewrites(conn: Conn) -> None:
        """The two precomputed rewrite templates: client->VIP becomes laddr->real
        server, and real server->laddr becomes VIP->client."""
        family = 4 if len(conn.vaddr) == 4 else 6
        conn.rw_in = Rewrite(family, conn.proto, conn.caddr, conn.vaddr, conn.cport, conn.vport,
                             conn.laddr, conn.daddr, conn.lport, conn.dport)
        conn.rw_out = Rewrite(family, conn.proto, conn.daddr, conn.laddr, conn.dport, conn.lport,
                              conn.vaddr, conn.caddr, conn.vport, conn.cport)

    def _install(self, conn: Conn, svc: Service, dest, now: float) -> None:
        """Templates and binding to the dest, as ip_vs_bind_dest."""
        self._rewrites(conn)
        conn.created = now
        conn.service = svc
        conn.dest = dest
        if conn.flags & INACTIVE:
            dest.inactive += 1
        else:
            dest.active += 1
        dest.conns_total += 1
        dest.update_overload()

    def _set_state(self, conn: Conn, new: int) -> None:
        """set_tcp_state's accounting: only ESTABLISHED counts as active."""
        self._mark_inactive(conn, new != ESTABLISHED)
        if new == ESTABLISHED and not conn.flags & ASSURED:
            self.table.assure(conn)
        conn.state = new

    @staticmethod
    def _mark_inactive(conn: Conn, inactive: bool) -> None:
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

    def _unbind(self, conn: Conn) -> None:
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
            svc.laddrs.release(conn.proto, conn.laddr, conn.daddr, conn.dport)
        if conn.control is not None:
            conn.control.n_control -= 1
            conn.control = None

    def _drop(self, conn: Conn) -> None:
        self.table.remove(conn)
        self._unbind(conn)

    def _expired(self, conn: Conn) -> None:
        self._unbind(conn)
        self.stats["conns_expired"] += 1

    def _early_drop(self) -> bool:
        victim = self.table.early_drop_candidate()
        if victim is None:
            return False
        self._drop(victim)
        self.stats["early_drops"] += 1
        return True

    def expire(self, now: float) -> int:
        """Run the timers: call at least every `cfg.tick` seconds."""
        n = self.table.expire(now)
        self.templates.expire(now)
        return n

    # -- configuration changes -------------------------------------------------

    def _take_settings(self, cfg: NodeConfig) -> None:
        """Everything derived from the config and the current services."""
        self.cfg = cfg
        self.tcp_timeouts = tcp_state.timeout_table(cfg.timeouts)
        self.udp_timeout = float(cfg.timeouts["udp"])
        self.ops_timeout = float(cfg.timeouts["udp_ops"])
        self.expire_removed = cfg.removed_server_conns == "expire"
        self.templates.expire_quiescent = cfg.expire_quiescent_template
        self.table.max_conns = cfg.max_conns
        self.vips = {s.vip for s in self.services.values()}
        self.laddrs = {a for s in self.services.values() for a in s.laddrs.laddrs}
        self.owned = self.vips | self.laddrs
        self.verify_new = cfg.verify_checksums in ("new", "all")
        self.verify_all = cfg.verify_checksums == "all"

    def reconfigure(self, cfg: NodeConfig, now: float) -> dict:
        """Apply a new, already validated config without touching established
        connections of real servers that stay.

        Weights and thresholds change in place; new real servers and services
        join; a removed real server's connections expire now, or are kept
        until they end (`removed_server_conns = "keep"`); a removed service's
        connections expire with it.
        """
        summary = {"services_added": 0, "services_removed": 0, "servers_removed": 0,
                   "conns_expired": 0}
        wanted = {}
        for sc in cfg.services:
            probe = Service(sc, cfg.lport_min, cfg.lport_max, self.table.has_key)
            wanted[probe.key] = (sc, probe)
        gone_dests = set()
        for key, svc in list(self.services.items()):
            if key not in wanted:
                gone_dests.update(id(d) for d in svc.dests)
                for d in svc.dests:
                    d.available = False
                del self.services[key]
                summary["services_removed"] += 1
        for key, (sc, probe) in wanted.items():
            svc = self.services.get(key)
            if svc is None:
                self.services[key] = probe
                summary["services_added"] += 1
                continue
            removed = svc.reconfigure(sc, cfg.lport_min, cfg.lport_max)
            summary["servers_removed"] += len(removed)
            if self.expire_removed or cfg.removed_server_conns == "expire":
                gone_dests.update(id(d) for d in removed)
        self._take_settings(cfg)
        if gone_dests:
            for conn in list(self.table):
                if conn.dest is not None and id(conn.dest) in gone_dests:
                    self._drop(conn)
                    summary["conns_expired"] += 1
            for t in list(self.templates.by_key.values()):
                if id(t.dest) in gone_dests:
                    self.templates.remove(t)
        return summary

    # -- state from the peer (ip_vs_proc_conn) -------------------------------------

    def apply_synced(self, *, proto: int, state: int, flags: int, caddr: bytes, cport: int,
                     vaddr: bytes, vport: int, laddr: bytes, lport: int, daddr: bytes,
                     dport: int, timeout: float, now: float, in_pkts: int = 3,
                     template: bool = False) -> str:
        """Create or update a connection from a sync entry; return what happened.

        As ip_vs_proc_conn: an entry whose real server or local pair changed
        replaces ours unless it is only an expiry notice (INACTIVE); the
        INACTIVE bit moves the dest's active/inactive counts; a connection
        whose service or real server we do not have is kept unbound (and
        still forwarded) and counted; the timer restarts at the sent timeout.
        The peer's choice of laddr:lport wins over a local entry holding the
        same pair: the master's view is the one clients are using.
        """
        st = self.sync_stats
        st["applied"] += 1
        if template:
            return self._apply_template(proto, caddr, vaddr, vport, daddr, dport, timeout, now)
        sync_flags = flags & (INACTIVE | NOOUTPUT | ASSURED)
        key = P.flow_key(proto, caddr, vaddr, cport, vport)
        conn = self.index.get(key)
        if conn is not None and key != conn.orig_key:
            conn = None     # our laddr:lport seen as a client tuple: not the same flow
        if conn is not None and (conn.daddr, conn.dport, conn.laddr, conn.lport) != (daddr, dport, laddr, lport):
            if sync_flags & INACTIVE and state != ESTABLISHED:
                st["ignored"] += 1
                return "ignored"
            self._drop(conn)
            st["replaced"] += 1
            conn = None
        if conn is None:
            reply_key = P.flow_key(proto, daddr, laddr, dport, lport)
            holder = self.index.get(reply_key)
            if holder is not None:
                self._drop(holder)
                st["conflicts"] += 1
            svc = self.services.get((proto, vaddr, vport))
            dest = svc.find_dest(daddr, dport) if svc is not None else None
            if svc is not None:       # share address objects (see _new)
                vaddr = svc.vip
                laddr = svc.laddrs.shared(laddr)
            if dest is not None:
                daddr, dport = dest.addr, dest.port
            conn = Conn(proto, caddr, cport, vaddr, vport, laddr, lport, daddr, dport)
            conn.flags = sync_flags | SYNCED
            if svc is not None and dest is not None:
                self._install(conn, svc, dest, now)
                if svc.laddrs.owns(laddr):
                    svc.laddrs.claim(proto, laddr, daddr, dport)
            else:
                self._rewrites(conn)
                conn.created = now
                st["unbound"] += 1
            conn.state = conn.old_state = state
            conn.in_pkts = in_pkts
            self.table.insert(conn, now + timeout)
            if sync_flags & ASSURED:
                self.table.assure(conn)
            st["created"] += 1
            return "created"
        self._mark_inactive(conn, bool(sync_flags & INACTIVE))
        conn.flags = (conn.flags & ~(INACTIVE | NOOUTPUT)) | sync_flags | SYNCED
        if sync_flags & ASSURED:
            self.table.assure(conn)
        conn.state = conn.old_state = state
        conn.in_pkts = in_pkts
        self._refresh(conn, now + timeout)
        st["updated"] += 1
        return "updated"

    def _apply_template(self, proto, caddr, vaddr, vport, daddr, dport, timeout, now) -> str:
        """A persistence template from the peer: pin the client here too, keyed
        with our own netmask for the service; refresh or re-point an existing one."""
        st = self.sync_stats
        svc = self.services.get((proto, vaddr, vport))
        dest = svc.find_dest(daddr, dport) if svc is not None and svc.persistent else None
        if dest is None:
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

    def timeout_of(self, conn: Conn) -> float:
        """The full timeout of the connection's current state (cp->timeout)."""
        return self.tcp_timeouts[conn.state] if conn.proto == TCP else self.udp_timeout

    # -- what the API shows ------------------------------------------------------

    def conn_counts(self) -> dict:
        active = sum(d.active for s in self.services.values() for d in s.dests)
        inactive = sum(d.inactive for s in self.services.values() for d in s.dests)
        return {"total": self.table.count, "active": active, "inactive": inactive}
