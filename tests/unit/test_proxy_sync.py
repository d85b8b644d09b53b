"""A PROXY connection's sequence shift travels with its sync entry (option "seq", as IPVS's
IPVS_OPT_SEQ_DATA carries init_seq, delta, previous_delta): sent urgently when the header
goes out, and a backup that takes over never writes a second header and shifts every
number exactly as the old master did.  The two engines talk through the real sync sender
and receiver objects (signed datagrams, the policy's hook), on an injected clock."""
from __future__ import annotations

import ipaddress

import msgpack
import pytest
from scapy.layers.inet import IP, TCP

from director import proxy_insert
from director.engine import Engine
from proto import proxy
from proto import sync as S
from proto.sync import SyncEntry
from syncd.config import SyncConfig
from syncd.policy import SyncPolicy, make_hook
from syncd.receiver import SyncReceiver, engine_apply, engine_apply_bulk
from syncd.sender import SyncSender
from tandem.ha import engine_source
from tests.helpers import CLIENT, VIP, checksums_ok
from tests.unit.test_engine_proxy import config, seg

KEY = b"tandem-sync-test-key-0123456789"
CFG = SyncConfig(sync_id=5, key=KEY)
pk = lambda a: ipaddress.ip_address(a).packed


def entry(seq=None, **kw) -> SyncEntry:
    e = SyncEntry(6, 1, 0, pk(CLIENT), 40000, pk(VIP), 81, pk("198.18.2.100"), 5000,
                  pk("198.18.2.21"), 8081, 900.0, False, 3, seq)
    for k, v in kw.items():
        setattr(e, k, v)
    return e


def roundtrip(entries):
    raw = S.pack_entries(dict(sync_id=5, node_id="a", epoch=1, seq=1, send_time=1.0), entries, KEY)
    assert len(raw) == 1
    return S.decode(raw[0], KEY, 5).entries


# == the wire format ===================================================================

def test_the_seq_option_round_trips_and_a_plain_entry_keeps_its_fourteen_elements():
    plain, shifted = entry(), entry((0xFFFF_FFF0, 28, 0, True, 2, False))
    assert roundtrip([plain, shifted]) == [plain, shifted]
    assert len(msgpack.unpackb(S.pack_entry(plain))) == 14
    wire = msgpack.unpackb(S.pack_entry(shifted))
    assert len(wire) == 15 and wire[14] == {"seq": [0xFFFF_FFF0, 28, 0, True, 2]}
    assert shifted.apply_kwargs()["seq"] == (0xFFFF_FFF0, 28, 0, True, 2, False)
    assert "seq" not in plain.apply_kwargs()


def test_unknown_options_are_ignored_and_a_bad_seq_option_is_malformed():
    def raw_with(options):
        e = entry().to_wire() + [options]
        packed = msgpack.packb([1, 5, "a", 1, 1, 1.0, S.DATA, 0, [e]], use_bin_type=True)
        return packed + S._mac(KEY, packed)

    assert S.decode(raw_with({"later": [1, 2]}), KEY, 5).entries == [entry()]
    assert S.decode(raw_with({"seq": [7, 28, 0, False, 1], "x": 1}), KEY, 5).entries[0].seq == \
        (7, 28, 0, False, 1, False)
    for bad in ([], {"seq": [7, 28, 0, 1, 2]}, {"seq": [7, 28, 0, True, 3]},
                {"seq": [1 << 32, 28, 0, True, 2]}, {"seq": [7, -1, 0, True, 2]},
                {"seq": [7, 28, 0, True]}, {"seq": "x"}, {1: 2}):
        with pytest.raises(S.SyncError) as err:
            S.decode(raw_with(bad), KEY, 5)
        assert err.value.reason == S.MALFORMED, bad


def test_resume_writes_the_same_header_and_refuses_a_length_that_does_not_match():
    header = proxy.encode(1, CLIENT, VIP, 40000, 81)
    adj = proxy_insert.resume((1001, len(header), 0, True, 1, False), pk(CLIENT), 40000, pk(VIP), 81)
    assert adj.header == header and adj.inserted == 1 and adj.state() == (1001, len(header), 0)
    assert proxy_insert.resume((1001, len(header) + 1, 0, True, 1, False), pk(CLIENT), 40000, pk(VIP), 81) is None


# == the policy: the header's entry goes at once =======================================

def test_the_entry_goes_urgently_when_the_header_goes_out_whatever_the_packet_count():
    eng = Engine(config("proxy-v2"))
    queued = []
    eng.sync_hook = make_hook(SyncPolicy(), eng, lambda e, now, urgent=False: queued.append((e, urgent)))
    syn = IP(eng.handle(seg(CLIENT, VIP, 40000, 81, "S", seq=1000), 0.0))
    rs, laddr, lport = syn.dst, syn.src, syn[TCP].sport
    assert eng.handle(seg(rs, laddr, 8081, lport, "SA", 5000, 1001), 0.0)
    assert [(e.seq, u) for e, u in queued] == [((1001, 28, 0, False, 2, False), True)]    # on the SYN
    for _ in range(4):       # packets 2..5: ESTABLISHED (at once), 3 (the threshold), no more
        assert eng.handle(seg(CLIENT, VIP, 40000, 81, "A", 1001, 5001), 0.01)
    assert [e.in_pkts for e, _ in queued] == [1, 2, 3]
    assert eng.handle(seg(CLIENT, VIP, 40000, 81, "PA", 1001, 5001, b"hello"), 0.02)  # packet 6
    assert len(queued) == 4
    e, urgent = queued[-1]
    assert urgent and e.seq == (1001, 28, 0, True, 2, False) and e.in_pkts == 6
    # neither a retransmission of the first segment nor later data sends it again
    assert eng.handle(seg(CLIENT, VIP, 40000, 81, "PA", 1001, 5001, b"hello"), 0.03)
    assert eng.handle(seg(CLIENT, VIP, 40000, 81, "PA", 1006, 5001, b"world"), 0.03)
    assert len(queued) == 4


# == two nodes through the real sender and receiver ======================================

class Node:
    def __init__(self, name: str, seed: int, **extra):
        self.engine = Engine(config("proxy-v2", **extra))
        snapshot, to_entry = engine_source(self.engine)
        self.sender = SyncSender(CFG, name, epoch=seed, key=KEY, snapshot=snapshot, to_entry=to_entry)
        self.receiver = SyncReceiver(CFG, name, KEY, engine_apply(self.engine),
                                     apply_bulk=engine_apply_bulk(self.engine),
                                     on_control=self.sender.on_message, epoch=seed)
        self.receiver.attach(self.sender)
        self.engine.sync_hook = make_hook(SyncPolicy(), self.engine, self.sender.queue)


class Pair:
    """a and b, each datagram delivered at once; `t` only moves when told."""

    def __init__(self, **extra):
        self.a, self.b = Node("a", 11, **extra), Node("b", 22, **extra)
        self.t = 0.0
        self.deliver("a", self.a.receiver.start(0.0))
        self.deliver("b", self.b.receiver.start(0.0))
        self.run(0.0, 1.0)      # handshakes, empty bulks

    def deliver(self, src: str, datagrams) -> None:
        dst = self.b if src == "a" else self.a
        for d in datagrams:
            self.deliver("b" if src == "a" else "a", dst.receiver.on_datagram(d, self.t))

    def poll(self) -> None:
        for name, node in (("a", self.a), ("b", self.b)):
            self.deliver(name, node.sender.poll(self.t) + node.receiver.poll(self.t))

    def run(self, start: float, end: float, step: float = 0.01) -> None:
        self.t = start
        while self.t < end:
            self.poll()
            self.t = round(self.t + step, 6)


def client(eng, flags, seq, ack=0, payload=b"", t=0.0, cport=40000):
    return eng.handle(seg(CLIENT, VIP, cport, 81, flags, seq, ack, payload), t)


def test_the_backup_continues_the_shift_without_a_second_header():
    """The client's first segment carries the header through a; it is lost on the back
    segment and retransmitted after b took over: b writes the same header at the same
    sequence numbers (one header in the server's stream), and every later number, both
    ways, is what a would have written (a is driven beside b as the oracle)."""
    pair = Pair()
    a, b = pair.a.engine, pair.b.engine
    pair.t = t = 2.0
    syn = IP(client(a, "S", 0xFFFF_FFF0, t=t))       # the stream wraps past 2**32
    rs, laddr, lport = syn.dst, syn.src, syn[TCP].sport
    assert a.handle(seg(rs, laddr, 8081, lport, "SA", 5000, 0xFFFF_FFF1), t)
    assert client(a, "A", 0xFFFF_FFF1, 5001, t=t)
    first = IP(client(a, "PA", 0xFFFF_FFF1, 5001, b"0123456789abcdefXYZ", t=t))
    header = proxy.encode(2, CLIENT, VIP, 40000, 81)
    assert bytes(first[TCP].payload) == header + b"0123456789abcdefXYZ"
    pair.poll()                         # the same instant: the urgent entry goes now
    conn = b.index[next(iter(a.table)).orig_key]
    assert conn.client_address_state is not None and conn.client_address_state.sync_option() == (0xFFFF_FFF1, 28, 0, True, 2, False)
    assert (conn.laddr, conn.lport) == (pk(laddr), lport)

    # a dies; b answers every packet, a (frozen copy of the master) says what it would have
    packets = [
        seg(CLIENT, VIP, 40000, 81, "PA", 0xFFFF_FFF1, 5001, b"0123456789abcdefXYZ"),  # retransmit
        seg(CLIENT, VIP, 40000, 81, "PA", 0x4, 5001, b"more"),                           # wrapped
        seg(rs, laddr, 8081, lport, "A", 5001, (0xFFFF_FFF1 + 28 + 19) & 0xFFFFFFFF),
        seg(rs, laddr, 8081, lport, "A", 5001, (0xFFFF_FFF1 + 10) & 0xFFFFFFFF),        # inside the header
        seg(rs, laddr, 8081, lport, "A", 5001, 0xFFFF_FFF1 + 28 & 0xFFFFFFFF,
            options=[("SAck", ((0x4 + 28) & 0xFFFFFFFF, (0x8 + 28) & 0xFFFFFFFF))]),
        seg(CLIENT, VIP, 40000, 81, "FA", 0x8, 5001),
    ]
    for p in packets:
        want, got = a.handle(p, 3.0), b.handle(p, 3.0)
        assert got is not None and got == want and checksums_ok(got)
    again = IP(b.handle(packets[0], 3.1))
    assert bytes(again[TCP].payload) == header + b"0123456789abcdefXYZ"
    assert again[TCP].seq == 0xFFFF_FFF1            # the header's own place, not a second one
    wrapped = IP(b.handle(packets[1], 3.1))
    assert wrapped[TCP].seq == (0x4 + 28) and bytes(wrapped[TCP].payload) == b"more"
    assert b.stats["proxy_headers"] == 0 and b.stats["proxy_headers_resent"] == 2


def test_a_connection_synced_before_its_first_byte_gets_its_header_from_the_backup():
    """Synced on the SYN and at ESTABLISHED with no data yet: b, taking over, writes the
    one header itself on the first data segment, then tells a (now its backup) at once."""
    pair = Pair()
    a, b = pair.a.engine, pair.b.engine
    pair.t = 2.0
    syn = IP(client(a, "S", 1000, t=2.0))
    assert a.handle(seg(syn.dst, syn.src, 8081, syn[TCP].sport, "SA", 5000, 1001), 2.0)
    assert client(a, "A", 1001, 5001, t=2.0)
    pair.poll()
    conn = b.index[next(iter(a.table)).orig_key]
    assert conn.client_address_state.sync_option() == (1001, 28, 0, False, 2, False)
    first = IP(client(b, "PA", 1001, 5001, b"hi", t=2.5))
    assert bytes(first[TCP].payload) == proxy.encode(2, CLIENT, VIP, 40000, 81) + b"hi"
    assert b.stats["proxy_headers"] == 1
    pair.t = 2.5
    pair.poll()
    back = a.index[conn.orig_key]
    assert back.client_address_state.inserted == 1 and back.client_address_state.announced      # a learned it was sent
    assert client(a, "PA", 1003, 5001, b"x", t=2.6) == client(b, "PA", 1003, 5001, b"x", t=2.6)


def test_a_bulk_resync_carries_the_shift():
    pair = Pair()
    a = pair.a.engine
    syn = IP(client(a, "S", 1000, t=2.0))
    assert a.handle(seg(syn.dst, syn.src, 8081, syn[TCP].sport, "SA", 5000, 1001), 2.0)
    assert client(a, "PA", 1001, 5001, b"hello", t=2.0)
    fresh = Node("b", 33)               # b restarts: only a bulk can give it the table
    pair.b = fresh
    pair.t = 2.1
    pair.deliver("b", fresh.receiver.start(2.1))
    pair.run(2.1, 4.0)
    conn = fresh.engine.index[next(iter(a.table)).orig_key]
    assert conn.client_address_state is not None and conn.client_address_state.sync_option() == (1001, 28, 0, True, 2, False)


def test_an_option_whose_header_length_differs_is_counted_and_not_used():
    b = Engine(config("proxy-v2"))
    kw = entry((1001, 29, 0, True, 2, False)).apply_kwargs()     # a v2 IPv4 header is 28 bytes
    assert b.apply_synced(now=1.0, **kw) == "created"
    assert b.sync_stats["seq_refused"] == 1
    assert next(iter(b.table)).client_address_state is None


# == a client that sends its own PROXY header ===========================================

OWN = proxy.encode(1, "203.0.113.9", VIP, 5555, 81) + b"GET / HTTP/1.0\r\n\r\n"


def handshake(eng, t=2.0):
    syn = IP(client(eng, "S", 1000, t=t))
    assert eng.handle(seg(syn.dst, syn.src, 8081, syn[TCP].sport, "SA", 5000, 1001), t)
    assert client(eng, "A", 1001, 5001, t=t)


def test_refuse_drops_the_clients_own_header_and_the_backup_keeps_refusing():
    """client_proxy_header = "refuse" (the default): the segment that opens with the
    client's header and every later client packet are dropped (no byte reaches the real
    server, so never two headers); the peer learns it at once and drops them too."""
    pair = Pair()
    a, b = pair.a.engine, pair.b.engine
    pair.t = 2.0
    handshake(a)
    assert client(a, "PA", 1001, 5001, OWN, t=2.0) is None
    assert client(a, "PA", 1001 + len(OWN), 5001, b"more", t=2.0) is None
    assert a.stats["proxy_headers_refused"] == 1 and a.drops["proxy_refused"] == 2
    assert a.stats["proxy_headers"] == 0
    pair.poll()                         # urgent: the same instant
    conn = b.index[next(iter(a.table)).orig_key]
    assert conn.client_address_state.refused and conn.client_address_state.sync_option()[5] is True
    assert client(b, "PA", 1001, 5001, OWN, t=3.0) is None          # after a takeover
    assert b.stats["proxy_headers"] == 0 and b.drops["proxy_refused"] == 1


def test_pass_lets_the_clients_own_header_through_alone_on_both_nodes():
    """client_proxy_header = "pass": the client's header reaches the real server as it
    came, the node writes none and shifts nothing; the backup does the same for a
    retransmission after a takeover (it learned that no header of ours is in the stream)."""
    pair = Pair(client_proxy_header="pass")
    a, b = pair.a.engine, pair.b.engine
    pair.t = 2.0
    handshake(a)
    out = IP(client(a, "PA", 1001, 5001, OWN, t=2.0))
    assert bytes(out[TCP].payload) == OWN and out[TCP].seq == 1001
    later = IP(client(a, "PA", 1001 + len(OWN), 5001, b"x", t=2.0))
    assert later[TCP].seq == 1001 + len(OWN)
    assert a.stats["proxy_headers_passed"] == 1 and a.stats["proxy_headers"] == 0
    pair.poll()
    conn = b.index[next(iter(a.table)).orig_key]
    assert conn.client_address_state.sync_option()[:4] == (1001, 0, 0, True)
    again = IP(client(b, "PA", 1001, 5001, OWN, t=3.0))
    assert bytes(again[TCP].payload) == OWN and again[TCP].seq == 1001
    assert b.stats["proxy_headers"] == 0 and b.stats["proxy_headers_resent"] == 0


def test_a_service_without_its_own_header_still_gets_ours_under_pass():
    eng = Engine(config("proxy-v2", client_proxy_header="pass"))
    handshake(eng)
    out = IP(client(eng, "PA", 1001, 5001, b"GET / HTTP/1.0\r\n\r\n"))
    assert bytes(out[TCP].payload).startswith(proxy.SIGNATURE)
    assert eng.stats["proxy_headers"] == 1 and eng.stats["proxy_headers_passed"] == 0


def test_the_refused_option_must_be_a_bool():
    e = entry().to_wire() + [{"seq": [7, 28, 0, True, 2], "refused": 1}]
    packed = msgpack.packb([1, 5, "a", 1, 1, 1.0, S.DATA, 0, [e]], use_bin_type=True)
    with pytest.raises(S.SyncError):
        S.decode(packed + S._mac(KEY, packed), KEY, 5)
    ok = entry((7, 28, 0, True, 2, True))
    assert roundtrip([ok]) == [ok]
