"""proto.fullnat: every checksum after a rewrite must equal scapy's from-scratch recomputation."""
import ipaddress
import struct

import pytest
from hypothesis import given, settings, strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, IPOption_NOP, TCPerror, UDPerror
from scapy.layers.inet6 import (
    ICMPv6DestUnreach, ICMPv6PacketTooBig, ICMPv6TimeExceeded, IPerror6, IPv6,
    IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting,
)
from scapy.packet import Raw, raw

from proto.checksum import checksum
from proto.fullnat import Rewrite, apply, rewrite_icmp_error
from proto.packet import Malformed, flow_key, ipv4_header_ok, l4_checksum_ok, parse

PROPS = settings(max_examples=150, deadline=None)


def packed(a) -> bytes:
    return ipaddress.ip_address(a).packed


def addr(fam):
    return st.ip_addresses(v=fam).map(lambda a: a.packed)


ports = st.integers(0, 65535)


def scapy_recomputed(out: bytes, keep_udp_zero: bool) -> bytes:
    """out re-dissected by scapy with every checksum it can compute deleted, then rebuilt."""
    p = IP(out) if out[0] >> 4 == 4 else IPv6(out)
    if IP in p:
        del p[IP].chksum
    if TCP in p:
        del p[TCP].chksum
    if UDP in p and not (keep_udp_zero and p[UDP].chksum == 0):
        del p[UDP].chksum
    return raw(p)


@st.composite
def tcp_udp_packet(draw, fam=None, proto=None):
    fam = fam or draw(st.sampled_from([4, 6]))
    proto = proto or draw(st.sampled_from([6, 17]))
    src, dst = draw(addr(fam)), draw(addr(fam))
    sport, dport = draw(ports), draw(ports)
    payload = draw(st.binary(max_size=80))
    if fam == 4:
        ip = IP(src=str(ipaddress.ip_address(src)), dst=str(ipaddress.ip_address(dst)),
                ttl=draw(st.integers(1, 255)), id=draw(ports), tos=draw(st.integers(0, 255)),
                flags=draw(st.sampled_from(["", "DF"])),
                options=[IPOption_NOP()] * draw(st.sampled_from([0, 0, 1, 4, 7, 40])))
    else:
        ip = IPv6(src=str(ipaddress.ip_address(src)), dst=str(ipaddress.ip_address(dst)),
                  fl=draw(st.integers(0, 0xFFFFF)), hlim=draw(st.integers(1, 255)))
        exts = draw(st.lists(st.sampled_from(["dst", "rt", "frag"]), max_size=3))
        if draw(st.booleans()):
            exts = ["hbh"] + exts
        for e in exts:
            ip = ip / {"hbh": IPv6ExtHdrHopByHop(), "dst": IPv6ExtHdrDestOpt(), "rt": IPv6ExtHdrRouting(),
                       "frag": IPv6ExtHdrFragment(offset=0, m=0, id=draw(ports))}[e]
    if proto == 6:
        l4 = TCP(sport=sport, dport=dport, flags=draw(st.integers(0, 255)), seq=draw(st.integers(0, 2**32 - 1)),
                 ack=draw(st.integers(0, 2**32 - 1)), window=draw(ports),
                 options=draw(st.sampled_from([[], [("MSS", 1460)], [("NOP", None), ("NOP", None),
                                                                    ("Timestamp", (1, 2))]])))
        zero = False
    else:
        zero = fam == 4 and draw(st.booleans())
        l4 = UDP(sport=sport, dport=dport, chksum=0 if zero else None)
    return raw(ip / l4 / payload), zero


@st.composite
def translation(draw, fam):
    return draw(addr(fam)), draw(addr(fam)), draw(ports), draw(ports)


def check_apply(buf, new, zero):
    pkt = parse(buf)
    new_src, new_dst, new_sport, new_dport = new
    rw = Rewrite(pkt.family, pkt.proto, pkt.src, pkt.dst, pkt.sport, pkt.dport,
                 new_src, new_dst, new_sport, new_dport)
    out = apply(buf, pkt, rw)
    assert type(out) is bytes and len(out) == pkt.end
    got = parse(out)
    assert (got.src, got.dst, got.sport, got.dport) == (new_src, new_dst, new_sport, new_dport)
    assert got.key == flow_key(pkt.proto, new_src, new_dst, new_sport, new_dport)
    assert (got.family, got.proto, got.l4, got.flags) == (pkt.family, pkt.proto, pkt.l4, pkt.flags)
    # everything but addresses, ports and checksums is untouched
    co = pkt.l4 + (16 if pkt.proto == 6 else 6)
    assert out[co + 2:] == buf[co + 2:pkt.end] and out[pkt.l4 + 4:co] == buf[pkt.l4 + 4:co]
    if pkt.family == 4:
        assert out[:10] == buf[:10] and out[20:pkt.l4] == buf[20:pkt.l4]
        assert ipv4_header_ok(out)
    else:
        assert out[:8] == buf[:8] and out[40:pkt.l4] == buf[40:pkt.l4]
    if zero:
        assert out[co:co + 2] == b"\0\0"
    assert l4_checksum_ok(out, got)
    assert out == scapy_recomputed(out, keep_udp_zero=zero)
    return out


@PROPS
@given(st.data())
def test_apply_checksums_equal_scapy_recomputation(data):
    buf, zero = data.draw(tcp_udp_packet())
    check_apply(buf, data.draw(translation(buf[0] >> 4)), zero)


@pytest.mark.parametrize("fam, proto", [(4, 6), (4, 17), (6, 6), (6, 17)])
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_apply_each_family_and_protocol(fam, proto, data):
    buf, zero = data.draw(tcp_udp_packet(fam, proto))
    check_apply(buf, data.draw(translation(fam)), zero)


@pytest.mark.parametrize("fam", [4, 6])
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_udp_checksum_that_comes_out_zero_is_sent_as_ffff(fam, data):
    buf, _ = data.draw(tcp_udp_packet(fam, 17).filter(lambda c: not c[1]))
    pkt = parse(buf)
    new_src, new_dst, _, new_dport = data.draw(translation(fam))
    # With sport 0 the checksum is c0 = ~S0; a sport of c0 adds exactly c0 to
    # the sum, making it 0xffff: a computed checksum of 0.
    probe = apply(buf, pkt, Rewrite(fam, 17, pkt.src, pkt.dst, pkt.sport, pkt.dport, new_src, new_dst, 0, new_dport))
    c0 = struct.unpack_from("!H", probe, pkt.l4 + 6)[0]
    out = check_apply(buf, (new_src, new_dst, c0, new_dport), False)
    assert out[pkt.l4 + 6:pkt.l4 + 8] == b"\xff\xff"


def test_tcp_checksum_zero_is_an_ordinary_value():
    buf = raw(IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1000, dport=80, flags="S"))
    pkt = parse(buf)
    probe = apply(buf, pkt, Rewrite(4, 6, pkt.src, pkt.dst, 1000, 80, packed("10.1.0.1"), packed("10.2.0.2"), 0, 8080))
    c0 = struct.unpack_from("!H", probe, 36)[0]
    out = apply(buf, pkt, Rewrite(4, 6, pkt.src, pkt.dst, 1000, 80, packed("10.1.0.1"), packed("10.2.0.2"), c0, 8080))
    assert out[36:38] == b"\0\0"
    assert l4_checksum_ok(out, parse(out))
    assert out == scapy_recomputed(out, False)


def test_identity_rewrite_changes_nothing():
    for buf in (raw(IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1, dport=2) / b"x"),
                raw(IPv6(src="::1", dst="::2") / UDP(sport=3, dport=4) / b"y"),
                raw(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=5, dport=6, chksum=0))):
        pkt = parse(buf)
        rw = Rewrite(pkt.family, pkt.proto, pkt.src, pkt.dst, pkt.sport, pkt.dport,
                     pkt.src, pkt.dst, pkt.sport, pkt.dport)
        assert apply(buf, pkt, rw) == buf


def test_fullnat_round_trip():
    client, vip, lip, rip = packed("198.51.100.7"), packed("203.0.113.10"), packed("10.0.0.5"), packed("10.0.1.20")
    fwd = Rewrite(4, 6, client, vip, 40000, 80, lip, rip, 61000, 8080)
    rev = Rewrite(4, 6, rip, lip, 8080, 61000, vip, client, 80, 40000)
    syn = raw(IP(src="198.51.100.7", dst="203.0.113.10") / TCP(sport=40000, dport=80, flags="S"))
    out = apply(syn, parse(syn), fwd)
    s = IP(out)
    assert (s.src, s.dst, s[TCP].sport, s[TCP].dport) == ("10.0.0.5", "10.0.1.20", 61000, 8080)
    synack = raw(IP(src=s.dst, dst=s.src) / TCP(sport=8080, dport=61000, flags="SA"))
    sa = parse(synack)
    assert sa.key == flow_key(6, rip, lip, 8080, 61000)
    back = apply(synack, sa, rev)
    assert parse(back).key == flow_key(6, vip, client, 80, 40000)
    assert back == scapy_recomputed(back, False)


def test_trailing_bytes_are_dropped():
    buf = raw(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2) / b"abc")
    pkt = parse(buf + b"\xee" * 6)
    out = apply(buf + b"\xee" * 6, pkt, Rewrite(4, 17, pkt.src, pkt.dst, 1, 2, pkt.dst, pkt.src, 3, 4))
    assert len(out) == len(buf) and l4_checksum_ok(out, parse(out))


@pytest.mark.parametrize("fam", [4, 6])
@pytest.mark.parametrize("size", [3000, 65507 - 20])
def test_a_reassembled_datagram_of_any_size_gets_the_checksum_of_a_fresh_one(fam, size):
    """The kernel reassembles fragments before the queue, so the engine rewrites datagrams up
    to the IP maximum (65,535 bytes): every checksum after the incremental update must equal
    scapy's recomputation over the whole datagram."""
    payload = bytes(i * 7 & 0xFF for i in range(size))
    if fam == 4:
        whole = IP(src="10.0.0.1", dst="10.0.0.2", id=7) / UDP(sport=1111, dport=53) / payload
        new = (packed("10.9.9.9"), packed("10.8.8.8"))
    else:
        whole = IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP(sport=1111, dport=53) / payload
        new = (packed("2001:db8::99"), packed("2001:db8::88"))
    buf = raw(whole)
    assert len(buf) <= 65535 + (40 if fam == 6 else 0)
    pkt = parse(buf)
    out = apply(buf, pkt, Rewrite(fam, 17, pkt.src, pkt.dst, 1111, 53, new[0], new[1], 2222, 5353))
    assert out == scapy_recomputed(out, False)
    assert out[-size:] == payload and l4_checksum_ok(out, parse(out))


def test_misuse_raises_value_error():
    tcp = raw(IP(src="10.0.0.1", dst="10.0.0.2") / TCP())
    icmp = raw(IP(src="10.0.0.1", dst="10.0.0.2") / ICMP())
    a, b = packed("10.0.0.1"), packed("10.0.0.2")
    rw = Rewrite(4, 6, a, b, 1, 2, b, a, 3, 4)
    with pytest.raises(ValueError):
        apply(icmp, parse(icmp), rw)
    with pytest.raises(ValueError):
        apply(tcp, parse(tcp), Rewrite(4, 17, a, b, 1, 2, b, a, 3, 4))
    with pytest.raises(ValueError):
        Rewrite(4, 1, a, b, 0, 0, b, a, 0, 0)
    with pytest.raises(ValueError):
        Rewrite(6, 6, a, b, 1, 2, b, a, 3, 4)
    with pytest.raises(ValueError):
        Rewrite(5, 6, a, b, 1, 2, b, a, 3, 4)
    with pytest.raises(ValueError):
        rewrite_icmp_error(icmp, parse(icmp), a, b, a, b, 1, 2)
    with pytest.raises(ValueError):
        rewrite_icmp_error(tcp, parse(tcp), a, b, a, b, 1, 2)
    assert (rw.new_src, rw.new_dst, rw.new_sport, rw.new_dport) == (b, a, 3, 4)
    assert "Rewrite" in repr(rw)


# Corrupt packets must keep exactly their (in)validity: an incremental update
# preserves the checksum's residue, it neither repairs nor breaks a packet.
SEEDS = [raw(p) for p in (
    IP(src="10.0.0.1", dst="10.0.0.2", options=[IPOption_NOP()] * 4) / TCP(sport=1, dport=2, flags="PA") / b"abcdef",
    IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2) / b"abcdef",
    IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2, chksum=0) / b"abcdef",
    IPv6(src="::1", dst="::2") / IPv6ExtHdrDestOpt() / TCP(sport=1, dport=2) / b"abcdef",
    IPv6(src="::1", dst="::2") / UDP(sport=1, dport=2) / b"abcdef",
)]


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(SEEDS), st.lists(st.integers(0, 8 * 100 - 1), min_size=1, max_size=4),
       st.tuples(st.binary(min_size=16, max_size=16), st.binary(min_size=16, max_size=16), ports, ports))
def test_bit_flipped_packets_keep_their_checksum_validity(seed, bits, new):
    b = bytearray(seed)
    for bit in bits:
        bit %= 8 * len(b)
        b[bit >> 3] ^= 1 << (bit & 7)
    buf = bytes(b)
    try:
        pkt = parse(buf)
    except Malformed:
        return
    if pkt.proto not in (6, 17):
        return
    alen = 4 if pkt.family == 4 else 16
    rw = Rewrite(pkt.family, pkt.proto, pkt.src, pkt.dst, pkt.sport, pkt.dport,
                 new[0][:alen], new[1][:alen], new[2], new[3])
    out = apply(buf, pkt, rw)
    got = parse(out)
    assert (got.src, got.dst, got.sport, got.dport) == (new[0][:alen], new[1][:alen], new[2], new[3])
    assert l4_checksum_ok(out, got) == l4_checksum_ok(buf, pkt)
    if pkt.family == 4:
        assert ipv4_header_ok(out) == ipv4_header_ok(buf)


# ---------------------------------------------------------------- ICMP errors

V4_ERRORS = [("unreach", lambda: ICMP(type=3, code=1)), ("frag_needed", lambda: ICMP(type=3, code=4, nexthopmtu=1400)),
             ("port_unreach", lambda: ICMP(type=3, code=3)), ("time_exceeded", lambda: ICMP(type=11, code=0)),
             ("source_quench", lambda: ICMP(type=4, code=0))]
V6_ERRORS = [("unreach", lambda: ICMPv6DestUnreach(code=4)), ("too_big", lambda: ICMPv6PacketTooBig(mtu=1280)),
             ("time_exceeded", lambda: ICMPv6TimeExceeded(code=0))]


@st.composite
def icmp_error(draw, fam=None, kind=None):
    fam = fam or draw(st.sampled_from([4, 6]))
    inner, _ = draw(tcp_udp_packet(fam))
    ip = parse(inner)
    # RFC 792 minimum (IP header + 8), Linux's up-to-576 (here: all), or a cut in between
    cut = draw(st.sampled_from(["min", "all", "between"]))
    n = {"min": ip.l4 + 8, "all": len(inner)}.get(cut) or draw(st.integers(ip.l4 + 8, len(inner)))
    errs = V4_ERRORS if fam == 4 else V6_ERRORS
    name, make = errs[kind] if kind is not None else draw(st.sampled_from(errs))
    osrc, odst = draw(addr(fam)), draw(addr(fam))
    outer = (IP(src=str(ipaddress.ip_address(osrc)), dst=str(ipaddress.ip_address(odst)))
             if fam == 4 else IPv6(src=str(ipaddress.ip_address(osrc)), dst=str(ipaddress.ip_address(odst))))
    return raw(outer / make() / Raw(inner[:n])), name


def scapy_recomputed_icmp(out: bytes) -> bytes:
    p = IP(out) if out[0] >> 4 == 4 else IPv6(out)
    if IP in p:
        del p[IP].chksum
        del p[ICMP].chksum
        if IPerror in p:
            del p[IPerror].chksum
    else:
        del p.payload.cksum
    return raw(p)


def check_icmp_error(buf, new, seq_delta=0):
    pkt = parse(buf)
    inner = pkt.inner
    assert inner is not None
    osrc, odst, isrc, idst, isport, idport = new
    out = rewrite_icmp_error(buf, pkt, osrc, odst, isrc, idst, isport, idport, inner_seq_delta=seq_delta)
    assert type(out) is bytes and len(out) == pkt.end
    got = parse(out)
    assert (got.src, got.dst) == (osrc, odst)
    assert (got.icmp_type, got.icmp_code) == (pkt.icmp_type, pkt.icmp_code)
    gi = got.inner
    assert (gi.src, gi.dst, gi.sport, gi.dport) == (isrc, idst, isport, idport)
    assert gi.key == flow_key(inner.proto, isrc, idst, isport, idport)
    assert l4_checksum_ok(out, got)                       # the ICMP checksum, from our side
    if pkt.family == 4:
        assert ipv4_header_ok(out)
        assert checksum(out[gi.off:gi.l4]) == 0           # quoted IPv4 header checksum
    # The quoted L4 checksum (and everything after the ports) is left alone
    seq_end = gi.l4 + 8 if (seq_delta and inner.proto == 6) else gi.l4 + 4
    assert out[seq_end:] == buf[seq_end:pkt.end]
    assert out == scapy_recomputed_icmp(out)
    return out, got


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_icmp_error_rewrite_equals_scapy_recomputation(data):
    buf, _ = data.draw(icmp_error())
    fam = buf[0] >> 4
    new = (data.draw(addr(fam)), data.draw(addr(fam)), data.draw(addr(fam)), data.draw(addr(fam)),
           data.draw(ports), data.draw(ports))
    check_icmp_error(buf, new)


@pytest.mark.parametrize("fam, kind", [(4, i) for i in range(len(V4_ERRORS))] + [(6, i) for i in range(len(V6_ERRORS))],
                         ids=[f"v4-{n}" for n, _ in V4_ERRORS] + [f"v6-{n}" for n, _ in V6_ERRORS])
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_icmp_error_each_kind(fam, kind, data):
    buf, _ = data.draw(icmp_error(fam, kind))
    new = (data.draw(addr(fam)), data.draw(addr(fam)), data.draw(addr(fam)), data.draw(addr(fam)),
           data.draw(ports), data.draw(ports))
    out, got = check_icmp_error(buf, new)
    if kind == 1:       # frag needed / packet too big: the MTU survives
        assert out[got.l4 + 4:got.l4 + 8] == buf[got.l4 + 4:got.l4 + 8]


def test_frag_needed_for_fullnat_flow_back_to_client():
    # Client -> VIP became LIP -> RIP; a router between director and RS
    # reports frag-needed to the LIP, quoting LIP -> RIP.  The client must
    # get it from VIP's side, quoting its own client -> VIP packet.
    client, vip, lip, rip = "198.51.100.7", "203.0.113.10", "10.0.0.5", "10.0.1.20"
    router = "10.0.1.1"
    sent = raw(IP(src=lip, dst=rip, flags="DF") / TCP(sport=61000, dport=8080, flags="PA", seq=5000) / (b"x" * 1400))
    err = raw(IP(src=router, dst=lip) / ICMP(type=3, code=4, nexthopmtu=1300) / Raw(sent[:576 - 28]))
    pkt = parse(err)
    assert pkt.inner.key == flow_key(6, packed(lip), packed(rip), 61000, 8080)
    out, got = check_icmp_error(err, (packed(vip), packed(client), packed(client), packed(vip), 40000, 80),
                                seq_delta=-4000)
    s = IP(out)
    assert (s.src, s.dst) == (vip, client)
    assert s[ICMP].nexthopmtu == 1300
    assert (s[IPerror].src, s[IPerror].dst) == (client, vip)
    assert (s[TCPerror].sport, s[TCPerror].dport, s[TCPerror].seq) == (40000, 80, 1000)
    # the quoted TCP checksum is the original one, untouched
    assert s[TCPerror].chksum == TCP(sent[20:]).chksum


def test_packet_too_big_v6_uses_new_outer_pseudo_header():
    client, vip, lip, rip = "2001:db8::7", "2001:db8:1::10", "2001:db8:2::5", "2001:db8:3::20"
    sent = raw(IPv6(src=lip, dst=rip) / UDP(sport=61000, dport=53) / (b"q" * 1300))
    err = raw(IPv6(src="2001:db8:3::1", dst=lip) / ICMPv6PacketTooBig(mtu=1280) / Raw(sent[:1232]))
    out, got = check_icmp_error(err, (packed(vip), packed(client), packed(client), packed(vip), 5353, 53))
    s = IPv6(out)
    assert (s.src, s.dst, s[ICMPv6PacketTooBig].mtu) == (vip, client, 1280)
    assert (s[IPerror6].src, s[IPerror6].dst, s[UDPerror].sport, s[UDPerror].dport) == (client, vip, 5353, 53)
    # the same bytes with the OLD outer addresses would not verify
    wrong = bytearray(out)
    wrong[8:40] = err[8:40]
    assert not l4_checksum_ok(bytes(wrong), parse(bytes(wrong)))


def test_seq_delta_wraps_and_is_ignored_for_udp():
    sent = raw(IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1, dport=2, seq=0xFFFFFFF0))
    err = raw(IP(src="10.0.0.9", dst="10.0.0.1") / ICMP(type=11) / Raw(sent[:28]))
    a = packed("10.0.0.1")
    out, got = check_icmp_error(err, (a, a, a, a, 1, 2), seq_delta=0x20)
    assert struct.unpack_from("!L", out, got.inner.l4 + 4)[0] == 0x10
    usent = raw(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2) / b"abcd")
    uerr = raw(IP(src="10.0.0.9", dst="10.0.0.1") / ICMP(type=3, code=3) / Raw(usent))
    check_icmp_error(uerr, (a, a, a, a, 7, 8), seq_delta=5)        # UDP: nothing to shift


def _fields(rw):
    return (rw.family, rw.proto, rw.addrs, rw.ports, rw.ip_delta, rw.l4_delta)


_EDGE_ADDR = st.sampled_from([0, 0xFF, 0x7F, 1])


@pytest.mark.parametrize("fam, proto", [(4, 6), (4, 17), (6, 6), (6, 17)])
@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_pair_equals_the_two_constructors(fam, proto, data):
    """Rewrite.pair (the engine's new-connection path) negates the original direction's
    deltas for the reply direction; it must give exactly what the two constructors give,
    including the edges where a folded sum is 0 or 0xffff (all-zero and all-ones words)."""
    n = 4 if fam == 4 else 16
    addr = st.one_of(st.binary(min_size=n, max_size=n),
                     _EDGE_ADDR.map(lambda b: bytes([b]) * n))
    port = st.one_of(st.integers(0, 0xFFFF), st.sampled_from([0, 0xFFFF]))
    c, v, la, d = (data.draw(addr) for _ in range(4))
    cp, vp, lp, dp = (data.draw(port) for _ in range(4))
    rw_in, rw_out = Rewrite.pair(fam, proto, c, v, cp, vp, la, d, lp, dp)
    assert _fields(rw_in) == _fields(Rewrite(fam, proto, c, v, cp, vp, la, d, lp, dp))
    assert _fields(rw_out) == _fields(Rewrite(fam, proto, d, la, dp, lp, v, c, vp, cp))


def test_pair_checks_like_the_constructor():
    with pytest.raises(ValueError):
        Rewrite.pair(4, 6, b"\x01" * 4, b"\x02" * 4, 1, 2, b"\x03" * 16, b"\x04" * 4, 3, 4)
    with pytest.raises(ValueError):
        Rewrite.pair(4, 1, b"\x01" * 4, b"\x02" * 4, 1, 2, b"\x03" * 4, b"\x04" * 4, 3, 4)
