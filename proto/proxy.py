"""The PROXY protocol (HAProxy's spec, versions 1 and 2): encode and parse headers.

A PROXY header is what a proxy writes in front of the first byte of a stream
so the server behind it learns the original client's address.  Version 1 is
one line of text (`PROXY TCP4 <src> <dst> <sport> <dport>\\r\\n`, at most 107
bytes); version 2 is binary: a 12-byte signature, a version/command byte, a
family/transport byte, a 16-bit length and then the addresses (12 bytes for
IPv4, 36 for IPv6) and optional TLVs.

Pure functions.  The director encodes (director/proxy_insert.py puts the header
in front of a connection's first data byte); parsing serves the lab's echo
servers and recognising a client that sends a header of its own.

parse(buf) answers one of three ways: a Header (buf starts with a complete,
valid header; Header.length bytes of buf are the header), None (buf is a
valid beginning of a header but too short to decide), or it raises
ProxyError with a reason that says what is wrong.
"""
from __future__ import annotations

import ipaddress
import struct
from typing import NamedTuple, Union

__all__ = [
    "SIGNATURE", "V1_MAX", "V2_HEADER", "ProxyError", "Header",
    "encode_v1", "encode_v1_unknown", "encode_v2", "encode_v2_local", "encode",
    "parse", "starts_like_proxy",
]

#: the 12 bytes that open every version 2 header
SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
#: the longest version 1 line, CRLF included (the spec's worst case, TCP6)
V1_MAX = 107
#: signature + version/command + family/transport + length
V2_HEADER = 16

_V1_PREFIX = b"PROXY "
_V2 = 0x20
_CMD_LOCAL, _CMD_PROXY = 0x0, 0x1
_AF_UNSPEC, _AF_INET, _AF_INET6, _AF_UNIX = 0x0, 0x1, 0x2, 0x3
_T_UNSPEC, _T_STREAM, _T_DGRAM = 0x0, 0x1, 0x2
#: address block size per family (the spec's union: ipv4 12, ipv6 36, unix 216)
_ADDR_LEN = {_AF_UNSPEC: 0, _AF_INET: 12, _AF_INET6: 36, _AF_UNIX: 216}
_TRANSPORTS = {_T_UNSPEC: None, _T_STREAM: "tcp", _T_DGRAM: "udp"}
_V2_FIXED = struct.Struct("!12sBBH")
_PORTS = struct.Struct("!HH")

Address = Union[str, bytes, ipaddress.IPv4Address, ipaddress.IPv6Address]


class ProxyError(ValueError):
    """A malformed PROXY header; the message says what is wrong."""


class Header(NamedTuple):
    """A parsed header.

    version      1 or 2
    local        True for a v2 LOCAL command (the sender's own connection, e.g. a health
                 check): the addresses carry nothing and are None
    transport    "tcp", "udp", or None (v1 UNKNOWN, v2 UNSPEC/LOCAL/unix)
    src, dst     ipaddress objects, or None where the header gives none
    sport, dport the ports (0 where the header gives none)
    length       how many bytes of the buffer the header takes
    tlvs         v2: the bytes after the addresses (TLVs), unparsed
    """
    version: int
    local: bool
    transport: str | None
    src: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    dst: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    sport: int
    dport: int
    length: int
    tlvs: bytes = b""


def _ip(a: Address) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if isinstance(a, (bytes, bytearray)):
        return ipaddress.ip_address(bytes(a))
    return ipaddress.ip_address(a)


def _check_port(p: int) -> int:
    if not isinstance(p, int) or not 0 <= p <= 65535:
        raise ValueError(f"port must be an int in 0..65535, not {p!r}")
    return p


def _pair(src: Address, dst: Address):
    s, d = _ip(src), _ip(dst)
    if s.version != d.version:
        raise ValueError(f"src {s} and dst {d} are of different address families")
    return s, d


# -- encoding ------------------------------------------------------------------------

def encode_v1(src: Address, dst: Address, sport: int, dport: int) -> bytes:
    """A version 1 line for a TCP connection over IPv4 or IPv6 (v1 knows only TCP)."""
    s, d = _pair(src, dst)
    return (f"PROXY TCP{s.version} {s} {d} {_check_port(sport)} {_check_port(dport)}\r\n"
            .encode("ascii"))


def encode_v1_unknown() -> bytes:
    """The version 1 line for a connection whose addresses the sender will not give."""
    return b"PROXY UNKNOWN\r\n"


def encode_v2(src: Address, dst: Address, sport: int, dport: int, *,
              transport: str = "tcp", tlvs: bytes = b"") -> bytes:
    """A version 2 PROXY-command header (TCP or UDP over IPv4 or IPv6), TLVs appended as given."""
    s, d = _pair(src, dst)
    t = {"tcp": _T_STREAM, "udp": _T_DGRAM}.get(transport)
    if t is None:
        raise ValueError(f"transport must be 'tcp' or 'udp', not {transport!r}")
    fam = _AF_INET if s.version == 4 else _AF_INET6
    body = s.packed + d.packed + _PORTS.pack(_check_port(sport), _check_port(dport)) + bytes(tlvs)
    if len(body) > 0xFFFF:
        raise ValueError(f"a v2 header holds at most 65535 bytes after its fixed part, not {len(body)}")
    return _V2_FIXED.pack(SIGNATURE, _V2 | _CMD_PROXY, fam << 4 | t, len(body)) + body


def encode_v2_local() -> bytes:
    """The version 2 LOCAL header: the connection is the sender's own, no addresses."""
    return _V2_FIXED.pack(SIGNATURE, _V2 | _CMD_LOCAL, 0, 0)


def encode(version: int, src: Address, dst: Address, sport: int, dport: int) -> bytes:
    """encode_v1 or encode_v2 (TCP) by version number."""
    if version == 1:
        return encode_v1(src, dst, sport, dport)
    if version == 2:
        return encode_v2(src, dst, sport, dport)
    raise ValueError(f"PROXY protocol version must be 1 or 2, not {version!r}")


# -- parsing -------------------------------------------------------------------------

def starts_like_proxy(buf: bytes) -> bool:
    """True if buf could begin a PROXY header of either version (a prefix counts).

    What a director checks on a client's first data: a client (or a proxy in
    front of us) that sends its own header must never get a second one.
    """
    n = min(len(buf), len(SIGNATURE))
    if n and buf[:n] == SIGNATURE[:n]:
        return True
    n = min(len(buf), len(_V1_PREFIX))
    return bool(n) and buf[:n] == _V1_PREFIX[:n]


def parse(buf: bytes) -> Header | None:
    """Parse the header at the start of buf: a Header, None if more bytes are needed,
    or ProxyError if buf does not start with a valid header."""
    buf = bytes(buf)
    if not buf:
        return None
    if buf[:1] == SIGNATURE[:1]:
        return _parse_v2(buf)
    if buf[:1] == b"P":
        return _parse_v1(buf)
    raise ProxyError(f"not a PROXY header: starts with {buf[:8]!r}")


def _parse_v1(buf: bytes) -> Header | None:
    end = buf.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(buf) >= V1_MAX:
            raise ProxyError(f"v1 header has no CRLF within {V1_MAX} bytes")
        if not _V1_PREFIX.startswith(buf[:6]):
            raise ProxyError(f"not a PROXY header: starts with {buf[:8]!r}")
        if b"\n" in buf or b"\r" in buf[:-1]:
            raise ProxyError("v1 header has a bare CR or LF before its CRLF")
        return None
    line = buf[:end]
    length = end + 2
    if not line.startswith(_V1_PREFIX):
        raise ProxyError(f"v1 header must start with 'PROXY ', got {line[:8]!r}")
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise ProxyError("v1 header is not ASCII") from None
    parts = text.split(" ")
    if len(parts) >= 2 and parts[1] == "UNKNOWN":
        # the receiver must ignore whatever follows UNKNOWN up to the CRLF
        return Header(1, False, None, None, None, 0, 0, length)
    if len(parts) != 6:
        raise ProxyError(f"v1 header needs 6 space-separated fields, got {len(parts)}: {text!r}")
    _, proto, s, d, sp, dp = parts
    version = {"TCP4": 4, "TCP6": 6}.get(proto)
    if version is None:
        raise ProxyError(f"v1 protocol must be TCP4, TCP6 or UNKNOWN, not {proto!r}")
    src, dst = _v1_addr(s, version, "source"), _v1_addr(d, version, "destination")
    return Header(1, False, "tcp", src, dst, _v1_port(sp, "source"), _v1_port(dp, "destination"),
                  length)


def _v1_addr(text: str, version: int, what: str):
    try:
        a = ipaddress.ip_address(text)
    except ValueError:
        raise ProxyError(f"v1 {what} address {text!r} is not an IP address") from None
    if a.version != version:
        raise ProxyError(f"v1 {what} address {text!r} is not IPv{version} as the protocol says")
    return a


def _v1_port(text: str, what: str) -> int:
    # decimal, 0..65535, no sign and no leading zero (the spec's form)
    if not text.isdigit() or not text.isascii() or (len(text) > 1 and text[0] == "0") \
            or int(text) > 65535:
        raise ProxyError(f"v1 {what} port {text!r} is not a decimal number in 0..65535")
    return int(text)


def _parse_v2(buf: bytes) -> Header | None:
    n = min(len(buf), len(SIGNATURE))
    if buf[:n] != SIGNATURE[:n]:
        raise ProxyError("v2 header's signature is wrong")
    if len(buf) < V2_HEADER:
        return None
    _, ver_cmd, fam_t, size = _V2_FIXED.unpack_from(buf)
    if ver_cmd >> 4 != 2:
        raise ProxyError(f"v2 header's version is {ver_cmd >> 4}, must be 2")
    cmd = ver_cmd & 0xF
    if cmd not in (_CMD_LOCAL, _CMD_PROXY):
        raise ProxyError(f"v2 header's command is {cmd:#x}, must be LOCAL (0) or PROXY (1)")
    fam, t = fam_t >> 4, fam_t & 0xF
    if fam not in _ADDR_LEN:
        raise ProxyError(f"v2 header's address family is {fam:#x}, must be 0..3")
    if t not in _TRANSPORTS:
        raise ProxyError(f"v2 header's transport is {t:#x}, must be 0..2")
    length = V2_HEADER + size
    if len(buf) < length:
        return None
    body = buf[V2_HEADER:length]
    if cmd == _CMD_LOCAL:
        # the receiver must use the connection's real addresses; the block is skipped
        return Header(2, True, None, None, None, 0, 0, length, b"")
    need = _ADDR_LEN[fam]
    if size < need:
        raise ProxyError(f"v2 header's length {size} is too short for its address family "
                         f"(needs {need})")
    if fam in (_AF_INET, _AF_INET6) and t != _T_UNSPEC:
        alen = 4 if fam == _AF_INET else 16
        src = ipaddress.ip_address(body[:alen])
        dst = ipaddress.ip_address(body[alen:2 * alen])
        sport, dport = _PORTS.unpack_from(body, 2 * alen)
        return Header(2, False, _TRANSPORTS[t], src, dst, sport, dport, length, body[need:])
    # UNSPEC, unix sockets: a valid header whose addresses we do not use
    return Header(2, False, None, None, None, 0, 0, length, body[need:])
