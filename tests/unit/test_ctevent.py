"""proto.ctevent.decode_event: the event socket's decoder reads what proto.ctnetlink.decode
reads of the attributes the node uses (tuples, status, timeout, mark, TCP state), leaves the
rest out, and raises only CtnetlinkError."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proto import ctnetlink as c
from proto.ctevent import decode_event
from tests.unit.test_ctnetlink import KERNEL_TCP4_NEW, KERNEL_UDP6_NEW, conntracks, u16, u32


def _narrow(m):
    if not isinstance(m, c.Message):
        return m
    k = m.ct
    tcp = None if k.tcp is None else c.TcpInfo(k.tcp.state)
    return m._replace(ct=c.Conntrack(k.orig, k.reply, k.status, k.timeout, k.mark, tcp=tcp))


def test_the_kernels_events():
    for raw in (KERNEL_TCP4_NEW, KERNEL_UDP6_NEW):
        assert decode_event(raw) == [_narrow(m) for m in c.decode(raw)]
    [m] = decode_event(KERNEL_TCP4_NEW)
    assert m.ct.tcp == c.TcpInfo(c.TCP_CT_SYN_SENT) and m.ct.mark is None and m.event == "new"


@given(conntracks(), u32, st.sampled_from((c.MSG_NEW, c.MSG_DELETE)), u16, u32)
def test_reads_what_decode_reads(ct, seq, mtype, flags, pid):
    raw = c.encode(c.Message(mtype, flags, seq, ct.orig.family, ct), pid=pid)
    assert decode_event(raw) == [_narrow(m) for m in c.decode(raw)]


def test_anything_but_one_message_is_decoded_whole():
    ct = c.Conntrack(orig=c.Tuple(6, bytes(4), bytes(4), 1, 2), id=9)
    two = c.encode(c.Message(c.MSG_NEW, 0, 1, 2, ct)) * 2
    assert decode_event(two) == c.decode(two) and decode_event(two)[0].ct.id == 9
    overrun = c._NLMSG.pack(16, c.NLMSG_OVERRUN, 0, 0, 0)
    with pytest.raises(c.CtnetlinkError, match="overrun"):
        decode_event(overrun)


@given(st.binary(max_size=300))
def test_garbage_raises_only_ctnetlink_error(data):
    try:
        decode_event(data)
    except c.CtnetlinkError:
        pass


@given(st.integers(16, len(KERNEL_TCP4_NEW) - 1), st.integers(0, 255))
def test_corrupted_kernel_message(pos, value):
    data = bytearray(KERNEL_TCP4_NEW)
    data[pos] = value
    try:
        decode_event(bytes(data))
    except c.CtnetlinkError:
        pass


@given(st.integers(1, len(KERNEL_TCP4_NEW) - 1))
def test_truncated_kernel_message(cut):
    with pytest.raises(c.CtnetlinkError):
        decode_event(KERNEL_TCP4_NEW[:cut])
