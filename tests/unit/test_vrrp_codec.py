"""proto.vrrp: the VRRPv3 codec against the bytes keepalived 2.2.7 put on the wire, both checksum
forms, and every truncation / bit flip of an advert rejected."""
from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from proto import vrrp as V
from proto.checksum import pseudo_header_sum
from proto.vrrp import Advert, VrrpError, decode, encode

# keepalived 2.2.7, VRID 51, priority 150, one address, 10 cs, from 198.18.0.1 to 224.0.0.18
WIRE = bytes.fromhex("31 33 96 01 00 0a cb a7 c6 12 00 64")
SRC, GROUP, PEER = "198.18.0.1", "224.0.0.18", "198.18.0.2"
VIP = "198.18.0.100"
REF = Advert(51, 150, 10, (VIP,))
# the VRRPv2 advert seen on the wire (auth none, 1 s, 8 zero bytes of auth data)
WIRE_V2 = bytes.fromhex("21 33 96 01 00 01 82 53 c6 12 00 64") + bytes(8)


def csum(b: bytes) -> int:
    return struct.unpack_from("!H", b, 6)[0]


def pseudo_sum(src: str, dst: str, length: int) -> int:
    return pseudo_header_sum(ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed,
                             112, length)


_AMBIGUOUS = {pow(2, j) % 0xFFFF for j in range(16)} | {(0xFFFF - pow(2, j)) % 0xFFFF for j in range(16)}


def forms_ambiguous(src: str, dst: str, length: int) -> bool:
    """True when one bit flip can turn a valid pseudo-form IPv4 message into a valid message-only
    one (or back): the pseudo-header sum is +/- a power of two modulo 0xffff."""
    return pseudo_sum(src, dst, length) % 0xFFFF in _AMBIGUOUS


# -- the bytes on the wire --------------------------------------------------------------------------

def test_decode_keepalived_advert():
    a = decode(WIRE, SRC, GROUP)
    assert a == REF
    assert (a.vrid, a.priority, a.max_adver_int_cs, a.addresses, a.version) == (51, 150, 10, (VIP,), 3)
    assert a.checksum_form == V.CSUM_PSEUDO


def test_encode_matches_keepalived_bytes_exactly():
    assert encode(REF, SRC, GROUP) == WIRE
    assert csum(WIRE) == 0xCBA7


def test_priority_zero_checksum():
    b = encode(Advert(51, 0, 10, (VIP,)), SRC, GROUP)
    assert csum(b) == 0x61A8
    assert b == bytes.fromhex("31 33 00 01 00 0a 61 a8 c6 12 00 64")
    assert decode(b, SRC, GROUP).priority == 0


def test_unicast_checksum_uses_peer_as_pseudo_header_dst():
    b = encode(REF, SRC, PEER)
    assert csum(b) == 0xE5A5
    assert decode(b, SRC, PEER).checksum_form == V.CSUM_PSEUDO
    # the same bytes do not check against the multicast group (old_unicast_checksum form)
    with pytest.raises(VrrpError) as ei:
        decode(b, SRC, GROUP)
    assert ei.value.reason == "bad_checksum"


def test_message_only_form_rfc9568_is_accepted_and_reported():
    b = encode(REF, SRC, GROUP, checksum_form=V.CSUM_MESSAGE)
    assert csum(b) == 0x724A      # the recomputation in the reference
    a = decode(b, SRC, GROUP)
    assert a == REF and a.checksum_form == V.CSUM_MESSAGE
    # message-only does not depend on the addresses
    assert decode(b, "198.18.9.9", PEER).checksum_form == V.CSUM_MESSAGE


def test_default_send_form_is_pseudo_header():
    assert decode(encode(REF, SRC, GROUP), SRC, GROUP).checksum_form == V.CSUM_PSEUDO
    assert V.checksum_of(WIRE, SRC, GROUP) == 0xCBA7
    assert V.checksum_of(WIRE, SRC, GROUP, V.CSUM_MESSAGE) == 0x724A


def test_vrrpv2_wire_bytes():
    a = decode(WIRE_V2, SRC, GROUP)
    assert a == Advert(51, 150, 100, (VIP,), version=2)
    assert a.checksum_form == V.CSUM_MESSAGE
    assert encode(a, SRC, GROUP) == WIRE_V2


def test_rsvd_bits_ignored_on_receive():
    b = bytearray(encode(REF, SRC, GROUP))
    b[4] |= 0xF0
    b[6:8] = b"\0\0"
    struct.pack_into("!H", b, 6, V.checksum_of(bytes(b), SRC, GROUP))
    assert decode(bytes(b), SRC, GROUP) == REF


def test_count_zero_decodes_with_no_addresses():
    a = Advert(51, 100, 10, ())
    assert decode(encode(a, SRC, GROUP), SRC, GROUP).addresses == ()


def test_ipv6_round_trip_and_message_only_rejected():
    src, dst = "fe80::1", V.VRRP_GROUP6
    a = Advert(7, 200, 100, ("fe80::7", "2001:db8::7"))
    b = encode(a, src, dst)
    assert len(b) == 8 + 32
    assert decode(b, src, dst) == a
    m = bytearray(b)
    m[6:8] = b"\0\0"
    struct.pack_into("!H", m, 6, V.checksum_of(bytes(m), src, dst, V.CSUM_MESSAGE))
    with pytest.raises(VrrpError) as ei:
        decode(bytes(m), src, dst)
    assert ei.value.reason == "bad_checksum"


# -- rejections with their reasons -------------------------------------------------------------------

def reason(payload, src=SRC, dst=GROUP) -> str:
    with pytest.raises(VrrpError) as ei:
        decode(payload, src, dst)
    return ei.value.reason


def test_reasons():
    assert reason(WIRE[:7]) == "truncated"
    assert reason(WIRE[:11]) == "truncated"
    assert reason(WIRE + b"\0") == "count_mismatch"
    assert reason(bytes([0x41]) + WIRE[1:]) == "bad_version"
    assert reason(bytes([0x32]) + WIRE[1:]) == "bad_type"
    assert reason(WIRE[:6] + b"\0\0" + WIRE[8:]) == "bad_checksum"
    assert reason(WIRE[:3] + b"\x02" + WIRE[4:]) == "truncated"      # count says 2, 1 present
    assert reason(WIRE, "not-an-address", GROUP) == "bad_address"
    assert reason(WIRE, SRC, "ff02::12") == "bad_address"
    assert reason(WIRE_V2, "fe80::1", "ff02::12") == "bad_version"   # v2 is IPv4 only
    assert reason(None) == "malformed"
    assert reason(WIRE, None, GROUP) == "bad_address"
    assert reason(12345) in V.REASONS


def test_error_carries_reason_and_detail():
    with pytest.raises(VrrpError) as ei:
        decode(WIRE[:6] + b"\0\0" + WIRE[8:], SRC, GROUP)
    assert ei.value.reason == "bad_checksum" and "198.18.0.1" in str(ei.value)
    assert isinstance(ei.value, ValueError)


def test_encode_rejects_bad_fields():
    for bad in (Advert(0, 100, 10, (VIP,)), Advert(256, 100, 10, (VIP,)), Advert(1, 256, 10, (VIP,)),
                Advert(1, 100, 0, (VIP,)), Advert(1, 100, 4096, (VIP,)), Advert(1, 100, 10, (VIP,), 4),
                Advert(1, 100, 150, (VIP,), 2), Advert(1, 100, 10, ("fe80::1",)),
                Advert(1, 100, 10, (VIP,) * 256)):
        with pytest.raises(ValueError):
            encode(bad, SRC, GROUP)
    with pytest.raises(ValueError):
        encode(REF, SRC, "ff02::12")
    with pytest.raises(ValueError):
        encode(REF, SRC, GROUP, checksum_form="bogus")
    with pytest.raises(ValueError):
        encode(Advert(1, 100, 100, (VIP,), 2), SRC, GROUP, checksum_form=V.CSUM_PSEUDO)


# -- exhaustive over one advert ------------------------------------------------------------------------

EXHAUSTIVE = [
    (WIRE, SRC, GROUP),
    (encode(Advert(51, 0, 10, (VIP,)), SRC, GROUP), SRC, GROUP),
    (encode(REF, SRC, PEER), SRC, PEER),
    (encode(REF, SRC, GROUP, checksum_form=V.CSUM_MESSAGE), SRC, GROUP),
    (encode(Advert(200, 254, 4095, ("198.18.250.100", "198.18.250.101", "198.19.0.1")),
            "198.18.250.2", GROUP), "198.18.250.2", GROUP),
    (WIRE_V2, SRC, GROUP),
    (encode(Advert(9, 100, 1, ("fe80::9", "2001:db8::9")), "fe80::2", V.VRRP_GROUP6),
     "fe80::2", V.VRRP_GROUP6),
]


@pytest.mark.parametrize("payload,src,dst", EXHAUSTIVE)
def test_every_truncation_and_extension_rejected(payload, src, dst):
    decode(payload, src, dst)
    for n in range(len(payload)):
        with pytest.raises(VrrpError):
            decode(payload[:n], src, dst)
    for extra in (b"\0", b"\0\0", b"\0" * 4, b"\xff" * 16):
        with pytest.raises(VrrpError):
            decode(payload + extra, src, dst)


@pytest.mark.parametrize("payload,src,dst", EXHAUSTIVE)
def test_every_single_bit_flip_rejected(payload, src, dst):
    # the exhaustive claim needs these addresses to be free of the two-form ambiguity
    assert not forms_ambiguous(src, dst, len(payload))
    for i in range(len(payload)):
        for bit in range(8):
            b = bytearray(payload)
            b[i] ^= 1 << bit
            with pytest.raises(VrrpError):
                decode(bytes(b), src, dst)


def test_the_documented_two_form_blind_spot():
    """Accepting both forms lets exactly the predicted flips through: find a destination whose
    pseudo-header sum is a power of two mod 0xffff and check that some single flip then decodes,
    in the other form (this is why the exhaustive tests first assert the addresses are clear)."""
    for last in range(1, 65536):
        dst = str(ipaddress.IPv4Address(int(ipaddress.IPv4Address("198.18.0.0")) + last))
        if forms_ambiguous(SRC, dst, 12):
            break
    else:
        pytest.fail("no ambiguous destination found")
    good = encode(REF, SRC, dst)
    passed = []
    for i in range(len(good)):
        for bit in range(8):
            b = bytearray(good)
            b[i] ^= 1 << bit
            try:
                passed.append(decode(bytes(b), SRC, dst).checksum_form)
            except VrrpError:
                pass
    assert passed and set(passed) == {V.CSUM_MESSAGE}


# -- properties -------------------------------------------------------------------------------------------

v4 = st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
v6 = st.integers(0, 2**128 - 1).map(lambda n: str(ipaddress.IPv6Address(n)))


@st.composite
def adverts(draw):
    fam = draw(st.sampled_from([4, 6]))
    addr = v4 if fam == 4 else v6
    version = 3 if fam == 6 else draw(st.sampled_from([2, 3]))
    n = draw(st.integers(0, 12))
    if version == 3:
        interval = draw(st.integers(1, 4095))
    else:
        interval = 100 * draw(st.integers(1, 255))
    a = Advert(draw(st.integers(1, 255)), draw(st.integers(0, 255)), interval,
               tuple(draw(st.lists(addr, min_size=n, max_size=n))), version)
    src, dst = draw(addr), draw(addr)
    form = None
    if version == 3 and fam == 4:
        form = draw(st.sampled_from([V.CSUM_PSEUDO, V.CSUM_MESSAGE]))
    return a, src, dst, form


@settings(max_examples=300, deadline=None)
@given(adverts())
def test_round_trip(case):
    a, src, dst, form = case
    b = encode(a, src, dst, checksum_form=form)
    got = decode(b, src, dst)
    assert got == a
    assert got.checksum_form == (form or (V.CSUM_PSEUDO if a.version == 3 else V.CSUM_MESSAGE))
    assert encode(got, src, dst, checksum_form=got.checksum_form) == b


@settings(max_examples=300, deadline=None)
@given(adverts(), st.data())
def test_any_truncation_rejected(case, data):
    a, src, dst, form = case
    b = encode(a, src, dst, checksum_form=form)
    n = data.draw(st.integers(0, len(b) - 1))
    with pytest.raises(VrrpError):
        decode(b[:n], src, dst)


@settings(max_examples=500, deadline=None)
@given(adverts(), st.data())
def test_any_bit_flip_rejected(case, data):
    a, src, dst, form = case
    b = bytearray(encode(a, src, dst, checksum_form=form))
    i = data.draw(st.integers(0, len(b) - 1))
    bit = data.draw(st.integers(0, 7))
    b[i] ^= 1 << bit
    try:
        got = decode(bytes(b), src, dst)
    except VrrpError:
        return
    # Only possible by accepting two checksum forms: the flipped packet checks in the other form,
    # which needs the pseudo-header sum to be +/- a power of two (see proto.vrrp's docstring).
    assert a.version == 3 and ":" not in src
    assert got.checksum_form != (form or V.CSUM_PSEUDO)
    assert forms_ambiguous(src, dst, len(b))


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=80), st.one_of(v4, v6, st.text(max_size=5)), st.one_of(v4, v6, st.none()))
def test_nothing_but_vrrperror_escapes(payload, src, dst):
    try:
        a = decode(payload, src, dst)
    except VrrpError as exc:
        assert exc.reason in V.REASONS
        return
    assert isinstance(a, Advert)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=8, max_size=48), v4, v4)
def test_random_messages_with_fixed_checksum_are_consistent(body, src, dst):
    """Random bytes made well-formed (v3, type 1, matching count, pseudo checksum) always decode."""
    b = bytearray(body)
    b[0] = 0x31
    n = (len(b) - 8) // 4
    del b[8 + 4 * n:]
    b[3] = n
    b[6:8] = b"\0\0"
    struct.pack_into("!H", b, 6, V.checksum_of(bytes(b), src, dst))
    a = decode(bytes(b), src, dst)
    assert len(a.addresses) == n and a.max_adver_int_cs == ((b[4] << 8 | b[5]) & 0x0FFF)
    assume(a.max_adver_int_cs >= 1 and a.vrid >= 1)   # decode leaves the VRID to the state machine
    assert decode(encode(a, src, dst), src, dst) == a
