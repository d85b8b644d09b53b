"""client_address = "proxy-v1" | "proxy-v2": the real engine puts a PROXY header in front
of the first client data byte and shifts sequence numbers; scapy is the packet oracle
(it reparses every packet the engine emits and recomputes every checksum)."""
from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6

from director.config import ConfigError, parse
from director import proxy_insert
from director.engine import Engine
from proto import proxy
from tests.helpers import CLIENT, LADDRS, RS, VIP, checksums_ok

CLIENT6, VIP6 = "2001:2::10", "2001:2:0:1::100"
LADDRS6, RS6 = ["2001:2:0:2::100"], ["2001:2:0:2::21"]


def config(mode, vip=VIP, laddrs=LADDRS, reals=RS, port=81, **extra):
    return parse({"node": {"name": "t"}, "services": [{
        "proto": "tcp", "vip": vip, "port": port, "scheduler": "rr", "laddrs": list(laddrs),
        "client_address": mode, **extra,
        "real_servers": [{"addr": a, "port": 8081} for a in reals]}]}, "test.toml")


def seg(src, dst, sport, dport, flags, seq=0, ack=0, payload=b"", options=()):
    ip = IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst)
    return bytes(ip / TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack,
                          options=list(options)) / payload)


def parsed(raw):
    p = IPv6(raw) if raw[0] >> 4 == 6 else IP(raw)
    assert checksums_ok(raw), "the engine's checksums differ from scapy's"
    return p


class Conn:
    """A client connection through the engine to whichever real server it picks."""

    def __init__(self, eng, client=CLIENT, vip=VIP, cport=40000, vport=81, isn=1000):
        self.eng, self.client, self.vip, self.cport, self.vport = eng, client, vip, cport, vport
        syn = parsed(eng.handle(seg(client, vip, cport, vport, "S", seq=isn,
                                    options=[("MSS", 1460), ("SAckOK", b"")]), 0.0))
        self.rs, self.laddr, self.lport = syn.dst, syn.src, syn[TCP].sport
        assert syn[TCP].seq == isn

    def send(self, flags, seq, ack=0, payload=b""):
        out = self.eng.handle(seg(self.client, self.vip, self.cport, self.vport, flags, seq, ack,
                                  payload), 0.1)
        return None if out is None else parsed(out)

    def reply(self, flags, seq, ack, options=()):
        out = self.eng.handle(seg(self.rs, self.laddr, 8081, self.lport, flags, seq, ack,
                                  options=options), 0.1)
        return parsed(out)


@pytest.mark.parametrize("mode, version", [("proxy-v2", 2), ("proxy-v1", 1)])
def test_first_data_segment_carries_the_header_and_later_ones_are_shifted(mode, version):
    eng = Engine(config(mode))
    c = Conn(eng)
    header = proxy.encode(version, CLIENT, VIP, 40000, 81)
    H = len(header)
    synack = c.reply("SA", 5000, 1001, options=[("MSS", 1460), ("SAckOK", b"")])
    assert dict(synack[TCP].options)["MSS"] == 1460 - H       # room for the header
    assert synack[TCP].ack == 1001
    assert c.send("A", 1001, 5001)[TCP].seq == 1001            # pure ACK before any data
    first = c.send("PA", 1001, 5001, b"hello")
    assert bytes(first[TCP].payload) == header + b"hello"
    assert first[TCP].seq == 1001 and first.len == 20 + 20 + H + 5
    assert proxy.parse(bytes(first[TCP].payload)).sport == 40000
    again = c.send("PA", 1001, 5001, b"hello")                 # a retransmission
    assert bytes(again[TCP].payload) == header + b"hello" and again[TCP].seq == 1001
    second = c.send("PA", 1006, 5001, b"world")
    assert second[TCP].seq == 1006 + H and bytes(second[TCP].payload) == b"world"
    # the server acks header + 10 bytes, and SACKs a later block of 5 (server space)
    ack = c.reply("A", 5001, 1001 + H + 10,
                  options=[("NOP", None), ("NOP", None), ("SAck", (1001 + H + 15, 1001 + H + 20))])
    assert ack[TCP].ack == 1011
    assert dict(ack[TCP].options)["SAck"] == (1016, 1021)
    part = c.reply("A", 5001, 1001 + H - 3)                    # part of the header acked only
    assert part[TCP].ack == 1001
    assert (eng.stats["proxy_headers"], eng.stats["proxy_headers_resent"]) == (1, 1)
    assert c.send("FA", 1011, 5001)[TCP].seq == 1011 + H


def test_ipv6_and_sequence_wraparound():
    eng = Engine(config("proxy-v2", VIP6, LADDRS6, RS6))
    isn = 2**32 - 3
    c = Conn(eng, CLIENT6, VIP6, isn=isn)
    header = proxy.encode_v2(CLIENT6, VIP6, 40000, 81)
    assert len(header) == 52
    first = c.send("PA", 2**32 - 2, 1, b"x" * 10)
    assert bytes(first[TCP].payload) == header + b"x" * 10 and first.plen == 20 + 52 + 10
    nxt = c.send("PA", 8, 1, b"y")                             # wrapped past 2**32
    assert nxt[TCP].seq == 8 + 52
    assert c.reply("A", 1, 8 + 52)[TCP].ack == 8


def test_a_connection_that_never_sends_data_gets_no_header_and_resets_in_window():
    eng = Engine(config("proxy-v2"))
    c = Conn(eng)
    c.reply("SA", 5000, 1001)
    assert c.send("A", 1001, 5001)[TCP].seq == 1001
    assert c.send("R", 1001)[TCP].seq == 1001
    assert eng.stats["proxy_headers"] == 0


def test_a_corrupt_first_segment_is_dropped_not_laundered():
    eng = Engine(config("proxy-v2"))
    c = Conn(eng)
    bad = bytearray(seg(CLIENT, VIP, 40000, 81, "PA", 1001, 5001, b"hello"))
    bad[-1] ^= 0xFF
    assert eng.handle(bytes(bad), 0.1) is None
    assert eng.drops["bad_checksum"] == 1 and eng.stats["proxy_headers"] == 0
    assert bytes(c.send("PA", 1001, 5001, b"hello")[TCP].payload).endswith(b"hello")
    assert eng.stats["proxy_headers"] == 1


def test_a_plain_service_is_untouched():
    eng = Engine(config("none", port=80))
    c = Conn(eng, vport=80)
    synack = c.reply("SA", 5000, 1001, options=[("MSS", 1460)])
    assert dict(synack[TCP].options)["MSS"] == 1460
    assert bytes(c.send("PA", 1001, 5001, b"hello")[TCP].payload) == b"hello"
    assert next(iter(eng.table)).client_address_state is None


@pytest.mark.parametrize("extra, words", [
    ({"client_address": "toa", "forwarding": "kernel"}, "the kernel.s NAT cannot put a TCP option"),
    ({"client_address": "proxy-v3"}, "client_address"),
    ({"client_address": "proxy-v1", "proto": "udp"}, "for TCP services"),
])
def test_config_refuses_what_is_not_there(extra, words):
    svc = {"proto": "tcp", "vip": VIP, "port": 81, "laddrs": LADDRS,
           "real_servers": [{"addr": RS[0], "port": 8081}], **extra}
    with pytest.raises(ConfigError, match=words):
        parse({"node": {"name": "t"}, "services": [svc]}, "test.toml")


def test_an_icmp_error_about_a_shifted_segment_quotes_the_clients_sequence_number():
    """As DPVS's FULLNAT does (seq -= delta in the quoted header): without it the client's
    stack finds the quoted segment out of its window and ignores, say, a Frag Needed."""
    from scapy.layers.inet import ICMP as ICMP4, IPerror, TCPerror
    eng = Engine(config("proxy-v2"))
    c = Conn(eng)
    c.reply("SA", 5000, 1001)
    first = c.send("PA", 1001, 5001, b"a" * 100)
    later = c.send("PA", 1101, 5001, b"b" * 100)
    H = len(proxy.encode_v2(CLIENT, VIP, 40000, 81))
    assert later[TCP].seq == 1101 + H
    for sent, client_seq in ((first, 1001), (later, 1101)):
        err = bytes(IP(src="198.18.2.1", dst=sent.src) / ICMP4(type=3, code=4, nexthopmtu=1400)
                    / bytes(sent)[:28])
        out = parsed(eng.handle(err, 0.2))
        assert (out.src, out.dst) == (VIP, CLIENT)
        assert out[IPerror][TCPerror].seq == client_seq


@settings(max_examples=500, deadline=None)
@given(st.integers(0, 0xFFFE), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_the_32_bit_checksum_update_is_rfc1624s(csum, old, new):
    """The inlined update of one 32-bit field (seq or ack) equals proto.checksum's RFC 1624
    eqn 3 over the field's bytes (itself checked against scapy in test_checksum)."""
    import struct as _s
    from proto.checksum import delta, update
    assert proxy_insert._swap32(csum, old, new) == update(csum, delta(_s.pack("!L", old),
                                                                      _s.pack("!L", new)))


def test_acks_with_timestamps_only_take_the_short_path_and_stay_valid():
    eng = Engine(config("proxy-v2"))
    c = Conn(eng)
    c.reply("SA", 5000, 1001)
    c.send("PA", 1001, 5001, b"hello")
    H = len(proxy.encode_v2(CLIENT, VIP, 40000, 81))
    # 0x05 inside the timestamp values: the walk runs and must leave them alone
    for ts in ((1, 2), (0x05050505, 0x05)):
        ack = c.reply("A", 5001, 1001 + H + 5, options=[("NOP", None), ("NOP", None),
                                                        ("Timestamp", ts)])
        assert ack[TCP].ack == 1006 and dict(ack[TCP].options)["Timestamp"] == ts


def test_the_ipvsadm_listing_and_the_api_name_the_mode():
    from director.ipvsadm import format_list
    eng = Engine(parse({"node": {"name": "t"}, "services": [
        {"proto": "tcp", "vip": VIP, "port": p, "laddrs": LADDRS, "client_address": m,
         "real_servers": [{"addr": RS[0], "port": 8081}]}
        for p, m in ((80, "none"), (81, "proxy-v2"), (82, "proxy-v1"))]}, "test.toml"))
    described = [s.describe() for s in eng.services.values()]
    assert [d["client_address"] for d in described] == ["none", "proxy-v2", "proxy-v1"]
    lines = [l for l in format_list(described).splitlines() if l.startswith("TCP")]
    assert lines == [f"TCP  {VIP}:80 wlc", f"TCP  {VIP}:81 wlc client_address proxy-v2",
                     f"TCP  {VIP}:82 wlc client_address proxy-v1"]


@pytest.mark.parametrize("mode", ["proxy-v1", "proxy-v2"])
def test_an_ipv6_connections_header_names_the_ipv6_client_tcp6_or_af_inet6(mode):
    """Over IPv6 the header the real server reads says so in the spec's words: v1's line
    is `PROXY TCP6 <client> <vip> <cport> <vport>`, v2's family/transport byte is 0x21
    (AF_INET6, STREAM) before 36 address bytes; either names the IPv6 client and its port."""
    eng = Engine(config(mode, VIP6, LADDRS6, RS6))
    c = Conn(eng, CLIENT6, VIP6, cport=41234)
    body = bytes(c.send("PA", 1001, 1, b"hello")[TCP].payload)
    h = proxy.parse(body)
    if mode == "proxy-v1":
        assert body.startswith(f"PROXY TCP6 {CLIENT6} {VIP6} 41234 81\r\n".encode())
    else:
        assert body[12:16] == b"\x21\x21\x00\x24"     # v2 PROXY, AF_INET6|STREAM, 36 bytes
    assert (str(h.src), h.sport, str(h.dst), h.dport) == (CLIENT6, 41234, VIP6, 81)
    assert body[h.length:] == b"hello"
