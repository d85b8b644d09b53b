"""When to send a connection to the peer: ip_vs_sync_conn_needed, line by line.

The kernel code (net/netfilter/ipvs/ip_vs_sync.c, since the 2012 rework):

    orig = cp->sync_endtime                 # low 2 bits: retry count
    n    = (now + cp->timeout) & ~3
    if TEMPLATE:                    force = 0
    elif persist_mode and controlled by a template: return 0
    elif TCP:
        if state not in {ESTABLISHED, FIN_WAIT, CLOSE, CLOSE_WAIT, TIME_WAIT}: return 0
        force = state != old_state
        if force and state != ESTABLISHED: goto set
    else:                           force = 0
    if refresh_period > 0:
        diff = n - orig; min_diff = max(timeout/2, 10 s)
        if |diff| < min(refresh_period, min_diff):
            retries = orig & 3
            if retries >= sync_retries: return 0
            if now < orig - timeout + refresh_period/8: return 0
            n |= retries + 1
    if period > 0:
        if not TEMPLATE and pkts % period != threshold: return 0
    elif refresh_period == 0 and pkts != threshold: return 0
  set:
    old_state = state; sync_endtime = n; return 1

Time is kept as the kernel keeps it, in integer jiffies (HZ = 1000 here), so the
`& ~3` and the retry count in the two low bits are exact: Conn.sync_endtime holds
(n | retries) / HZ, a float of seconds.  The engine stamps a new connection's
sync_endtime with its creation time (Conn.created), which the kernel stores as
`jiffies & ~3`; that stamp is read the same way, so it carries no retry count.

Note that old_state moves only when a send is decided: a connection that became
ESTABLISHED on packet 2 still has `force` set on packet 3.

tandem departs from the kernel in two places, both on by default.  `on_syn`: a new
connection is sent when its SYN is scheduled (SYN_RECV), URGENT, so a client whose
handshake completed just before the master died (its ACK still queued there, never
processed) finds the entry on the backup, whose TCP table takes that ACK from
SYN_RECV to ESTABLISHED.  `on_established`: a change into ESTABLISHED is sent at
once and marked URGENT, so the transport sends it without waiting for the flush
delay.  The kernel lets it wait for the threshold
packet, and a connection can reach ESTABLISHED long after that packet: a reused
client port whose old entry had passed packet 3, or a handshake slower than three
packets.  A failover in that window loses a connection the client saw open.

A third departure follows IPVS's own intent for its sequence data: a connection
that carries a PROXY header (conn.client_address_state) is sent URGENT on the packet that first
carries the header, whatever its state and packet count, so the peer learns the
shift within one datagram of the header going out; a TOA connection likewise on the
packet after the real server's SYN-ACK, so the peer learns the server's first sequence
number (docs/client-address.md, "TOA and failover").
"""
from __future__ import annotations

import math
from typing import Callable

from proto.consts import ESTABLISHED, SYN_RECV, TCP, TCP_SYNC_STATES
from proto.sync import SyncEntry, pack_conn

HZ = 1000
#: needed()'s answer for a change into ESTABLISHED: send, and do not wait to batch
URGENT = 2


class SyncPolicy:
    def __init__(self, threshold: int = 3, period: int = 50, refresh_period: float = 0.0,
                 retries: int = 0, persist_mode: bool = False, on_established: bool = True,
                 on_syn: bool = True) -> None:
        if threshold < 0 or period < 0:
            raise ValueError("threshold and period must be >= 0")
        if period and threshold >= period:
            raise ValueError("threshold must be below period (unless period is 0)")
        if refresh_period < 0:
            raise ValueError("refresh_period must be >= 0")
        if not 0 <= retries <= 3:
            raise ValueError("retries must be 0..3")
        self.threshold = threshold
        self.period = period
        self.refresh_period = refresh_period
        self.retries = retries
        self.persist_mode = persist_mode
        self.on_established = on_established
        self.on_syn = on_syn
        self._refresh_j = round(refresh_period * HZ)

    @classmethod
    def from_config(cls, cfg) -> "SyncPolicy":
        return cls(cfg.threshold, cfg.period, cfg.refresh_period, cfg.retries, cfg.persist_mode,
                   cfg.on_established, cfg.on_syn)

    @staticmethod
    def _orig(conn) -> int:
        e = conn.sync_endtime
        if e == conn.created:           # the engine's creation stamp: jiffies & ~3
            return math.floor(e * HZ) & ~3
        return round(e * HZ)

    @staticmethod
    def retry_count(conn) -> int:
        """The retry count the last decision left in sync_endtime (0..3)."""
        return SyncPolicy._orig(conn) & 3

    def needed(self, conn, pkts: int, now: float, timeout: float, *,
               template: bool = False, controlled: bool = False) -> int:
        """True (or URGENT) if this packet (the conn's `pkts`-th incoming one) should sync it.

        `timeout` is the full timeout of the current state (Engine.timeout_of);
        `template` marks a persistence template, `controlled` a connection that a
        template controls (only relevant with persist_mode).  Updates
        conn.old_state and conn.sync_endtime when it says yes, as the kernel does.
        """
        now_j = math.floor(now * HZ)
        timeout_j = round(timeout * HZ)
        n = (now_j + timeout_j) & ~3
        state = conn.state
        adj = getattr(conn, "client_address_state", None)     # (a kernel-mode flow has none)
        if adj is not None and adj.decided and not adj.announced:
            # the PROXY header has just gone out (or the client's own was passed or
            # refused): the peer must know now, or a takeover would send a second one
            # (docs/client-address.md, "Failover")
            adj.announced = True
            return self._set(conn, n, state != conn.old_state) and URGENT
        if template:
            force = False
        elif self.persist_mode and controlled:
            return False
        elif conn.proto == TCP:
            if state == SYN_RECV and conn.old_state != SYN_RECV and self.on_syn:
                return self._set(conn, n, True) and URGENT
            if state not in TCP_SYNC_STATES:
                return False
            force = state != conn.old_state
            if force and state != ESTABLISHED:
                return self._set(conn, n, force)
            if force and self.on_established:
                return self._set(conn, n, force) and URGENT
        else:
            force = False

        refresh = self._refresh_j
        if refresh > 0:
            # read only here: with refresh_period 0 (the default) the previous stamp
            # decides nothing, and every inbound packet of a new connection asks
            orig = self._orig(conn)
            diff = n - orig
            min_diff = max(timeout_j >> 1, 10 * HZ)
            if abs(diff) < min(refresh, min_diff):
                retries = orig & 3
                if retries >= self.retries:
                    return False
                if now_j < orig - timeout_j + (refresh >> 3):
                    return False
                n |= retries + 1
        if self.period > 0:
            if not template and pkts % self.period != self.threshold:
                return False
        elif not refresh and pkts != self.threshold:
            return False
        return self._set(conn, n, force)

    @staticmethod
    def _set(conn, n: int, force: bool) -> bool:
        conn.old_state = conn.state
        conn.sync_endtime = n / HZ
        return True     # the kernel's cmpxchg cannot lose here: one thread per engine


def make_hook(policy: SyncPolicy, engine, queue: Callable[..., None],
              queue_packed: Callable[..., None] | None = None):
    """An Engine.sync_hook: ask the policy, and queue an entry when it says so.
    `queue(entry, now, urgent=False)`: urgent entries are sent without the flush delay.
    `queue_packed(packed, now, urgent=False)`, if given, takes the connection's entry
    already packed (proto.sync.pack_conn: the same bytes, without the SyncEntry object;
    a short TCP connection is sent five times)."""
    timeout_of = engine.timeout_of
    needed = policy.needed

    def hook(conn, pkts: int, now: float) -> None:
        timeout = timeout_of(conn)
        decision = needed(conn, pkts, now, timeout)
        if decision:
            if queue_packed is not None:
                queue_packed(pack_conn(conn, now, timeout), now, decision == URGENT)
            else:
                queue(SyncEntry.from_conn(conn, now, timeout), now, urgent=decision == URGENT)
            # as ip_vs_sync_conn: its controlling template goes with it
            if conn.control is not None:
                queue(SyncEntry.from_template(conn.control, now), now)

    return hook
