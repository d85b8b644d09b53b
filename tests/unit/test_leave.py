"""No usable real server: the client is told at once (issue 12 item 17).

ip_vs_leave answers a packet it cannot schedule with ICMP port unreachable
(ICMPv6 destination unreachable, code 4, for an IPv6 service), for TCP as for
UDP, and icmp_send rate-limits it per destination host (icmp_ratelimit: one a
second, bursts of six) and per node (icmp_msgs_per_sec / icmp_msgs_burst).
scapy is the oracle for the packets.
"""
from __future__ import annotations

from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, TCPerror, UDPerror
from scapy.layers.inet6 import ICMPv6DestUnreach, IPerror6, IPv6, UDPerror as UDPerror6

from director.config import parse
from director.leave import HOST_BURST, NODE_BURST
from director.engine import Engine
from tests.helpers import CLIENT, RS, VIP, checksums_ok, make_config, tcp, udp


def all_quiesced():
    return make_config(weights=[0] * len(RS))


def test_a_syn_with_every_server_at_weight_0_gets_port_unreachable():
    eng = Engine(all_quiesced())
    syn = tcp(CLIENT, VIP, 40000, 80, "S", seq=4242)
    out = eng.handle(syn, 0.0)
    assert out is not None
    p = IP(out)
    assert (p.src, p.dst, p[ICMP].type, p[ICMP].code) == (VIP, CLIENT, 3, 3)
    assert checksums_ok(out)
    quoted = p[IPerror]
    assert (quoted.src, quoted.dst, quoted[TCPerror].sport, quoted[TCPerror].seq) == (CLIENT, VIP, 40000, 4242)
    assert eng.drops["no_dest"] == 1 and len(eng.table) == 0
    assert eng.stats["icmp_unreachable_sent"] == 1


def test_a_udp_datagram_gets_it_too_and_a_long_one_is_quoted_within_576_bytes():
    eng = Engine(all_quiesced())
    out = eng.handle(udp(CLIENT, VIP, 5353, 80, payload=b"q" * 1200), 0.0)
    p = IP(out)
    assert len(out) <= 576 and p[ICMP].type == 3 and p[ICMP].code == 3
    assert p[UDPerror].sport == 5353
    assert checksums_ok(out)


def test_ipv6_service_answers_with_icmpv6_port_unreachable():
    svc = {"proto": "udp", "vip": "2001:2::100", "port": 53, "laddrs": ["2001:2:2::100"],
           "real_servers": [{"addr": "2001:2:2::21", "port": 53, "weight": 0}]}
    eng = Engine(parse({"node": {"name": "t"}, "services": [svc]}))
    out = eng.handle(udp("2001:2:1::10", "2001:2::100", 5353, 53), 0.0)
    p = IPv6(out)
    assert (p.src, p.dst) == ("2001:2::100", "2001:2:1::10")
    du = p[ICMPv6DestUnreach]
    assert (du.type, du.code) == (1, 4)
    assert p[IPerror6][UDPerror6].sport == 5353
    chk = du.cksum
    del du.cksum
    assert IPv6(bytes(p))[ICMPv6DestUnreach].cksum == chk


def test_answers_are_rate_limited_per_client_host():
    eng = Engine(all_quiesced())
    answered = sum(eng.handle(tcp(CLIENT, VIP, 40000 + i, 80, "S"), 0.0) is not None for i in range(20))
    assert answered == HOST_BURST
    # another host still gets its answer; the first one again a second later
    assert eng.handle(tcp("198.18.1.11", VIP, 40000, 80, "S"), 0.0) is not None
    assert eng.handle(tcp(CLIENT, VIP, 41000, 80, "S"), 1.0) is not None
    assert eng.handle(tcp(CLIENT, VIP, 41001, 80, "S"), 1.0) is None
    assert eng.stats["icmp_unreachable_suppressed"] == 20 - HOST_BURST + 1


def test_answers_are_rate_limited_for_the_node():
    eng = Engine(all_quiesced())
    answered = sum(eng.handle(tcp(f"198.18.{1 + i // 250}.{1 + i % 250}", VIP, 40000, 80, "S"), 0.0)
                   is not None for i in range(200))
    assert answered == NODE_BURST


def test_a_multicast_or_unspecified_source_is_never_answered():
    eng = Engine(all_quiesced())
    assert eng.handle(udp("0.0.0.0", VIP, 68, 80), 0.0) is None
    assert eng.handle(udp("224.0.0.9", VIP, 520, 80), 0.0) is None
    assert eng.drops["no_dest"] == 2
