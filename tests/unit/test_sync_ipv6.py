"""Connection sync over IPv6 (issue 15): the config's addressing (the IPv6 group, the payload
that fits a 1500-byte MTU under IPv6's header, unicast peers of one family, no link-local
unicast), the transport's addresses (an IPv6 group is joined and sent to on an interface
index), and two nodes syncing over ::1 with entries of both families in one stream, a lost
datagram repaired by NACK and a table carried by bulk resync."""
from __future__ import annotations

import asyncio
import copy
import socket
import time

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6

from director.config import parse
from director.engine import Engine
from director.tcp_state import ESTABLISHED
from schema.core import Reader
from schema.keys import SYNC, SYNC_GROUP6, SYNC_MAX_PAYLOAD6
from syncd.config import SyncConfig, SyncConfigError, parse_sync, with_local_address
from syncd.policy import SyncPolicy, make_hook
from syncd.receiver import SyncReceiver, engine_apply, engine_apply_bulk
from syncd.sender import SyncSender
from syncd.transport import SyncTransport, group_address, multicast_socket6, unicast_socket
from tandem.ha import engine_source
from tests.unit.test_dual_stack import V4, V6

KEY = "tandem-lab-sync-key-not-secret"


def sync(**table) -> SyncConfig:
    return parse_sync(Reader("a.toml", "sync", {"key": KEY, **table}, SYNC))


def test_an_ipv6_interface_joins_the_ipv6_group_with_the_ipv6_payload():
    c = sync(interface="2001:2:0:2::11")
    assert (c.group, c.family, c.max_payload) == (SYNC_GROUP6, 6, SYNC_MAX_PAYLOAD6) == ("ff02::81", 6, 1452)
    assert sync(interface="2001:2:0:2::11", group="ff02::1:8848", max_payload=1400).group == "ff02::1:8848"
    assert sync(interface="2001:2:0:2::11", max_payload=1400).max_payload == 1400
    v4 = sync(interface="198.18.2.11")
    assert (v4.group, v4.family, v4.max_payload) == ("224.0.0.81", 4, 1472)


def test_a_unicast_sync_to_an_ipv6_peer_is_ipv6():
    c = sync(mode="unicast", peers=["[2001:2:0:2::12]:8848"], bind="2001:2:0:2::11")
    assert (c.family, c.peers, c.max_payload) == (6, (("2001:2:0:2::12", 8848),), 1452)
    # bind left to the node: the back interface's first global address of the peers' family
    c = sync(mode="unicast", peers=["[2001:2:0:2::12]:8848"])
    got = with_local_address(c, "back", lambda _: ["198.18.2.11", "fe80::1", "2001:2:0:2::11"])
    assert got.bind == "2001:2:0:2::11"


def test_an_ipv6_group_must_be_joined_on_the_back_interfaces_address():
    c = sync(interface="2001:2:0:2::11")
    assert with_local_address(c, "back", lambda _: ["fe80::11%back", "2001:2:0:2::11"]) is c
    with pytest.raises(SyncConfigError) as e:
        with_local_address(c, "back", lambda _: ["198.18.2.11", "2001:2:0:2::12"])
    assert str(e.value) == "sync.interface: 2001:2:0:2::11 is not an address of the back interface 'back'"


def test_the_ipv6_group_is_sent_to_on_the_interface_index():
    c6, c4 = sync(interface="2001:2:0:2::11"), sync(interface="198.18.2.11")
    assert group_address(c4, "back") == ("224.0.0.81", 8848)
    assert group_address(c6, "lo") == ("ff02::81", 8848, 0, socket.if_nametoindex("lo"))
    with pytest.raises(OSError, match="names none"):
        group_address(c6, "")
    with pytest.raises(OSError):
        group_address(c6, "no-such-if0")


def test_multicast_socket6_options():
    lo = socket.if_nametoindex("lo")
    try:
        s = multicast_socket6("ff02::81", 0, lo, hops=1)
    except OSError as exc:
        pytest.skip(f"no IPv6 multicast on loopback here: {exc}")
    try:
        assert s.getsockname()[0] == "ff02::81" and s.getsockname()[3] == lo
        assert s.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP) == 0
        assert s.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS) == 1
        assert s.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF) == lo
    finally:
        s.close()


# -- two nodes over ::1 --------------------------------------------------------------------

CFG = SyncConfig(mode="unicast", bind="::1", port=0, sync_id=9, key=KEY.encode(),
                 max_payload=SYNC_MAX_PAYLOAD6)
DOC = {"node": {"name": "a", "api": "198.18.0.11:9100"}, "services": [copy.deepcopy(V4), copy.deepcopy(V6)]}


def engine() -> Engine:
    return Engine(parse(copy.deepcopy(DOC), "a.toml"), time.monotonic())


def node(name: str, eng: Engine, peer: socket.socket) -> SyncTransport:
    snapshot, to_entry = engine_source(eng)
    sender = SyncSender(CFG, name, snapshot=snapshot, to_entry=to_entry)
    receiver = SyncReceiver(CFG, name, None, engine_apply(eng), apply_bulk=engine_apply_bulk(eng))
    return SyncTransport(CFG, sender, receiver, peers=[peer.getsockname()[:2]])


def handshake(eng: Engine, family: int, cport: int):
    """A TCP handshake through the engine and the client's next ACK: ESTABLISHED."""
    L3, client, vip = ((IP, "198.18.1.10", "198.18.0.100") if family == 4
                       else (IPv6, "2001:2:0:1::10", "2001:2::100"))
    now = time.monotonic()
    fwd = L3(eng.handle(bytes(L3(src=client, dst=vip) / TCP(sport=cport, dport=80, flags="S")), now))
    assert eng.handle(bytes(L3(src=fwd.dst, dst=fwd.src) / TCP(sport=8080, dport=fwd[TCP].sport,
                                                               flags="SA")), now)
    for _ in range(2):
        assert eng.handle(bytes(L3(src=client, dst=vip) / TCP(sport=cport, dport=80, flags="A")), now)
    return next(c for c in eng.table if c.cport == cport)


async def wait_for(cond, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


async def test_both_families_in_one_ipv6_stream_with_bulk_resync_and_nack_repair():
    master, backup = engine(), engine()
    old = [handshake(master, 4, 40000), handshake(master, 6, 40001)]   # only a bulk carries these
    sa, sb = unicast_socket("::1", 0), unicast_socket("::1", 0)
    assert sa.family == socket.AF_INET6
    ta, tb = node("a", master, sb), node("b", backup, sa)
    try:
        await ta.start(sa)
        await tb.start(sb)                          # b asks a for its table
        await wait_for(lambda: all(c.orig_key in backup.index for c in old))
        master.sync_hook = make_hook(SyncPolicy(), master, ta.queue)
        # one datagram lost on the way: a's next DATA goes nowhere
        blackhole = unicast_socket("::1", 0)
        ta.peers = [blackhole.getsockname()[:2]]
        packed = ta.sender.stats["entries_sent"]
        lost = handshake(master, 6, 40002)
        await wait_for(lambda: ta.sender.stats["entries_sent"] > packed)    # sent, and lost
        ta.peers = [sb.getsockname()[:2]]
        blackhole.close()
        after = handshake(master, 4, 40003)         # its seq shows b the gap; b NACKs it
        await wait_for(lambda: all(c.orig_key in backup.index for c in (lost, after)))
        for c in (*old, lost, after):
            b = backup.index[c.orig_key]
            assert (b.laddr, b.lport, b.daddr, b.dport, b.state) == \
                (c.laddr, c.lport, c.daddr, c.dport, ESTABLISHED)
        assert {len(c.laddr) for c in (*old, lost, after)} == {4, 16}
        assert tb.receiver.stats["nacks_sent"] >= 1 and ta.sender.stats["resends"] >= 1
        assert ta.sender.stats["bulk_entries"] >= 2
        assert tb.receiver.stats["bad_mac"] == 0 and tb.stats["not_peer"] == 0
    finally:
        ta.close()
        tb.close()
