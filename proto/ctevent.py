"""The conntrack event decoder of the node's event socket: only what the node reads.

`decode_event(datagram)` returns what `proto.ctnetlink.decode` returns, except that an
event's Conntrack carries only the attributes the node's consumers read (the original and
reply tuples, status, timeout, mark and the TCP state; id, use, zone, NAT, counters and
the TCP window data stay None).  A datagram that is not exactly one conntrack message (an
overrun, an error, a batch) goes to `decode` whole.  Like `decode`, it raises
CtnetlinkError and nothing else, whatever bytes it is given.

Why a second, narrower decoder rather than `decode` with the rest skipped afterwards: the
event path decodes every event of every kernel-forwarded flow on the event loop that also
verdicts the queued first packets (bench.kpath: new connections/s through the kernel path
are bounded by the node's time per connection).  Measured with `bench/ctnetlink.py`'s
ESTABLISHED event on this project's 2-core machine under load: `decode` 8-18 us per event,
this decoder about half of that (`ctevent_decode_us` in the same bench), because it walks
only the top-level attributes and reads the TCP state at the place the kernel writes it
(CTA_PROTOINFO > CTA_PROTOINFO_TCP > CTA_PROTOINFO_TCP_STATE first), instead of walking
every nest into dicts.
"""
from __future__ import annotations

import struct

from proto import ctnetlink as c

_NLMSG = struct.Struct("=IHHII")
_NLA = struct.Struct("=HH")
_BE32 = struct.Struct("!I")
_HDR = c._HDR
#: the start of CTA_PROTOINFO's payload as the kernel writes it for TCP: the nest
#: CTA_PROTOINFO_TCP (any length, NLA_F_NESTED), then CTA_PROTOINFO_TCP_STATE (5 bytes: u8)
_TCP_STATE_HDR = _NLA.pack(5, c.CTA_PROTOINFO_TCP_STATE)
_NESTED_TCP = c.CTA_PROTOINFO_TCP | c.NLA_F_NESTED
_TYPE = c.NLA_TYPE_MASK
_ORIG, _REPLY, _STATUS, _PROTOINFO = c.CTA_TUPLE_ORIG, c.CTA_TUPLE_REPLY, c.CTA_STATUS, c.CTA_PROTOINFO
_TIMEOUT, _MARK = c.CTA_TIMEOUT, c.CTA_MARK


def _u32(buf: bytes, off: int, end: int) -> int:
    if end - off < 4:
        raise c.CtnetlinkError("short_attribute", f"{end - off} bytes for 4")
    return _BE32.unpack_from(buf, off)[0]


def _tcp_state(buf: bytes, off: int, end: int) -> c.TcpInfo | None:
    if end - off >= 13 and buf[off + 8:off + 12] == _TCP_STATE_HDR:
        nest_len, nest_type = _NLA.unpack_from(buf, off)
        if nest_type in (_NESTED_TCP, c.CTA_PROTOINFO_TCP) and 9 <= nest_len <= end - off:
            return c.TcpInfo(buf[off + 12])
    info = c._tcp(buf, (off, end))          # another layout: the general walk
    return None if info is None else c.TcpInfo(info.state)


def decode_event(buf: bytes) -> list[c.Message | c.Ack | c.Done]:
    total = len(buf)
    if total < _HDR:
        return c.decode(buf)
    length, mtype, flags, seq, pid = _NLMSG.unpack_from(buf, 0)
    if length != total or mtype >> 8 != c.NFNL_SUBSYS_CTNETLINK:
        return c.decode(buf)
    orig = reply = status = timeout = mark = tcp = None
    unpack = _NLA.unpack_from
    off = _HDR
    while off + 4 <= total:
        alen, atype = unpack(buf, off)
        end = off + alen
        if alen < 4 or end > total:
            raise c.CtnetlinkError("bad_attribute", f"length {alen} at {off}")
        t = atype & _TYPE
        if t == _ORIG:
            orig = c._tuple(buf, (off + 4, end))
        elif t == _REPLY:
            reply = c._tuple(buf, (off + 4, end))
        elif t == _STATUS:
            status = _u32(buf, off + 4, end)
        elif t == _TIMEOUT:
            timeout = _u32(buf, off + 4, end)
        elif t == _MARK:
            mark = _u32(buf, off + 4, end)
        elif t == _PROTOINFO:
            tcp = _tcp_state(buf, off + 4, end)
        off += (alen + 3) & ~3
    return [c.Message(mtype, flags, seq, buf[_NLMSG.size],
                      c.Conntrack(orig, reply, status, timeout, mark, tcp=tcp), pid)]
