"""The receiver's gap repair, sans-IO: the state it keeps per sender's stream,
the NACKs for missing seqs, their re-requests, and the bulk resync asked for
when repair seq by seq is hopeless.

Per sender (by node id) the receiver keeps its epoch, the highest seq seen and
the seqs still missing.  A gap -- in DATA seqs, or between the highest seq and a
HEARTBEAT's last seq (a lost tail) -- is NACKed at once and then re-requested
until filled: first cfg.nack_retry after that, then at doubling intervals up to
cfg.nack_interval (a NACK or its resend lost right before the sender dies must be
asked for again within milliseconds, not only after the steady interval); a gap older than cfg.gap_give_up, or one
bigger than the sender's resend window, is abandoned for a bulk resync.  A
resync request left unanswered is repeated every cfg.resync_retry.

A mixin of syncd.receiver.SyncReceiver, kept apart so each file reads alone (as
syncd.handshake is); it uses the receiver's config, stats and control encoding.
"""
from __future__ import annotations

from typing import Callable

from proto import sync as S
from proto.sync import Message
from syncd.config import SyncConfig


class PeerStream:
    """What the receiver keeps of one sender's stream (its current epoch)."""
    __slots__ = ("epoch", "highest", "missing", "asked", "newest_time", "nack_due",
                 "recent", "want_after", "want_asked", "bulk_seen", "answer_start", "answer_end",
                 "heard", "state", "state_seq", "state_at", "answered")

    def __init__(self, epoch: int, send_time: float) -> None:
        self.epoch = epoch
        self.highest = 0
        self.missing: dict[int, float] = {}     # seq -> when it was found missing (ascending)
        self.asked: dict[int, float] = {}       # seq -> when it was last NACKed
        self.newest_time = send_time            # sender's clock when it sent the highest seq
        self.nack_due = float("inf")            # when the earliest missing seq is due again
        self.recent: dict[tuple, int] = {}      # conn key -> seq that set it (while gaps are open)
        self.want_after: int | None = None      # a bulk starting after this seq is wanted
        self.want_asked = 0.0
        self.bulk_seen = float("-inf")          # when a bulk message last arrived
        self.answer_start = 0                   # first seq of the bulk answering our request
        self.answer_end = 0                     # ... and its last, while seqs of it are missing
        self.heard = float("-inf")              # our `now` at its last DATA, HEARTBEAT or STATE
        self.state: Message | None = None       # its latest STATE (role, priority, ...)
        self.state_seq = 0
        self.state_at = 0.0                     # when that arrived
        self.answered = False                   # a bulk answering our request came whole


class GapRepair:
    # what SyncReceiver provides (declared for the type checker)
    cfg: SyncConfig
    node_id: str
    stats: dict[str, int]
    peers: dict[str, PeerStream]
    every_peer_bulk: bool
    _startup_want: float | None
    _control: Callable[..., bytes]
    _resync_request: Callable[[float, "str | None"], bytes]

    def _nacks(self, node: str, peer: PeerStream, seqs, now: float) -> list[bytes]:
        ranges: list[tuple[int, int]] = []
        for s in sorted(seqs):
            if ranges and ranges[-1][1] == s - 1:
                ranges[-1] = (ranges[-1][0], s)
            else:
                ranges.append((s, s))
        per = S.nack_ranges_per_message(self.node_id, node, self.cfg.max_payload)
        out = [self._control(S.NACK, now, target=node, target_epoch=peer.epoch,
                             ranges=ranges[i:i + per]) for i in range(0, len(ranges), per)]
        self.stats["nacks_sent"] += len(out)
        return out

    def _give_up(self, node: str, peer: PeerStream, now: float) -> list[bytes]:
        """Stop chasing this sender's gaps: ask it for the whole table instead."""
        self.stats["gave_up"] += 1
        peer.missing.clear()
        peer.asked.clear()
        peer.nack_due = float("inf")
        peer.recent.clear()
        # a request still pending is raised, not repeated (the periodic retry
        # asks again if the bulk that comes began too early)
        pending = peer.want_after is not None and now < peer.want_asked + self.cfg.resync_retry
        peer.want_after = max(peer.highest, peer.want_after or 0)
        if pending:
            return []
        peer.want_asked = now
        return [self._resync_request(now, node)]

    def _check_answered(self, peer: PeerStream) -> None:
        """The bulk answering our request is complete once nothing of it is missing
        (missing seqs are kept in ascending order: the first is the lowest)."""
        if peer.missing and next(iter(peer.missing)) <= peer.answer_end:
            return
        peer.answer_start = peer.answer_end = 0
        peer.answered = True
        self.stats["bulks_answered"] += 1
        if not self.every_peer_bulk:    # a pair: its one peer's table is the table
            self._startup_want = None

    def _gap(self, node: str, peer: PeerStream, upto: int, now: float) -> list[bytes]:
        """Seqs highest+1..upto are missing: record them and NACK them at once."""
        first = peer.highest + 1
        if upto < first:
            return []
        self.stats["gaps"] += 1
        count = upto - first + 1
        peer.highest = upto
        if count + len(peer.missing) > self.cfg.resend_window:
            return self._give_up(node, peer, now)
        self.stats["missing_seqs"] += count
        new = range(first, upto + 1)
        for s in new:
            peer.missing[s] = now
            peer.asked[s] = now
        # (older gaps keep their own schedule: a stream of new gaps must not
        # postpone re-requesting the old ones)
        peer.nack_due = min(peer.nack_due, now + self._retry_after(now, now))
        return self._nacks(node, peer, new, now)

    def _retry_after(self, found: float, asked: float) -> float:
        """How long after its last request a missing seq is asked for again: as long as
        it has been missing when last asked (so the intervals double), at least
        cfg.nack_retry, at most cfg.nack_interval."""
        cfg = self.cfg
        return min(cfg.nack_interval, max(cfg.nack_retry or cfg.nack_interval, asked - found))

    def poll(self, now: float) -> list[bytes]:
        """Re-request open gaps, give up on old ones, repeat unanswered resync requests."""
        cfg = self.cfg
        out: list[bytes] = []
        if self._startup_want is not None and not self.peers \
                and now >= self._startup_want + cfg.resync_retry:
            self._startup_want = now
            out.append(self._resync_request(now, None))
        for node, peer in self.peers.items():
            if peer.missing and now >= peer.nack_due:
                oldest = peer.missing[next(iter(peer.missing))]
                if now - oldest >= cfg.gap_give_up:
                    out += self._give_up(node, peer, now)
                else:
                    asked, found, after = peer.asked, peer.missing, self._retry_after
                    due = [s for s, t in asked.items() if t + after(found[s], t) <= now]
                    for s in due:
                        asked[s] = now
                    peer.nack_due = min(t + after(found[s], t) for s, t in asked.items())
                    out += self._nacks(node, peer, due, now)
            if peer.want_after is not None and now >= peer.want_asked + cfg.resync_retry \
                    and now >= peer.bulk_seen + cfg.resync_retry:
                peer.want_asked = now
                out.append(self._resync_request(now, node))
        return out

    def next_deadline(self) -> float:
        cfg = self.cfg
        d = float("inf")
        if self._startup_want is not None and not self.peers:
            d = self._startup_want + cfg.resync_retry
        for peer in self.peers.values():
            if peer.missing:
                d = min(d, peer.nack_due)
            if peer.want_after is not None:
                d = min(d, max(peer.want_asked, peer.bulk_seen) + cfg.resync_retry)
        return d


    def missing(self) -> int:
        return sum(len(p.missing) for p in self.peers.values())
