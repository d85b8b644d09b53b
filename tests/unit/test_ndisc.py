"""proto.ndisc: the unsolicited neighbour advertisement (RFC 4861 §4.4, §7.2.6) sent on takeover
of an IPv6 address, judged against scapy's IPv6 / ICMPv6ND_NA / target link-layer option and
against scapy building the same frame (checksum included)."""
from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6NDOptDstLLAddr, IPv6, in6_chksum
from scapy.layers.l2 import Ether

from proto.ndisc import na_frame

MAC = bytes.fromhex("020000000a0b")
VIP6 = "2001:2:0:51::100"


def scapy_na(mac: str, address: str, router: int = 0) -> bytes:
    return bytes(Ether(dst="33:33:00:00:00:01", src=mac) /
                 IPv6(src=address, dst="ff02::1", hlim=255) /
                 ICMPv6ND_NA(R=router, S=0, O=1, tgt=address) / ICMPv6NDOptDstLLAddr(lladdr=mac))


def test_na_is_an_unsolicited_override_to_all_nodes_scapy_agrees_with():
    raw = na_frame(MAC, VIP6)
    f = Ether(raw)
    assert (f.dst, f.src, f.type) == ("33:33:00:00:00:01", "02:00:00:00:0a:0b", 0x86DD)
    ip = f[IPv6]
    assert (ip.src, ip.dst, ip.hlim, ip.nh, ip.plen) == (VIP6, "ff02::1", 255, 58, 32)
    na = f[ICMPv6ND_NA]
    assert (na.type, na.code, na.R, na.S, na.O, na.tgt) == (136, 0, 0, 0, 1, VIP6)
    assert f[ICMPv6NDOptDstLLAddr].lladdr == "02:00:00:00:0a:0b"
    # the checksum: scapy's sum over the pseudo-header and the message is 0 for a valid one
    assert in6_chksum(58, ip, bytes(ip.payload)) == 0
    assert len(raw) == 14 + 40 + 32


def test_byte_identical_to_scapy_with_and_without_the_router_flag():
    assert na_frame(MAC, VIP6) == scapy_na("02:00:00:00:0a:0b", VIP6)
    assert na_frame(MAC, VIP6, router=True) == scapy_na("02:00:00:00:0a:0b", VIP6, router=1)
    assert Ether(na_frame(MAC, VIP6, router=True))[ICMPv6ND_NA].R == 1


def test_link_local_target_and_zone():
    assert na_frame(MAC, "fe80::1%eth0") == scapy_na("02:00:00:00:0a:0b", "fe80::1")


@pytest.mark.parametrize("mac,address", [
    (MAC[:5], VIP6), (MAC + b"\0", VIP6), (MAC, "198.18.0.100"), (MAC, "ff02::1"), (MAC, "::"),
    (MAC, "not-an-address"),
])
def test_bad_input_is_a_clear_error(mac, address):
    with pytest.raises(ValueError):
        na_frame(mac, address)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=6, max_size=6),
       st.integers(1, 2**128 - 1).map(ipaddress.IPv6Address).filter(lambda a: not a.is_multicast))
def test_any_address_and_mac_match_scapy(mac, address):
    text = ":".join(f"{b:02x}" for b in mac)
    assert na_frame(mac, str(address)) == scapy_na(text, str(address))
