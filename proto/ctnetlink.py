"""ctnetlink: the kernel conntrack table's netlink messages, encoded and decoded.  Pure: no I/O.

Why this is hand-written and not pyroute2's `nfct`: in kernel forwarding mode tandem learns
every flow's binding, state changes and end from conntrack events, about 6 per short TCP
connection (2-3 with an nftables `ct event set`).  Measured on this project's machine,
pyroute2 spends ~43 us per event before it has walked the attributes and ~300 us with them;
a decoder built on `struct` takes ~11 us (`bench/ctnetlink.py` measures this one).  At the
connection rates the kernel path reaches, pyroute2 alone would use a whole core.  The codec
covers only what tandem uses: tuples, status, timeout, mark, id, use, zone, counters, TCP
protoinfo and the NAT setup of an injected entry.

A message (all integers of the netlink and attribute headers in host order; all conntrack
values in network order, as the kernel writes them):

    nlmsghdr   len u32, type u16 = NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_*, flags u16,
               seq u32, pid u32
    nfgenmsg   family u8 (AF_INET/AF_INET6, AF_UNSPEC in a dump request for both),
               version u8 = 0, res_id be16 = 0
    attributes nlattr {len u16, type u16} + payload, each padded to 4 bytes; a nested one has
               NLA_F_NESTED in its type, which the decoder masks off

An event is a CT_NEW message with NLM_F_CREATE (a new entry) or without it (an update: state,
status, mark, NAT bound), or a CT_DELETE message (the entry is gone).  A dump answers with
CT_NEW messages flagged NLM_F_MULTI and ends with NLMSG_DONE.

Creating an entry with NAT (what a backup does with every synced connection): send the
ORIGINAL tuple, the reply tuple as its plain inverse, CTA_NAT_DST (the real server) and
CTA_NAT_SRC (laddr:lport), and the kernel derives the translated reply tuple and sets the
NAT status bits.  A reply tuple that is already translated is accepted, but no NAT bits are
set and nothing is translated.  A timeout is mandatory; `injection()` builds such an entry.

`decode()` raises `CtnetlinkError` and nothing else, whatever bytes it is given.

Size: the kernel's numbers, the encoder and the decoder of one wire format stay together,
so each number sits next to both of its uses.
"""
from __future__ import annotations

import socket
import struct
import sys
from typing import NamedTuple

from proto import consts as _ipvs

# -- netlink and nfnetlink ------------------------------------------------------------
NETLINK_NETFILTER = 12
NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE, NLMSG_OVERRUN = 1, 2, 3, 4
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x01, 0x02, 0x04
NLM_F_DUMP = 0x300
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF

NFNL_SUBSYS_CTNETLINK = 1
CT_NEW, CT_GET, CT_DELETE = 0, 1, 2
MSG_NEW = NFNL_SUBSYS_CTNETLINK << 8 | CT_NEW
MSG_GET = NFNL_SUBSYS_CTNETLINK << 8 | CT_GET
MSG_DELETE = NFNL_SUBSYS_CTNETLINK << 8 | CT_DELETE

#: multicast groups of the event socket (bind with the bit 1 << (group - 1))
GROUP_NEW, GROUP_UPDATE, GROUP_DESTROY = 1, 2, 3

# -- attributes (enum ctattr_*) -----------------------------------------------------------
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_STATUS, CTA_PROTOINFO = 1, 2, 3, 4
CTA_NAT_SRC, CTA_TIMEOUT, CTA_MARK, CTA_COUNTERS_ORIG, CTA_COUNTERS_REPLY = 6, 7, 8, 9, 10
CTA_USE, CTA_ID, CTA_NAT_DST, CTA_ZONE = 11, 12, 13, 18
CTA_MARK_MASK = 21
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
CTA_PROTO_ICMP_ID, CTA_PROTO_ICMP_TYPE, CTA_PROTO_ICMP_CODE = 4, 5, 6
CTA_PROTO_ICMPV6_ID, CTA_PROTO_ICMPV6_TYPE, CTA_PROTO_ICMPV6_CODE = 7, 8, 9
CTA_PROTOINFO_TCP = 1
CTA_PROTOINFO_TCP_STATE, CTA_PROTOINFO_TCP_WSCALE_ORIGINAL = 1, 2
CTA_PROTOINFO_TCP_WSCALE_REPLY, CTA_PROTOINFO_TCP_FLAGS_ORIGINAL = 3, 4
CTA_PROTOINFO_TCP_FLAGS_REPLY = 5
CTA_NAT_V4_MINIP, CTA_NAT_V4_MAXIP, CTA_NAT_PROTO = 1, 2, 3
CTA_NAT_V6_MINIP, CTA_NAT_V6_MAXIP = 4, 5
CTA_PROTONAT_PORT_MIN, CTA_PROTONAT_PORT_MAX = 1, 2
CTA_COUNTERS_PACKETS, CTA_COUNTERS_BYTES = 1, 2

# -- status bits (IPS_*) -----------------------------------------------------------------
IPS_EXPECTED, IPS_SEEN_REPLY, IPS_ASSURED, IPS_CONFIRMED = 0x1, 0x2, 0x4, 0x8
IPS_SRC_NAT, IPS_DST_NAT, IPS_SRC_NAT_DONE, IPS_DST_NAT_DONE = 0x10, 0x20, 0x80, 0x100
IPS_DYING, IPS_FIXED_TIMEOUT, IPS_UNTRACKED = 0x200, 0x400, 0x1000

# -- TCP conntrack states (enum tcp_conntrack) and window-tracking flags -------------------
TCP_CT_STATES = ("NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT",
                 "LAST_ACK", "TIME_WAIT", "CLOSE", "SYN_SENT2")
(TCP_CT_NONE, TCP_CT_SYN_SENT, TCP_CT_SYN_RECV, TCP_CT_ESTABLISHED, TCP_CT_FIN_WAIT,
 TCP_CT_CLOSE_WAIT, TCP_CT_LAST_ACK, TCP_CT_TIME_WAIT, TCP_CT_CLOSE,
 TCP_CT_SYN_SENT2) = range(len(TCP_CT_STATES))
TCP_FLAG_WINDOW_SCALE, TCP_FLAG_SACK_PERM, TCP_FLAG_BE_LIBERAL = 0x01, 0x02, 0x08

_ICMP_ECHO_INVERSE = {(1, 8): 0, (1, 0): 8, (58, 128): 129, (58, 129): 128}

_NLMSG = struct.Struct("=IHHII")
_NFGEN = struct.Struct("=BBH")
_NLA = struct.Struct("=HH")
_BE8, _BE16, _BE32, _BE64 = struct.Struct("!B"), struct.Struct("!H"), struct.Struct("!I"), struct.Struct("!Q")
_FLAGS = struct.Struct("=BB")      # struct nf_ct_tcp_flags {flags, mask}
_HDR = _NLMSG.size + _NFGEN.size


class CtnetlinkError(ValueError):
    """A message that is not valid ctnetlink; `reason` names what is wrong."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class Tuple(NamedTuple):
    """One direction of a conntrack entry.  Addresses are packed (4 or 16 bytes).

    TCP/UDP use the ports; ICMP/ICMPv6 the id, type and code (ports are then 0)."""
    proto: int
    src: bytes
    dst: bytes
    sport: int = 0
    dport: int = 0
    icmp_id: int = 0
    icmp_type: int = 0
    icmp_code: int = 0

    @property
    def family(self) -> int:
        return socket.AF_INET if len(self.src) == 4 else socket.AF_INET6

    def inverse(self) -> Tuple:
        """The reply tuple of an untranslated flow."""
        if self.proto in (1, 58):
            itype = _ICMP_ECHO_INVERSE.get((self.proto, self.icmp_type))
            if itype is None:
                raise CtnetlinkError("no_inverse", f"ICMP type {self.icmp_type}")
            return Tuple(self.proto, self.dst, self.src, icmp_id=self.icmp_id, icmp_type=itype,
                         icmp_code=self.icmp_code)
        return Tuple(self.proto, self.dst, self.src, self.dport, self.sport)


class NatRange(NamedTuple):
    """One address (and optionally one port) a NAT setup maps to."""
    addr: bytes
    port: int | None = None


class TcpInfo(NamedTuple):
    """CTA_PROTOINFO_TCP.  A dump reports flags with mask 0; a request sets the flags in mask."""
    state: int | None = None
    wscale_orig: int | None = None
    wscale_reply: int | None = None
    flags_orig: tuple[int, int] | None = None      # (flags, mask)
    flags_reply: tuple[int, int] | None = None


class Conntrack(NamedTuple):
    """The attributes of one conntrack entry; None = absent from the message."""
    orig: Tuple | None = None
    reply: Tuple | None = None
    status: int | None = None
    timeout: int | None = None        # seconds
    mark: int | None = None
    id: int | None = None
    use: int | None = None
    zone: int | None = None
    tcp: TcpInfo | None = None
    nat_src: NatRange | None = None
    nat_dst: NatRange | None = None
    counters_orig: tuple[int, int] | None = None   # (packets, bytes)
    counters_reply: tuple[int, int] | None = None


class Message(NamedTuple):
    """One decoded netlink message of the conntrack subsystem."""
    msg_type: int
    flags: int
    seq: int
    family: int
    ct: Conntrack = Conntrack()
    #: the netlink port id in the header: 0 for an event caused by a packet (or the kernel's
    #: own timers), the requesting socket's port id for one caused by a ctnetlink request, so
    #: a node can tell its own injections from flows the kernel forwarded
    pid: int = 0

    @property
    def event(self) -> str:
        """'new', 'update' or 'destroy' (a dump's entries read as 'update')."""
        if self.msg_type == MSG_DELETE:
            return "destroy"
        return "new" if self.flags & NLM_F_CREATE else "update"


class Ack(NamedTuple):
    """NLMSG_ERROR: errno 0 acknowledges request `seq`, otherwise it failed with that errno."""
    seq: int
    errno: int


class Done(NamedTuple):
    """NLMSG_DONE: the end of dump `seq`."""
    seq: int


# -- encoding ---------------------------------------------------------------------------

def _attr(atype: int, payload: bytes) -> bytes:
    n = _NLA.size + len(payload)
    return _NLA.pack(n, atype) + payload + b"\0" * (-n & 3)


def _nest(atype: int, *parts: bytes) -> bytes:
    return _attr(atype | NLA_F_NESTED, b"".join(parts))


def encode_tuple(atype: int, t: Tuple) -> bytes:
    if len(t.src) not in (4, 16) or len(t.dst) != len(t.src):
        raise CtnetlinkError("bad_address", "addresses must be 4 or 16 bytes, one family")
    v4 = len(t.src) == 4
    ip = _nest(CTA_TUPLE_IP, _attr(CTA_IP_V4_SRC if v4 else CTA_IP_V6_SRC, t.src),
               _attr(CTA_IP_V4_DST if v4 else CTA_IP_V6_DST, t.dst))
    l4 = [_attr(CTA_PROTO_NUM, _BE8.pack(t.proto))]
    if t.proto in (1, 58):
        base = CTA_PROTO_ICMP_ID if t.proto == _ipvs.ICMP else CTA_PROTO_ICMPV6_ID
        l4 += [_attr(base, _BE16.pack(t.icmp_id)), _attr(base + 1, _BE8.pack(t.icmp_type)),
               _attr(base + 2, _BE8.pack(t.icmp_code))]
    else:
        l4 += [_attr(CTA_PROTO_SRC_PORT, _BE16.pack(t.sport)),
               _attr(CTA_PROTO_DST_PORT, _BE16.pack(t.dport))]
    return _nest(atype, ip, _nest(CTA_TUPLE_PROTO, *l4))


def _encode_nat(atype: int, nat: NatRange) -> bytes:
    if len(nat.addr) == 4:
        parts = [_attr(CTA_NAT_V4_MINIP, nat.addr), _attr(CTA_NAT_V4_MAXIP, nat.addr)]
    elif len(nat.addr) == 16:
        parts = [_attr(CTA_NAT_V6_MINIP, nat.addr), _attr(CTA_NAT_V6_MAXIP, nat.addr)]
    else:
        raise CtnetlinkError("bad_address", "a NAT address must be 4 or 16 bytes")
    if nat.port is not None:
        port = _BE16.pack(nat.port)
        parts.append(_nest(CTA_NAT_PROTO, _attr(CTA_PROTONAT_PORT_MIN, port),
                           _attr(CTA_PROTONAT_PORT_MAX, port)))
    return _nest(atype, *parts)


def _encode_tcp(tcp: TcpInfo) -> bytes:
    parts = []
    if tcp.state is not None:
        parts.append(_attr(CTA_PROTOINFO_TCP_STATE, _BE8.pack(tcp.state)))
    if tcp.wscale_orig is not None:
        parts.append(_attr(CTA_PROTOINFO_TCP_WSCALE_ORIGINAL, _BE8.pack(tcp.wscale_orig)))
    if tcp.wscale_reply is not None:
        parts.append(_attr(CTA_PROTOINFO_TCP_WSCALE_REPLY, _BE8.pack(tcp.wscale_reply)))
    if tcp.flags_orig is not None:
        parts.append(_attr(CTA_PROTOINFO_TCP_FLAGS_ORIGINAL, _FLAGS.pack(*tcp.flags_orig)))
    if tcp.flags_reply is not None:
        parts.append(_attr(CTA_PROTOINFO_TCP_FLAGS_REPLY, _FLAGS.pack(*tcp.flags_reply)))
    return _nest(CTA_PROTOINFO, _nest(CTA_PROTOINFO_TCP, *parts))


def _counters(atype: int, value: tuple[int, int]) -> bytes:
    return _nest(atype, _attr(CTA_COUNTERS_PACKETS, _BE64.pack(value[0])),
                 _attr(CTA_COUNTERS_BYTES, _BE64.pack(value[1])))


def encode_conntrack(ct: Conntrack) -> bytes:
    """The attributes of `ct`, in the kernel's order (what is None is left out)."""
    out = []
    if ct.orig is not None:
        out.append(encode_tuple(CTA_TUPLE_ORIG, ct.orig))
    if ct.reply is not None:
        out.append(encode_tuple(CTA_TUPLE_REPLY, ct.reply))
    for atype, value in ((CTA_ZONE, ct.zone),):
        if value is not None:
            out.append(_attr(atype, _BE16.pack(value)))
    for atype, value in ((CTA_STATUS, ct.status), (CTA_TIMEOUT, ct.timeout), (CTA_MARK, ct.mark),
                         (CTA_ID, ct.id), (CTA_USE, ct.use)):
        if value is not None:
            out.append(_attr(atype, _BE32.pack(value)))
    if ct.tcp is not None:
        out.append(_encode_tcp(ct.tcp))
    if ct.nat_src is not None:
        out.append(_encode_nat(CTA_NAT_SRC, ct.nat_src))
    if ct.nat_dst is not None:
        out.append(_encode_nat(CTA_NAT_DST, ct.nat_dst))
    if ct.counters_orig is not None:
        out.append(_counters(CTA_COUNTERS_ORIG, ct.counters_orig))
    if ct.counters_reply is not None:
        out.append(_counters(CTA_COUNTERS_REPLY, ct.counters_reply))
    return b"".join(out)


def encode(msg: Message, pid: int = 0) -> bytes:
    """One whole netlink message (port id `pid`, or the message's own)."""
    body = _NFGEN.pack(msg.family, 0, 0) + encode_conntrack(msg.ct)
    return _NLMSG.pack(_NLMSG.size + len(body), msg.msg_type, msg.flags, msg.seq,
                       pid or msg.pid) + body


def _family(ct: Conntrack) -> int:
    t = ct.orig or ct.reply
    return t.family if t is not None else socket.AF_UNSPEC


def new_request(ct: Conntrack, seq: int, *, exclusive: bool = True) -> bytes:
    """Create `ct` (acknowledged); with exclusive=False an existing entry is updated instead."""
    flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | (NLM_F_EXCL if exclusive else 0)
    return encode(Message(MSG_NEW, flags, seq, _family(ct), ct))


def update_request(ct: Conntrack, seq: int) -> bytes:
    """Change an existing entry (found by ct.orig), e.g. its mark, timeout or TCP state."""
    return encode(Message(MSG_NEW, NLM_F_REQUEST | NLM_F_ACK, seq, _family(ct), ct))


def delete_request(orig: Tuple, seq: int) -> bytes:
    return encode(Message(MSG_DELETE, NLM_F_REQUEST | NLM_F_ACK, seq, orig.family,
                          Conntrack(orig=orig)))


def get_request(orig: Tuple, seq: int) -> bytes:
    return encode(Message(MSG_GET, NLM_F_REQUEST | NLM_F_ACK, seq, orig.family,
                          Conntrack(orig=orig)))


def dump_request(seq: int, family: int = socket.AF_UNSPEC,
                 mark: tuple[int, int] | None = None) -> bytes:
    """The whole table (AF_UNSPEC: both families), answered with NLM_F_MULTI and NLMSG_DONE.
    With `mark` (value, mask) the kernel sends only the entries whose mark & mask == value
    (CTA_MARK and CTA_MARK_MASK in a dump request: the kernel's own dump filter)."""
    msg = encode(Message(MSG_GET, NLM_F_REQUEST | NLM_F_DUMP, seq, family))
    if mark is None:
        return msg
    attrs = _attr(CTA_MARK, _BE32.pack(mark[0])) + _attr(CTA_MARK_MASK, _BE32.pack(mark[1]))
    return _NLMSG.pack(len(msg) + len(attrs), *_NLMSG.unpack_from(msg)[1:]) + msg[_NLMSG.size:] + attrs


def injection(orig: Tuple, real: NatRange, local: NatRange, timeout: int, *,
              tcp_state: int | None = None, mark: int | None = None) -> Conntrack:
    """The entry a backup creates for a synced FULLNAT connection: `orig` is client -> VIP,
    DNAT to `real` (real server, port), SNAT to `local` (laddr, lport).  The reply tuple is
    orig's plain inverse, so the kernel computes the translated one and sets the NAT bits.
    ctnetlink cannot set the window-tracking data, so a TCP entry is marked BE_LIBERAL in
    both directions (as conntrackd does), or a taken-over bulk flow stalls."""
    tcp = None
    if orig.proto == _ipvs.TCP:
        liberal = (TCP_FLAG_BE_LIBERAL, TCP_FLAG_BE_LIBERAL)
        tcp = TcpInfo(state=TCP_CT_ESTABLISHED if tcp_state is None else tcp_state,
                      flags_orig=liberal, flags_reply=liberal)
    return Conntrack(orig=orig, reply=orig.inverse(), timeout=timeout, mark=mark, tcp=tcp,
                     status=IPS_CONFIRMED | IPS_SEEN_REPLY | IPS_ASSURED,
                     nat_src=local, nat_dst=real)


def refresh(orig: Tuple, timeout: int, *, tcp_state: int | None = None,
            mark: int | None = None) -> Conntrack:
    """An update of an entry `injection()` created: a new timeout, TCP state and mark, found
    by `orig`.  No NAT (the kernel refuses to change the NAT of an existing entry) and no
    status (its bits may only be added); BE_LIBERAL again, so the flags never depend on what
    the entry was created with."""
    tcp = None
    if orig.proto == _ipvs.TCP and tcp_state is not None:
        liberal = (TCP_FLAG_BE_LIBERAL, TCP_FLAG_BE_LIBERAL)
        tcp = TcpInfo(state=tcp_state, flags_orig=liberal, flags_reply=liberal)
    return Conntrack(orig=orig, timeout=timeout, mark=mark, tcp=tcp)


# conntrack's TCP states and IPVS's (proto.consts, as synced) name different moments: the
# tracker's SYN_SENT is the client's SYN unanswered, which IPVS calls SYN_RECV at the
# director, and the tracker's SYN_RECV (the server's SYN-ACK seen) is still SYN_RECV for a
# FULLNAT director.  Both directions of the map, for syncing kernel-forwarded flows:
#: conntrack TCP state -> the IPVS state sent for it
IPVS_STATE_OF_CT = (_ipvs.NONE, _ipvs.SYN_RECV, _ipvs.SYN_RECV, _ipvs.ESTABLISHED, _ipvs.FIN_WAIT,
                    _ipvs.CLOSE_WAIT, _ipvs.LAST_ACK, _ipvs.TIME_WAIT, _ipvs.CLOSE, _ipvs.SYN_RECV)
#: IPVS TCP state (as synced) -> the conntrack state an injected entry gets.  Every opening
#: state becomes SYN_RECV, the one state in which the client's ACK that completes the
#: handshake (or its first data) moves the entry to ESTABLISHED: injected as SYN_SENT, that
#: ACK would be invalid and never translated
CT_STATE_OF_IPVS = (TCP_CT_SYN_RECV, TCP_CT_ESTABLISHED, TCP_CT_SYN_RECV, TCP_CT_SYN_RECV,
                    TCP_CT_FIN_WAIT, TCP_CT_TIME_WAIT, TCP_CT_CLOSE, TCP_CT_CLOSE_WAIT,
                    TCP_CT_LAST_ACK, TCP_CT_SYN_RECV, TCP_CT_SYN_RECV)


# -- decoding ---------------------------------------------------------------------------

def _walk(buf: bytes, off: int, end: int) -> dict[int, tuple[int, int]]:
    """type -> (payload offset, payload end) of the attributes in buf[off:end]."""
    attrs = {}
    unpack = _NLA.unpack_from
    while off + 4 <= end:
        alen, atype = unpack(buf, off)
        if alen < 4 or off + alen > end:
            raise CtnetlinkError("bad_attribute", f"length {alen} at {off}")
        attrs[atype & NLA_TYPE_MASK] = (off + 4, off + alen)
        off += (alen + 3) & ~3
    return attrs


def _int(buf: bytes, span: tuple[int, int], st: struct.Struct) -> int:
    if span[1] - span[0] < st.size:
        raise CtnetlinkError("short_attribute", f"{span[1] - span[0]} bytes for {st.size}")
    return st.unpack_from(buf, span[0])[0]


# The layout the kernel always writes for an IPv4/IPv6 TCP or UDP tuple, read in one unpack:
# IP nest {src, dst}, PROTO nest {num (u8 + 3 pad), sport (be16 + 2 pad), dport}.  The header
# words are checked against the expected ones; anything else takes the general walk.
_FAST = {size: struct.Struct(f"=HHHH{size}sHH{size}sHHHHB3xHHH2xHHH2x") for size in (4, 16)}
_FAST_HDRS = {size: (4 + 2 * (4 + size), CTA_TUPLE_IP, 4 + size, CTA_IP_V4_SRC + base,
                     4 + size, CTA_IP_V4_DST + base, 28, CTA_TUPLE_PROTO, 5, CTA_PROTO_NUM,
                     6, CTA_PROTO_SRC_PORT, 6, CTA_PROTO_DST_PORT)
              for size, base in ((4, 0), (16, 2))}
_SWAP = sys.byteorder == "little"


def _tuple(buf: bytes, span: tuple[int, int]) -> Tuple:
    off, end = span
    size = 4 if end - off == 48 else 16 if end - off == 72 else 0
    if size:
        (l_ip, t_ip, l_s, t_s, src, l_d, t_d, dst, l_p, t_p, l_n, t_n, proto, l_sp, t_sp, sport,
         l_dp, t_dp, dport) = _FAST[size].unpack_from(buf, off)
        if (l_ip, t_ip & NLA_TYPE_MASK, l_s, t_s, l_d, t_d, l_p, t_p & NLA_TYPE_MASK, l_n, t_n,
                l_sp, t_sp, l_dp, t_dp) == _FAST_HDRS[size] and proto not in (1, 58):
            if _SWAP:
                sport = (sport >> 8) | (sport & 0xFF) << 8
                dport = (dport >> 8) | (dport & 0xFF) << 8
            return Tuple(proto, src, dst, sport, dport)
    top = _walk(buf, *span)
    if CTA_TUPLE_IP not in top or CTA_TUPLE_PROTO not in top:
        raise CtnetlinkError("bad_tuple", "address or protocol missing")
    ip = _walk(buf, *top[CTA_TUPLE_IP])
    if CTA_IP_V4_SRC in ip and CTA_IP_V4_DST in ip:
        (s0, s1), (d0, d1) = ip[CTA_IP_V4_SRC], ip[CTA_IP_V4_DST]
        size = 4
    elif CTA_IP_V6_SRC in ip and CTA_IP_V6_DST in ip:
        (s0, s1), (d0, d1) = ip[CTA_IP_V6_SRC], ip[CTA_IP_V6_DST]
        size = 16
    else:
        raise CtnetlinkError("bad_tuple", "no address pair")
    if s1 - s0 != size or d1 - d0 != size:
        raise CtnetlinkError("bad_tuple", "address length")
    l4 = _walk(buf, *top[CTA_TUPLE_PROTO])
    if CTA_PROTO_NUM not in l4:
        raise CtnetlinkError("bad_tuple", "protocol number missing")
    proto = _int(buf, l4[CTA_PROTO_NUM], _BE8)
    src, dst = bytes(buf[s0:s1]), bytes(buf[d0:d1])
    if proto in (1, 58):
        base = CTA_PROTO_ICMP_ID if proto == _ipvs.ICMP else CTA_PROTO_ICMPV6_ID
        return Tuple(proto, src, dst,
                     icmp_id=_int(buf, l4[base], _BE16) if base in l4 else 0,
                     icmp_type=_int(buf, l4[base + 1], _BE8) if base + 1 in l4 else 0,
                     icmp_code=_int(buf, l4[base + 2], _BE8) if base + 2 in l4 else 0)
    sport = _int(buf, l4[CTA_PROTO_SRC_PORT], _BE16) if CTA_PROTO_SRC_PORT in l4 else 0
    dport = _int(buf, l4[CTA_PROTO_DST_PORT], _BE16) if CTA_PROTO_DST_PORT in l4 else 0
    return Tuple(proto, src, dst, sport, dport)


def _tcp(buf: bytes, span: tuple[int, int]) -> TcpInfo | None:
    info = _walk(buf, *span)
    if CTA_PROTOINFO_TCP not in info:
        return None
    a = _walk(buf, *info[CTA_PROTOINFO_TCP])
    values: list = [None] * 5           # state, wscale orig/reply, flags orig/reply
    for key, (p0, p1) in a.items():
        if 1 <= key <= 3:
            if p1 <= p0:
                raise CtnetlinkError("short_attribute", "TCP protoinfo")
            values[key - 1] = buf[p0]
        elif 4 <= key <= 5:
            if p1 - p0 < 2:
                raise CtnetlinkError("short_attribute", "TCP flags")
            values[key - 1] = (buf[p0], buf[p0 + 1])
    return TcpInfo(*values)


def _nat(buf: bytes, span: tuple[int, int]) -> NatRange:
    a = _walk(buf, *span)
    key = CTA_NAT_V4_MINIP if CTA_NAT_V4_MINIP in a else CTA_NAT_V6_MINIP
    if key not in a or a[key][1] - a[key][0] != (4 if key == CTA_NAT_V4_MINIP else 16):
        raise CtnetlinkError("bad_nat", "no address")
    port = None
    if CTA_NAT_PROTO in a:
        p = _walk(buf, *a[CTA_NAT_PROTO])
        if CTA_PROTONAT_PORT_MIN in p:
            port = _int(buf, p[CTA_PROTONAT_PORT_MIN], _BE16)
    return NatRange(bytes(buf[a[key][0]:a[key][1]]), port)


def _count(buf: bytes, span: tuple[int, int]) -> tuple[int, int]:
    a = _walk(buf, *span)
    if CTA_COUNTERS_PACKETS not in a or CTA_COUNTERS_BYTES not in a:
        raise CtnetlinkError("bad_counters", "packets or bytes missing")
    return _int(buf, a[CTA_COUNTERS_PACKETS], _BE64), _int(buf, a[CTA_COUNTERS_BYTES], _BE64)


def decode_conntrack(buf: bytes, off: int, end: int) -> Conntrack:
    a = _walk(buf, off, end)
    get = a.get
    orig, reply, status = get(CTA_TUPLE_ORIG), get(CTA_TUPLE_REPLY), get(CTA_STATUS)
    timeout, mark, ctid, use, zone = (get(CTA_TIMEOUT), get(CTA_MARK), get(CTA_ID),
                                      get(CTA_USE), get(CTA_ZONE))
    info, nsrc, ndst = get(CTA_PROTOINFO), get(CTA_NAT_SRC), get(CTA_NAT_DST)
    c_orig, c_reply = get(CTA_COUNTERS_ORIG), get(CTA_COUNTERS_REPLY)
    return Conntrack(
        orig=_tuple(buf, orig) if orig else None,
        reply=_tuple(buf, reply) if reply else None,
        status=_int(buf, status, _BE32) if status else None,
        timeout=_int(buf, timeout, _BE32) if timeout else None,
        mark=_int(buf, mark, _BE32) if mark else None,
        id=_int(buf, ctid, _BE32) if ctid else None,
        use=_int(buf, use, _BE32) if use else None,
        zone=_int(buf, zone, _BE16) if zone else None,
        tcp=_tcp(buf, info) if info else None,
        nat_src=_nat(buf, nsrc) if nsrc else None,
        nat_dst=_nat(buf, ndst) if ndst else None,
        counters_orig=_count(buf, c_orig) if c_orig else None,
        counters_reply=_count(buf, c_reply) if c_reply else None)


def decode(buf: bytes) -> list[Message | Ack | Done]:
    """Every netlink message in one datagram from a ctnetlink socket, in order.

    Messages of other subsystems and NLMSG_NOOP are skipped; NLMSG_OVERRUN raises
    ("overrun": events were lost, the caller repairs with a dump)."""
    out: list[Message | Ack | Done] = []
    off, total = 0, len(buf)
    while off < total:
        if total - off < _NLMSG.size:
            raise CtnetlinkError("truncated", f"{total - off} bytes of header")
        length, mtype, flags, seq, pid = _NLMSG.unpack_from(buf, off)
        if length < _NLMSG.size or off + length > total:
            raise CtnetlinkError("bad_length", f"message length {length} at {off}")
        end = off + length
        if mtype == NLMSG_ERROR:
            if length < _NLMSG.size + 4:
                raise CtnetlinkError("truncated", "error message")
            out.append(Ack(seq, -struct.unpack_from("=i", buf, off + _NLMSG.size)[0]))
        elif mtype == NLMSG_DONE:
            out.append(Done(seq))
        elif mtype == NLMSG_OVERRUN:
            raise CtnetlinkError("overrun", "the kernel dropped messages")
        elif mtype >> 8 == NFNL_SUBSYS_CTNETLINK:
            if length < _HDR:
                raise CtnetlinkError("truncated", "nfgenmsg")
            family = buf[off + _NLMSG.size]
            out.append(Message(mtype, flags, seq, family, decode_conntrack(buf, off + _HDR, end), pid))
        off += (length + 3) & ~3
    return out
