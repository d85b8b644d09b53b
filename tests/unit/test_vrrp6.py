"""proto.vrrp over IPv6 (RFC 5798 §5.1.2, §5.2.8): VRRPv3 adverts from a link-local source to
ff02::12, 16-byte addresses, the checksum over the IPv6 pseudo-header (RFC 8200 §8.1, next header
112), judged against scapy's VRRPv3 layer under an IPv6 header as the independent oracle."""
from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet6 import IPv6, in6_chksum
from scapy.layers.vrrp import VRRPv3

from proto import vrrp as V
from proto.vrrp import Advert, VrrpError, decode, encode

SRC, PEER, GROUP = "fe80::a", "fe80::b", V.VRRP_GROUP6
VIPS = ("fe80::1:51", "2001:2:0:51::100", "2001:2:0:51::101")
REF = Advert(51, 150, 10, VIPS)


def scapy_advert(a: Advert, src: str, dst: str, **over) -> bytes:
    """The VRRP message scapy builds for `a` under IPv6(src, dst), checksum computed by scapy."""
    pkt = IPv6(src=src, dst=dst, hlim=255) / VRRPv3(
        vrid=a.vrid, priority=a.priority, adv=a.max_adver_int_cs, addrlist=list(a.addresses), **over)
    return bytes(IPv6(bytes(pkt))[VRRPv3])


def resealed(msg: bytes, first: int, src: str = SRC, dst: str = GROUP) -> bytes:
    """msg with byte 0 replaced and the checksum recomputed by scapy's in6_chksum."""
    b = bytes([first]) + msg[1:6] + b"\0\0" + msg[8:]
    ck = in6_chksum(V.IPPROTO_VRRP, IPv6(src=src, dst=dst), b)
    return b[:6] + ck.to_bytes(2, "big") + b[8:]


def test_encode_is_byte_identical_to_scapy():
    ours = encode(REF, SRC, GROUP)
    assert ours == scapy_advert(REF, SRC, GROUP)
    assert len(ours) == 8 + 16 * len(VIPS)
    # scapy's own verification: the pseudo-header sum over a valid message is 0
    assert in6_chksum(V.IPPROTO_VRRP, IPv6(src=SRC, dst=GROUP), ours) == 0


def test_decode_reads_what_scapy_built():
    wire = scapy_advert(REF, SRC, GROUP)
    got = decode(wire, SRC, GROUP)
    assert got == REF and got.checksum_form == V.CSUM_PSEUDO
    parsed = IPv6(src=SRC, dst=GROUP, nh=112) / VRRPv3(wire)
    parsed = IPv6(bytes(parsed))[VRRPv3]
    assert [str(ipaddress.ip_address(x)) for x in parsed.addrlist] == list(got.addresses)
    assert (parsed.vrid, parsed.priority, parsed.adv) == (51, 150, 10)


def test_unicast_pseudo_header_uses_the_peer():
    ours = encode(REF, SRC, PEER)
    assert ours == scapy_advert(REF, SRC, PEER)
    assert ours != encode(REF, SRC, GROUP)
    assert decode(ours, SRC, PEER) == REF


@pytest.mark.parametrize("src,dst", [(PEER, GROUP), (SRC, "ff02::1"), ("2001:2::a", GROUP)])
def test_checksum_covers_source_and_destination(src, dst):
    """A message checksummed for (fe80::a, ff02::12) is not valid from another source or to
    another destination: the pseudo-header is in the sum."""
    with pytest.raises(VrrpError) as ei:
        decode(scapy_advert(REF, SRC, GROUP), src, dst)
    assert ei.value.reason == "bad_checksum"


def test_rsvd_bits_ignored_and_priority_zero():
    wire = scapy_advert(REF, SRC, GROUP, res=0xF)
    assert decode(wire, SRC, GROUP) == REF
    zero = Advert(51, 0, 10, VIPS)
    assert encode(zero, SRC, GROUP) == scapy_advert(zero, SRC, GROUP)


def test_malformed_ipv6_messages_give_their_reason():
    wire = scapy_advert(REF, SRC, GROUP)
    assert decode(resealed(wire, 0x31), SRC, GROUP) == REF    # resealing alone keeps it valid
    cases = {
        "truncated": [wire[:7], wire[:-1], wire[:8 + 16]],
        "count_mismatch": [wire + b"\0" * 16],
        "bad_checksum": [wire[:6] + b"\0\0" + wire[8:]],
        "bad_version": [resealed(wire, 0x21), resealed(wire, 0x41)],    # VRRPv2 is IPv4 only
        "bad_type": [resealed(wire, 0x32)],
    }
    for reason, payloads in cases.items():
        for p in payloads:
            with pytest.raises(VrrpError) as ei:
                decode(p, SRC, GROUP)
            assert ei.value.reason == reason, (reason, p.hex())
    for src, dst in ((SRC, "224.0.0.18"), ("198.18.0.1", GROUP), ("fe80::zz", GROUP)):
        with pytest.raises(VrrpError) as ei:
            decode(wire, src, dst)
        assert ei.value.reason == "bad_address"


def test_encode_refuses_mixed_families_and_other_checksum_forms():
    with pytest.raises(ValueError, match="family"):
        encode(Advert(51, 150, 10, ("198.18.0.100",)), SRC, GROUP)
    with pytest.raises(ValueError, match="family"):
        encode(REF, SRC, "224.0.0.18")
    with pytest.raises(ValueError, match="pseudo-header"):
        encode(REF, SRC, GROUP, checksum_form=V.CSUM_MESSAGE)


v6 = st.integers(0, 2**128 - 1).map(lambda n: str(ipaddress.IPv6Address(n)))


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 255), st.integers(0, 255), st.integers(1, 4095),
       st.lists(v6, min_size=0, max_size=8), v6, v6)
def test_any_ipv6_advert_matches_scapy(vrid, prio, interval, addrs, src, dst):
    a = Advert(vrid, prio, interval, tuple(addrs))
    ours = encode(a, src, dst)
    assert ours == scapy_advert(a, src, dst)
    assert decode(ours, src, dst) == a
