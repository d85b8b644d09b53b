"""The thin asyncio adapter: one UDP socket, one timer, a sender and a receiver.

Multicast (IPVS's layout): the socket is bound to group:port, so only datagrams
addressed to the group arrive, joins the group on the interface address given,
sends to group:port with TTL cfg.ttl out of that interface, and has
IP_MULTICAST_LOOP off (the receiver also ignores its own node id).  Over IPv6
(`interface` an IPv6 address, the group ff02::81 unless set) the same, but an
IPv6 group is joined, sent to and bound on an interface *index*: the back
interface's (`ifname`), whose address `interface` must be (syncd.config checks);
cfg.ttl is the hop limit, and the kernel sends from the link-local address.

Unicast (clouds, or where multicast is filtered): bound to cfg.bind:cfg.port,
each datagram is sent to every peer in cfg.peers (or the `peers` given).  A
datagram whose source address is not one of those peers is dropped before any
parsing (counted not_peer), as keepalived does with unicast_peer: any port, but
only a configured address.

The driver feeds each datagram to receiver.on_datagram, routes NACK and
RESYNC_REQUEST to the sender through it, and keeps a single timer armed at the
earliest of sender.next_deadline() and receiver.next_deadline().
"""
from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
import struct
import time
from typing import Any, Callable

from proto.sync import SyncEntry
from syncd.config import SyncConfig
from syncd.receiver import SyncReceiver
from syncd.sender import SyncSender

log = logging.getLogger("tandem.syncd")


def multicast_socket(group: str, port: int, interface: str, ttl: int = 1,
                     sock_buf: int = 0) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if sock_buf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, sock_buf)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sock_buf)
        s.bind((group, port))
        iface = socket.inet_aton(interface)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                     struct.pack("4s4s", socket.inet_aton(group), iface))
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, iface)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
        s.setblocking(False)
    except BaseException:
        s.close()
        raise
    return s


def multicast_socket6(group: str, port: int, ifindex: int, hops: int = 1,
                      sock_buf: int = 0) -> socket.socket:
    """The IPv6 twin of multicast_socket: bound to [group]:port on the interface `ifindex`
    (a link-scope group has no meaning without one), joined there, sending there."""
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if sock_buf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, sock_buf)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sock_buf)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((group, port, 0, ifindex))
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP,
                     socket.inet_pton(socket.AF_INET6, group) + struct.pack("@I", ifindex))
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, ifindex)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, hops)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
        s.setblocking(False)
    except BaseException:
        s.close()
        raise
    return s


def group_address(cfg: SyncConfig, ifname: str) -> tuple:
    """Where a multicast sync sends: (group, port), or for IPv6 (group, port, 0, ifindex) of
    the back interface `ifname` (OSError ENODEV when there is no such interface)."""
    if cfg.family == 4:
        return (cfg.group, cfg.port)
    if not ifname:
        raise OSError(errno.ENODEV, "an IPv6 sync group is joined on an interface: "
                                    "[interfaces] back names none")
    return (cfg.group, cfg.port, 0, socket.if_nametoindex(ifname))


def unicast_socket(bind: str, port: int, sock_buf: int = 0) -> socket.socket:
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    s = socket.socket(family, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        if sock_buf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, sock_buf)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sock_buf)
        s.bind((bind, port))
        s.setblocking(False)
    except BaseException:
        s.close()
        raise
    return s


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, owner: "SyncTransport") -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr) -> None:
        self.owner._received(data, addr)

    def error_received(self, exc: Exception) -> None:
        self.owner.stats["socket_errors"] += 1


def _canonical(host: str) -> str:
    """One spelling per address: no IPv6 scope, IPv4-mapped IPv6 as IPv4."""
    ip = ipaddress.ip_address(host.split("%", 1)[0])
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


class SyncTransport:
    def __init__(self, cfg: SyncConfig, sender: SyncSender, receiver: SyncReceiver, *,
                 peers: list[tuple[str, int]] | None = None, ifname: str = "",
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.sender = sender
        self.receiver = receiver
        receiver.attach(sender)                 # one node: one epoch, control to the sender
        # Send times are wall-clock (the receiver's lag report, and its max_age
        # test, which compares send times of one sender only); deadlines use `clock`.
        if sender.wall is None:
            sender.wall = wall
        if receiver.wall is None:
            receiver.wall = wall
        self.clock = clock
        #: the back interface's name: an IPv6 group is joined and sent to on it
        self.ifname = ifname
        if cfg.mode == "multicast":
            self.peers: list[tuple] = [(cfg.group, cfg.port)]   # IPv6: with the interface, at start
        else:
            self.peers = list(peers if peers is not None else cfg.peers)
        #: unicast: the source addresses accepted (None: multicast, the group filters)
        self.allowed: frozenset[str] | None = None
        if cfg.mode != "multicast":
            self.allowed = frozenset(_canonical(host) for host, _ in self.peers)
        self.stats = dict.fromkeys(("tx", "rx", "tx_bytes", "rx_bytes", "socket_errors",
                                    "polls", "internal_errors", "not_peer"), 0)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        #: the operator's overrides on this channel (syncd.overrides.OverrideLink), if carried
        self.overrides: Any = None

    @property
    def local_address(self) -> tuple:
        assert self._transport is not None, "the transport is not started"
        return self._transport.get_extra_info("sockname")

    async def start(self, sock: socket.socket | None = None) -> None:
        """Open the socket (or use `sock`), ask the peers for their tables, start the timer."""
        cfg = self.cfg
        ifindex = 0
        if cfg.mode == "multicast" and cfg.family == 6:
            group = group_address(cfg, self.ifname)
            self.peers, ifindex = [group], group[3]
        if sock is None:
            if ifindex:
                sock = multicast_socket6(cfg.group, cfg.port, ifindex, cfg.ttl, cfg.sock_buf)
            elif cfg.mode == "multicast":
                sock = multicast_socket(cfg.group, cfg.port, cfg.interface, cfg.ttl, cfg.sock_buf)
            else:
                sock = unicast_socket(cfg.bind, cfg.port, cfg.sock_buf)
        self._loop = asyncio.get_running_loop()
        self._transport, _ = await self._loop.create_datagram_endpoint(
            lambda: _Protocol(self), sock=sock)
        self._send(self.receiver.start(self.clock()))
        self._arm()

    def set_peers(self, peers: list[tuple[str, int]]) -> None:
        """Unicast: send to `peers` from now on and accept datagrams only from them (a
        cluster's membership reloaded).  A peer added hears the next datagram; its
        receiver asks for what it lacks (its own start asks every peer for a bulk)."""
        if self.cfg.mode == "multicast":
            raise ValueError("a multicast sync has no peers to change")
        self.peers = list(peers)
        self.allowed = frozenset(_canonical(host) for host, _ in self.peers)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def queue(self, entry: SyncEntry, now: float | None = None, urgent: bool = False) -> None:
        """Hand an entry to the sender (the engine hook's `queue`) and re-arm."""
        self.sender.queue(entry, self.clock() if now is None else now, urgent)
        self._arm()

    def queue_packed(self, packed: bytes, now: float | None = None, urgent: bool = False) -> None:
        """queue() for an entry already packed (the engine hook's `queue_packed`)."""
        self.sender.queue_packed(packed, self.clock() if now is None else now, urgent)
        self._arm()

    def state(self, role: str, priority: int, address: str, resigned: bool) -> None:
        """Tell the peer what this node is in the pair, now (SyncSender.state; repeated)."""
        self._send([self.sender.state(role, priority, address, resigned, self.clock())])
        self._arm()

    def flush(self) -> int:
        """Send every pending entry now (see SyncSender.flush); returns the datagrams sent."""
        out = self.sender.flush(self.clock())
        self._send(out)
        self._arm()
        return len(out)

    def send_overrides(self, items: list[list]) -> None:
        """Overrides changed here: to the peer now (and again with every periodic send)."""
        if self.overrides is not None:
            self._send(self.overrides.changed(items, self.clock()))
            self._arm()

    # -- the driver ------------------------------------------------------------------

    def _send(self, datagrams: list[bytes]) -> None:
        t = self._transport
        if t is None:
            return
        for d in datagrams:
            for addr in self.peers:
                try:
                    t.sendto(d, addr)
                except OSError:
                    self.stats["socket_errors"] += 1
                    continue
                self.stats["tx"] += 1
                self.stats["tx_bytes"] += len(d)

    def _from_peer(self, addr) -> bool:
        allowed = self.allowed
        if allowed is None or addr[0] in allowed:
            return True
        try:
            return _canonical(addr[0]) in allowed
        except ValueError:
            return False

    def _received(self, data: bytes, addr=None) -> None:
        if addr is not None and not self._from_peer(addr):
            self.stats["not_peer"] += 1
            return
        self.stats["rx"] += 1
        self.stats["rx_bytes"] += len(data)
        try:
            self._send(self.receiver.on_datagram(data, self.clock()))
        except Exception:
            self.stats["internal_errors"] += 1
            log.exception("sync: handling a datagram failed")
        self._arm()

    def _fire(self) -> None:
        self._timer = None
        self._timer_at = float("inf")
        self.stats["polls"] += 1
        now = self.clock()
        try:
            out = self.sender.poll(now) + self.receiver.poll(now)
            if self.overrides is not None:
                out += self.overrides.poll(now)
            self._send(out)
        except Exception:
            self.stats["internal_errors"] += 1
            log.exception("sync: poll failed")
        self._arm()

    def _arm(self) -> None:
        """Keep one timer, at the earliest deadline of the sender and the receiver."""
        if self._loop is None or self._transport is None:
            return
        deadline = min(self.sender.next_deadline(), self.receiver.next_deadline())
        if self.overrides is not None:
            deadline = min(deadline, self.overrides.next_deadline())
        if deadline == float("inf") or deadline >= self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        delay = max(0.0, deadline - self.clock())
        self._timer_at = deadline
        self._timer = self._loop.call_at(self._loop.time() + delay, self._fire)
