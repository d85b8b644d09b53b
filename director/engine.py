"""The sans-IO FULLNAT engine's packet path (ip_vs_core.c): (packet bytes, now) -> verdict.

`handle` returns None to drop, the same object to accept unchanged, new
bytes to accept rewritten, or a `Mark` to accept unchanged with that packet mark: the
first packet of a flow to a `forwarding = "kernel"` service, whose mark names the binding
(real server, laddr) the kernel's NAT then applies to the whole flow
(director.kernel_rules).  Everything it needs to know about time arrives as
`now`; it performs no I/O and reads no clock, so the NFQUEUE adapter, the
tests and the benchmarks drive the very same object.

The packet path, in order: parse; one dict lookup on the flow key, which finds
a connection by either of its tuples; state transition (the protocol's table,
director.protocol) and timer refresh; rewrite with the connection's
precomputed template.  Only a miss takes the slow path (ICMP error, or a new
connection through the scheduler).

Kept apart, as IPVS keeps them in their own files: binding and accounting
(director.conn), installing synced entries (director.sync_apply) and
reconfiguration (director.ctl).
"""
from __future__ import annotations

import logging
from math import ceil as _ceil
from typing import Any, Callable, NamedTuple

from director import client_address_kinds, ctl
from director.client_address import State
from director.config import NodeConfig
from director.conn import Conn, Connections
from director.kernel_rules import Marks
from director.laddr import PortExhausted, PortSpace
from director.leave import Leave
from director.persist import Templates, template_key
from director.protocol import REUSE, make_protocols
from director.sched import Flow
from director.service import Service
from director.sync_apply import SyncApplier
from proto import packet as P
from proto.consts import ASSURED, ICMP, ICMPV6, INACTIVE, NOOUTPUT, ONE_PACKET, SYN_RECV
from proto.fullnat import apply, rewrite_icmp_error

log = logging.getLogger("tandem.engine")

_PROVEN_OR_UNREPLIED = ASSURED | NOOUTPUT

#: Why a packet was dropped.  Parse failures use proto.packet's reason codes.
DROP_REASONS = P.REASONS + (
    "bad_checksum",   # L4 (or IPv4 header) checksum wrong on a packet that would open a connection
    "no_service",     # TCP/UDP to a VIP port no service listens on
    "no_conn",        # matches no connection and cannot open one (TCP without SYN, reply to a laddr)
    "icmp_no_conn",   # an ICMP error about no known connection
    "icmp_wrong_side",  # an ICMP error about a known connection, addressed to the other side's address
    "no_dest",        # the scheduler found no usable real server
    "no_lport",       # every laddr's port range to that real server is in use
    "table_full",     # at max_conns with nothing to early-drop
    "proxy_refused",  # a client packet of a connection refused for its own PROXY header
    "proxy_dgram_too_big",  # a UDP datagram that cannot grow by its PROXY header (65,535)
    "not_ours",       # queued, but addressed to neither a VIP nor a laddr
    "internal_error",  # a bug: counted and logged, never raised
)


class Mark(NamedTuple):
    """Verdict: accept the packet unchanged with this mark (kernel forwarding)."""
    mark: int


class Engine:
    def __init__(self, cfg: NodeConfig, now: float = 0.0) -> None:
        self.stats = dict.fromkeys((
            "packets", "forwarded_in", "forwarded_out", "conns_new", "conns_expired",
            "conns_reused", "early_drops", "icmp_errors", "passed_local",
            "icmp_unreachable_sent", "icmp_unreachable_suppressed", "kernel_handoffs",
            "proxy_headers", "proxy_headers_resent", "proxy_headers_refused",
            "proxy_headers_passed", "proxy_dgram_headers", "toa_inserted", "toa_pruned",
            "toa_no_room"), 0)
        self.drops = dict.fromkeys(DROP_REASONS, 0)
        #: per-protocol operations and timeouts, by protocol number
        self.protocols = make_protocols(cfg.timeouts)
        # the same, as a 256-slot tuple: indexing it is cheaper than a dict lookup
        self._protocol_of = tuple(self.protocols.get(n) for n in range(256))
        self.conns = Connections(cfg.max_conns, self.protocols, self.stats, cfg.tick, now)
        self.table = self.conns.table
        self.index = self.table.index          # the hot path reads the dict directly
        self._wheel = self.table.wheel
        self._tick = self._wheel.tick          # the wheel's, never changed after creation
        self.templates = Templates(cfg.tick, now, cfg.expire_quiescent_template)
        #: every laddr's port cursor and counts: the node's, kept across reloads
        self.ports = PortSpace(cfg.lport_min, cfg.lport_max, self.table.has_key)
        self.services: dict[tuple[int, bytes, int], Service] = ctl.build_services(cfg, self.ports)
        self._sync = SyncApplier(self.conns, self.services, self.templates)
        self.sync_stats = self._sync.stats
        self.apply_synced = self._sync.apply
        self._take_settings(cfg)
        self._errors_logged = 0
        self._leave = Leave(now)
        #: the marks of kernel-mode bindings; the node loads the same ones into the kernel
        self.marks = Marks()
        #: called as hook(service, dest, mark, now) for each new flow handed to the kernel:
        #: the node counts it on the real server until its conntrack NEW event arrives
        self.kernel_hook: Callable[[Service, Any, int, float], None] | None = None
        #: called as hook(conn, pkts, now) after every client->VIP packet of a
        #: connection, as ip_vs_in calls ip_vs_sync_conn; syncd decides.
        self.sync_hook: Callable[[Conn, int, float], None] | None = None

    # -- the packet path -------------------------------------------------------

    def handle(self, data: bytes, now: float) -> bytes | Mark | None:
        self.stats["packets"] += 1
        try:
            pkt = P.parse(data)
        except P.Malformed as exc:
            self.drops[exc.reason] += 1
            return None
        try:
            conn = self.index.get(pkt.key)
            if conn is None:
                if pkt.inner is not None:
                    return self._icmp_error(data, pkt)
                return self._new(data, pkt, now)
            # -- a packet of a known connection: inline, the one path that is hot
            if self.verify_all and not P.l4_checksum_ok(data, pkt):
                self.drops["bad_checksum"] += 1
                return None
            proto = self._protocol_of[conn.proto]
            flags = pkt.flags
            state = conn.state
            cflags = conn.flags
            inbound = pkt.key == conn.orig_key
            if inbound:
                new = proto.next_in[cflags & NOOUTPUT][flags][state]
            else:
                if cflags & NOOUTPUT:
                    conn.flags = cflags = cflags & ~NOOUTPUT
                new = proto.next_out[flags][state]
            if new != state:
                if new == REUSE:
                    # conn_reuse_mode 1: a new SYN on a closing entry is a new connection
                    self.conns.drop(conn)
                    self.stats["conns_reused"] += 1
                    return self._new(data, pkt, now)
                self.conns.set_state(conn, new, proto)
            # only a connection that has seen a reply can prove it is two-way
            if (not cflags & _PROVEN_OR_UNREPLIED and now - conn.created >= proto.assure_after
                    and proto.proves_two_way(conn, data, pkt, inbound, now)):
                self.conns.assure(conn)
            # TimerWheel.refresh inlined (two calls fewer on every packet): the new
            # deadline is written, and the entry filed again only when it moved
            # earlier than the slot it is in
            expires = conn.expires = now + (proto.ops_timeout if cflags & ONE_PACKET
                                            else proto.timeouts[new])
            if _ceil(expires / self._tick) < conn.timer_tick:
                self._wheel.schedule(conn)
            dest = conn.dest
            if inbound:
                self.stats["forwarded_in"] += 1
                if dest is not None:
                    dest.packets_in += 1
                    dest.bytes_in += len(data)
                conn.in_pkts += 1
                if conn.client_address_state is not None:
                    return self._client_address_in(conn, conn.client_address_state, data, pkt,
                                                   conn.rw_in, now, state)
                if self.sync_hook is not None:
                    self.sync_hook(conn, conn.in_pkts, now)
                return apply(data, pkt, conn.rw_in)
            self.stats["forwarded_out"] += 1
            if dest is not None:
                dest.packets_out += 1
                dest.bytes_out += len(data)
            if conn.client_address_state is not None:
                data = conn.client_address_state.server_to_client(data, pkt)
            return apply(data, pkt, conn.rw_out)
        except Exception:       # nothing a packet holds may take the engine down
            self.drops["internal_error"] += 1
            if self._errors_logged < 10:
                self._errors_logged += 1
                log.exception("engine error on a %d-byte packet (dropped)", len(data))
            return None

    def _new(self, data: bytes, pkt, now: float) -> bytes | Mark | None:
        proto = pkt.proto
        svc = self.services.get((proto, pkt.dst, pkt.dport))
        if svc is None:
            return self._unowned(data, pkt)
        ops = self._protocol_of[proto]
        if not ops.opens[pkt.flags]:
            self.drops["no_conn"] += 1
            return None
        if self.verify_new and not (P.l4_checksum_ok(data, pkt)
                                    and (pkt.family == 6 or P.ipv4_header_ok(data))):
            self.drops["bad_checksum"] += 1
            return None
        table = self.table
        if table.count >= table.max_conns and not self.conns.early_drop():
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
            # ip_vs_leave: refused, and the client told so (ICMP port
            # unreachable, rate-limited) rather than left to retry for minutes
            self.drops["no_dest"] += 1
            answer = self._leave.answer(data, pkt, now)
            self.stats["icmp_unreachable_sent" if answer is not None else "icmp_unreachable_suppressed"] += 1
            return answer
        if svc.forwarding == "kernel":
            return self._hand_to_kernel(data, pkt, svc, dest, template, now)
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
        conn = Conn(proto, pkt.src, pkt.sport, svc.vip, pkt.dport, laddr, lport, dest.addr, dest.port,
                    pkt.key)
        # __ip_vs_update_dest puts INACTIVE in every dest's conn_flags: a new
        # connection counts as inactive until its protocol makes it active.
        conn.flags |= INACTIVE
        self.conns.bind(conn, svc, dest, now)
        if template is not None:
            conn.control = template
            template.n_control += 1
        one_packet = svc.ops and ops.one_packet
        if one_packet:
            conn.flags |= ONE_PACKET
            expires = now + ops.ops_timeout
        else:
            self.conns.set_state(conn, ops.initial[pkt.flags], ops)
            expires = now + ops.timeouts[conn.state]
        table.insert(conn, expires, reply_only=one_packet)
        self.stats["conns_new"] += 1
        self.stats["forwarded_in"] += 1
        dest.packets_in += 1
        dest.bytes_in += len(data)
        conn.in_pkts = 1
        conn.sync_endtime = now
        assert conn.rw_in is not None       # made by bind()
        if svc.client_address != "none":
            conn.client_address_state = cas = client_address_kinds.begin(svc, data, pkt)
            if cas is not None:
                return self._client_address_in(conn, cas, data, pkt, conn.rw_in, now)
        if self.sync_hook is not None:
            self.sync_hook(conn, 1, now)
        return apply(data, pkt, conn.rw_in)

    def _client_address_in(self, conn: Conn, cas: State, data: bytes, pkt, rw, now: float,
                           was: int = 0) -> bytes | None:
        """A client packet of a connection with client-address state (director.client_address;
        `was`: the connection's state before the packet).  The sync hook runs after the
        state saw the packet, as ip_vs_in syncs after the transmit, so the entry it sends
        says whether a PROXY header has gone out."""
        out, pkt, event = cas.client_to_server(data, pkt, was == SYN_RECV)
        if event is not None:
            for name in event.stats:
                self.stats[name] += 1
            if event.drop is not None:
                self.drops[event.drop] += 1
            if event.release:
                conn.client_address_state = None    # from now on it costs what a plain one does
        if self.sync_hook is not None:
            self.sync_hook(conn, conn.in_pkts, now)
        return None if out is None else apply(out, pkt, rw)

    def _hand_to_kernel(self, data: bytes, pkt, svc: Service, dest, template, now: float) -> Mark | None:
        """A new flow of a kernel-mode service: the same scheduling, persistence and
        accounting of the choice as an engine-mode flow, but no table entry: the verdict's
        mark tells the kernel's NAT the real server and the laddr (it picks the lport)."""
        try:
            laddr = svc.laddrs.pick(dest.addr)
        except PortExhausted:
            self.drops["no_lport"] += 1
            return None
        if svc.persistent:
            if template is None:
                tkey = template_key(pkt.proto, pkt.src, svc.persist_mask, pkt.dst, pkt.dport)
                self.templates.create(tkey, pkt.src, dest, svc, now, svc.persistent)
            else:
                self.templates.touch(template, now, svc.persistent)
        dest.conns_total += 1
        dest.packets_in += 1
        dest.bytes_in += len(data)
        self.stats["kernel_handoffs"] += 1
        mark = self.marks.mark_for(dest.addr, dest.port, laddr)
        if self.kernel_hook is not None:
            self.kernel_hook(svc, dest, mark, now)
        return Mark(mark)

    @staticmethod
    def _schedule(svc: Service, pkt, now: float):
        return svc.scheduler.schedule(Flow(pkt.proto, pkt.src, pkt.sport, pkt.dst, pkt.dport, now))

    def _unowned(self, data: bytes, pkt) -> bytes | None:
        if pkt.dst not in self.owned:
            self.drops["not_ours"] += 1
            return None
        if pkt.proto == ICMP or pkt.proto == ICMPV6:
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
        quoted_to_client = key == conn.orig_key
        # The outer direction must fit the quoted one, as ip_vs_in_icmp and
        # ip_vs_out_icmp each handle only errors arriving on their side: an
        # error about a packet we sent the client is addressed to the VIP, one
        # about a packet we sent the real server to the laddr.  Any host may
        # send it (a router on the path), so the source is not checked.
        if pkt.dst != (conn.vaddr if quoted_to_client else conn.laddr):
            self.drops["icmp_wrong_side"] += 1
            return None
        self.stats["icmp_errors"] += 1
        if quoted_to_client:
            # about a packet we sent the client: pass it on to the real server
            return rewrite_icmp_error(data, pkt, conn.laddr, conn.daddr,
                                      conn.daddr, conn.laddr, conn.dport, conn.lport)
        # about a packet we sent the real server: its sequence number is in the server's
        # space when a PROXY header shifted it, and the client's stack wants its own
        cas = conn.client_address_state
        shift, mtu = (0, 0) if cas is None else cas.quoted_shifts(data, inner)
        return rewrite_icmp_error(data, pkt, conn.vaddr, conn.caddr,
                                  conn.caddr, conn.vaddr, conn.cport, conn.vport,
                                  inner_seq_delta=shift, mtu_delta=mtu)

    def expire(self, now: float) -> int:
        """Run the timers: call at least every `cfg.tick` seconds."""
        n = self.conns.expire(now)
        self.templates.expire(now)
        return n

    # -- configuration (director.ctl) --------------------------------------------

    def _take_settings(self, cfg: NodeConfig) -> None:
        """Everything derived from the config and the current services."""
        self.cfg = cfg
        for proto in self.protocols.values():
            proto.set_timeouts(cfg.timeouts)
        self.templates.expire_quiescent = cfg.expire_quiescent_template
        self.table.max_conns = cfg.max_conns
        self.settings = s = ctl.Settings.of(cfg, self.services)
        self.vips, self.laddrs, self.owned = s.vips, s.laddrs, s.owned
        self.verify_new, self.verify_all = s.verify_new, s.verify_all

    def reconfigure(self, cfg: NodeConfig, now: float) -> dict:
        """Apply a new, already validated config (see director.ctl.reconfigure)."""
        summary = ctl.reconfigure(self.services, self.conns, self.templates, self.ports, cfg, now)
        self._take_settings(cfg)
        return summary

    # -- state from the peer (director.sync_apply) ---------------------------------

    #: apply_synced(*, proto, state, flags, caddr, cport, vaddr, vport, laddr,
    #: lport, daddr, dport, timeout, now, in_pkts=3, template=False, seq=None, toa=None) -> str:
    #: create or update a connection from a sync entry and say what happened
    #: (director.sync_apply.SyncApplier.apply; bound in __init__, no extra call)
    apply_synced: Callable[..., str]

    def timeout_of(self, conn: Conn) -> float:
        """The full timeout of the connection's current state (cp->timeout)."""
        return self.protocols[conn.proto].timeout_of(conn)

    # -- what the API shows ------------------------------------------------------

    def conn_counts(self) -> dict:
        active = sum(d.active for s in self.services.values() for d in s.dests)
        inactive = sum(d.inactive for s in self.services.values() for d in s.dests)
        return {"total": self.table.count, "active": active, "inactive": inactive}
