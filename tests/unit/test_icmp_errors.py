"""ICMP errors about FULLNAT connections (issue 12 item 20).

IPVS translates an error only on the side it belongs to: ip_vs_in_icmp takes
errors arriving for the virtual service (about packets the director sent the
client), ip_vs_out_icmp errors from the real servers' side (about packets it
sent a real server; with FULLNAT those are addressed to the laddr).  For
IPv6, ip_vs_in_icmp_v6 treats every ICMPv6 error type as related, parameter
problem (type 4) included.  scapy is the oracle for the packets.
"""
from __future__ import annotations

from scapy.layers.inet import ICMP, IP, TCP, IPerror, TCPerror
from scapy.layers.inet6 import ICMPv6ParamProblem, IPerror6, IPv6, UDPerror as UDPerror6

from director.config import parse
from director.engine import Engine
from tests.helpers import CLIENT, VIP, checksums_ok, make_config, tcp, udp


def connection(eng):
    """A SYN forwarded and the server's SYN-ACK sent back: both packets."""
    fwd = IP(eng.handle(tcp(CLIENT, VIP, 40000, 80, "S"), 0.0))
    back = IP(eng.handle(tcp(fwd.dst, fwd.src, 8080, fwd[TCP].sport, "SA", seq=9, ack=1001), 0.1))
    return fwd, back


def test_an_error_to_the_vip_quoting_the_packet_sent_to_the_real_server_is_dropped():
    """Anyone can address the VIP; only the laddr side may speak about
    laddr -> real server packets."""
    eng = Engine(make_config())
    fwd, _ = connection(eng)
    err = bytes(IP(src="198.18.1.77", dst=VIP) / ICMP(type=3, code=1) / bytes(fwd)[:28])
    assert eng.handle(err, 0.2) is None
    assert eng.drops["icmp_wrong_side"] == 1 and eng.stats["icmp_errors"] == 0


def test_an_error_to_the_laddr_quoting_the_packet_sent_to_the_client_is_dropped():
    eng = Engine(make_config())
    fwd, back = connection(eng)
    err = bytes(IP(src="198.18.2.1", dst=fwd.src) / ICMP(type=3, code=1) / bytes(back)[:28])
    assert eng.handle(err, 0.2) is None
    assert eng.drops["icmp_wrong_side"] == 1


def test_an_error_from_the_client_side_reaches_the_real_server_translated():
    eng = Engine(make_config())
    fwd, back = connection(eng)
    err = bytes(IP(src="198.18.1.1", dst=VIP) / ICMP(type=11, code=0) / bytes(back)[:28])
    out = eng.handle(err, 0.2)
    o = IP(out)
    assert (o.src, o.dst) == (fwd.src, fwd.dst)
    q = o[IPerror]
    assert (q.src, q.dst, q[TCPerror].sport, q[TCPerror].dport) == (fwd.dst, fwd.src, 8080, fwd[TCP].sport)
    assert checksums_ok(out)


def test_icmpv6_parameter_problem_is_translated_with_its_pointer():
    svc = {"proto": "udp", "vip": "2001:2::100", "port": 53, "laddrs": ["2001:2:2::100"],
           "real_servers": [{"addr": "2001:2:2::21", "port": 53}]}
    eng = Engine(parse({"node": {"name": "t"}, "services": [svc]}))
    fwd = IPv6(eng.handle(udp("2001:2:1::10", "2001:2::100", 5353, 53), 0.0))
    err = bytes(IPv6(src="2001:2:2::21", dst=fwd.src) / ICMPv6ParamProblem(code=0, ptr=6) / bytes(fwd))
    out = eng.handle(err, 0.1)
    assert out is not None, eng.drops
    o = IPv6(out)
    assert (o.src, o.dst) == ("2001:2::100", "2001:2:1::10")
    pp = o[ICMPv6ParamProblem]
    assert (pp.type, pp.code, pp.ptr) == (4, 0, 6)
    q = o[IPerror6]
    assert (q.src, q.dst, q[UDPerror6].sport, q[UDPerror6].dport) == ("2001:2:1::10", "2001:2::100", 5353, 53)
    chk = pp.cksum
    del pp.cksum
    assert IPv6(bytes(o))[ICMPv6ParamProblem].cksum == chk
