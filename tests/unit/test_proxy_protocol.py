"""proto.proxy: PROXY protocol v1/v2 headers against the HAProxy spec's examples and layouts."""
import ipaddress
import struct

import pytest
from hypothesis import given, settings, strategies as st

from proto import proxy
from proto.proxy import Header, ProxyError, parse

FAST = settings(max_examples=300, deadline=None)

ip4 = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address)
ip6 = st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address)
port = st.integers(0, 65535)
pairs = st.one_of(st.tuples(ip4, ip4), st.tuples(ip6, ip6))


# -- the spec's own examples -------------------------------------------------------

def test_v1_spec_example_tcp4():
    line = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
    assert proxy.encode_v1("192.168.0.1", "192.168.0.11", 56324, 443) == line
    h = parse(line + b"GET / HTTP/1.1\r\n")
    assert h == Header(1, False, "tcp", ipaddress.ip_address("192.168.0.1"),
                       ipaddress.ip_address("192.168.0.11"), 56324, 443, len(line))


def test_v1_spec_worst_cases_fit_107_bytes():
    ff = "ffff:" * 7 + "ffff"
    tcp6 = proxy.encode_v1(ff, ff, 65535, 65535)
    assert tcp6 == f"PROXY TCP6 {ff} {ff} 65535 65535\r\n".encode()
    assert len(tcp6) == 104
    unknown = f"PROXY UNKNOWN {ff} {ff} 65535 65535\r\n".encode()
    assert len(unknown) == proxy.V1_MAX == 107
    # UNKNOWN: whatever follows up to the CRLF is ignored
    assert parse(unknown) == Header(1, False, None, None, None, 0, 0, 107)
    assert parse(b"PROXY UNKNOWN\r\n") == Header(1, False, None, None, None, 0, 0, 15)
    assert proxy.encode_v1_unknown() == b"PROXY UNKNOWN\r\n"


def test_v2_layout_tcp4_byte_for_byte():
    """The spec's section 2.2: signature, 0x21 (v2 PROXY), 0x11 (INET STREAM), length 12,
    then src, dst, sport, dport in network order."""
    h = proxy.encode_v2("198.18.1.10", "198.18.0.100", 40000, 81)
    assert h == (b"\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a" + b"\x21\x11\x00\x0c"
                 + bytes([198, 18, 1, 10, 198, 18, 0, 100]) + struct.pack("!HH", 40000, 81))
    assert len(h) == 28
    assert parse(h + b"data") == Header(2, False, "tcp", ipaddress.ip_address("198.18.1.10"),
                                        ipaddress.ip_address("198.18.0.100"), 40000, 81, 28)


@pytest.mark.parametrize("src, dst, transport, fam_byte, size", [
    ("198.18.1.10", "198.18.0.100", "tcp", 0x11, 12),
    ("198.18.1.10", "198.18.0.100", "udp", 0x12, 12),
    ("2001:2::10", "2001:2::100", "tcp", 0x21, 36),
    ("2001:2::10", "2001:2::100", "udp", 0x22, 36),
])
def test_v2_family_and_transport_bytes(src, dst, transport, fam_byte, size):
    h = proxy.encode_v2(src, dst, 1, 2, transport=transport)
    assert h[12] == 0x21 and h[13] == fam_byte and struct.unpack("!H", h[14:16])[0] == size
    assert len(h) == 16 + size
    got = parse(h)
    assert (got.transport, str(got.src), str(got.dst), got.sport, got.dport) == \
        (transport, src, dst, 1, 2)


def test_v2_local_has_no_addresses():
    h = proxy.encode_v2_local()
    assert h == proxy.SIGNATURE + b"\x20\x00\x00\x00"
    assert parse(h) == Header(2, True, None, None, None, 0, 0, 16)
    # a LOCAL header with an address block: the block is skipped, never used
    withaddr = proxy.SIGNATURE + b"\x20\x11\x00\x0c" + bytes(12)
    assert parse(withaddr) == Header(2, True, None, None, None, 0, 0, 28)


def test_v2_tlvs_are_kept_and_counted_in_the_length():
    tlv = b"\x04\x00\x01\x00"      # PP2_TYPE_NOOP with one byte
    h = proxy.encode_v2("198.18.1.10", "198.18.0.100", 5, 6, tlvs=tlv)
    got = parse(h)
    assert got.length == len(h) == 16 + 12 + 4 and got.tlvs == tlv


def test_v2_unspec_and_unix_are_valid_but_addressless():
    unspec = proxy.SIGNATURE + b"\x21\x00\x00\x00"
    assert parse(unspec) == Header(2, False, None, None, None, 0, 0, 16)
    unix = proxy.SIGNATURE + b"\x21\x31" + struct.pack("!H", 216) + bytes(216)
    assert parse(unix).length == 232 and parse(unix).src is None


# -- round trips -------------------------------------------------------------------

@FAST
@given(pairs, port, port, st.binary(max_size=64))
def test_v1_round_trip(addrs, sport, dport, rest):
    src, dst = addrs
    h = proxy.encode_v1(src, dst, sport, dport)
    assert len(h) <= proxy.V1_MAX
    got = parse(h + rest)
    assert got == Header(1, False, "tcp", src, dst, sport, dport, len(h))
    assert (h + rest)[got.length:] == rest


@FAST
@given(pairs, port, port, st.sampled_from(["tcp", "udp"]), st.binary(max_size=40),
       st.binary(max_size=64))
def test_v2_round_trip(addrs, sport, dport, transport, tlvs, rest):
    src, dst = addrs
    h = proxy.encode_v2(src.packed, dst.packed, sport, dport, transport=transport, tlvs=tlvs)
    got = parse(h + rest)
    assert got == Header(2, False, transport, src, dst, sport, dport, len(h), tlvs)
    assert (h + rest)[got.length:] == rest


@FAST
@given(pairs, port, port, st.sampled_from([1, 2]), st.data())
def test_every_proper_prefix_asks_for_more(addrs, sport, dport, version, data):
    """A header cut anywhere is 'need more bytes', never an error and never a header."""
    h = proxy.encode(version, *addrs, sport, dport)
    cut = data.draw(st.integers(1, len(h) - 1))
    assert parse(h[:cut]) is None
    assert proxy.starts_like_proxy(h[:cut])


# -- malformed headers: a clear error ----------------------------------------------

@pytest.mark.parametrize("buf, words", [
    (b"GET / HTTP/1.1\r\n", "not a PROXY header"),
    (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "TCP4, TCP6 or UNKNOWN"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "6 space-separated fields"),
    (b"PROXY TCP4 1.2.3.400 5.6.7.8 1 2\r\n", "source address '1.2.3.400'"),
    (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "not IPv4"),
    (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "not IPv6"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "source port '65536'"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 02\r\n", "destination port '02'"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 -2\r\n", "destination port '-2'"),
    (b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", "6 space-separated fields"),
    (b"PROXY " + b"x" * 120, "no CRLF within 107"),
    (b"PROXY TCP4 1.2.3.4\n5.6.7.8", "bare CR or LF"),
    (b"PRXY TCP4", "not a PROXY header"),
    (b"\r\n\r\n\x00\r\nQUIX\n" + bytes(4), "signature"),
    (proxy.SIGNATURE + b"\x11\x11\x00\x0c" + bytes(12), "version is 1"),
    (proxy.SIGNATURE + b"\x22\x11\x00\x0c" + bytes(12), "command is 0x2"),
    (proxy.SIGNATURE + b"\x21\x41\x00\x0c" + bytes(12), "address family is 0x4"),
    (proxy.SIGNATURE + b"\x21\x13\x00\x0c" + bytes(12), "transport is 0x3"),
    (proxy.SIGNATURE + b"\x21\x21\x00\x0c" + bytes(12), "too short for its address family"),
])
def test_malformed_headers_say_what_is_wrong(buf, words):
    with pytest.raises(ProxyError, match=words.replace("(", r"\(").replace(")", r"\)")):
        parse(buf)


def test_encoders_refuse_bad_input():
    with pytest.raises(ValueError, match="different address families"):
        proxy.encode_v1("1.2.3.4", "::1", 1, 2)
    with pytest.raises(ValueError, match="0..65535"):
        proxy.encode_v2("1.2.3.4", "5.6.7.8", 70000, 2)
    with pytest.raises(ValueError, match="'tcp' or 'udp'"):
        proxy.encode_v2("1.2.3.4", "5.6.7.8", 1, 2, transport="sctp")
    with pytest.raises(ValueError, match="version must be 1 or 2"):
        proxy.encode(3, "1.2.3.4", "5.6.7.8", 1, 2)


def test_ordinary_payloads_do_not_look_like_proxy():
    for data in (b"GET / HTTP/1.1\r\n", b"\x16\x03\x01", b"WHOAMI\n", b"POST /"):
        assert not proxy.starts_like_proxy(data)
    assert proxy.starts_like_proxy(b"PROXY TCP4 ")
    assert proxy.starts_like_proxy(proxy.SIGNATURE[:5])
    assert parse(b"") is None
