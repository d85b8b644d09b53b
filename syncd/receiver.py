"""The receiving half of sync, sans-IO: datagrams in, entries applied, NACKs out.

    out = receiver.start(now)              # RESYNC_REQUEST: a (re)started node wants the table
    out = receiver.on_datagram(raw, now)   # every datagram from the socket
    out = receiver.poll(now)               # at receiver.next_deadline() or later

Every datagram is decoded and authenticated here (proto.sync.decode); DATA,
HEARTBEAT and STATE are handled, NACK and RESYNC_REQUEST go to `on_control(msg, now)`
(the local SyncSender.on_message, see attach()), whose answer is returned with
ours.

Only messages from a peer's authenticated epoch are used (syncd.auth, and
syncd.handshake for the messages): anything
from another epoch is counted (unauthenticated) and answered with a CHALLENGE;
the peer's RESPONSE proves which epoch is alive, and carries its last DATA seq
and whether it wants our table.  This node answers challenges with its own
epoch -- one per node, the sender's, shared by the receiver's control messages
(attach) -- its sender's last seq, and whether it wants that peer's table.  No
wall clock is compared across nodes.

A gap -- in DATA seqs, or a HEARTBEAT's last seq above the highest seen -- is
NACKed until filled, or abandoned for a bulk resync (syncd.repair, which keeps
each sender's stream).  The newly authenticated epoch makes seqs 1..last (its
RESPONSE's last seq) missing (so a young stream is repaired from the sender's
window rather than lost), unless that is beyond the window: then a resync is
asked for.  A gap-filling
message sent more than cfg.max_age before the newest message of its epoch (by
the sender's own clock) is not applied: its seq is given up for a bulk resync
(counted too_old).  The window can hold messages from long ago; a receiver
that has just (re)started must not apply them.

A gap-filling (older) message may arrive after newer messages about the same
connection; while gaps are open the receiver remembers, per connection, the seq
that last set it, and skips an entry older than that (counted stale_skipped).

A bulk resync's first message (F_BULK_START) is sealed by the sender before any
later message, so every seq below it is carried by the bulk: missing seqs below
it are dropped from the chase (counted forgiven).  Entries of bulk messages go
to `apply_bulk` (default: `apply`); in production that is engine_apply_bulk,
which never overwrites a connection this node created itself.  Only a bulk
that answers this node's own request counts as its resync being complete
(bulks_answered, resync_complete): one whose first message has a seq above the
sender's last seq as of the RESPONSE that authenticated it (or of our latest
request), i.e. begun after we asked, and of which nothing is missing.  A
replayed or older bulk fills in entries but completes nothing.

A seq already applied is a replay or duplicate: counted, nothing changes.  A
STATE (what the peer is in the pair) is kept per peer (`peer.state`, with when
it came) and handed to `on_state(node, msg)`, only from the authenticated epoch
and only with a counter above the last one used (a replayed one is counted
replayed).
Messages carrying our own node id are dropped (multicast loopback).

Counters (self.stats): received, data, heartbeats, control (NACK/RESYNC passed to
the sender), entries_applied, entries_skipped (protocol/state we cannot hold),
stale_skipped, apply_errors, gaps (gap events), missing_seqs, tail_gaps (found by
a heartbeat), nacks_sent, resends_received (a seq that filled a gap), forgiven,
resync_requests, gave_up, bulk_messages, bulk_ends, bulks_answered,
epoch_changes, too_old, the syncd.auth counters (unauthenticated,
challenges_sent, responses_sent, challenges_unanswered, responses_stale,
authenticated, epochs_refused), and per drop reason bad_mac, wrong_sync_id,
malformed, bad_version, oversize (longer than cfg.max_payload: dropped before
anything else is looked at), replayed, dropped; overrides (OVERRIDES messages passed to on_overrides).
self.results counts what `apply` returned; lag() gives p50/p99/max in ms.

The production `apply` and `apply_bulk` are in syncd.engine_apply (imported
here too).
"""
from __future__ import annotations

import logging
import secrets
from collections import deque
from typing import Callable

from proto import consts as C, sync as S
from proto.sync import Message, SyncEntry, SyncError
from syncd.auth import EpochAuth
from syncd.engine_apply import engine_apply, engine_apply_bulk
from syncd.handshake import EpochHandshake
from syncd.config import SyncConfig, resolve_key
from syncd.repair import GapRepair, PeerStream

__all__ = ["SyncReceiver", "engine_apply", "engine_apply_bulk"]

log = logging.getLogger("tandem.syncd")

TCP_STATES, UDP_STATES = len(C.TCP_STATES), len(C.UDP_STATES)


class SyncReceiver(GapRepair, EpochHandshake):
    def __init__(self, cfg: SyncConfig, node_id: str, key: bytes | None,
                 apply: Callable[[SyncEntry, float], object], *,
                 apply_bulk: Callable[[SyncEntry, float], object] | None = None,
                 epoch: int | None = None,
                 on_control: Callable[[Message, float], list[bytes]] | None = None,
                 wall: Callable[[], float] | None = None) -> None:
        key = resolve_key(cfg, key)
        self.cfg = cfg
        self.node_id = node_id
        self.key = key
        self.apply = apply
        self.apply_bulk = apply_bulk or apply
        #: what apply returned, counted (e.g. Engine.apply_synced's created/updated/...)
        self.results: dict = {}
        self.epoch = secrets.randbits(64) if epoch is None else epoch
        self.on_control = on_control
        #: OVERRIDES messages of authenticated epochs go here (syncd.overrides.OverrideLink),
        #: and on_peer_epoch(node, now) is told when a peer's new epoch is authenticated
        self.on_overrides: Callable[[Message, float], list[bytes]] | None = None
        self.on_peer_epoch: Callable[[str, float], list[bytes]] | None = None
        #: called with (node, STATE message) for each fresh STATE of an authenticated peer
        self.on_state: Callable[[str, Message], None] | None = None
        self.wall = wall
        self.sender = None                          # see attach()
        self.peers: dict[str, PeerStream] = {}
        self._held: dict[str, list[Message]] = {}   # data of an epoch being challenged
        self._ctl_seq = 0
        self._startup_want: float | None = None     # when start() last asked (no peer yet)
        #: a cluster: the start-up asks every peer for its table, the first answer does not
        #: end it (startup_done does)
        self.every_peer_bulk = False
        self.lags: deque[float] = deque(maxlen=cfg.lag_samples)
        self.stats = dict.fromkeys((
            "received", "data", "heartbeats", "control", "entries_applied", "entries_skipped",
            "stale_skipped", "apply_errors", "gaps", "missing_seqs", "tail_gaps", "nacks_sent",
            "resends_received", "forgiven", "resync_requests", "gave_up", "bulk_messages", "bulk_ends",
            "bulks_answered", "epoch_changes", "too_old",
            "bad_mac", "wrong_sync_id", "malformed", "bad_version", "oversize", "replayed", "dropped", "overrides",
            "states"), 0)
        self.auth = EpochAuth(cfg.nack_interval, cfg.resync_retry, self.stats)

    def attach(self, sender) -> None:
        """Make this receiver and `sender` (a SyncSender) one node: control
        messages go to the sender, and both speak with the sender's epoch, which
        is what this node proves when challenged."""
        self.sender = sender
        self.epoch = sender.epoch
        self.on_control = sender.on_message

    _new_peer = staticmethod(PeerStream)

    @property
    def resync_complete(self) -> bool:
        """A bulk resync answering this node's own request has fully arrived."""
        return self.stats["bulks_answered"] > 0

    def answered_by(self) -> frozenset[str]:
        """The peers (current epochs) whose bulk answering this node's request came whole."""
        return frozenset(n for n, p in self.peers.items() if p.answered)

    def startup_done(self) -> None:
        """With `every_peer_bulk`: the node holds the table; a peer authenticated from now
        on is not asked for its whole table (as after a pair's first answered bulk)."""
        self._startup_want = None

    # -- helpers ---------------------------------------------------------------------

    def _time(self, now: float) -> float:
        return self.wall() if self.wall is not None else now

    def _control(self, mtype: int, now: float, **body) -> bytes:
        self._ctl_seq += 1
        return S.encode(Message(mtype, self.cfg.sync_id, self.node_id, self.epoch,
                                self._ctl_seq, self._time(now), **body), self.key)

    def _resync_request(self, now: float, target: str | None) -> bytes:
        self.stats["resync_requests"] += 1
        return self._control(S.RESYNC_REQUEST, now, target=target)

    # -- the API ---------------------------------------------------------------------

    def start(self, now: float) -> list[bytes]:
        """A node that (re)starts asks every sender for its whole table."""
        self._startup_want = now
        for peer in self.peers.values():
            peer.want_after, peer.want_asked = peer.highest, now
        return [self._resync_request(now, None)]

    def on_datagram(self, raw: bytes, now: float) -> list[bytes]:
        self.stats["received"] += 1
        try:
            msg = S.decode(raw, self.key, self.cfg.sync_id, self.cfg.max_payload)
        except SyncError as exc:
            self.stats[exc.reason] += 1
            return []
        node = msg.node_id
        if node == self.node_id:
            self.stats["dropped"] += 1          # our own traffic (multicast loopback)
            return []
        if msg.type == S.CHALLENGE:
            return self._on_challenge(msg, now)
        if msg.type == S.RESPONSE:
            before = self.peers.get(node)
            out = self._on_response(msg, now)
            if self.peers.get(node) is not before:
                if self.sender is not None:     # our STATE, at once, to a newly proven epoch
                    out += self.sender.state_again(now)
                if self.on_peer_epoch is not None:
                    out += self.on_peer_epoch(node, now)
            return out
        auth = self.auth
        if not auth.is_current(node, msg.epoch):
            if msg.type in (S.DATA, S.HEARTBEAT):
                self._hold(msg)
            return self._challenge(node, msg.epoch, now)
        if msg.type in (S.NACK, S.RESYNC_REQUEST):
            if not auth.fresh_control(node, msg.seq):
                self.stats["replayed"] += 1
                return []
            self.stats["control"] += 1
            return self.on_control(msg, now) if self.on_control is not None else []
        if msg.type == S.OVERRIDES:
            # state, not a stream: a replay within the epoch can only bring an entry
            # that is not newer than ours, which changes nothing
            self.stats["overrides"] += 1
            return self.on_overrides(msg, now) if self.on_overrides is not None else []
        if msg.type == S.STATE:
            return self._on_state(msg, now)
        return self.on_message(msg, now)

    def _on_state(self, msg: Message, now: float) -> list[bytes]:
        peer = self.peers.get(msg.node_id)
        if peer is None or msg.epoch != peer.epoch:
            self.stats["dropped"] += 1
            return []
        peer.heard = now
        if msg.seq <= peer.state_seq:
            self.stats["replayed"] += 1
            return []
        self.stats["states"] += 1
        peer.state, peer.state_seq, peer.state_at = msg, msg.seq, now
        if self.on_state is not None:
            self.on_state(msg.node_id, msg)
        return []

    # -- data ------------------------------------------------------------------------

    def on_message(self, msg: Message, now: float) -> list[bytes]:
        """A decoded DATA or HEARTBEAT message from its sender's authenticated epoch."""
        node = msg.node_id
        peer = self.peers.get(node)
        out: list[bytes] = []
        if peer is None or msg.epoch != peer.epoch:
            self.stats["dropped"] += 1
            return out
        peer.heard = now

        if msg.type == S.HEARTBEAT:
            self.stats["heartbeats"] += 1
            if msg.last_seq > peer.highest:
                self.stats["tail_gaps"] += 1
                peer.newest_time = msg.send_time
                out += self._gap(node, peer, msg.last_seq, now)
            return out
        if msg.type != S.DATA:
            self.stats["dropped"] += 1
            return out

        self.stats["data"] += 1
        seq = msg.seq
        bulk_start = msg.flags & S.F_BULK_START
        if seq > peer.highest:
            if seq > peer.highest + 1:
                if bulk_start:          # a bulk from here on carries what they held
                    self.stats["forgiven"] += seq - 1 - peer.highest
                    peer.highest = seq - 1
                else:
                    out += self._gap(node, peer, seq - 1, now)
            if seq > peer.highest:      # (a give-up may have moved it)
                peer.highest = seq
            peer.newest_time = msg.send_time
            self._apply(peer, msg, now)
        elif seq in peer.missing:
            del peer.missing[seq]
            del peer.asked[seq]
            # long older than what we hold of this sender (a window kept from long
            # ago, answering a receiver that just started): not applied
            too_old = self.cfg.max_age and peer.newest_time - msg.send_time > self.cfg.max_age
            if not too_old:
                self.stats["resends_received"] += 1
                self._apply(peer, msg, now)
            if not peer.missing:
                peer.recent.clear()
                peer.nack_due = float("inf")
            if too_old:
                self.stats["too_old"] += 1
                if peer.want_after is None:
                    self.stats["gave_up"] += 1
                    peer.want_after, peer.want_asked = peer.highest, now
                    out.append(self._resync_request(now, node))
                return out
        else:
            self.stats["replayed"] += 1
            return out
        if msg.flags & S.F_BULK:
            self.stats["bulk_messages"] += 1
            if msg.flags & S.F_BULK_END:
                self.stats["bulk_ends"] += 1
            peer.bulk_seen = now
        if bulk_start:
            # The bulk sends the current state of every connection the sender had
            # when it began, and its own messages are repaired like any others:
            # older seqs still missing need not be chased any more.
            if peer.missing:
                old = [s for s in peer.missing if s < seq]
                for s in old:
                    del peer.missing[s]
                    del peer.asked[s]
                self.stats["forgiven"] += len(old)
                if not peer.missing:
                    peer.recent.clear()
                    peer.nack_due = float("inf")
            if peer.want_after is not None and seq > peer.want_after:
                peer.want_after = None          # a whole bulk from here on will reach us
                peer.answer_start, peer.answer_end = seq, 0
        if msg.flags & S.F_BULK_END and peer.answer_start and seq >= peer.answer_start:
            peer.answer_end = seq
        if peer.answer_end:
            self._check_answered(peer)
        return out

    def _apply(self, peer: PeerStream, msg: Message, now: float) -> None:
        track = bool(peer.missing)
        recent = peer.recent
        seq = msg.seq
        apply = self.apply_bulk if msg.flags & S.F_BULK else self.apply
        results = self.results
        applied = 0
        for e in msg.entries:
            if not (e.proto == C.TCP and e.state < TCP_STATES or e.proto == C.UDP and e.state < UDP_STATES):
                self.stats["entries_skipped"] += 1
                continue
            if track or recent:
                k = e.key
                if recent.get(k, 0) > seq:
                    self.stats["stale_skipped"] += 1
                    continue
                if track:
                    recent[k] = seq
            try:
                r = apply(e, now)
                applied += 1
                if r is not None:
                    results[r] = results.get(r, 0) + 1
            except Exception:
                self.stats["apply_errors"] += 1
                if self.stats["apply_errors"] <= 10:
                    log.exception("sync: applying an entry failed")
        self.stats["entries_applied"] += applied
        self.lags.append((self._time(now) - msg.send_time) * 1000.0)

    # -- reporting -------------------------------------------------------------------

    def lag(self) -> dict:
        """Sync lag (apply time minus send time) over the last cfg.lag_samples
        DATA messages, in milliseconds to 0.1 ms (finer is noise on a busy host)."""
        if not self.lags:
            return {"p50": None, "p99": None, "max": None, "samples": 0}
        xs = sorted(self.lags)
        pick = lambda q: round(xs[min(len(xs) - 1, int(q * len(xs)))], 1)
        return {"p50": pick(0.50), "p99": pick(0.99), "max": pick(1.0), "samples": len(xs)}
