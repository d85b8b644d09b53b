"""The node's one privileged interface: everything that touches the kernel goes through here.

As seesaw's ncc does for its engine, one object holds every operation that needs
CAP_NET_ADMIN or CAP_NET_RAW: the NFQUEUE steering rules, the service addresses, link
state, gratuitous ARPs and unsolicited neighbour advertisements, binding the NFQUEUE and the raw VRRP socket.  The node builds one
`LinuxKernel` and hands it (or parts of it) to the adapters; unit tests hand them a fake
(tests/fake_kernel.py) that records the same calls without root.

What each operation needs of the process, and nothing more (the systemd unit grants only
these two capabilities, as an unprivileged user; docs/operations.md):

=========================  ==============  ===============================================
operation                  capability      how
=========================  ==============  ===============================================
install/remove rules       CAP_NET_ADMIN   nft + iptables-nft (director/rules.py,
(both modes)                               director/kernel_rules.py), run as children that
                                           inherit the ambient capabilities
conntrack events, dump,    CAP_NET_ADMIN   ctnetlink (director/ct_events.py,
delete                                     proto/ctnetlink.py)
add/delete addresses       CAP_NET_ADMIN   rtnetlink (pyroute2); IPv6 ones with nodad
links_down                 none            rtnetlink dump
announce (GARP / NA)       CAP_NET_RAW     AF_PACKET socket bound to the interface
bind_queue                 CAP_NET_ADMIN   nfnetlink_queue (netfilterqueue)
open_vrrp_socket           CAP_NET_RAW     raw IP socket, protocol 112, SO_BINDTODEVICE
=========================  ==============  ===============================================

Every method is blocking (a netlink round trip, a subprocess, a socket call); the async
callers run the slow ones (rules, addresses, links) in a worker thread, never on the loop
that sends VRRP adverts.
"""
from __future__ import annotations

import errno
import ipaddress
import logging
import socket
from typing import Any, Callable, Iterable, Protocol

from proto.arp import ETH_P_ARP, garp_frame
from proto.ndisc import ETH_P_IPV6, na_frame

log = logging.getLogger("tandem.kernel")

__all__ = ["Kernel", "LinuxKernel", "announce_frames"]

#: IFA_F_NODAD: an IPv6 address added with it skips duplicate address detection, so it is usable
#: the moment it is added (a takeover address is known to be ours; DAD would hold it "tentative"
#: for about a second, dropping traffic and refusing binds, and fail it when the peer still has it)
IFA_F_NODAD = 0x02


class Kernel(Protocol):
    """The privileged operations a node performs (see the module docstring)."""

    def install_rules(self, addrs: Iterable[str], queue: int, kernel_follows: bool = False) -> None:
        """Steer traffic for `addrs` into NFQUEUE `queue` (replacing the node's rules).
        `kernel_follows`: the node's start loads kernel-mode rules next (fresh), so the
        first load leaves the table to that one, which replaces it with both parts."""

    def remove_rules(self) -> None:
        """Remove the node's rules; quiet when there are none."""

    def install_kernel_rules(self, services: list, bindings: list, queue: int,
                             timeouts: Any, fresh: bool, generation: int = 1) -> None:
        """Load the `inet tandem` table and the first-packet queue chains for kernel-mode
        services (director.kernel_rules.install); `fresh` False refills the sets and maps
        of the loaded table (a reload), and with `timeouts` switches new flows to that
        `generation`'s timeout policies."""

    def remove_kernel_rules(self) -> None:
        """Remove the kernel-mode table and chains; quiet when there are none."""

    def kernel_timeout_objects(self) -> list[str]:
        """The `ct timeout` objects in the loaded table (a predecessor's too), by name; a
        fresh load keeps them (director.kernel_rules.ruleset's `keep`)."""

    def remove_timeouts(self, names: list[str]) -> list[str]:
        """Delete those of these `ct timeout` objects still in the table; the names deleted."""

    def kernel_drop_counters(self) -> dict:
        """The kernel-mode table's drop counters by name (director.kernel_rules.DROP_COUNTERS)."""

    def open_ct_events(self) -> Any:
        """A non-blocking conntrack event socket (director.ct_events.EventSocket)."""

    def dump_conntrack(self) -> list:
        """The kernel's conntrack table (proto.ctnetlink.Conntrack entries)."""

    def open_ct_dump(self) -> Any:
        """A dump of the conntrack table, asked for now and read without blocking, a slice
        at a time (director.ct_events.DumpReader: fileno, read(limit), done, interrupted,
        close)."""

    def open_ct_inject(self) -> Any:
        """A non-blocking ctnetlink socket for injecting synced connections
        (director.ct_inject.InjectSocket: run(injector, limit), portid, close())."""

    def delete_conntrack(self, tuples: list) -> int:
        """Delete the entries with these original tuples; how many the kernel deleted
        (one already gone is not an error)."""

    def get_conntrack(self, tuples: list) -> dict:
        """The entries with these original tuples, by tuple (those gone are left out)."""

    def set_ct_timeouts(self, values: dict[str, int]) -> dict[str, int]:
        """Set conntrack's default timeouts in this network namespace (sysctl
        net.netfilter.<name> = seconds); returns the values they had."""

    def add_addresses(self, ifname: str, addrs: Iterable[str]) -> None:
        """Add host addresses (/32, /128) on an interface; idempotent.  IPv6 ones are added
        with nodad (IFA_F_NODAD): usable at once, never "tentative".
        Raises OSError(ENODEV) when the interface is missing."""

    def del_addresses(self, ifname: str, addrs: Iterable[str]) -> None:
        """Delete addresses from an interface; idempotent, also for a missing interface."""

    def links_down(self, ifnames: Iterable[str]) -> list[str]:
        """The interfaces among `ifnames` that are missing or not up."""

    def announce(self, ifname: str, addrs: Iterable[str]) -> int:
        """One round of announcements on `ifname`: a gratuitous ARP for each IPv4 address of
        `addrs` and an unsolicited neighbour advertisement (override flag set) for each IPv6
        one; the frames sent.  Raises OSError when no frame could be sent."""

    def bind_queue(self, queue: int, callback: Callable[[Any], None], max_len: int,
                   sock_len: int) -> Any:
        """Bind NFQUEUE `queue`; returns the bound netfilterqueue.NetfilterQueue."""

    def open_vrrp_socket(self, ifname: str, cfg: Any) -> tuple[socket.socket, int]:
        """The raw VRRP socket for `cfg` (ha.vrrp.VrrpConfig) on `ifname`, and the ifindex."""


def _prefixlen(addr: str) -> int:
    return 32 if ipaddress.ip_address(addr).version == 4 else 128


def announce_frames(mac: bytes, addrs: Iterable[str]) -> list[tuple[bytes, int]]:
    """(frame, ethertype) for each address: gratuitous ARP (IPv4), unsolicited NA (IPv6)."""
    return [(garp_frame(mac, a), ETH_P_ARP) if ipaddress.ip_address(a).version == 4
            else (na_frame(mac, a), ETH_P_IPV6) for a in addrs]


class LinuxKernel:
    """The real implementation: iptables, rtnetlink (pyroute2), packet and raw sockets."""

    def __init__(self) -> None:
        #: one packet socket per interface for gratuitous ARP, kept open: closing a packet
        #: socket waits for an RCU grace period (packet_release -> synchronize_net), tens of
        #: ms on a busy machine, on the event loop, in the middle of a takeover
        self._arp: dict[str, tuple[socket.socket, bytes]] = {}
        #: what the one table `inet tandem` holds for each mode (None: that mode's part is
        #: not loaded): the engine-mode addresses, and whether the kernel-mode part is in
        self._engine: list[str] | None = None
        self._kernel_loaded = False

    # -- rules: both modes share the table `inet tandem` and the queue chain -------------------

    def install_rules(self, addrs: Iterable[str], queue: int, kernel_follows: bool = False) -> None:
        from director import kernel_rules, rules
        addrs = sorted(set(addrs))
        if self._engine is None and not self._kernel_loaded:
            # The first load replaces whatever a killed predecessor left, unless the
            # kernel-mode part follows: then that load replaces it, with both parts, in one
            # transaction.  Replacing it here with the engine part alone would take the nat
            # chains away meanwhile, and a namespace without a nat chain has no NAT hooks:
            # the flows the predecessor left in conntrack go untranslated to this host's
            # stack, which answers them with RST.
            if not kernel_follows:
                kernel_rules.load(kernel_rules.ruleset([], [], None, engine=addrs))
        else:
            kernel_rules.load(rules.engine_update(addrs))
        rules.install_queue(queue)
        self._engine = addrs

    def remove_rules(self) -> None:
        from director import kernel_rules, rules
        self._engine = None
        if self._kernel_loaded:
            kernel_rules.load(rules.engine_update([]))
        else:
            kernel_rules.remove()

    def install_kernel_rules(self, services: list, bindings: list, queue: int,
                             timeouts: Any, fresh: bool, generation: int = 1) -> None:
        from director import kernel_rules
        kernel_rules.install(services, bindings, queue, timeouts, fresh=fresh,
                             generation=generation, engine=self._engine or [])
        self._kernel_loaded = True

    def remove_kernel_rules(self) -> None:
        from director import kernel_rules
        self._kernel_loaded = False
        if self._engine is None:
            kernel_rules.remove()
        else:           # the engine-mode part stays, alone
            kernel_rules.load(kernel_rules.ruleset([], [], None, engine=self._engine))

    def kernel_timeout_objects(self) -> list[str]:
        from director import kernel_rules
        have = kernel_rules.table_contents()
        return list(have.timeouts) if have is not None else []

    def remove_timeouts(self, names: list[str]) -> list[str]:
        from director import kernel_rules
        return kernel_rules.remove_timeouts(names)

    def kernel_drop_counters(self) -> dict:
        from director import kernel_rules
        return kernel_rules.drop_counters()

    def open_ct_events(self) -> Any:
        from director.ct_events import EventSocket
        return EventSocket()

    # Both dumps ask the kernel for the entries with tandem's marks only: every reader of a
    # dump (adoption, repair, sync's resync) keeps those alone, and a director's table may
    # hold far more of others (bench.kpath: plain NAT's flows beside tandem's).
    def dump_conntrack(self) -> list:
        from director.ct_events import dump
        from director.kernel_rules import MARK_BASE, MARK_PREFIX_MASK
        return dump(mark=(MARK_BASE, MARK_PREFIX_MASK))

    def open_ct_dump(self) -> Any:
        from director.ct_events import DumpReader
        from director.kernel_rules import MARK_BASE, MARK_PREFIX_MASK
        return DumpReader(mark=(MARK_BASE, MARK_PREFIX_MASK))

    def open_ct_inject(self) -> Any:
        from director.ct_inject import InjectSocket
        return InjectSocket()

    def delete_conntrack(self, tuples: list) -> int:
        from director.ct_events import delete
        return delete(tuples)

    def get_conntrack(self, tuples: list) -> dict:
        from director.ct_events import get
        return get(tuples)

    def set_ct_timeouts(self, values: dict[str, int]) -> dict[str, int]:
        # per network namespace: /proc/sys/net is the namespace this process runs in
        old = {}
        for name, seconds in values.items():
            path = f"/proc/sys/net/netfilter/{name}"
            with open(path) as f:
                old[name] = int(f.read())
            with open(path, "w") as f:
                f.write(f"{int(seconds)}\n")
        return old

    # -- addresses and links -------------------------------------------------------------------

    def _change(self, cmd: str, ifname: str, addrs: Iterable[str]) -> None:
        from pyroute2 import IPRoute
        from pyroute2.netlink.exceptions import NetlinkError
        ok_errors = ({errno.EEXIST} if cmd == "add"
                     else {errno.EADDRNOTAVAIL, errno.ENOENT, errno.ENODEV})
        with IPRoute() as ipr:
            links = ipr.link_lookup(ifname=ifname)
            if not links:
                if cmd == "add":
                    raise OSError(errno.ENODEV, f"no interface {ifname}")
                return
            for a in addrs:
                v4 = ipaddress.ip_address(a).version == 4
                # IPv6: usable at once (nodad), and deprecated (preferred_lft 0) so the host
                # never picks a VIP or laddr as the source of its own connections (a /128
                # wins the longest-prefix rule): a health check from a laddr would have its
                # answer taken by the engine. keepalived deprecates a /128 VIP the same way.
                extra = {} if v4 or cmd != "add" else {"flags": IFA_F_NODAD, "preferred_lft": 0}
                try:
                    ipr.addr(cmd, index=links[0], address=a, prefixlen=_prefixlen(a),
                             family=socket.AF_INET if v4 else socket.AF_INET6, **extra)
                except NetlinkError as exc:
                    if exc.code not in ok_errors:
                        raise

    def add_addresses(self, ifname: str, addrs: Iterable[str]) -> None:
        self._change("add", ifname, addrs)

    def del_addresses(self, ifname: str, addrs: Iterable[str]) -> None:
        self._change("del", ifname, addrs)

    def links_down(self, ifnames: Iterable[str]) -> list[str]:
        from pyroute2 import IPRoute
        down = []
        with IPRoute() as ipr:
            for name in ifnames:
                idx = ipr.link_lookup(ifname=name)
                links = ipr.get_links(*idx) if idx else []
                if not links or links[0].get("state") != "up":
                    down.append(name)
        return down

    # -- gratuitous ARP and unsolicited NA -------------------------------------------------------

    def announce(self, ifname: str, addrs: Iterable[str]) -> int:
        addrs = list(addrs)
        if not addrs:
            return 0
        for retry in (False, True):
            s, mac = self._arp_socket(ifname)
            try:
                frames = announce_frames(mac, addrs)
                for frame, ethertype in frames:
                    # the protocol per frame: the socket is bound for ARP
                    s.sendto(frame, (ifname, ethertype))
                return len(frames)
            except OSError:
                # the interface went away (or came back with another MAC): a fresh socket once
                self._arp.pop(ifname, None)
                s.close()
                if retry:
                    raise
        return 0

    def _arp_socket(self, ifname: str) -> tuple[socket.socket, bytes]:
        got = self._arp.get(ifname)
        if got is None:
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
            try:
                s.bind((ifname, ETH_P_ARP))
                # a send-only socket: receive nothing, queue nothing
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
            except OSError:
                s.close()
                raise
            got = self._arp[ifname] = (s, s.getsockname()[4][:6])
        return got

    # -- sockets ---------------------------------------------------------------------------------

    def bind_queue(self, queue: int, callback: Callable[[Any], None], max_len: int,
                   sock_len: int) -> Any:
        from director.nfqueue import bind_queue      # with a copy range for whole packets
        return bind_queue(queue, callback, max_len, sock_len)

    def open_vrrp_socket(self, ifname: str, cfg: Any) -> tuple[socket.socket, int]:
        from ha.vrrp_io import open_vrrp_socket
        return open_vrrp_socket(ifname, cfg)
