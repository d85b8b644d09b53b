"""The sans-IO engine, driven with scapy-built packets and an injected clock."""
from __future__ import annotations

import os

from hypothesis import given, settings, strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, TCPerror

from director.engine import Engine
from director.tcp_state import CLOSE, ESTABLISHED, STATES, SYN_RECV, TIME_WAIT
from tests.helpers import CLIENT, LADDRS, RS, VIP, checksums_ok, make_config, tcp, udp


def handshake(eng, cport=40000, now=0.0):
    """Run a full three-way handshake through the engine; return the connection."""
    fwd = IP(eng.handle(tcp(CLIENT, VIP, cport, 80, "S"), now))
    assert eng.handle(tcp(fwd.dst, fwd.src, 8080, fwd[TCP].sport, "SA", seq=5000, ack=1001), now)
    assert eng.handle(tcp(CLIENT, VIP, cport, 80, "A", seq=1001, ack=5001), now)
    conn = next(c for c in eng.table if c.cport == cport)
    assert conn.state == ESTABLISHED
    return conn


def test_syn_is_translated_to_laddr_and_real_server_with_valid_checksums():
    eng = Engine(make_config())
    out = eng.handle(tcp(CLIENT, VIP, 40000, 80, "S"), 0.0)
    p = IP(out)
    assert p.src in LADDRS and p.dst in RS and p[TCP].dport == 8080
    assert 5000 <= p[TCP].sport <= 65535
    assert checksums_ok(out)
    conn = next(iter(eng.table))
    assert conn.state == SYN_RECV
    assert (conn.dest.active, conn.dest.inactive) == (0, 1)


def test_reply_matches_the_reply_tuple_and_is_translated_back_to_the_client():
    eng = Engine(make_config())
    fwd = IP(eng.handle(tcp(CLIENT, VIP, 40000, 80, "S"), 0.0))
    back = eng.handle(tcp(fwd.dst, fwd.src, 8080, fwd[TCP].sport, "SA", seq=9, ack=1001), 0.1)
    b = IP(back)
    assert (b.src, b.dst, b[TCP].sport, b[TCP].dport) == (VIP, CLIENT, 80, 40000)
    assert checksums_ok(back)
    eng.handle(tcp(CLIENT, VIP, 40000, 80, "A", seq=1001, ack=10), 0.2)
    conn = next(iter(eng.table))
    assert conn.state == ESTABLISHED
    assert (conn.dest.active, conn.dest.inactive) == (1, 0)
    assert eng.stats["forwarded_out"] == 1


def test_one_entry_two_tuples():
    eng = Engine(make_config())
    eng.handle(tcp(CLIENT, VIP, 40000, 80, "S"), 0.0)
    assert len(eng.table) == 1 and len(eng.index) == 2
    conn = next(iter(eng.table))
    assert eng.index[conn.orig_key] is eng.index[conn.reply_key] is conn


def test_rr_spreads_new_connections_over_all_real_servers():
    eng = Engine(make_config("rr"))
    dsts = {IP(eng.handle(tcp(CLIENT, VIP, 40000 + i, 80, "S"), 0.0)).dst for i in range(3)}
    assert dsts == set(RS)


def test_tcp_without_syn_and_unknown_ports_are_dropped_and_counted():
    eng = Engine(make_config())
    assert eng.handle(tcp(CLIENT, VIP, 40000, 80, "A"), 0.0) is None
    assert eng.handle(tcp(CLIENT, VIP, 40000, 81, "S"), 0.0) is None
    assert eng.handle(tcp(RS[0], LADDRS[0], 8080, 6000, "SA"), 0.0) is None
    assert eng.handle(udp(CLIENT, VIP, 40000, 53), 0.0) is None
    assert eng.drops["no_conn"] == 2 and eng.drops["no_service"] == 2
    assert len(eng.table) == 0


def test_icmp_echo_to_the_vip_is_left_to_the_host():
    eng = Engine(make_config())
    ping = bytes(IP(src=CLIENT, dst=VIP) / ICMP())
    assert eng.handle(ping, 0.0) is ping


def test_icmp_error_from_the_server_side_reaches_the_client_translated():
    eng = Engine(make_config())
    fwd = IP(eng.handle(tcp(CLIENT, VIP, 40000, 80, "S"), 0.0))
    # a router on the back segment says the packet we sent the real server is too big
    err = bytes(IP(src="198.18.2.1", dst=fwd.src) / ICMP(type=3, code=4, nexthopmtu=1400) /
                bytes(fwd)[:28])
    out = eng.handle(err, 0.1)
    o = IP(out)
    assert (o.src, o.dst) == (VIP, CLIENT)
    inner = o[IPerror]
    assert (inner.src, inner.dst, inner[TCPerror].sport, inner[TCPerror].dport) == (CLIENT, VIP, 40000, 80)
    assert checksums_ok(out)
    assert eng.stats["icmp_errors"] == 1


def test_icmp_error_about_nothing_known_is_dropped():
    eng = Engine(make_config())
    quoted = tcp(LADDRS[0], RS[0], 6000, 8080, "S")[:28]
    err = bytes(IP(src=RS[0], dst=LADDRS[0]) / ICMP(type=3, code=3) / quoted)
    assert eng.handle(err, 0.0) is None
    assert eng.drops["icmp_no_conn"] == 1


def test_connections_expire_and_release_their_ports_and_counts():
    eng = Engine(make_config(timeouts={"tcp_syn_recv": 2, "udp": 3}))
    for i in range(5):
        eng.handle(tcp(CLIENT, VIP, 40000 + i, 80, "S"), 0.0)
        eng.handle(udp(CLIENT, VIP, 40000 + i, 80), 0.0)
    assert len(eng.table) == 10
    assert eng.expire(1.9) == 0
    assert eng.expire(2.5) == 5
    assert eng.expire(3.5) == 5
    assert len(eng.table) == 0 and len(eng.index) == 0
    assert eng.conn_counts() == {"total": 0, "active": 0, "inactive": 0}
    for svc in eng.services.values():
        assert svc.laddrs.used == {}


def test_traffic_keeps_a_connection_alive():
    eng = Engine(make_config(timeouts={"udp": 3}))
    fwd = IP(eng.handle(udp(CLIENT, VIP, 40000, 80), 0.0))
    for t in (2.0, 4.0, 6.0):
        assert eng.handle(udp(fwd.dst, fwd.src, 8080, fwd[UDP].sport), t) is not None
        eng.expire(t)
    assert len(eng.table) == 1
    eng.expire(9.1)
    assert len(eng.table) == 0


def test_udp_counts_inactive_as_ipvs_does():
    eng = Engine(make_config())
    fwd = IP(eng.handle(udp(CLIENT, VIP, 40000, 80), 0.0))
    eng.handle(udp(fwd.dst, fwd.src, 8080, fwd[UDP].sport), 0.1)
    conn = next(iter(eng.table))
    assert (conn.dest.active, conn.dest.inactive) == (0, 1)


def test_fin_sequence_reaches_time_wait_then_expires_after_its_timeout():
    eng = Engine(make_config(timeouts={"tcp_time_wait": 5}))
    fwd = IP(eng.handle(tcp(CLIENT, VIP, 40000, 80, "S"), 0.0))
    rs, laddr, lport = fwd.dst, fwd.src, fwd[TCP].sport
    eng.handle(tcp(rs, laddr, 8080, lport, "SA"), 0.0)
    eng.handle(tcp(CLIENT, VIP, 40000, 80, "A"), 0.0)
    eng.handle(tcp(CLIENT, VIP, 40000, 80, "FA"), 1.0)
    eng.handle(tcp(rs, laddr, 8080, lport, "FA"), 1.0)
    eng.handle(tcp(CLIENT, VIP, 40000, 80, "A"), 1.0)
    conn = next(iter(eng.table))
    assert STATES[conn.state] == "TIME_WAIT"
    assert (conn.dest.active, conn.dest.inactive) == (0, 1)
    eng.expire(5.9)
    assert len(eng.table) == 1
    eng.expire(6.1)
    assert len(eng.table) == 0


def test_new_syn_on_a_time_wait_entry_opens_a_new_connection():
    eng = Engine(make_config())
    fwd = IP(eng.handle(tcp(CLIENT, VIP, 40000, 80, "S"), 0.0))
    conn = next(iter(eng.table))
    conn.state = TIME_WAIT
    out = IP(eng.handle(tcp(CLIENT, VIP, 40000, 80, "S", seq=99999), 1.0))
    assert eng.stats["conns_reused"] == 1 and len(eng.table) == 1
    assert next(iter(eng.table)) is not conn
    assert (out.src, out[TCP].sport) != (fwd.src, fwd[TCP].sport) or out.dst != fwd.dst


def test_rst_closes_an_established_connection_but_not_a_syn_recv_one():
    eng = Engine(make_config())
    eng.handle(tcp(CLIENT, VIP, 40000, 80, "S"), 0.0)
    eng.handle(tcp(CLIENT, VIP, 40000, 80, "R"), 0.1)
    assert next(iter(eng.table)).state == SYN_RECV      # the kernel's INPUT_ONLY rst cell
    conn = handshake(eng, 40001)
    eng.handle(tcp(CLIENT, VIP, 40001, 80, "R"), 0.2)
    assert conn.state == CLOSE
    assert (conn.dest.active, conn.dest.inactive) == (0, 1)   # rr put it on its own dest


def test_port_exhaustion_refuses_new_connections_and_keeps_old_ones():
    eng = Engine(make_config(reals=RS[:1], laddrs=LADDRS[:1], limits={"lport_min": 6000, "lport_max": 6002}))
    pairs = set()
    for i in range(3):
        p = IP(eng.handle(tcp(CLIENT, VIP, 40000 + i, 80, "S"), 0.0))
        pairs.add((p.src, p[TCP].sport))
    assert len(pairs) == 3
    assert eng.handle(tcp(CLIENT, VIP, 40010, 80, "S"), 0.0) is None
    assert eng.drops["no_lport"] == 1
    assert eng.handle(tcp(CLIENT, VIP, 40001, 80, "A"), 0.0) is not None


def test_a_pair_held_by_a_synced_connection_is_never_handed_out():
    from director.conn import SYNCED, Conn
    import ipaddress
    eng = Engine(make_config(reals=RS[:1], laddrs=LADDRS[:1], limits={"lport_min": 6000, "lport_max": 6001}))
    pk = lambda a: ipaddress.ip_address(a).packed
    held = Conn(6, pk("198.18.1.99"), 1234, pk(VIP), 80, pk(LADDRS[0]), 6000, pk(RS[0]), 8080)
    held.flags |= SYNCED
    eng.table.insert(held, 100.0)
    p = IP(eng.handle(tcp(CLIENT, VIP, 40000, 80, "S"), 0.0))
    assert p[TCP].sport == 6001


def test_full_table_early_drops_an_unassured_entry_first():
    eng = Engine(make_config(limits={"max_conns": 2}))
    handshake(eng, 40000)
    eng.handle(tcp(CLIENT, VIP, 40001, 80, "S"), 0.0)       # never completes
    assert eng.handle(tcp(CLIENT, VIP, 40002, 80, "S"), 0.0) is not None
    assert eng.stats["early_drops"] == 1
    ports = sorted(c.cport for c in eng.table)
    assert ports == [40000, 40002]


def test_full_table_of_established_connections_refuses_new_ones():
    eng = Engine(make_config(limits={"max_conns": 2}))
    handshake(eng, 40000)
    handshake(eng, 40001)
    assert eng.handle(tcp(CLIENT, VIP, 40002, 80, "S"), 0.0) is None
    assert eng.drops["table_full"] == 1
    assert len(eng.table) == 2


def test_bad_checksum_syn_is_dropped_and_counted():
    eng = Engine(make_config())
    raw = bytearray(tcp(CLIENT, VIP, 40000, 80, "S"))
    raw[36] ^= 0xFF     # TCP checksum
    assert eng.handle(bytes(raw), 0.0) is None
    assert eng.drops["bad_checksum"] == 1


def test_ipv6_service_is_translated():
    svc = {"proto": "tcp", "vip": "2001:db8::100", "port": 80, "scheduler": "wlc",
           "laddrs": ["2001:db8:2::100"], "real_servers": [{"addr": "2001:db8:2::21", "port": 8080}]}
    from director.config import parse
    eng = Engine(parse({"node": {"name": "t"}, "services": [svc]}))
    out = eng.handle(tcp("2001:db8:1::10", "2001:db8::100", 40000, 80, "S"), 0.0)
    from scapy.layers.inet6 import IPv6
    p = IPv6(out)
    assert (p.src, p.dst, p[TCP].dport) == ("2001:db8:2::100", "2001:db8:2::21", 8080)
    assert checksums_ok(out)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120))
def test_no_bytes_can_raise_out_of_the_engine(data):
    eng = Engine(make_config())
    eng.handle(data, 0.0)
    assert eng.drops["internal_error"] == 0


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=59), st.integers(min_value=0, max_value=255))
def test_bit_flips_in_a_valid_syn_never_raise(pos, xor):
    raw = bytearray(tcp(CLIENT, VIP, 40000, 80, "S"))
    if pos < len(raw):
        raw[pos] ^= xor
    eng = Engine(make_config())
    eng.handle(bytes(raw), 0.0)
    assert eng.drops["internal_error"] == 0


def test_synced_entry_creates_an_identical_connection_that_forwards():
    import ipaddress
    from director.conn import INACTIVE, SYNCED
    pk = lambda a: ipaddress.ip_address(a).packed
    master, backup = Engine(make_config()), Engine(make_config())
    conn = handshake(master, 40000)
    seen = []
    kw = dict(proto=6, state=conn.state, flags=conn.flags, caddr=conn.caddr, cport=conn.cport,
              vaddr=conn.vaddr, vport=conn.vport, laddr=conn.laddr, lport=conn.lport,
              daddr=conn.daddr, dport=conn.dport, timeout=900.0)
    assert backup.apply_synced(now=1.0, **kw) == "created"
    b = next(iter(backup.table))
    assert (b.laddr, b.lport, b.daddr, b.state) == (conn.laddr, conn.lport, conn.daddr, ESTABLISHED)
    assert b.flags & SYNCED and b.dest.active == 1
    # the backup forwards the flow's next packet exactly as the master would
    out = IP(backup.handle(tcp(CLIENT, VIP, 40000, 80, "A", seq=2000), 2.0))
    assert (pk(out.src), out[TCP].sport, pk(out.dst)) == (conn.laddr, conn.lport, conn.daddr)
    # an update moving it to inactive shifts the dest counts
    kw.update(state=TIME_WAIT, flags=conn.flags | INACTIVE, timeout=120.0)
    assert backup.apply_synced(now=3.0, **kw) == "updated"
    assert (b.dest.active, b.dest.inactive) == (0, 1)
    # its port is never handed out by the backup's own allocator
    assert backup.table.has_key(b.reply_key)


def test_synced_entry_for_an_unknown_real_server_is_kept_unbound():
    import ipaddress
    pk = lambda a: ipaddress.ip_address(a).packed
    eng = Engine(make_config())
    r = eng.apply_synced(proto=17, state=0, flags=0, caddr=pk(CLIENT), cport=5353, vaddr=pk(VIP), vport=80,
                         laddr=pk(LADDRS[0]), lport=7000, daddr=pk("198.18.2.99"), dport=8080,
                         timeout=30.0, now=0.0)
    assert r == "created" and eng.sync_stats["unbound"] == 1
    assert eng.handle(udp(CLIENT, VIP, 5353, 80), 1.0) is not None
    eng.expire(300.5)
    assert len(eng.table) == 1          # the packet restarted it at the local UDP timeout
    eng.expire(301.5)
    assert len(eng.table) == 0


def test_sync_hook_sees_every_inbound_packet_with_its_count():
    eng = Engine(make_config())
    calls = []
    eng.sync_hook = lambda conn, pkts, now: calls.append((conn.cport, pkts))
    handshake(eng, 40000)
    eng.handle(tcp(CLIENT, VIP, 40000, 80, "A"), 0.1)
    assert calls == [(40000, 1), (40000, 2), (40000, 3)]
