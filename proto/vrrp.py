"""VRRP advertisement codec (RFC 5798 VRRPv3; RFC 3768 VRRPv2 for completeness).  Pure: no I/O.

VRRPv3 message (RFC 5798 §5.2), carried directly in IP protocol 112:

    byte 0      version (high nibble) = 3 | type (low nibble) = 1 (ADVERTISEMENT)
    byte 1      VRID
    byte 2      priority (0 = the master stops, 255 = address owner)
    byte 3      count of addresses that follow
    bytes 4-5   rsvd (top 4 bits, 0 on send, ignored on receive) | Max Adver Int (12 bits, centiseconds)
    bytes 6-7   checksum
    bytes 8..   addresses, 4 bytes each (IPv4) or 16 bytes each (IPv6)

VRRPv2 (RFC 3768 §5.3) differs: byte 4 is the auth type (0), byte 5 the advert interval in whole
*seconds*, the checksum never has a pseudo-header, and 8 bytes of authentication data follow the
addresses.  `Advert.max_adver_int_cs` is in centiseconds for both versions (v2: seconds x 100).

Checksum forms (`Advert.checksum_form`):

* ``"pseudo"`` ([CSUM_PSEUDO]) -- the one's complement sum also covers a pseudo-header.  IPv4:
  ``src | dst | 0 | 112 | length(16)``, dst being 224.0.0.18 or the unicast peer, as keepalived 2.2.7
  sends and *requires* (RFC 5798 §5.2.8 read literally).  IPv6: the RFC 2460/8200 pseudo-header.
  `encode` always produces this form for v3 (it is the only one keepalived 2.2.7 accepts).
* ``"message"`` ([CSUM_MESSAGE]) -- over the VRRP message only: the RFC 9568 form for IPv4 v3 (what
  Cisco/Juniper and keepalived >= 2.2.8 with ``v3_checksum_as_v2`` send), and the only form of v2.

`decode` accepts both forms for IPv4 VRRPv3 (and reports which one matched), only the pseudo form
for IPv6, only the message form for v2.  Accepting two forms costs a little error detection: a single
bit flip that changes the message's sum by exactly +/- the pseudo-header's sum turns a valid
pseudo-form packet into a valid message-form one.  That needs the pseudo-header sum to be a power of
two (or its negative) modulo 0xffff; it is not for the addresses used in the tests.

`decode` raises `VrrpError` and nothing else whatever it is given.  Order of checks: length of the
fixed header (``truncated``), version (``bad_version``), type (``bad_type``), the address bytes
against the count (``truncated`` when fewer, ``count_mismatch`` when more), checksum
(``bad_checksum``).  src and dst that are not addresses of one family give ``bad_address``.
Semantic checks (VRID, TTL, the address list, who sent it) belong to the state machine.
"""
from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

from proto.checksum import fold, ones_sum, pseudo_header_sum

__all__ = [
    "IPPROTO_VRRP", "VRRP_GROUP4", "VRRP_GROUP6", "TYPE_ADVERTISEMENT", "CSUM_PSEUDO", "CSUM_MESSAGE",
    "REASONS", "VrrpError", "Advert", "encode", "decode", "checksum_of",
]

IPPROTO_VRRP = 112
VRRP_GROUP4 = "224.0.0.18"
VRRP_GROUP6 = "ff02::12"
TYPE_ADVERTISEMENT = 1
CSUM_PSEUDO = "pseudo"
CSUM_MESSAGE = "message"
V2_AUTH_LEN = 8

REASONS = ("truncated", "bad_version", "bad_type", "count_mismatch", "bad_checksum", "bad_address",
           "malformed")

_HDR = struct.Struct("!BBBBHH")


class VrrpError(ValueError):
    """A VRRP message that cannot be used; `reason` is one of REASONS, `detail` says more."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass(frozen=True)
class Advert:
    """One advertisement.  addresses are canonical text forms (``ipaddress`` str()).
    checksum_form is set by `decode` (CSUM_PSEUDO or CSUM_MESSAGE) and ignored by ==."""

    vrid: int
    priority: int
    max_adver_int_cs: int
    addresses: tuple[str, ...]
    version: int = 3
    checksum_form: str = field(default="", compare=False)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def _pseudo_sum(src: bytes, dst: bytes, length: int) -> int:
    return pseudo_header_sum(src, dst, IPPROTO_VRRP, length)


def checksum_of(message: bytes | bytearray, src: str, dst: str, form: str = CSUM_PSEUDO) -> int:
    """The checksum `message` (its checksum field zeroed or not: it is zeroed here) should carry."""
    m = bytearray(message)
    m[6:8] = b"\0\0"
    s = ones_sum(m)
    if form == CSUM_PSEUDO:
        s = fold(s + _pseudo_sum(_ip(src).packed, _ip(dst).packed, len(m)))
    elif form != CSUM_MESSAGE:
        raise ValueError(f"unknown checksum form {form!r}")
    return ~s & 0xFFFF


def encode(advert: Advert, src: str, dst: str, checksum_form: str | None = None) -> bytes:
    """The VRRP message (no IP header) for advert sent from src to dst.

    checksum_form defaults to CSUM_PSEUDO for v3 (keepalived 2.2.7's form; IPv6 always) and is
    CSUM_MESSAGE for v2.  CSUM_MESSAGE on IPv4 v3 gives the RFC 9568 form.  Bad fields raise
    ValueError."""
    a = advert
    if a.version not in (2, 3):
        raise ValueError(f"version must be 2 or 3, not {a.version}")
    if not 1 <= a.vrid <= 255:
        raise ValueError(f"vrid must be 1..255, not {a.vrid}")
    if not 0 <= a.priority <= 255:
        raise ValueError(f"priority must be 0..255, not {a.priority}")
    if not 0 <= len(a.addresses) <= 255:
        raise ValueError("at most 255 addresses")
    s, d = _ip(src), _ip(dst)
    if s.version != d.version:
        raise ValueError("src and dst must be of one family")
    addrs = [_ip(x) for x in a.addresses]
    if any(x.version != s.version for x in addrs):
        raise ValueError("the addresses must be of the family of src/dst")
    if a.version == 3:
        if not 1 <= a.max_adver_int_cs <= 0x0FFF:
            raise ValueError(f"max_adver_int_cs must be 1..4095, not {a.max_adver_int_cs}")
        word = a.max_adver_int_cs
        form = CSUM_PSEUDO if checksum_form is None else checksum_form
        if s.version == 6 and form != CSUM_PSEUDO:
            raise ValueError("IPv6 VRRP always uses the pseudo-header checksum")
        trailer = b""
    else:
        if s.version != 4:
            raise ValueError("VRRPv2 is IPv4 only")
        secs, rem = divmod(a.max_adver_int_cs, 100)
        if rem or not 1 <= secs <= 255:
            raise ValueError("a VRRPv2 interval is 1..255 whole seconds")
        word = secs  # auth type 0 in the high byte, interval (s) in the low byte
        form = CSUM_MESSAGE if checksum_form is None else checksum_form
        if form != CSUM_MESSAGE:
            raise ValueError("the VRRPv2 checksum has no pseudo-header")
        trailer = b"\0" * V2_AUTH_LEN
    msg = bytearray(_HDR.pack((a.version << 4) | TYPE_ADVERTISEMENT, a.vrid, a.priority,
                              len(addrs), word, 0))
    for x in addrs:
        msg += x.packed
    msg += trailer
    struct.pack_into("!H", msg, 6, checksum_of(msg, src, dst, form))
    return bytes(msg)


def _verify(msg: bytes, s: bytes, d: bytes, form: str) -> bool:
    total = ones_sum(msg)
    if form == CSUM_PSEUDO:
        total = fold(total + _pseudo_sum(s, d, len(msg)))
    return total == 0xFFFF


def decode(payload: bytes, src: str, dst: str) -> Advert:
    """Parse and check one VRRP message (the IP payload) received from src for dst."""
    try:
        return _decode(payload, src, dst)
    except VrrpError:
        raise
    except Exception as exc:  # anything unforeseen is still a VrrpError to the caller
        raise VrrpError("malformed", repr(exc)) from None


def _decode(payload: bytes, src: str, dst: str) -> Advert:
    try:
        s, d = _ip(src), _ip(dst)
    except (TypeError, ValueError) as exc:
        raise VrrpError("bad_address", str(exc)) from None
    if s.version != d.version:
        raise VrrpError("bad_address", f"src {src} and dst {dst} are of different families")
    try:
        msg = bytes(payload)
    except TypeError as exc:
        raise VrrpError("malformed", f"payload is not bytes: {exc}") from None
    if len(msg) < _HDR.size:
        raise VrrpError("truncated", f"{len(msg)} bytes, the fixed header is {_HDR.size}")
    vt, vrid, prio, count, word, _csum = _HDR.unpack_from(msg)
    version, typ = vt >> 4, vt & 0x0F
    if version not in (2, 3) or (version == 2 and s.version != 4):
        raise VrrpError("bad_version", f"version {version}")
    if typ != TYPE_ADVERTISEMENT:
        raise VrrpError("bad_type", f"type {typ}")
    alen = 4 if s.version == 4 else 16
    trailer = V2_AUTH_LEN if version == 2 else 0
    want = _HDR.size + count * alen + trailer
    if len(msg) < want:
        raise VrrpError("truncated", f"{len(msg)} bytes, count {count} needs {want}")
    if len(msg) > want:
        raise VrrpError("count_mismatch", f"count {count} needs {want} bytes, got {len(msg)}")
    sb, db = s.packed, d.packed
    if version == 3:
        forms = (CSUM_PSEUDO, CSUM_MESSAGE) if s.version == 4 else (CSUM_PSEUDO,)
    else:
        forms = (CSUM_MESSAGE,)
    for form in forms:
        if _verify(msg, sb, db, form):
            break
    else:
        raise VrrpError("bad_checksum", f"checksum 0x{_csum:04x} from {src} to {dst}")
    if version == 3:
        interval = word & 0x0FFF
    else:
        interval = (word & 0xFF) * 100  # byte 4 (auth type) is not checked: RFC 3768 auth is gone
    cls = ipaddress.IPv4Address if alen == 4 else ipaddress.IPv6Address
    addrs = tuple(str(cls(msg[i:i + alen])) for i in range(_HDR.size, _HDR.size + count * alen, alen))
    return Advert(vrid, prio, interval, addrs, version, checksum_form=form)
