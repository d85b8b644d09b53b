"""Internet checksum arithmetic (RFC 1071, RFC 1624) for the per-packet path.

A *sum* (ones_sum, delta, pseudo_header_sum, fold) is a 16-bit one's
complement sum, folded but not inverted, in 0..0xffff.  A *checksum* is the
inverted sum, as carried on the wire.

Sums are computed with the identity 0x10000 == 1 (mod 0xffff): a buffer read
as one big-endian integer N = sum(w_i * 0x10000**i) is congruent to the sum of
its 16-bit words, so N % 0xffff is their one's complement sum.  int.from_bytes
and the modulo by a one-limb divisor both run in C over the whole buffer;
measured on CPython 3.11 this is 3x faster than array('H') + byteswap + sum()
(0.24 vs 0.70 us at 60 bytes, 2.8 vs 8.5 us at 1500 bytes) and needs no
padding copy for odd lengths.

The only care needed is the representation of zero.  End-around-carry
addition of words that are not all zero never produces 0x0000, so a non-zero
total whose residue is 0 is 0xffff ("-0"); only all-zero input sums to 0x0000.
fold() encodes exactly that, so the results here are bit-identical to the
word-by-word RFC 1071 loop, not merely congruent to it.
"""
from __future__ import annotations

__all__ = ["ones_sum", "checksum", "delta", "update", "pseudo_header_sum", "fold"]

_M = 0xFFFF
_INVERT = bytes(range(255, -1, -1))


def fold(n: int) -> int:
    """Reduce a non-negative integer sum of 16-bit words to its folded one's complement sum."""
    return (n - 1) % _M + 1 if n else 0


def ones_sum(data: bytes | bytearray | memoryview) -> int:
    """16-bit one's complement sum of the big-endian words of data (odd length: zero-padded)."""
    n = int.from_bytes(data, "big")
    if len(data) & 1:
        n <<= 8
    return (n - 1) % _M + 1 if n else 0


def checksum(data: bytes | bytearray | memoryview) -> int:
    """The Internet checksum of data (RFC 1071)."""
    n = int.from_bytes(data, "big")
    if len(data) & 1:
        n <<= 8
    return ~((n - 1) % _M + 1 if n else 0) & _M


def delta(old: bytes | bytearray, new: bytes | bytearray) -> int:
    """Sum of ~m + m' over the words of old (m) and new (m'), for update().

    Several changed fields can be concatenated into one call (they need not
    be adjacent in the packet: addition is commutative), so a NAT rewrite's
    whole effect on a checksum is one precomputed number.
    """
    if len(old) != len(new) or len(old) & 1:
        raise ValueError("delta needs two byte strings of the same even length")
    return ones_sum(bytes(old).translate(_INVERT) + bytes(new))


def update(csum: int, d: int) -> int:
    """RFC 1624 eqn 3: HC' = ~(~HC + d), d a folded sum such as delta() returns.

    Eqn 3 rather than RFC 1141's HC + m + ~m' because the latter can yield
    0xffff where a full recomputation gives 0x0000.  With a correct HC (never
    0xffff for real headers) and d in 1..0xffff the result is bit-identical to
    recomputing from scratch.
    """
    s = (~csum & _M) + d
    s = (s & _M) + (s >> 16)
    return ~s & _M


def pseudo_header_sum(src: bytes, dst: bytes, proto: int, length: int) -> int:
    """Folded sum of the TCP/UDP/ICMPv6 pseudo-header (RFC 793/768 for IPv4, RFC 8200 8.1 for IPv6).

    The layouts differ (IPv4: zero byte + proto, 16-bit length; IPv6: 32-bit
    length, three zero bytes + proto) but zero words add nothing and a 32-bit
    length is congruent to the sum of its two halves, so both reduce to the
    same integer sum.
    """
    if len(src) != len(dst) or len(src) not in (4, 16):
        raise ValueError("pseudo_header_sum needs two 4-byte or two 16-byte addresses")
    n = int.from_bytes(src, "big") + int.from_bytes(dst, "big") + proto + length
    return (n - 1) % _M + 1 if n else 0
