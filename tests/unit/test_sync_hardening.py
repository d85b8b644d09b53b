"""Sync under hostile input: oversize and unauthenticated datagrams, strangers,
entries the engine cannot hold.  Sans-IO cores on an injected clock, except
where the socket adapter itself is what is judged."""
from __future__ import annotations

import asyncio
import ipaddress
import socket

import msgpack
import pytest

from director.conn import ASSURED
from director.engine import Engine
from proto import sync as S
from proto.sync import Message, SyncEntry, SyncError
from syncd.config import SyncConfig
from syncd.receiver import SyncReceiver, engine_apply
from syncd.sender import SyncSender
from syncd.transport import SyncTransport, unicast_socket
from tests.helpers import VIP, make_config

KEY = b"tandem-hardening-key-0123456789"
CFG = SyncConfig(sync_id=5, key=KEY)
pk = lambda a: ipaddress.ip_address(a).packed


def entry(i: int, state: int = 1, **kw) -> SyncEntry:
    e = SyncEntry(6, state, ASSURED, pk("198.18.1.10"), 10000 + i, pk(VIP), 80,
                  pk("198.18.2.100"), 5000 + i, pk("198.18.2.21"), 8080, 900.0, False, 3)
    for k, v in kw.items():
        setattr(e, k, v)
    return e


def data(seq, entries=(), epoch=1, node="a", t=1.0, flags=0, key=KEY):
    return S.encode(Message(S.DATA, 5, node, epoch, seq, t, flags, entries=list(entries)), key)


def answer(r: SyncReceiver, out, last=0, epoch=1, node="a", t=0.0, wants=False) -> list[Message]:
    """Answer the CHALLENGE among r's output as node's live epoch would."""
    chal = next(m for m in (S.decode(d, KEY, 5) for d in out) if m.type == S.CHALLENGE)
    resp = Message(S.RESPONSE, 5, node, epoch, 1000, t, target=r.node_id, nonce=chal.nonce,
                   last_seq=last, wants=wants)
    return [S.decode(d, KEY, 5) for d in r.on_datagram(S.encode(resp, KEY), t)]


def trust(r: SyncReceiver, epoch=1, node="a", last=0, t=0.0) -> list[Message]:
    """Have r authenticate node's epoch: a message of it is challenged, and answered."""
    req = S.encode(Message(S.RESYNC_REQUEST, 5, node, epoch, 1, t), KEY)
    return answer(r, r.on_datagram(req, t), last, epoch, node, t)


class Recorder:
    def __init__(self):
        self.applied: list[SyncEntry] = []

    def __call__(self, e, now):
        self.applied.append(e)


# == item 5: cheap rejection ==========================================================

def test_a_datagram_longer_than_max_payload_is_dropped_before_anything_else():
    """IPVS's backup reads at most its sync_maxlen; legitimate messages are at most
    max_payload (1472) bytes, so a longer one is dropped first, even when it is
    correctly signed, and counted as oversize."""
    rec = Recorder()
    r = SyncReceiver(CFG, "b", KEY, rec)
    trust(r)
    big = S.encode(Message(S.DATA, 5, "a", 1, 1, 1.0, entries=[entry(i) for i in range(1000)]), KEY)
    assert len(big) > 40_000
    assert r.on_datagram(big, 0.0) == []
    assert r.stats["oversize"] == 1 and rec.applied == [] and r.peers["a"].highest == 0
    assert r.on_datagram(data(1, [entry(1)]), 0.0) == [] and len(rec.applied) == 1   # a normal one still goes


def test_the_mac_is_checked_before_msgpack_decodes_anything(monkeypatch):
    """Nothing unauthenticated reaches the msgpack decoder: a datagram with a bad
    MAC costs one HMAC, not a parse (a crafted body is classified bad_mac, not
    malformed, because it is never parsed)."""
    calls = []
    real = msgpack.unpackb
    r = SyncReceiver(CFG, "b", KEY, Recorder())
    trust(r)
    monkeypatch.setattr(S.msgpack, "unpackb", lambda *a, **k: calls.append(1) or real(*a, **k))
    body = msgpack.packb([1, 5, "a", 1, 1, 1.0, 1, 0, [[]] * 600])
    assert r.on_datagram(body + b"\x00" * 32, 0.0) == []                       # well formed, bad MAC
    assert r.on_datagram(b"\x99\x01\x05" + b"\xc1" * 200 + b"\x00" * 32, 0.0) == []   # garbage body
    assert r.on_datagram(data(1, key=b"another pair's key, 16+ bytes"), 0.0) == []
    assert r.stats["bad_mac"] == 3 and r.stats["malformed"] == 0
    assert calls == []
    r.on_datagram(data(1), 0.0)
    assert len(calls) == 1 and r.stats["data"] == 1                            # a good one is parsed


def test_version_and_sync_id_are_still_told_apart_without_parsing():
    raw = data(1, [entry(1)])
    with pytest.raises(SyncError) as ei:
        S.decode(raw, KEY, 6)
    assert ei.value.reason == "wrong_sync_id"
    high = S.encode(Message(S.HEARTBEAT, 200, "a", 1, 0, 1.0), KEY)     # uint8 sync id
    assert S.decode(high, KEY, 200).sync_id == 200
    with pytest.raises(SyncError) as ei:
        S.decode(high, KEY, 5)
    assert ei.value.reason == "wrong_sync_id"
    with pytest.raises(SyncError) as ei:
        S.decode(raw, KEY, 5, max_len=len(raw) - 1)
    assert ei.value.reason == "oversize"


async def _wait_for(cond, timeout=3.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.005)


async def test_unicast_drops_datagrams_from_addresses_that_are_not_peers():
    """As keepalived's unicast_peer: in unicast mode only the configured peers'
    addresses are listened to.  A correctly signed RESYNC_REQUEST from another
    address (127.0.0.2 here) is dropped before parsing and counted not_peer; the
    same datagram from the peer's address is handled."""
    cfg = SyncConfig(mode="unicast", bind="127.0.0.1", port=0, sync_id=5, key=KEY)
    table = [entry(i) for i in range(3)]
    sender = SyncSender(cfg, "a", key=KEY, snapshot=lambda: table)
    receiver = SyncReceiver(cfg, "a", KEY, Recorder())
    sa = unicast_socket("127.0.0.1", 0)
    peer = unicast_socket("127.0.0.1", 0)
    try:
        stranger = unicast_socket("127.0.0.2", 0)
    except OSError as exc:
        peer.close()
        sa.close()
        pytest.skip(f"no 127.0.0.2 here: {exc}")
    t = SyncTransport(cfg, sender, receiver, peers=[peer.getsockname()])
    try:
        await t.start(sa)
        start = dict(receiver.stats)
        req = S.encode(Message(S.RESYNC_REQUEST, 5, "mallory", 7, 1, 1.0), KEY)
        for _ in range(5):
            stranger.sendto(req, sa.getsockname())
        await _wait_for(lambda: t.stats["not_peer"] == 5)
        assert receiver.stats == start and sender.stats["resync_requests"] == 0
        peer.sendto(S.encode(Message(S.RESYNC_REQUEST, 5, "b", 7, 1, 1.0), KEY), sa.getsockname())
        await _wait_for(lambda: receiver.stats["received"] >= 1)
        assert receiver.stats["unauthenticated"] == 1        # parsed (and its epoch challenged)
        assert t.stats["not_peer"] == 5
    finally:
        t.close()
        peer.close()
        stranger.close()


# == item 6: entries the engine cannot hold ==========================================

def test_an_entry_with_ipv4_client_side_and_ipv6_server_side_never_touches_the_table():
    """IPVS refuses to sync mixed-family destinations (and tandem's services are
    single-family): such an entry is malformed in the codec, so the live
    connection with the same client tuple is left as it is."""
    from tests.unit.test_engine import handshake
    eng = Engine(make_config())
    live = handshake(eng, 40000)
    r = SyncReceiver(CFG, "b", KEY, engine_apply(eng))
    bad = SyncEntry.from_conn(live, 1.0, 900.0)
    bad.laddr, bad.daddr, bad.lport = pk("2001:2::100"), pk("2001:2::21"), 7000
    assert r.on_datagram(data(1, [bad]), 1.0) == []
    assert r.stats["malformed"] == 1
    assert eng.index.get(live.orig_key) is live and live.alive
    assert (live.laddr, live.daddr) != (bad.laddr, bad.daddr)
    with pytest.raises(SyncError):
        S.decode(data(1, [bad]), KEY, 5)


def _nack(ranges, seq: int) -> Message:
    return Message(S.NACK, 5, "b", 9, seq, 1.0, target="a", target_epoch=1, ranges=list(ranges))


def _filled_sender(n: int) -> SyncSender:
    s = SyncSender(CFG, "a", epoch=1, key=KEY)
    for i in range(n):
        s.queue(entry(i % 1000), 0.0)
        s._close_pending(0.0)                   # one entry per datagram: n seqs
    s.poll(0.0)
    assert s.seq == n
    return s


def test_one_nack_brings_back_a_bounded_number_of_datagrams_and_each_seq_once():
    """conntrackd moves the NACKed range back to its tx queue, paced by the channel;
    here one NACK re-sends at most resend_per_nack (256) datagrams, however wide
    or overlapping its ranges (a 66-byte NACK for 1..2**64-1 used to bring back
    the whole window of 4096)."""
    s = _filled_sender(4096)
    out = s.on_message(_nack([(1, 2**64 - 1)], 1), 10.0)
    assert len(out) == 256                                          # was 4096
    assert CFG.resend_per_nack == 256
    assert [S.decode(d, KEY, 5).seq for d in out] == list(range(1, 257))
    s2 = _filled_sender(4096)
    per = S.nack_ranges_per_message("b", "a")
    out = s2.on_message(_nack([(1, 4096)] * per, 1), 10.0)             # the largest NACK, all overlapping
    assert len(out) == 256 and len({S.decode(d, KEY, 5).seq for d in out}) == 256


def test_resends_are_bounded_per_second_and_what_is_left_comes_with_the_next_nacks():
    """A peer NACKing the whole window every 10 ms gets at most resend_rate
    (5000) datagrams a second plus one NACK's worth, and still every seq in time."""
    s = _filled_sender(4096)
    got: set[int] = set()
    total = 0
    for k in range(100):                                           # 1 s of NACKs
        missing = sorted(set(range(1, 4097)) - got)
        ranges = [(a, a) for a in missing[:60]] if len(missing) < 60 else [(missing[0], 4096)]
        out = s.on_message(_nack(ranges, k + 1), 10.0 + k * 0.01)
        total += len(out)
        got |= {S.decode(d, KEY, 5).seq for d in out}
    assert total <= 5000 * 1.0 + 256
    assert got == set(range(1, 4097))
    assert s.stats["resends_capped"] > 0
