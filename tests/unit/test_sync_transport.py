"""The asyncio adapter: two nodes over 127.0.0.1 in unicast mode, bounded in time."""
from __future__ import annotations

import asyncio
import socket
import time

import pytest
from scapy.layers.inet import IP, TCP

from director.engine import Engine
from director.tcp_state import ESTABLISHED
from syncd.config import SyncConfig
from syncd.policy import SyncPolicy, make_hook
from syncd.receiver import SyncReceiver, engine_apply, engine_apply_bulk
from syncd.sender import SyncSender
from syncd.transport import SyncTransport, multicast_socket, unicast_socket
from tandem.ha import engine_source
from tests.helpers import CLIENT, VIP, make_config, tcp

KEY = b"transport-test-key-0123456789abcdef"
CFG = SyncConfig(mode="unicast", bind="127.0.0.1", port=0, sync_id=9, key=KEY)


def node(name: str, engine: Engine, sock: socket.socket, peer: socket.socket) -> SyncTransport:
    snapshot, to_entry = engine_source(engine)
    sender = SyncSender(CFG, name, key=KEY, snapshot=snapshot, to_entry=to_entry)
    receiver = SyncReceiver(CFG, name, KEY, engine_apply(engine), apply_bulk=engine_apply_bulk(engine))
    return SyncTransport(CFG, sender, receiver, peers=[peer.getsockname()])


def handshake(eng: Engine, cport: int, extra_acks: int = 0):
    now = time.monotonic()
    fwd = IP(eng.handle(tcp(CLIENT, VIP, cport, 80, "S"), now))
    assert eng.handle(tcp(fwd.dst, fwd.src, 8080, fwd[TCP].sport, "SA"), now)
    for _ in range(1 + extra_acks):
        assert eng.handle(tcp(CLIENT, VIP, cport, 80, "A"), now)
    return next(c for c in eng.table if c.cport == cport)


async def wait_for(cond, timeout=3.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


async def test_entries_reach_the_peer_by_bulk_resync_and_by_normal_sync():
    master, backup = Engine(make_config(), time.monotonic()), Engine(make_config(), time.monotonic())
    old = handshake(master, 40000)          # before sync runs: only a bulk resync can carry it
    sa, sb = unicast_socket("127.0.0.1", 0), unicast_socket("127.0.0.1", 0)
    ta, tb = node("a", master, sa, sb), node("b", backup, sb, sa)
    try:
        await ta.start(sa)
        await tb.start(sb)                  # b asks a for its table
        master.sync_hook = make_hook(SyncPolicy(), master, ta.queue)
        new = handshake(master, 40001, extra_acks=1)       # its 3rd packet: sent
        await wait_for(lambda: len(backup.table) == 2)
        for c in (old, new):
            b = backup.index[c.orig_key]
            assert (b.laddr, b.lport, b.daddr, b.dport, b.state) == \
                (c.laddr, c.lport, c.daddr, c.dport, ESTABLISHED)
        # the backup forwards the new connection's next packet as the master would
        out = IP(backup.handle(tcp(CLIENT, VIP, 40001, 80, "A", seq=2000), time.monotonic()))
        assert (out.src, out[TCP].sport, out.dst) == \
            (socket.inet_ntoa(new.laddr), new.lport, socket.inet_ntoa(new.daddr))
        assert ta.sender.stats["bulk_entries"] >= 1 and tb.receiver.stats["entries_applied"] >= 2
        assert tb.receiver.stats["bad_mac"] == 0 and ta.stats["tx"] > 0 and tb.stats["rx"] > 0
        lag = tb.receiver.lag()
        assert lag["samples"] >= 1 and lag["max"] < 1000
    finally:
        ta.close()
        tb.close()


async def test_idle_pair_only_heartbeats_and_one_timer_drives_each_node():
    ea, eb = Engine(make_config()), Engine(make_config())
    sa, sb = unicast_socket("127.0.0.1", 0), unicast_socket("127.0.0.1", 0)
    ta, tb = node("a", ea, sa, sb), node("b", eb, sb, sa)
    try:
        await ta.start(sa)
        await tb.start(sb)
        await asyncio.sleep(0.5)
        # heartbeats every 0.2 s (and the start-up exchange): a handful, not a busy loop
        assert 2 <= ta.sender.stats["heartbeats"] <= 6
        assert ta.stats["polls"] <= 12 and tb.stats["polls"] <= 12
        assert tb.receiver.stats["heartbeats"] >= 2 and tb.receiver.stats["gaps"] == 0
        # garbage from a stranger on loopback is counted, not fatal
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
            stranger.sendto(b"\x00" * 60, sa.getsockname())
            stranger.sendto(b"\x91\x01" + b"\x00" * 40, sa.getsockname())
        await wait_for(lambda: ta.receiver.stats["malformed"] + ta.receiver.stats["bad_version"] >= 2)
        assert ta.stats["internal_errors"] == 0
    finally:
        ta.close()
        tb.close()


def test_multicast_socket_options():
    try:
        s = multicast_socket("224.0.0.81", 0, "127.0.0.1", ttl=1)
    except OSError as exc:
        pytest.skip(f"no multicast on loopback here: {exc}")
    try:
        assert s.getsockname()[0] == "224.0.0.81"         # only the group's traffic
        assert s.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP) == 0
        assert s.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL) == 1
        assert socket.inet_ntoa(s.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, 4)) == "127.0.0.1"
    finally:
        s.close()


def test_config_defaults_and_checks():
    c = SyncConfig()
    assert (c.mode, c.group, c.port, c.ttl, c.max_payload, c.flush_delay, c.heartbeat_interval,
            c.resend_window, c.bulk_rate, c.nack_interval, c.gap_give_up) == \
        ("multicast", "224.0.0.81", 8848, 1, 1472, 0.02, 0.2, 4096, 50_000.0, 0.05, 5.0)
    assert (c.threshold, c.period, c.refresh_period, c.retries, c.sync_id) == (3, 50, 0.0, 0, 0)
    assert "key" not in repr(SyncConfig(key=b"secret" * 4))
    for bad in (dict(group="10.0.0.1"), dict(sync_id=256), dict(period=3), dict(retries=4),
                dict(max_payload=100), dict(mode="tcp"), dict(mode="unicast", peers=(("nope", 1),))):
        with pytest.raises(ValueError):
            SyncConfig(**bad)
    with pytest.raises(ValueError):
        SyncSender(SyncConfig(), "a")                     # no key
