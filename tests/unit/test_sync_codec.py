"""The sync wire format: round trips, batching, and rejection of anything else."""
from __future__ import annotations

import ipaddress

import msgpack
import pytest
from hypothesis import given, settings, strategies as st

from director.conn import ASSURED, INACTIVE, SYNCED, Conn
from proto import sync as S
from proto.sync import Message, SyncEntry, SyncError

KEY = b"0123456789abcdef0123456789abcdef"
pk = lambda a: ipaddress.ip_address(a).packed


def entry(i=0, v6=False, **kw) -> SyncEntry:
    if v6:
        c, v, l, d = pk("2001:db8:1::10"), pk("2001:db8::100"), pk("2001:db8:2::100"), pk("2001:db8:2::21")
    else:
        c, v, l, d = pk("198.18.1.10"), pk("198.18.0.100"), pk("198.18.2.100"), pk("198.18.2.21")
    base = dict(proto=6, state=1, flags=ASSURED, caddr=c, cport=40000 + i, vaddr=v, vport=80,
                laddr=l, lport=5000 + i, daddr=d, dport=8080, timeout=900.0, template=False, in_pkts=3)
    base.update(kw)
    return SyncEntry(**base)


def header(**kw):
    h = dict(sync_id=7, node_id="dir-a", epoch=0x1234_5678_9ABC_DEF0, seq=42, send_time=1_700_000_000.25)
    h.update(kw)
    return h


MESSAGES = [
    Message(S.DATA, entries=[entry(0), entry(1, v6=True, proto=17, state=0, flags=INACTIVE, timeout=300.5),
                             entry(2, template=True, in_pkts=2**40)], **header()),
    Message(S.DATA, flags=S.F_BULK | S.F_BULK_START, entries=[entry(3)], **header(seq=1)),
    Message(S.DATA, flags=S.F_BULK | S.F_BULK_END, entries=[], **header(seq=2**64 - 1)),
    Message(S.HEARTBEAT, last_seq=42, **header()),
    Message(S.HEARTBEAT, last_seq=0, **header(seq=0, epoch=0)),
    Message(S.NACK, target="dir-b", target_epoch=99, ranges=[(1, 1), (5, 9), (2**63, 2**64 - 1)], **header(seq=3)),
    Message(S.RESYNC_REQUEST, **header(seq=1)),
    Message(S.RESYNC_REQUEST, target="dir-b", **header(seq=2, sync_id=0, node_id="ü" * 64)),
    Message(S.STATE, role="backup", priority=150, address="198.18.0.11", resigned=True,
            **header(seq=1)),
    Message(S.STATE, role="init", priority=0, address="", resigned=False, **header(seq=2)),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: S.TYPE_NAMES[m.type])
def test_every_message_type_round_trips(msg):
    raw = S.encode(msg, KEY)
    assert S.decode(raw, KEY, msg.sync_id) == msg
    assert S.decode(raw, KEY, None) == msg


def test_layout_is_a_msgpack_array_followed_by_an_hmac():
    import hashlib
    import hmac
    raw = S.encode(MESSAGES[3], KEY)
    packed, mac = raw[:-32], raw[-32:]
    assert mac == hmac.new(KEY, packed, hashlib.sha256).digest()
    assert msgpack.unpackb(packed) == [1, 7, "dir-a", 0x1234_5678_9ABC_DEF0, 42, 1_700_000_000.25,
                                       S.HEARTBEAT, 0, 42]


def test_entry_from_conn_and_apply_kwargs():
    c = Conn(6, pk("198.18.1.10"), 40000, pk("198.18.0.100"), 80, pk("198.18.2.100"), 6000,
             pk("198.18.2.21"), 8080)
    c.state, c.flags, c.in_pkts, c.expires = 1, ASSURED | SYNCED, 53, 910.0
    e = SyncEntry.from_conn(c, 10.0, 900.0)
    assert e.flags == ASSURED               # SYNCED is a local fact, never sent
    assert e.timeout == 900.0 and e.in_pkts == 53 and e.template is False
    kw = e.apply_kwargs()
    assert kw == dict(proto=6, state=1, flags=ASSURED, caddr=c.caddr, cport=40000, vaddr=c.vaddr,
                      vport=80, laddr=c.laddr, lport=6000, daddr=c.daddr, dport=8080,
                      timeout=900.0, in_pkts=53, template=False)
    # a bulk resync of an idle connection sends the time it has left, not a fresh timeout
    assert SyncEntry.from_conn(c, 700.0, 900.0).timeout == 210.0
    assert SyncEntry.from_conn(c, 990.0, 900.0).timeout == 0.0


@pytest.mark.parametrize("max_payload", [1472, 512, 9000])
@pytest.mark.parametrize("v6", [False, True])
def test_batches_fill_datagrams_up_to_the_payload_size_and_never_beyond(max_payload, v6):
    entries = [entry(i, v6=v6, in_pkts=2**60 + i, timeout=123.456) for i in range(500)]
    dgs = S.pack_entries(header(seq=2**64 - 600, epoch=2**64 - 1, sync_id=255), entries, KEY, max_payload)
    assert all(len(d) <= max_payload for d in dgs)
    assert max(len(d) for d in dgs[:-1]) > max_payload - 110     # and they are nearly full
    back = [S.decode(d, KEY, 255) for d in dgs]
    assert [m.seq for m in back] == list(range(2**64 - 600, 2**64 - 600 + len(dgs)))
    assert [e for m in back for e in m.entries] == entries


def test_default_payload_holds_as_many_ipv4_entries_as_ipvs_roughly():
    dgs = S.pack_entries(header(), [entry(i) for i in range(100)], KEY)
    per = len(S.decode(dgs[0], KEY, 7).entries)
    assert 30 <= per <= 40, per


def test_nack_of_the_largest_size_fits():
    per = S.nack_ranges_per_message("dir-a", "dir-b")
    msg = Message(S.NACK, target="dir-b", target_epoch=2**64 - 1,
                  ranges=[(2**64 - 2, 2**64 - 1)] * per, **header(seq=2**64 - 1))
    assert len(S.encode(msg, KEY)) <= 1472


@pytest.mark.parametrize("raw,reason", [
    (b"", "malformed"),
    (b"\x00" * 100, "malformed"),
])
def test_garbage_is_malformed(raw, reason):
    with pytest.raises(SyncError) as ei:
        S.decode(raw, KEY, 7)
    assert ei.value.reason == reason


def test_wrong_key_is_bad_mac_and_wrong_sync_id_and_version_are_named():
    raw = S.encode(MESSAGES[0], KEY)
    with pytest.raises(SyncError) as ei:
        S.decode(raw, b"another key, 16+ bytes", 7)
    assert ei.value.reason == "bad_mac"
    with pytest.raises(SyncError) as ei:
        S.decode(raw, KEY, 8)
    assert ei.value.reason == "wrong_sync_id"
    future = Message(S.HEARTBEAT, last_seq=1, version=2, **header())
    with pytest.raises(SyncError) as ei:
        S.decode(S.encode(future, KEY), KEY, 7)
    assert ei.value.reason == "bad_version"


def _signed(obj) -> bytes:
    import hashlib
    import hmac
    packed = msgpack.packb(obj, use_bin_type=True)
    return packed + hmac.new(KEY, packed, hashlib.sha256).digest()


GOOD_ENTRY = entry().to_wire()


@pytest.mark.parametrize("obj", [
    [1, 7, "a", 1, 1, 1.0, 2, 0],                                  # 8 fields
    [1, 7, "a", 1, 1, 1.0, 2, 0, 5, 6],                            # 10
    [1, 7, "", 1, 1, 1.0, 2, 0, 5],                                # empty node id
    [1, 7, "a", -1, 1, 1.0, 2, 0, 5],                              # negative epoch
    [1, 7, "a", 1, 1, "now", 2, 0, 5],                             # time not a float
    [1, 7, "a", 1, 1, float("nan"), 2, 0, 5],                      # NaN time
    [1, 7, "a", 1, 1, 1.0, 9, 0, 5],                               # unknown type
    [1, 7, "a", 1, 1, 1.0, 2, 1, 5],                               # flags on a heartbeat
    [1, 7, "a", 1, 1, 1.0, 2, 0, True],                            # bool last seq
    [1, 7, "a", 1, 1, 1.0, 1, 0, {}],                              # DATA body not a list
    [1, 7, "a", 1, 1, 1.0, 1, 8, []],                              # unknown DATA flag
    [1, 7, "a", 1, 1, 1.0, 1, 2, []],                              # BULK_START without BULK
    [1, 7, "a", 1, 1, 1.0, 1, 0, [GOOD_ENTRY[:13]]],               # short entry
    [1, 7, "a", 1, 1, 1.0, 1, 0, [GOOD_ENTRY[:3] + [b"abc"] + GOOD_ENTRY[4:]]],   # 3-byte address
    [1, 7, "a", 1, 1, 1.0, 1, 0, [GOOD_ENTRY[:3] + [bytes(16)] + GOOD_ENTRY[4:]]],  # mixed families
    [1, 7, "a", 1, 1, 1.0, 1, 0, [GOOD_ENTRY[:4] + [70000] + GOOD_ENTRY[5:]]],     # port
    [1, 7, "a", 1, 1, 1.0, 1, 0, [GOOD_ENTRY[:2] + [0x04] + GOOD_ENTRY[3:]]],      # SYNCED flag
    [1, 7, "a", 1, 1, 1.0, 1, 0, [GOOD_ENTRY[:11] + [-1.0] + GOOD_ENTRY[12:]]],    # timeout
    [1, 7, "a", 1, 1, 1.0, 1, 0, [GOOD_ENTRY[:12] + [1] + GOOD_ENTRY[13:]]],       # template not bool
    [1, 7, "a", 1, 1, 1.0, 3, 0, ["b", 1, [[5, 4]]]],               # reversed range
    [1, 7, "a", 1, 1, 1.0, 3, 0, ["b", 1, [[0, 4]]]],               # seq 0
    [1, 7, "a", 1, 1, 1.0, 3, 0, [1, 1, [[1, 4]]]],                 # target not a string
    [1, 7, "a", 1, 1, 1.0, 4, 0, ["b", "c"]],                       # two targets
    [1, 7, "a", 1, 1, 1.0, 8, 0, ["backup", 100, "198.18.0.1"]],    # STATE: 3 fields
    [1, 7, "a", 1, 1, 1.0, 8, 0, ["", 100, "198.18.0.1", False]],   # STATE: empty role
    [1, 7, "a", 1, 1, 1.0, 8, 0, ["backup", 256, "198.18.0.1", False]],  # STATE: priority
    [1, 7, "a", 1, 1, 1.0, 8, 0, ["backup", 100, "eth0", False]],   # STATE: not an address
    [1, 7, "a", 1, 1, 1.0, 8, 0, ["backup", 100, "198.18.0.1", 1]],  # STATE: resigned not bool
    [1, 7, "a", 1, 1, 1.0, 9, 0, []],                               # unknown type (9)
    {"version": 1},
])
def test_signed_but_ill_formed_messages_are_malformed(obj):
    with pytest.raises(SyncError) as ei:
        S.decode(_signed(obj), KEY, 7)
    assert ei.value.reason == "malformed"


@pytest.mark.parametrize("msg", [MESSAGES[0], MESSAGES[5]], ids=["data", "nack"])
def test_every_truncation_and_every_single_bit_flip_is_rejected(msg):
    raw = S.encode(msg, KEY)
    reasons = set()
    for n in range(len(raw)):
        with pytest.raises(SyncError) as ei:
            S.decode(raw[:n], KEY, 7)
        reasons.add(ei.value.reason)
    for i in range(len(raw)):
        for bit in range(8):
            bad = bytearray(raw)
            bad[i] ^= 1 << bit
            with pytest.raises(SyncError) as ei:
                S.decode(bytes(bad), KEY, 7)
            reasons.add(ei.value.reason)
    assert reasons <= set(S.REASONS)
    assert {"malformed", "bad_mac", "wrong_sync_id", "bad_version"} <= reasons


def test_appended_bytes_are_rejected():
    raw = S.encode(MESSAGES[3], KEY)
    for extra in (b"\x00", b"\xc0", raw[-32:]):
        with pytest.raises(SyncError):
            S.decode(raw + extra, KEY, 7)


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=2000))
def test_random_bytes_only_ever_raise_sync_error(data):
    with pytest.raises(SyncError):
        S.decode(data, KEY, 7)


@settings(max_examples=500, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats()
                    | st.text(max_size=80) | st.binary(max_size=20),
                    lambda c: st.lists(c, max_size=16) | st.dictionaries(st.text(max_size=5), c, max_size=4),
                    max_leaves=60))
def test_any_signed_msgpack_value_decodes_or_raises_sync_error(obj):
    try:
        raw = _signed(obj)
    except (OverflowError, ValueError, TypeError):
        return
    try:
        msg = S.decode(raw, KEY, 7)
    except SyncError:
        return
    assert isinstance(msg, Message)
    assert S.decode(S.encode(msg, KEY), KEY, 7) == msg


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 255), st.integers(0, 11), st.integers(0, 65535),
                          st.floats(0, 2**31), st.integers(0, 2**64 - 1)), max_size=120),
       st.integers(300, 3000))
def test_any_entries_pack_within_the_payload_and_round_trip(specs, max_payload):
    entries = [entry(0, v6=v6, proto=p, state=s, cport=port, lport=port, timeout=t, in_pkts=n)
               for v6, p, s, port, t, n in specs]
    dgs = S.pack_entries(header(seq=1), entries, KEY, max_payload)
    assert all(len(d) <= max_payload for d in dgs)
    assert [e for d in dgs for e in S.decode(d, KEY, 7).entries] == entries


class _Shift:
    """What proto.sync reads of a director.proxy_insert.StreamHeader: its sync option."""
    def __init__(self, option):
        self.option = option

    def sync_options(self):
        return S.seq_options(self.option)


@pytest.mark.parametrize("expires, now, timeout", [
    (910.0, 10.0, 900.0), (710.5, 10.0, 900.0), (0.0, 10.0, 60.0), (5.0, 10.0, 120.0),
    (910.25, 10.0, 900.0)])
@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("option", [None, (1000, 37, 0, True, 2, False), (5, 107, 0, False, 1, False),
                                    (9, 28, 0, True, 2, True)])
def test_pack_conn_is_pack_entry_of_from_conn(expires, now, timeout, v6, option):
    """The sync hook's packed path (pack_conn) sends exactly the bytes of the entry path,
    whole and fractional timeouts, expired and unscheduled connections, with and without
    the PROXY sequence option."""
    a = (lambda s: ipaddress.ip_address(s).packed) if not v6 else (
        lambda s: ipaddress.ip_address("2001:2::" + s.replace(".", ":")).packed)
    c = Conn(6, a("198.18.1.10"), 40000, a("198.18.0.100"), 80, a("198.18.2.100"), 6000,
             a("198.18.2.21"), 8080)
    c.state, c.flags, c.in_pkts, c.expires = 3, ASSURED | SYNCED | INACTIVE, 7, expires
    if option is not None:
        c.client_address_state = _Shift(option)
    assert S.pack_conn(c, now, timeout) == S.pack_entry(SyncEntry.from_conn(c, now, timeout))
    # addresses held as bytearray (from_conn copies them to bytes; pack_conn does not need to)
    c.caddr, c.daddr = bytearray(c.caddr), bytearray(c.daddr)
    assert S.pack_conn(c, now, timeout) == S.pack_entry(SyncEntry.from_conn(c, now, timeout))
