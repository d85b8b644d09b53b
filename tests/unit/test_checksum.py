"""proto.checksum against scapy's checksum and against the RFC 1071 word loop."""
import struct

import pytest
from hypothesis import given, settings, strategies as st
from scapy.utils import checksum as scapy_checksum

from proto.checksum import checksum, delta, fold, ones_sum, pseudo_header_sum, update


def ref_ones_sum(data: bytes) -> int:
    """RFC 1071 word-by-word end-around-carry sum, the definition ones_sum must match bit for bit."""
    if len(data) & 1:
        data += b"\0"
    s = 0
    for (w,) in struct.iter_unpack("!H", data):
        s += w
        s = (s & 0xFFFF) + (s >> 16)
    return s


FAST = settings(max_examples=300, deadline=None)


@FAST
@given(st.binary(max_size=1600))
def test_checksum_matches_scapy(data):
    assert checksum(data) == scapy_checksum(data)


@FAST
@given(st.binary(max_size=300))
def test_ones_sum_is_the_rfc1071_loop(data):
    assert ones_sum(data) == ref_ones_sum(data)
    assert ones_sum(bytearray(data)) == ones_sum(memoryview(data)) == ones_sum(data)


@pytest.mark.parametrize("data, expected", [
    (b"", 0),
    (b"\0\0\0", 0),
    (b"\xff\xff", 0xFFFF),
    (b"\xff\xff\xff\xff", 0xFFFF),      # -0 + -0 stays -0, never folds to +0
    (b"\x00\x01\xff\xfe", 0xFFFF),      # non-zero words summing to 0xffff
    (b"\x80\x00\x80\x00", 0x0001),      # carry wraps around
    (b"\x01", 0x0100),                  # odd byte is the high half of a zero-padded word
])
def test_ones_sum_edges(data, expected):
    assert ones_sum(data) == expected


def test_rfc1071_example():
    # RFC 1071 section 3 worked example: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2.
    data = bytes.fromhex("0001f203f4f5f6f7")
    assert ones_sum(data) == 0xDDF2
    assert checksum(data) == 0x220D


def test_known_ipv4_header():
    # Header from Wikipedia's IPv4 checksum example; checksum field b861.
    hdr = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")
    assert checksum(hdr) == 0xB861
    assert checksum(hdr[:10] + b"\xb8\x61" + hdr[12:]) == 0


@FAST
@given(st.integers(min_value=0, max_value=1 << 200))
def test_fold_matches_word_sum(n):
    words = n.to_bytes((n.bit_length() + 15) // 16 * 2 or 2, "big")
    assert fold(n) == ref_ones_sum(words)


@FAST
@given(st.integers(0, 10).flatmap(lambda n: st.tuples(st.binary(min_size=2 * n, max_size=2 * n),
                                                      st.binary(min_size=2 * n, max_size=2 * n))))
def test_delta_is_sum_of_complemented_old_and_new(pair):
    old, new = pair
    words = [0xFFFF - w for (w,) in struct.iter_unpack("!H", old)] + [w for (w,) in struct.iter_unpack("!H", new)]
    assert delta(old, new) == ref_ones_sum(b"".join(struct.pack("!H", w) for w in words))


def test_delta_rejects_bad_lengths():
    with pytest.raises(ValueError):
        delta(b"\0\0", b"\0\0\0\0")
    with pytest.raises(ValueError):
        delta(b"\0", b"\0")


# A "header": 2 to 30 words, containing a checksum field at an even offset,
# of which some words are then replaced.
@st.composite
def header_and_change(draw):
    nwords = draw(st.integers(2, 30))
    hdr = bytearray(draw(st.binary(min_size=2 * nwords, max_size=2 * nwords)))
    ci = 2 * draw(st.integers(0, nwords - 1))
    hdr[ci:ci + 2] = b"\0\0"
    if not any(hdr):
        hdr[ci - 2 if ci else ci + 2] = 1     # all-zero data has no +0/-0 ambiguity worth testing here
    hdr[ci:ci + 2] = struct.pack("!H", checksum(hdr))
    others = [i for i in range(nwords) if 2 * i != ci]
    changed = draw(st.lists(st.sampled_from(others), unique=True, max_size=len(others)))
    new = bytearray(hdr)
    for i in changed:
        new[2 * i:2 * i + 2] = draw(st.binary(min_size=2, max_size=2))
    return bytes(hdr), bytes(new), ci, changed


@settings(max_examples=500, deadline=None)
@given(header_and_change())
def test_incremental_update_equals_recomputation(case):
    hdr, new, ci, changed = case
    old_words = b"".join(hdr[2 * i:2 * i + 2] for i in changed)
    new_words = b"".join(new[2 * i:2 * i + 2] for i in changed)
    hc = struct.unpack_from("!H", hdr, ci)[0]
    hc2 = update(hc, delta(old_words, new_words))
    zeroed = new[:ci] + b"\0\0" + new[ci + 2:]
    if any(zeroed):     # all-zero data is the one case a correct checksum cannot describe
        assert hc2 == checksum(zeroed)
        assert ones_sum(new[:ci] + struct.pack("!H", hc2) + new[ci + 2:]) == 0xFFFF


def test_rfc1624_minus_zero_corner():
    # RFC 1624 section 4: header sums to 0xcd7a except one word 0x5555 that
    # becomes 0x3285; recomputation gives HC' = 0x0000.  Eqn 2 (RFC 1141)
    # gives the 0xffff "-0"; eqn 3 must give +0.
    hc = ~fold(0xCD7A + 0x5555) & 0xFFFF
    assert hc == 0xDD2F
    d = delta(b"\x55\x55", b"\x32\x85")
    assert update(hc, d) == 0x0000
    eqn2 = hc + 0x5555 + (~0x3285 & 0xFFFF)
    while eqn2 >> 16:
        eqn2 = (eqn2 & 0xFFFF) + (eqn2 >> 16)
    assert eqn2 == 0xFFFF       # what eqn 3 avoids


def test_update_with_unchanged_fields_is_identity():
    # m == m' contributes 0xffff (-0): the checksum must not move, whether it is 0 or not.
    d = delta(b"\x12\x34\xab\xcd", b"\x12\x34\xab\xcd")
    assert d == 0xFFFF
    for hc in (0x0000, 0x1234, 0xFFFE):
        assert update(hc, d) == hc


@pytest.mark.parametrize("family, alen, layout", [
    (4, 4, lambda s, d, p, n: s + d + bytes((0, p)) + struct.pack("!H", n)),
    (6, 16, lambda s, d, p, n: s + d + struct.pack("!L", n) + bytes((0, 0, 0, p))),
])
@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_pseudo_header_sum(family, alen, layout, data):
    src = data.draw(st.binary(min_size=alen, max_size=alen))
    dst = data.draw(st.binary(min_size=alen, max_size=alen))
    proto = data.draw(st.sampled_from([6, 17, 58, 1, 0, 255]))
    length = data.draw(st.integers(0, 0xFFFF if family == 4 else 0xFFFFFFFF))
    assert pseudo_header_sum(src, dst, proto, length) == ref_ones_sum(layout(src, dst, proto, length))


def test_pseudo_header_rejects_mixed_families():
    with pytest.raises(ValueError):
        pseudo_header_sum(b"\0" * 4, b"\0" * 16, 6, 20)
