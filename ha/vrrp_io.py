"""The thin asyncio adapter for one VRRP instance: one raw socket, one timer.  IPv4 here; an
IPv6 instance (cfg.family 6) uses ha/vrrp_inet6.py's socket, control message and receive.

Socket (`open_vrrp_socket`): ``socket(AF_INET, SOCK_RAW, 112)`` bound to the interface with
SO_BINDTODEVICE, joined to 224.0.0.18 on it (multicast mode; in unicast mode, cfg.unicast_peers
set, it joins nothing), IP_MULTICAST_TTL and IP_TTL 255, IP_MULTICAST_LOOP off, IP_TOS 0xc0.  The
socket is not bound to an address (that would filter out packets to the group); instead every
advert is sent with sendmsg + an IP_PKTINFO control message naming the interface and
cfg.primary_address as the source, so the source the kernel writes is the one the checksum's
pseudo-header was computed with.  Received datagrams carry the IPv4 header: the runner takes TTL,
source and destination from it, and hands the payload to `VrrpInstance.on_packet` (which decodes,
validates, counts).  Multicast adverts go to 224.0.0.18; in unicast mode one copy goes to each
peer, each with its own checksum (pseudo-header dst = that peer, as keepalived does).

The socket is created by `open_socket()` (called by `start()` if not done before).  To run the
instance in another network namespace, call `open_socket()` in a thread that has entered it
(`lab.nsutil.in_netns(ns, runner.open_socket)`): a socket keeps the namespace it was made in.

Two ways to hear about changes:
* `on_change(StateChange)` and `on_reannounce(reason)`: plain functions called at once, from the
  protocol's own path (the node hands them to the role machine's bounded inbox, ha/role.py); they
  must not block.
* `on_state_change(old, new, reason)` (plain function or coroutine function): called from one
  worker task, strictly one call at a time and in order; a slow callback delays later callbacks,
  never the VRRP protocol itself.  The queue in front of it is bounded: beyond
  `CALLBACK_QUEUE_MAX` waiting changes, a new one is merged into the last (its old state kept, the
  new state and reason taken: only the latest wanted state matters), counted in
  stats["callbacks_coalesced"].
Every state change is also logged in one line, as keepalived does:
``VRRP_Instance(VI_51) Entering MASTER STATE (master down timer expired (...))``.  A re-announce
is not logged here (the role machine logs it, rate-limited).

`resign()` is the operator's "resign": a Master advertises priority 0 once and becomes Backup at
once; the peer (a Backup) then sets its Master_Down_Timer to its Skew_Time and takes over.  Until
`resume()` this node does not preempt the new master even if its priority is higher (it behaves as
with nopreempt); if no peer takes over, it becomes Master again after Master_Down_Interval.
"""
from __future__ import annotations

import asyncio
import collections
import inspect
import logging
import socket
import struct
import time
from typing import Any, Awaitable, Callable

from proto import vrrp as P
from ha import vrrp_inet6
from ha.vrrp import Reannounce, SendAdvert, State, StateChange, VrrpConfig, VrrpInstance

log = logging.getLogger("tandem.vrrp")

__all__ = ["VrrpRunner", "open_vrrp_socket", "parse_ipv4"]

IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)
TOS_INTERNETWORK_CONTROL = 0xC0
_RX_BATCH = 64          # datagrams read per readiness callback
_RX_BUF = 2048
#: state changes waiting for a slow on_state_change before new ones are merged into the last
CALLBACK_QUEUE_MAX = 16

StateCallback = Callable[[State, State, str], "Awaitable[Any] | Any"]


def open_vrrp_socket(ifname: str, cfg: VrrpConfig) -> tuple[socket.socket, int]:
    """The raw VRRP socket for cfg on ifname (see the module docstring) and the ifindex.
    Must run in the network namespace of the interface."""
    if cfg.family == 6:
        return vrrp_inet6.open_socket6(ifname, cfg)
    ifindex = socket.if_nametoindex(ifname)
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, P.IPPROTO_VRRP)
    try:
        s.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, ifname.encode() + b"\0")
        s.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, TOS_INTERNETWORK_CONTROL)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 255)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
        # struct ip_mreqn {imr_multiaddr, imr_address, imr_ifindex}
        mreqn = struct.pack("=4s4si", socket.inet_aton(P.VRRP_GROUP4), b"\0" * 4, ifindex)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreqn)
        if not cfg.unicast_peers:
            s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
        s.setblocking(False)
    except BaseException:
        s.close()
        raise
    return s, ifindex


def parse_ipv4(datagram: bytes) -> tuple[str, str, int, bytes] | None:
    """(src, dst, ttl, payload) of a raw IPv4 datagram, or None if it is not one."""
    if len(datagram) < 20 or datagram[0] >> 4 != 4:
        return None
    ihl = (datagram[0] & 0x0F) * 4
    total = int.from_bytes(datagram[2:4], "big")
    if ihl < 20 or len(datagram) < ihl or total < ihl:
        return None
    end = min(total, len(datagram))
    return (socket.inet_ntoa(datagram[12:16]), socket.inet_ntoa(datagram[16:20]), datagram[8],
            datagram[ihl:end])


class VrrpRunner:
    """Drives one VrrpInstance over a raw socket on `ifname`."""

    def __init__(self, cfg: VrrpConfig, ifname: str, on_state_change: StateCallback | None = None,
                 *, clock: Callable[[], float] = time.monotonic,
                 on_change: Callable[[StateChange], None] | None = None,
                 on_reannounce: Callable[[str], None] | None = None,
                 socket_factory: Callable[[str, VrrpConfig], tuple[socket.socket, int]] | None = None
                 ) -> None:
        self.cfg = cfg
        self.ifname = ifname
        self.on_state_change = on_state_change
        #: called at once (must not block) for every StateChange / Reannounce action
        self.on_change = on_change
        self.on_reannounce = on_reannounce
        self.clock = clock
        #: makes the raw socket: the node passes its privileged interface's (tandem.kernel)
        self._open_socket = socket_factory or open_vrrp_socket
        self.instance = VrrpInstance(cfg)
        self.stats = dict.fromkeys(("rx_datagrams", "rx_not_ipv4", "tx_datagrams", "tx_errors",
                                    "internal_errors", "callback_errors",
                                    "callbacks_coalesced"), 0)
        self._sock: socket.socket | None = None
        self._ifindex = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._events: collections.deque[StateChange | None] | None = None
        self._events_ready: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._cmsg: tuple[int, int, bytes] | None = None    # the source and interface to send from
        self._targets: list[tuple[str, str]] = []   # (dst for the checksum, sendto address)

    # -- public -----------------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self.instance.state

    @property
    def counters(self) -> dict[str, int]:
        return self.instance.counters

    def open_socket(self) -> None:
        """Create the socket now (in the calling thread's network namespace)."""
        if self._sock is None:
            self._sock, self._ifindex = self._open_socket(self.ifname, self.cfg)

    async def start(self) -> None:
        """Open the socket (unless open_socket() was called), start the instance and the timer."""
        if self._loop is not None:
            return
        self.open_socket()
        self._loop = asyncio.get_running_loop()
        if self.cfg.family == 6:
            self._cmsg = vrrp_inet6.pktinfo6(self.cfg.primary_address, self._ifindex)
        else:
            self._cmsg = (socket.IPPROTO_IP, IP_PKTINFO, struct.pack(
                "=i4s4s", self._ifindex, socket.inet_aton(self.cfg.primary_address), b"\0" * 4))
        if self.cfg.unicast_peers:
            self._targets = [(p, p) for p in self.cfg.unicast_peers]
        else:
            self._targets = [(self.cfg.group, self.cfg.group)]
        self._events = collections.deque()
        self._events_ready = asyncio.Event()
        self._worker = asyncio.create_task(self._callbacks(), name=f"vrrp-{self.cfg.name}-notify")
        assert self._sock is not None       # open_socket() above
        self._loop.add_reader(self._sock.fileno(), self._readable)
        self._apply(self.instance.start(self.clock()))

    async def stop(self, graceful: bool = True, callback_timeout: float = 5.0) -> None:
        """Leave: with graceful, a Master advertises priority 0 first (the peer takes over after
        its Skew_Time); without, nothing more is sent (as a crash).  Waits (at most
        callback_timeout s) for the queued state-change callbacks, then closes the socket."""
        if self._loop is None:
            if self._sock is not None:
                self._sock.close()
                self._sock = None
            return
        actions = self.instance.shutdown(self.clock())
        if not graceful:
            actions = [a for a in actions if not isinstance(a, SendAdvert)]
        self._apply(actions)
        self._cancel_timer()
        if self._sock is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        if self._events is not None and self._worker is not None:
            self._enqueue(None)
            try:
                await asyncio.wait_for(asyncio.shield(self._worker), callback_timeout)
            except asyncio.TimeoutError:
                log.warning("VRRP_Instance(%s) state-change callbacks still running after %.1f s;"
                            " cancelled", self.cfg.name, callback_timeout)
                self._worker.cancel()
                try:
                    await self._worker
                except (asyncio.CancelledError, Exception):
                    pass
        self._worker = None
        self._events = self._events_ready = None
        self._loop = None

    def resign(self) -> None:
        """Operator resign (see the module docstring)."""
        self._run(self.instance.resign)

    def resume(self) -> None:
        """End a resign: preempt normally again (logged in one line, with what comes next)."""
        was = self.instance.resigned
        self._run(self.instance.resume)
        if was:
            log.info("VRRP_Instance(%s) Resuming: preempting again (%s)", self.cfg.name,
                     self.instance.outlook(self.clock()).reason)

    def note_peer(self, address: str, resigned: bool) -> None:
        """What the peer at `address` said of itself over sync (VrrpInstance.note_peer)."""
        self.instance.note_peer(address, resigned)

    def outlook(self):
        """What the instance will become if nothing else happens (VrrpInstance.outlook)."""
        return self.instance.outlook(self.clock())

    def set_fault(self, on: bool) -> None:
        """Enter (a Master first advertises priority 0) or leave Fault."""
        self._run(lambda now: self.instance.set_fault(on, now))

    # -- the driver ------------------------------------------------------------------------------

    def _run(self, fn: Callable[[float], list]) -> None:
        actions = fn(self.clock())
        if self._loop is not None:
            self._apply(actions)
        else:
            for a in actions:
                if isinstance(a, StateChange):
                    self._log_change(a)

    def _apply(self, actions: list) -> None:
        for a in actions:
            if isinstance(a, SendAdvert):
                self._send(a.priority)
            elif isinstance(a, StateChange):
                self._log_change(a)
                self._notify(self.on_change, a)
                if self._events is not None and self.on_state_change is not None:
                    self._enqueue(a)
            elif isinstance(a, Reannounce):
                self._notify(self.on_reannounce, a.reason)
        self._arm()

    def _notify(self, cb: Callable[[Any], None] | None, arg: Any) -> None:
        if cb is None:
            return
        try:
            cb(arg)
        except Exception:
            self.stats["callback_errors"] += 1
            log.exception("VRRP_Instance(%s) change callback failed", self.cfg.name)

    def _enqueue(self, ev: StateChange | None) -> None:
        q, ready = self._events, self._events_ready
        assert q is not None and ready is not None
        if ev is not None and len(q) >= CALLBACK_QUEUE_MAX and isinstance(last := q[-1], StateChange):
            q.pop()
            ev = StateChange(last.old, ev.new, ev.reason, ev.cause)
            self.stats["callbacks_coalesced"] += 1
        q.append(ev)
        ready.set()

    def _log_change(self, a: StateChange) -> None:
        log.info("VRRP_Instance(%s) Entering %s STATE (%s)", self.cfg.name,
                 a.new.keepalived_name, a.reason)

    def _send(self, priority: int) -> None:
        sock, cmsg = self._sock, self._cmsg
        if sock is None or cmsg is None:
            return
        advert = self.instance.advert(priority)
        for csum_dst, addr in self._targets:
            data = P.encode(advert, self.cfg.primary_address, csum_dst)
            try:
                where = (addr, 0) if self.cfg.family == 4 else (addr, 0, 0, self._ifindex)
                sock.sendmsg([data], [cmsg], 0, where)
            except OSError as exc:
                self.stats["tx_errors"] += 1
                log.debug("VRRP_Instance(%s) send to %s failed: %s", self.cfg.name, addr, exc)
                continue
            self.stats["tx_datagrams"] += 1

    def _readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        for _ in range(_RX_BATCH):
            try:
                if self.cfg.family == 6:
                    parsed = vrrp_inet6.recv6(sock, _RX_BUF)
                else:
                    parsed = parse_ipv4(sock.recv(_RX_BUF))
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                log.debug("VRRP_Instance(%s) recv failed: %s", self.cfg.name, exc)
                break
            self.stats["rx_datagrams"] += 1
            if parsed is None:
                self.stats["rx_not_ipv4"] += 1
                continue
            src, dst, ttl, payload = parsed
            try:
                actions = self.instance.on_packet(payload, src, dst, ttl, self.clock())
            except Exception:
                self.stats["internal_errors"] += 1
                log.exception("VRRP_Instance(%s) handling a packet failed", self.cfg.name)
                continue
            self._apply(actions)

    def _fire(self) -> None:
        self._timer = None
        # the loop may run a handle a hair before its time; never let that spin
        now = max(self.clock(), self._timer_at)
        try:
            actions = self.instance.on_timer(now)
        except Exception:
            self.stats["internal_errors"] += 1
            log.exception("VRRP_Instance(%s) timer failed", self.cfg.name)
            actions = []
        self._apply(actions)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self) -> None:
        """One timer, always at the instance's next_deadline()."""
        self._cancel_timer()
        if self._loop is None:
            return
        deadline = self.instance.next_deadline()
        if deadline is None:
            return
        delay = max(0.0, deadline - self.clock())
        self._timer_at = deadline
        self._timer = self._loop.call_at(self._loop.time() + delay, self._fire)

    async def _callbacks(self) -> None:
        q, ready = self._events, self._events_ready
        assert q is not None and ready is not None
        while True:
            while not q:
                ready.clear()
                await ready.wait()
            ev = q.popleft()
            if ev is None:
                return
            cb = self.on_state_change
            if cb is None:
                continue
            try:
                r = cb(ev.old, ev.new, ev.reason)
                if inspect.isawaitable(r):
                    await r
            except asyncio.CancelledError:
                raise
            except Exception:
                self.stats["callback_errors"] += 1
                log.exception("VRRP_Instance(%s) state-change callback failed", self.cfg.name)
