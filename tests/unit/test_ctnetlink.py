"""proto.ctnetlink: round trips, the kernel's own bytes, pyroute2 as an independent reader,
and hostile input (only CtnetlinkError comes out)."""
from __future__ import annotations

import ipaddress
import socket
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyroute2.netlink.nfnetlink.nfctsocket import nfct_msg

from proto import ctnetlink as c

# Two NEW events as kernel 6.18 sent them (captured in a namespace): a TCP connection over
# IPv4 loopback (SYN seen: SYN_SENT, wscale 10, SACK_PERM|WINDOW_SCALE) and a UDP datagram
# over IPv6 loopback.
KERNEL_TCP4_NEW = bytes.fromhex(
    "c4000000000100060000000000000000020000003400018014000180080001007f000001080002007f000001"
    "1c000280050001000600000006000200d7100000060003008f3100003400028014000180080001007f000001"
    "080002007f0000011c0002800500010006000000060002008f31000006000300d710000008000c0038109ab6"
    "08000300000000080800070000000078300004802c0001800500010001000000050002000a00000005000300"
    "0000000006000400030000000600050000000000")
KERNEL_UDP6_NEW = bytes.fromhex(
    "c40000000001000600000000000000000a0000004c0001802c00018014000300000000000000000000000000"
    "0000000114000400000000000000000000000000000000011c0002800500010011000000060002008313000006"
    "000300b9ad00004c0002802c000180140003000000000000000000000000000000000114000400000000000000"
    "000000000000000000011c000280050001001100000006000200b9ad0000060003008313000008000c00aa3176"
    "800800030000000008080007000000001e")

LO4, LO6 = bytes([127, 0, 0, 1]), bytes(15) + b"\x01"


def test_kernel_tcp4_new_event():
    [msg] = c.decode(KERNEL_TCP4_NEW)
    assert msg.event == "new" and msg.family == socket.AF_INET and msg.msg_type == c.MSG_NEW
    ct = msg.ct
    assert ct.orig == c.Tuple(6, LO4, LO4, 55056, 36657)
    assert ct.reply == ct.orig.inverse()
    assert ct.status == c.IPS_CONFIRMED and ct.timeout == 120 and ct.id == 0x38109AB6
    assert ct.tcp == c.TcpInfo(c.TCP_CT_SYN_SENT, 10, 0, (3, 0), (0, 0))
    assert ct.nat_src is None and ct.mark is None


def test_kernel_udp6_new_event():
    [msg] = c.decode(KERNEL_UDP6_NEW)
    assert msg.event == "new" and msg.family == socket.AF_INET6
    assert msg.ct.orig == c.Tuple(17, LO6, LO6, 33555, 47533)
    assert msg.ct.reply == msg.ct.orig.inverse() and msg.ct.timeout == 30 and msg.ct.tcp is None


def test_several_messages_in_one_datagram_and_done_and_ack():
    ack = bytes.fromhex("24000000020000000700000000000000") + (-17).to_bytes(4, "little", signed=True) \
        + bytes(16)
    done = bytes.fromhex("14000000030002000700000000000000") + bytes(4)
    out = c.decode(KERNEL_TCP4_NEW + KERNEL_UDP6_NEW + ack + done)
    assert [type(m).__name__ for m in out] == ["Message", "Message", "Ack", "Done"]
    assert out[2] == c.Ack(7, 17) and out[3] == c.Done(7)


def test_event_kinds():
    assert c.Message(c.MSG_NEW, c.NLM_F_CREATE | c.NLM_F_EXCL, 0, 2).event == "new"
    assert c.Message(c.MSG_NEW, 0, 0, 2).event == "update"
    assert c.Message(c.MSG_DELETE, 0, 0, 2).event == "destroy"


def test_overrun_is_reported():
    with pytest.raises(c.CtnetlinkError) as e:
        c.decode(bytes.fromhex("10000000040000000000000000000000"))
    assert e.value.reason == "overrun"


# -- round trips ----------------------------------------------------------------------------

u16, u32 = st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF)
opt32 = st.none() | u32


@st.composite
def tuples(draw, size=None):
    size = size or draw(st.sampled_from((4, 16)))
    addr = st.binary(min_size=size, max_size=size)
    proto = draw(st.sampled_from((6, 17, 132, 1 if size == 4 else 58)))
    if proto in (1, 58):
        return c.Tuple(proto, draw(addr), draw(addr), icmp_id=draw(u16),
                       icmp_type=draw(st.integers(0, 255)), icmp_code=draw(st.integers(0, 255)))
    return c.Tuple(proto, draw(addr), draw(addr), draw(u16), draw(u16))


@st.composite
def conntracks(draw):
    size = draw(st.sampled_from((4, 16)))
    orig = draw(tuples(size))
    u8 = st.integers(0, 255)
    flags = st.none() | st.tuples(u8, u8)
    nat = st.none() | st.builds(c.NatRange, st.binary(min_size=size, max_size=size), st.none() | u16)
    counters = st.none() | st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))
    return c.Conntrack(
        orig=orig, reply=draw(st.none() | tuples(size)), status=draw(opt32), timeout=draw(opt32),
        mark=draw(opt32), id=draw(opt32), use=draw(opt32), zone=draw(st.none() | u16),
        tcp=draw(st.none() | st.builds(c.TcpInfo, st.none() | u8, st.none() | u8, st.none() | u8,
                                       flags, flags)),
        nat_src=draw(nat), nat_dst=draw(nat), counters_orig=draw(counters),
        counters_reply=draw(counters))


@given(conntracks(), u32, st.sampled_from((c.MSG_NEW, c.MSG_DELETE, c.MSG_GET)), u16)
def test_round_trip(ct, seq, mtype, flags):
    msg = c.Message(mtype, flags, seq, ct.orig.family, ct)
    assert c.decode(c.encode(msg)) == [msg]


@given(st.lists(conntracks(), min_size=1, max_size=5))
def test_round_trip_batch(cts):
    msgs = [c.Message(c.MSG_NEW, c.NLM_F_MULTI, i, ct.orig.family, ct) for i, ct in enumerate(cts)]
    assert c.decode(b"".join(c.encode(m) for m in msgs)) == msgs


def _addr(b: bytes) -> str:
    return str(ipaddress.ip_address(b))


@settings(max_examples=200)
@given(tuples(), st.none() | u32, st.none() | u32, u16, u16)
def test_pyroute2_reads_what_we_encode(orig, mark, timeout, rport, lport):
    """pyroute2's nfct parser, written from the kernel headers independently, sees the same."""
    size = len(orig.src)
    real = c.NatRange(bytes([198, 18, 2, 21]) if size == 4 else bytes(15) + b"\x15", rport)
    local = c.NatRange(bytes([198, 18, 2, 100]) if size == 4 else bytes(15) + b"\x64", lport)
    ct = c.Conntrack(orig=orig, reply=orig, mark=mark, timeout=timeout, nat_dst=real,
                     nat_src=local, status=c.IPS_CONFIRMED)
    m = nfct_msg(c.new_request(ct, 9))
    m.decode()
    assert m["header"]["sequence_number"] == 9 and m["nfgen_family"] == orig.family
    v = "V4" if size == 4 else "V6"
    for tname in ("CTA_TUPLE_ORIG", "CTA_TUPLE_REPLY"):
        assert m.get_nested(tname, "CTA_TUPLE_IP", f"CTA_IP_{v}_SRC") == _addr(orig.src)
        assert m.get_nested(tname, "CTA_TUPLE_IP", f"CTA_IP_{v}_DST") == _addr(orig.dst)
        assert m.get_nested(tname, "CTA_TUPLE_PROTO", "CTA_PROTO_NUM") == orig.proto
        if orig.proto not in (1, 58):
            assert m.get_nested(tname, "CTA_TUPLE_PROTO", "CTA_PROTO_SRC_PORT") == orig.sport
            assert m.get_nested(tname, "CTA_TUPLE_PROTO", "CTA_PROTO_DST_PORT") == orig.dport
    assert m.get_attr("CTA_MARK") == mark and m.get_attr("CTA_TIMEOUT") == timeout
    assert m.get_nested("CTA_NAT_DST", f"CTA_NAT_{v}_MINIP") == _addr(real.addr)
    assert m.get_nested("CTA_NAT_SRC", f"CTA_NAT_{v}_MAXIP") == _addr(local.addr)
    assert m.get_nested("CTA_NAT_SRC", "CTA_NAT_PROTO", "CTA_PROTONAT_PORT_MIN") == lport
    assert m.get_nested("CTA_NAT_DST", "CTA_NAT_PROTO", "CTA_PROTONAT_PORT_MAX") == rport


# -- requests ---------------------------------------------------------------------------------

def test_injection_entry():
    orig = c.Tuple(6, bytes([198, 18, 1, 10]), bytes([198, 18, 0, 100]), 40000, 80)
    ct = c.injection(orig, c.NatRange(bytes([198, 18, 2, 21]), 8080),
                     c.NatRange(bytes([198, 18, 2, 100]), 5000), 300, mark=7)
    assert ct.reply == c.Tuple(6, bytes([198, 18, 0, 100]), bytes([198, 18, 1, 10]), 80, 40000)
    assert ct.status & c.IPS_CONFIRMED and ct.timeout == 300 and ct.mark == 7
    liberal = (c.TCP_FLAG_BE_LIBERAL, c.TCP_FLAG_BE_LIBERAL)
    assert ct.tcp == c.TcpInfo(c.TCP_CT_ESTABLISHED, None, None, liberal, liberal)
    [msg] = c.decode(c.new_request(ct, 3))
    assert msg.flags == c.NLM_F_REQUEST | c.NLM_F_ACK | c.NLM_F_CREATE | c.NLM_F_EXCL
    assert msg.ct == ct
    udp = c.injection(c.Tuple(17, orig.src, orig.dst, 1, 2), ct.nat_dst, ct.nat_src, 30)
    assert udp.tcp is None


def test_request_headers():
    orig = c.Tuple(17, LO6, LO6, 1, 2)
    [dump] = c.decode(c.dump_request(4))
    assert (dump.msg_type, dump.flags, dump.family) == (c.MSG_GET, c.NLM_F_REQUEST | c.NLM_F_DUMP, 0)
    [dele] = c.decode(c.delete_request(orig, 5))
    assert (dele.msg_type, dele.family, dele.ct) == (c.MSG_DELETE, socket.AF_INET6, c.Conntrack(orig=orig))
    [upd] = c.decode(c.update_request(c.Conntrack(orig=orig, mark=3), 6))
    assert upd.flags == c.NLM_F_REQUEST | c.NLM_F_ACK and upd.ct.mark == 3


def test_inverse():
    t = c.Tuple(1, LO4, bytes(4), icmp_id=5, icmp_type=8)
    assert t.inverse() == c.Tuple(1, bytes(4), LO4, icmp_id=5, icmp_type=0)
    with pytest.raises(c.CtnetlinkError):
        c.Tuple(1, LO4, LO4, icmp_type=3).inverse()


def test_mixed_families_refused():
    with pytest.raises(c.CtnetlinkError):
        c.encode_tuple(c.CTA_TUPLE_ORIG, c.Tuple(6, LO4, LO6, 1, 2))


# -- hostile input ----------------------------------------------------------------------------

@given(st.binary(max_size=300))
def test_garbage_raises_only_ctnetlink_error(data):
    try:
        c.decode(data)
    except c.CtnetlinkError:
        pass


@given(st.integers(1, len(KERNEL_TCP4_NEW) - 1))
def test_truncated_kernel_message(cut):
    with pytest.raises(c.CtnetlinkError):
        c.decode(KERNEL_TCP4_NEW[:cut])


@given(st.integers(16, len(KERNEL_TCP4_NEW) - 1), st.integers(0, 255))
def test_corrupted_kernel_message(pos, value):
    data = bytearray(KERNEL_TCP4_NEW)
    data[pos] = value
    try:
        c.decode(bytes(data))
    except c.CtnetlinkError:
        pass


def test_a_dump_request_with_a_mark_asks_the_kernel_to_filter():
    """CTA_MARK and CTA_MARK_MASK in a dump request: the kernel sends only the entries
    whose mark & mask equals the mark (ctnetlink's dump filter)."""
    plain, marked = c.dump_request(4), c.dump_request(4, mark=(0x54440000, 0xFFFF0000))
    [dump] = c.decode(marked)
    assert (dump.msg_type, dump.flags, dump.seq, dump.ct.mark) == (
        c.MSG_GET, c.NLM_F_REQUEST | c.NLM_F_DUMP, 4, 0x54440000)
    assert marked[:4] == len(marked).to_bytes(4, sys.byteorder)
    assert marked.endswith(bytes.fromhex("0800") + c.CTA_MARK_MASK.to_bytes(2, sys.byteorder)
                           + bytes.fromhex("ffff0000"))
    assert c.decode(plain)[0].ct.mark is None
