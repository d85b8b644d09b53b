"""client_address = "proxy-v2" on a UDP service: the real engine puts a PROXY v2 header
(transport DGRAM) in front of every client datagram and lets replies through unchanged.
scapy is the oracle: it reparses every packet the engine emits and recomputes every
checksum; proto.proxy parses the header the real server would read."""
from __future__ import annotations

import ipaddress

import msgpack
import pytest
from hypothesis import given, settings, strategies as st
from scapy.layers.inet import ICMP, IP, UDP, IPerror, UDPerror
from scapy.layers.inet6 import ICMPv6PacketTooBig, IPv6

from director.config import ConfigError, parse
from director.engine import Engine
from proto import proxy
from proto import sync as S
from proto.sync import SyncEntry
from tests.helpers import CLIENT, LADDRS, RS, VIP, checksums_ok

CLIENT6, VIP6 = "2001:2:0:1::10", "2001:2::100"
LADDRS6, RS6 = ["2001:2:0:2::100"], ["2001:2:0:2::21"]
FAMILIES = {4: (CLIENT, VIP, LADDRS, RS), 6: (CLIENT6, VIP6, LADDRS6, RS6)}


def config(family=4, mode="proxy-v2", **extra):
    _, vip, laddrs, reals = FAMILIES[family]
    return parse({"node": {"name": "t"}, "services": [{
        "proto": "udp", "vip": vip, "port": 81, "scheduler": "rr", "laddrs": list(laddrs),
        "client_address": mode, **extra,
        "real_servers": [{"addr": a, "port": 8081} for a in reals]}]}, "test.toml")


def dgram(src, dst, sport, dport, payload, chksum=None):
    ip = IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst)
    u = UDP(sport=sport, dport=dport) if chksum is None else UDP(sport=sport, dport=dport, chksum=chksum)
    return bytes(ip / u / payload)


def parsed(raw):
    assert checksums_ok(raw), "the engine's checksums differ from scapy's"
    return IPv6(raw) if raw[0] >> 4 == 6 else IP(raw)


def header_of(udp_payload: bytes):
    h = proxy.parse(udp_payload)
    assert h is not None
    return h, udp_payload[h.length:]


@pytest.mark.parametrize("family, fam_byte, hlen", [(4, 0x12, 28), (6, 0x22, 52)])
def test_every_datagram_carries_the_clients_address_and_port_and_replies_pass_unchanged(family, fam_byte, hlen):
    client, vip, laddrs, reals = FAMILIES[family]
    eng = Engine(config(family))
    for i, payload in enumerate([b"WHOAMI", b"x" * 999, b"", b"odd"]):
        out = parsed(eng.handle(dgram(client, vip, 40000, 81, payload), 0.1 * i))
        body = bytes(out[UDP].payload)
        assert out[UDP].len == 8 + hlen + len(payload)
        h, rest = header_of(body)
        # the spec's v2 header: PROXY command, AF_INET/AF_INET6 with DGRAM, no TLVs
        assert body[12] == 0x21 and body[13] == fam_byte and h.length == hlen
        assert (h.transport, str(h.src), h.sport, str(h.dst), h.dport) == ("udp", client, 40000, vip, 81)
        assert rest == payload
        assert out.src in laddrs and out.dst in reals and out[UDP].dport == 8081
    assert eng.stats["proxy_dgram_headers"] == 4 and len(eng.table) == 1
    lport = out[UDP].sport
    back = parsed(eng.handle(dgram(reals[0], out.src, 8081, lport, b"reply"), 1.0))
    assert (back.src, back.dst, back[UDP].sport, back[UDP].dport) == (vip, client, 81, 40000)
    assert bytes(back[UDP].payload) == b"reply"


@settings(max_examples=150, deadline=None)
@given(family=st.sampled_from([4, 6]), cport=st.integers(1, 65535),
       payload=st.binary(max_size=1500).filter(lambda p: not p.startswith(proxy.SIGNATURE)),
       no_checksum=st.booleans())
def test_lengths_and_checksums_are_what_scapy_computes(family, cport, payload, no_checksum):
    """Any payload length, odd or even, any port: the datagram that leaves holds the header
    and the payload, with lengths and checksums scapy agrees with; an IPv4 datagram sent
    without a checksum (0) leaves without one, as the kernel's NAT keeps it."""
    client, vip, _, _ = FAMILIES[family]
    eng = Engine(config(family))
    zero = no_checksum and family == 4
    out = eng.handle(dgram(client, vip, cport, 81, payload, chksum=0 if zero else None), 0.0)
    p = parsed(out)
    assert (p[UDP].chksum == 0) == zero
    h, rest = header_of(bytes(p[UDP].payload))
    assert (str(h.src), h.sport, rest) == (client, cport, payload)
    if family == 4:
        assert p[IP].len == len(out)
    else:
        assert p[IPv6].plen == len(out) - 40


def test_a_bad_checksum_leaves_bad_never_made_good():
    """The UDP checksum is updated, not recomputed: a datagram corrupted on the way in is
    still refused by the real server's stack, as it would be without the header."""
    eng = Engine(config())
    good = dgram(CLIENT, VIP, 40000, 81, b"payload!")
    assert checksums_ok(eng.handle(good, 0.0))     # (a new flow's first packet is verified)
    bad = good[:-1] + bytes([good[-1] ^ 0x40])
    out = eng.handle(bad, 0.1)
    assert out is not None and not checksums_ok(out)
    fresh = IP(out)
    del fresh[UDP].chksum
    assert IP(bytes(fresh))[UDP].chksum != IP(out)[UDP].chksum


def test_a_datagram_that_cannot_grow_by_the_header_is_dropped_and_counted():
    """An IPv4 datagram whose total length plus the 28-byte header would pass 65,535 is
    dropped (`proxy_dgram_too_big`): cut short or without the header, the real server
    would take it for something the client sent.  One that just fits goes through."""
    eng = Engine(config())
    fits = 0xFFFF - 28 - 28                           # IP + UDP headers, then the PROXY one
    out = eng.handle(dgram(CLIENT, VIP, 40000, 81, b"a" * fits), 0.0)
    assert out is not None and len(out) == 0xFFFF and checksums_ok(out)
    assert eng.handle(dgram(CLIENT, VIP, 40000, 81, b"a" * (fits + 1)), 0.1) is None
    assert eng.drops["proxy_dgram_too_big"] == 1 and eng.stats["proxy_dgram_headers"] == 1


@pytest.mark.parametrize("choice", ["refuse", "pass"])
def test_a_datagram_with_the_clients_own_header_is_refused_or_passed_never_doubled(choice):
    eng = Engine(config(client_proxy_header=choice))
    own = proxy.encode_v2("203.0.113.9", VIP, 5555, 81, transport="udp") + b"data"
    out = eng.handle(dgram(CLIENT, VIP, 40000, 81, own), 0.0)
    if choice == "refuse":
        assert out is None and eng.drops["proxy_refused"] == 1
    else:
        assert bytes(parsed(out)[UDP].payload) == own and eng.stats["proxy_headers_passed"] == 1
    # the connection's other datagrams get ours as ever
    body = bytes(parsed(eng.handle(dgram(CLIENT, VIP, 40000, 81, b"next"), 0.1))[UDP].payload)
    assert str(header_of(body)[0].src) == CLIENT and header_of(body)[1] == b"next"


def test_a_too_big_error_from_the_back_segment_tells_the_client_to_leave_room():
    """ICMP fragmentation needed (IPv4) and ICMPv6 packet too big about a datagram that
    carried the header reach the client with the MTU lowered by the header's length, so its
    next datagrams plus the header fit the real server's path."""
    for family, hlen in ((4, 28), (6, 52)):
        client, vip, _, _ = FAMILIES[family]
        eng = Engine(config(family))
        sent = eng.handle(dgram(client, vip, 40000, 81, b"z" * 1400), 0.0)
        fwd = parsed(sent)
        if family == 4:
            err = IP(src="198.18.2.1", dst=fwd.src) / ICMP(type=3, code=4, nexthopmtu=1400) / sent[:548]
        else:
            err = IPv6(src="2001:2:0:2::1", dst=fwd.src) / ICMPv6PacketTooBig(mtu=1400) / sent[:1000]
        out = parsed(eng.handle(bytes(err), 0.1))
        assert (out.src, out.dst) == (vip, client)
        if family == 4:
            assert out[ICMP].nexthopmtu == 1400 - hlen
            assert (out[IPerror].src, out[UDPerror].sport) == (client, 40000)
        else:
            assert out[ICMPv6PacketTooBig].mtu == 1400 - hlen


def test_a_peer_that_learns_the_connection_by_sync_writes_the_same_header():
    """Nothing extra is synced (the entry keeps its 14 elements): the backup writes the
    header from the entry's addresses and the service's mode, so after a takeover the
    datagrams still name the client, through the same laddr and port."""
    a, b = Engine(config()), Engine(config())
    first = parsed(a.handle(dgram(CLIENT, VIP, 40000, 81, b"one"), 0.0))
    conn = next(iter(a.table))
    entry = SyncEntry.from_conn(conn, 0.0, a.timeout_of(conn))
    assert len(msgpack.unpackb(S.pack_entry(entry))) == 14
    assert S.pack_conn(conn, 0.0, a.timeout_of(conn)) == S.pack_entry(entry)
    raw = S.pack_entries(dict(sync_id=5, node_id="a", epoch=1, seq=1, send_time=1.0), [entry], b"k" * 32)
    (got,) = S.decode(raw[0], b"k" * 32, 5).entries
    assert b.apply_synced(**got.apply_kwargs(), now=0.5) == "created"
    out = parsed(b.handle(dgram(CLIENT, VIP, 40000, 81, b"two"), 1.0))
    assert (out.src, out.dst, out[UDP].sport) == (first.src, first.dst, first[UDP].sport)
    h, rest = header_of(bytes(out[UDP].payload))
    assert (str(h.src), h.sport, h.transport, rest) == (CLIENT, 40000, "udp", b"two")


def test_a_plain_udp_service_is_untouched():
    eng = Engine(config(mode="none"))
    out = parsed(eng.handle(dgram(CLIENT, VIP, 40000, 81, b"WHOAMI"), 0.0))
    assert bytes(out[UDP].payload) == b"WHOAMI" and eng.stats["proxy_dgram_headers"] == 0


def test_one_packet_scheduling_puts_the_header_on_each_datagram():
    eng = Engine(config(ops=True))
    for i in range(3):
        body = bytes(parsed(eng.handle(dgram(CLIENT, VIP, 40000 + i, 81, b"q"), 0.0))[UDP].payload)
        assert header_of(body)[0].sport == 40000 + i
    assert eng.stats["proxy_dgram_headers"] == 3


def test_the_config_takes_proxy_v2_on_udp_and_refuses_v1_there():
    assert config().services[0].client_address == "proxy-v2"
    with pytest.raises(ConfigError, match="client_address.*TCP services"):
        config(mode="proxy-v1")
    assert ipaddress.ip_address(VIP6)      # (the IPv6 service parses too)
    assert config(6).services[0].client_address == "proxy-v2"


def test_a_sequence_shift_synced_for_a_udp_connection_is_ignored():
    """A "seq" option means a TCP stream's shift; on a UDP entry (a confused or hostile
    peer) it changes nothing: the connection keeps its datagram header, nothing breaks."""
    a, b = Engine(config()), Engine(config())
    a.handle(dgram(CLIENT, VIP, 40000, 81, b"one"), 0.0)
    conn = next(iter(a.table))
    kw = SyncEntry.from_conn(conn, 0.0, a.timeout_of(conn)).apply_kwargs()
    assert b.apply_synced(**kw, seq=(7, 28, 0, True, 2, False), now=0.5) == "created"
    out = parsed(b.handle(dgram(CLIENT, VIP, 40000, 81, b"two"), 1.0))
    assert header_of(bytes(out[UDP].payload))[1] == b"two"
    assert b.drops["internal_error"] == 0
