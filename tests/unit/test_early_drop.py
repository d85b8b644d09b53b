"""A full connection table and who may still get in (issue 12 item 15).

nf_conntrack sets ASSURED only on proof of two-way traffic, and a full table
evicts what is not ASSURED (early_drop) and, above 95% of nf_conntrack_max,
entries in closing states (gc_worker with tcp_can_early_drop).  These tests
fill a small table with what an attacker or ordinary churn leaves behind and
check that a legitimate client is admitted at once, while a table of live,
proven connections still refuses.
"""
from __future__ import annotations

import ipaddress

from scapy.layers.inet import IP, TCP

from director.engine import Engine
from proto.consts import ASSURED, ESTABLISHED, TIME_WAIT
from tests.helpers import CLIENT, VIP, make_config, tcp, udp

MAX = 20


def spoofed(i: int) -> str:
    return f"198.19.7.{i + 1}"


def server_answers(eng, fwd: bytes, flags: str, seq: int, ack: int, now: float):
    """The real server's reply to the forwarded packet `fwd` (laddr -> RS)."""
    f = IP(fwd)
    return eng.handle(tcp(f.dst, f.src, f[TCP].dport, f[TCP].sport, flags, seq=seq, ack=ack), now)


def handshake(eng, client: str, cport: int, now: float = 0.0) -> bytes:
    fwd = eng.handle(tcp(client, VIP, cport, 80, "S", seq=1000), now)
    assert fwd is not None
    assert server_answers(eng, fwd, "SA", 5000, 1001, now)
    assert eng.handle(tcp(client, VIP, cport, 80, "A", seq=1001, ack=5001), now)
    return fwd


def legit_client_admitted(eng, now: float) -> bool:
    return eng.handle(tcp(CLIENT, VIP, 40999, 80, "S"), now) is not None


def test_spoofed_half_open_entries_do_not_lock_out_new_clients():
    """nf_conntrack's TCP tracker: ASSURED only after a reply-direction SYN-ACK
    and the client's ACK of it.  Spoofed sources send SYN, the real server
    answers (to an address that never sees it), and a blind ACK follows: the
    entries reach ESTABLISHED in IPVS's table, but they are not ASSURED, so
    early drop takes them for a real client."""
    eng = Engine(make_config(limits={"max_conns": MAX}))
    for i in range(MAX):
        fwd = eng.handle(tcp(spoofed(i), VIP, 30000, 80, "S", seq=77), 0.0)
        server_answers(eng, fwd, "SA", 123456, 78, 0.0)
        # the blind ACK cannot know the server's sequence number
        eng.handle(tcp(spoofed(i), VIP, 30000, 80, "A", seq=78, ack=999999), 0.1)
    assert len(eng.table) == MAX
    assert all(c.state == ESTABLISHED and not c.flags & ASSURED for c in eng.table)
    assert legit_client_admitted(eng, 0.2)
    assert eng.stats["early_drops"] == 1 and eng.drops["table_full"] == 0


def test_two_spoofed_packets_without_any_reply_do_not_assure():
    """SYN then ACK with nothing from the server (IPVS's INPUT_ONLY row moves
    the entry to ESTABLISHED): conntrack never assures a connection that has
    not seen a reply."""
    eng = Engine(make_config(limits={"max_conns": MAX}))
    for i in range(MAX):
        eng.handle(tcp(spoofed(i), VIP, 30000, 80, "S"), 0.0)
        eng.handle(tcp(spoofed(i), VIP, 30000, 80, "A", seq=1001, ack=1), 0.0)
    assert all(c.state == ESTABLISHED and not c.flags & ASSURED for c in eng.table)
    assert legit_client_admitted(eng, 0.1)


def test_a_table_of_finished_connections_admits_new_clients():
    """Finished connections linger in TIME_WAIT (120 s) after their FINs.  Over
    95% full, nf_conntrack evicts entries in FIN_WAIT, LAST_ACK, TIME_WAIT,
    CLOSE and CLOSE_WAIT even though they are ASSURED."""
    eng = Engine(make_config(limits={"max_conns": MAX}))
    for i in range(MAX):
        fwd = handshake(eng, spoofed(i), 30000)
        eng.handle(tcp(spoofed(i), VIP, 30000, 80, "FA", seq=1001, ack=5001), 1.0)
        server_answers(eng, fwd, "FA", 5001, 1002, 1.0)
        eng.handle(tcp(spoofed(i), VIP, 30000, 80, "A", seq=1002, ack=5002), 1.0)
    assert all(c.flags & ASSURED and c.state == TIME_WAIT for c in eng.table)
    assert legit_client_admitted(eng, 2.0)
    assert eng.stats["early_drops"] == 1
    # the oldest finished connection made room
    assert spoofed(0) not in {str(ipaddress.ip_address(c.caddr)) for c in eng.table}


def test_one_shot_udp_exchanges_do_not_fill_the_table():
    """nf_conntrack_udp_packet: a UDP entry becomes ASSURED only when, with a
    reply seen, packets still flow 2 s after the first.  DNS-style request and
    answer pairs never get there and stay evictable."""
    eng = Engine(make_config(limits={"max_conns": MAX}))
    for i in range(MAX):
        fwd = IP(eng.handle(udp(spoofed(i), VIP, 5353, 80), 0.0))
        assert eng.handle(udp(fwd.dst, fwd.src, fwd.dport, fwd.sport), 0.05)
    assert not any(c.flags & ASSURED for c in eng.table)
    assert eng.handle(udp(CLIENT, VIP, 5353, 80), 0.1) is not None
    assert eng.drops["table_full"] == 0


def test_a_udp_stream_becomes_assured_after_two_seconds_of_replies():
    """The other side of the UDP rule: traffic still flowing 2 s on, after a
    reply, is a stream and is kept (a full table of streams refuses)."""
    eng = Engine(make_config(limits={"max_conns": 1}))
    fwd = IP(eng.handle(udp(CLIENT, VIP, 5000, 80), 0.0))
    eng.handle(udp(fwd.dst, fwd.src, fwd.dport, fwd.sport), 0.1)
    eng.handle(udp(CLIENT, VIP, 5000, 80), 1.0)
    conn = next(iter(eng.table))
    assert not conn.flags & ASSURED
    eng.handle(udp(CLIENT, VIP, 5000, 80), 2.5)
    assert conn.flags & ASSURED
    assert eng.handle(udp(CLIENT, VIP, 5001, 80), 2.6) is None
    assert eng.drops["table_full"] == 1


def test_a_table_of_live_proven_connections_still_refuses():
    """ASSURED connections in ESTABLISHED are never evicted: the new client is
    refused, as conntrack refuses when early_drop finds nothing."""
    eng = Engine(make_config(limits={"max_conns": MAX}))
    for i in range(MAX):
        handshake(eng, spoofed(i), 30000)
    assert all(c.flags & ASSURED for c in eng.table)
    assert not legit_client_admitted(eng, 1.0)
    assert eng.drops["table_full"] == 1
