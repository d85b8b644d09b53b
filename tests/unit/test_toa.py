"""client_address = "toa": the real engine writes TCP option 254 (DPVS's and the Alibaba
FULLNAT kernel's TOA: kind 254, length 8 with port + IPv4 address, length 20 with port +
IPv6 address) first in the option list of the client segments that can complete the
real server's handshake.  scapy is the oracle: it reparses every packet the engine emits,
recomputes every checksum, and reads the options as a TOA module does (the first option
254 of the right length names the client)."""
from __future__ import annotations

import ipaddress
import struct

import msgpack
import pytest
from hypothesis import assume, given, settings, strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6

from director import toa
from director.engine import Engine
from proto import packet as P
from proto.checksum import fold, ones_sum, pseudo_header_sum
from proto import sync as S
from proto.consts import ESTABLISHED
from proto.sync import SyncEntry
from tests.helpers import CLIENT, RS, VIP, checksums_ok
from tests.unit.test_engine_proxy import CLIENT6, LADDRS6, RS6, VIP6, config, parsed, seg

pk = lambda a: ipaddress.ip_address(a).packed


def toa_of(p) -> tuple[str, int] | None:
    """What a TOA module learns from a segment: the first option 254 of length 8 or 20."""
    for o in p[TCP].options:
        if o[0] == 254 and len(o[1]) in (6, 18):
            port, addr = struct.unpack("!H", o[1][:2])[0], o[1][2:]
            return str(ipaddress.ip_address(addr)), port
    return None


class Conn:
    """A client connection through a TOA service of the engine."""

    def __init__(self, eng, client=CLIENT, vip=VIP, cport=40000, isn=1000, options=None):
        self.eng, self.client, self.vip, self.cport = eng, client, vip, cport
        opts = [("MSS", 1460), ("SAckOK", b"")] if options is None else options
        syn = parsed(eng.handle(seg(client, vip, cport, 81, "S", seq=isn, options=opts), 0.0))
        assert toa_of(syn) is None                  # never on the SYN (DPVS >= 1.9.6)
        self.rs, self.laddr, self.lport = syn.dst, syn.src, syn[TCP].sport

    def send(self, flags, seq, ack=0, payload=b"", options=()):
        out = self.eng.handle(seg(self.client, self.vip, self.cport, 81, flags, seq, ack,
                                  payload, options), 0.1)
        return None if out is None else parsed(out)

    def reply(self, flags, seq, ack, options=()):
        return parsed(self.eng.handle(seg(self.rs, self.laddr, 8081, self.lport, flags, seq, ack,
                                          options=options), 0.1))


TS = ("Timestamp", (123456, 654321))


@pytest.mark.parametrize("client, vip, laddrs, reals, size", [
    (CLIENT, VIP, ["198.18.2.100"], RS, 8), (CLIENT6, VIP6, LADDRS6, RS6, 20)])
def test_the_handshake_ack_and_early_data_carry_the_clients_address(client, vip, laddrs, reals, size):
    eng = Engine(config("toa", vip=vip, laddrs=laddrs, reals=reals))
    c = Conn(eng, client=client, vip=vip)
    synack = c.reply("SA", 5000, 1001, options=[("MSS", 1460), ("SAckOK", b"")])
    assert dict(synack[TCP].options)["MSS"] == 1460 - size    # room for the option
    ack = c.send("A", 1001, 5001, options=[("NOP", None), ("NOP", None), TS])
    assert toa_of(ack) == (client, 40000)
    assert ack[TCP].options[0][0] == 254 and ack[TCP].dataofs == (20 + size + 12) // 4
    assert dict(ack[TCP].options)["Timestamp"] == TS[1]         # the client's options follow
    data = c.send("PA", 1001, 5001, b"GET / HTTP/1.0\r\n\r\n")
    assert toa_of(data) == (client, 40000) and bytes(data[TCP].payload) == b"GET / HTTP/1.0\r\n\r\n"
    assert data[TCP].seq == 1001                                # no sequence number moves
    assert c.reply("PA", 5001, 1019)[TCP].ack == 1019
    later = c.send("A", 1019, 5101)                             # the server has sent data
    assert toa_of(later) is None and later[TCP].dataofs == 5
    assert next(iter(eng.table)).client_address_state is None         # no TOA state, no per-packet cost left


def test_an_upload_carries_it_only_until_the_server_acks():
    """A client that sends before the server sends a byte (an upload) keeps acking the
    server's first byte; once the server has acked anything its socket exists, and the
    rest of the upload carries no option (DPVS would keep adding it to every segment)."""
    eng = Engine(config("toa"))
    c = Conn(eng)
    c.reply("SA", 5000, 1001)
    assert toa_of(c.send("A", 1001, 5001)) == (CLIENT, 40000)
    assert toa_of(c.send("PA", 1001, 5001, b"x" * 100)) == (CLIENT, 40000)
    c.reply("A", 5001, 1101)                                    # the server acks, no data
    more = c.send("PA", 1101, 5001, b"y" * 100)
    assert toa_of(more) is None and more[TCP].dataofs == 5
    assert next(iter(eng.table)).client_address_state is None and eng.stats["toa_inserted"] == 2
    assert toa_of(c.send("R", 1019, 0)) is None
    assert (eng.stats["toa_inserted"], eng.stats["toa_pruned"], eng.stats["toa_no_room"]) == (2, 0, 0)


def test_a_plain_service_writes_no_option_and_keeps_the_mss():
    eng = Engine(config("none", port=81))
    c = Conn(eng)
    assert dict(c.reply("SA", 5000, 1001, options=[("MSS", 1460)])[TCP].options)["MSS"] == 1460
    assert toa_of(c.send("A", 1001, 5001)) is None and eng.stats["toa_inserted"] == 0


def test_a_client_option_254_never_reaches_the_server_ahead_of_ours():
    eng = Engine(config("toa"))
    c = Conn(eng)
    c.reply("SA", 5000, 1001)
    forged = (254, struct.pack("!H", 1) + pk("203.0.113.9"))
    ack = c.send("A", 1001, 5001, options=[forged, ("NOP", None), ("NOP", None), TS])
    assert toa_of(ack) == (CLIENT, 40000)
    assert [o for o in ack[TCP].options if o[0] == 254] == [(254, struct.pack("!H", 40000) + pk(CLIENT))]
    assert eng.stats["toa_pruned"] == 1


def test_a_full_option_space_is_pruned_as_dpvs_does_keeping_the_timestamps():
    """40 bytes of options (timestamps and three SACK blocks): the NOPs go, then every
    option but the timestamps, and the option goes in (DPVS tcp_in_prune_options)."""
    eng = Engine(config("toa"))
    c = Conn(eng)
    c.reply("SA", 5000, 1001)
    full = [("NOP", None), ("NOP", None), TS, ("SAck", (1, 2, 3, 4, 5, 6))]
    raw = seg(CLIENT, VIP, 40000, 81, "A", 1001, 5001, b"x", full)
    assert IP(raw)[TCP].dataofs == 15
    out = parsed(eng.handle(raw, 0.1))
    assert toa_of(out) == (CLIENT, 40000) and bytes(out[TCP].payload) == b"x"
    assert dict(out[TCP].options)["Timestamp"] == TS[1] and "SAck" not in dict(out[TCP].options)
    assert (eng.stats["toa_inserted"], eng.stats["toa_pruned"]) == (1, 1)


def test_no_room_is_counted_and_the_segment_goes_on_intact():
    """An option list that cannot be read leaves no room DPVS could prune: the segment
    is forwarded as it came (FULLNAT rewrite only), counted toa_no_room."""
    eng = Engine(config("toa"))
    c = Conn(eng)
    c.reply("SA", 5000, 1001)
    raw = bytearray(seg(CLIENT, VIP, 40000, 81, "A", 1001, 5001, b"data",
                        [TS, ("NOP", None), ("NOP", None)] + [("NOP", None)] * 26))
    raw[20 + 20 + 12] = 30          # an option 30 whose length (1) runs past the list
    raw[20 + 20 + 13] = 1
    raw[36:38] = b"\0\0"
    s = ones_sum(raw[20:]) + pseudo_header_sum(pk(CLIENT), pk(VIP), 6, len(raw) - 20)
    raw[36:38] = struct.pack("!H", ~fold(s) & 0xFFFF)
    raw = bytes(raw)
    out = eng.handle(raw, 0.1)      # (scapy would rewrite the broken option: not the oracle here)
    assert len(out) == len(raw) and P.l4_checksum_ok(out, P.parse(out))
    assert out[24:36] == raw[24:36] and out[38:] == raw[38:]   # seq, ack, flags, options, data
    assert (eng.stats["toa_inserted"], eng.stats["toa_no_room"]) == (0, 1)


def test_a_bad_checksum_stays_bad():
    """The TCP checksum is updated, not recomputed: a corrupted segment is not made good."""
    eng = Engine(config("toa"))
    c = Conn(eng)
    c.reply("SA", 5000, 1001)
    raw = bytearray(seg(CLIENT, VIP, 40000, 81, "PA", 1001, 5001, b"hello"))
    raw[-1] ^= 0x20
    out = eng.handle(bytes(raw), 0.1)
    assert out is not None and toa_of(IP(out)) == (CLIENT, 40000) and not checksums_ok(out)


_SIZE = {"NOP": 1, "MSS": 4, "WScale": 3, "SAckOK": 2, "Timestamp": 10, 30: 4}
_OPTION = st.sampled_from([("NOP", None), ("MSS", 1400), ("WScale", 7), ("SAckOK", b""), TS,
                           ("SAck", (7, 8)), ("SAck", (1, 2, 3, 4)), (30, b"\x01\x02")])


@settings(max_examples=150, deadline=None)
@given(six=st.booleans(), options=st.lists(_OPTION, max_size=6), payload=st.binary(max_size=40),
       cport=st.integers(1, 65535), last=st.sampled_from([0, 1, 0xFFFFFFFF, 0x7FFFFFFF]))
def test_insert_property(six, options, payload, cport, last):
    """Any option list and payload, IPv4 or IPv6: the segment reparses with valid
    checksums, names the client first, keeps its payload and sequence numbers, and its
    other options unless DPVS's pruning had to drop them (then it is counted PRUNED)."""
    assume(sum(_SIZE[o[0]] if o[0] != "SAck" else 2 + 4 * len(o[1]) for o in options) <= 40)
    src, dst = (CLIENT6, VIP6) if six else (CLIENT, VIP)
    raw = seg(src, dst, cport, 81, "PA", last, 42, payload, options)
    pkt = P.parse(raw)
    adj = toa.Toa(pk(src), cport)
    adj.fdata = 42
    new, npkt, outcome = toa.client_to_server(adj, raw, pkt, False)
    assert outcome in (toa.INSERTED, toa.PRUNED)
    out = parsed(new)
    before = (IPv6(raw) if six else IP(raw))[TCP]
    assert toa_of(out) == (src, cport) and bytes(out[TCP].payload) == payload
    assert (out[TCP].seq, out[TCP].ack, out[TCP].flags) == (before.seq, before.ack, before.flags)
    theirs = [o for o in before.options if o[0] != "NOP"]
    if outcome is toa.INSERTED:
        assert [o for o in out[TCP].options[1:] if o[0] != "NOP"] == theirs
    assert npkt.end == len(new) and npkt.sport == cport


def test_the_mss_is_lowered_wherever_padding_puts_it():
    """An MSS option at an odd offset (one NOP before it) still gets a valid checksum."""
    for pad in (0, 1, 3):
        eng = Engine(config("toa"))
        c = Conn(eng)
        sa = c.reply("SA", 5000, 1001, options=[("NOP", None)] * pad + [("MSS", 1400)])
        assert dict(sa[TCP].options)["MSS"] == 1392


def test_a_new_master_that_never_saw_the_synack_writes_it_on_the_handshake_ack():
    """After a takeover between the client's SYN and the real server's SYN-ACK the backup
    knows the connection from its sync entry only, which holds nothing TOA-specific (the
    server's first byte is not known yet).  It writes the same option on the packet that
    ends the handshake in its view, and on nothing of a connection the entry says is
    established without naming the server's first byte (the real server already has its
    socket: a TOA module reads only the segment that creates it)."""
    a = Engine(config("toa"))
    c = Conn(a)
    conn = next(iter(a.table))
    b = Engine(config("toa"))
    e = SyncEntry.from_conn(conn, 0.1, 60.0)
    assert e.seq is None and e.toa is None                  # nothing TOA-specific on the wire
    assert len(msgpack.unpackb(S.pack_conn(conn, 0.1, 60.0))) == 14    # a plain entry's 14
    assert b.apply_synced(**e.apply_kwargs(), now=0.2) == "created"
    c.eng = b
    on_b = c.send("A", 1001, 5001)
    assert toa_of(on_b) == (CLIENT, 40000)
    assert toa_of(c.send("PA", 1001, 5001, b"hi")) is None   # established in b's view
    # the SYN-ACK seen again (the server never got the ACK): b learns the exact rule
    c.reply("SA", 5000, 1001)
    assert toa_of(c.send("PA", 1001, 5001, b"hi")) == (CLIENT, 40000)
    # an entry synced established gets nothing
    d = Engine(config("toa"))
    e.state = ESTABLISHED
    d.apply_synced(**e.apply_kwargs(), now=0.2)
    c.eng = d
    assert toa_of(c.send("PA", 1003, 5001, b"more")) is None and d.stats["toa_inserted"] == 0


def test_a_lost_handshake_ack_then_a_takeover_still_gives_the_server_the_option():
    """The gap TOA had across a failover: the old master forwards the handshake ACK with
    the option, the back segment loses it, the takeover follows, and the client's request
    (which then completes the server's handshake) went out of the new master without the
    option, the connection being established in its view.  Now the master syncs the real
    server's first sequence number (entry option "toa") on the handshake ACK, urgently,
    through the real sync hook, wire and applier; the new master writes the option on
    every client segment that acknowledges it, as the old one would have (DPVS, with no
    such state in its sync, leaves this case uncovered)."""
    from syncd.policy import SyncPolicy, make_hook
    key = b"k" * 32
    a, b = Engine(config("toa")), Engine(config("toa"))
    sent: list = []
    a.sync_hook = make_hook(SyncPolicy(), a, lambda e, now, urgent=False: None,
                            lambda packed, now, urgent=False: sent.append((packed, urgent)))
    c = Conn(a)
    c.reply("SA", 5000, 1001)
    lost = c.send("A", 1001, 5001)                          # forwarded with the option, lost
    assert toa_of(lost) == (CLIENT, 40000)
    packed, urgent = sent[-1]
    assert urgent and msgpack.unpackb(packed)[14] == {"toa": 5001}
    raw = S.encode_data(sync_id=1, node_id="a", epoch=1, seq=1, send_time=0.1, flags=0,
                        packed_entries=[p for p, _ in sent], key=key)
    for entry in S.decode(raw, key, 1).entries:             # the takeover: b has what a sent
        b.apply_synced(**entry.apply_kwargs(), now=0.2)
    assert next(iter(b.table)).state == ESTABLISHED
    c.eng = b
    request = c.send("PA", 1001, 5001, b"GET / HTTP/1.0\r\n\r\n")
    assert toa_of(request) == (CLIENT, 40000) and b.stats["toa_inserted"] == 1
    assert bytes(request[TCP].payload) == b"GET / HTTP/1.0\r\n\r\n" and request[TCP].seq == 1001
    assert c.reply("A", 5001, 1019)[TCP].ack == 1019        # the server has its socket now
    assert toa_of(c.send("PA", 1019, 5001, b"more")) is None
    assert next(iter(b.table)).client_address_state is None


def test_the_toa_option_is_sent_only_while_the_option_may_be_due():
    """The entry carries "toa" from the SYN-ACK until the server shows it holds the socket;
    the packed path (pack_conn) and the entry path send the same bytes."""
    a = Engine(config("toa"))
    c = Conn(a)
    conn = next(iter(a.table))
    assert S.pack_conn(conn, 0.1, 60.0) == S.pack_entry(SyncEntry.from_conn(conn, 0.1, 60.0))
    c.reply("SA", 0xFFFFFFFF, 1001)                         # the first byte wraps to 0
    e = SyncEntry.from_conn(conn, 0.1, 60.0)
    assert e.toa == 0 and e.apply_kwargs()["toa"] == 0
    assert S.pack_conn(conn, 0.1, 60.0) == S.pack_entry(e)
    c.reply("A", 0, 1001)
    assert SyncEntry.from_conn(conn, 0.1, 60.0).toa is None


def test_the_labs_wire_reader_reads_the_option_as_a_toa_module_does():
    """lab.toa_capture is the lab's stand-in for a TOA module: the first option 254 of
    length 8 or 20 (the engine's own output, then options it must skip or refuse)."""
    from lab.toa_capture import toa_option
    eng = Engine(config("toa", vip=VIP6, laddrs=LADDRS6, reals=RS6))
    c = Conn(eng, client=CLIENT6, vip=VIP6)
    c.reply("SA", 5000, 1001)
    out = eng.handle(seg(CLIENT6, VIP6, 40000, 81, "A", 1001, 5001, options=[("NOP", None), TS]), 0.1)
    assert toa_option(out[40:]) == (CLIENT6, 40000)
    tcp = lambda opts: bytes(TCP(options=opts))
    assert toa_option(tcp([("NOP", None), (254, b"\x00\x50" + pk(CLIENT))])) == (CLIENT, 80)
    assert toa_option(tcp([(254, b"\x00\x50\x01")])) is None         # length 5: not TOA
    assert toa_option(tcp([TS])) is None


def test_the_ipvsadm_listing_the_api_and_the_metrics_name_toa():
    from director.ipvsadm import format_list
    from director.metrics import EngineCollector
    eng = Engine(config("toa"))
    described = [s.describe() for s in eng.services.values()]
    assert [d["client_address"] for d in described] == ["toa"]
    lines = [l for l in format_list(described).splitlines() if l.startswith("TCP")]
    assert lines == [f"TCP  {VIP}:81 rr client_address toa"]
    c = Conn(eng)
    c.reply("SA", 5000, 1001)
    c.send("A", 1001, 5001)
    names = {m.name: m for m in EngineCollector(eng).families("tandem")}
    assert names["tandem_engine_toa_inserted"].samples[0].value == 1
    assert names["tandem_engine_toa_no_room"].samples[0].value == 0
