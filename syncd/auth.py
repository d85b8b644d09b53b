"""Which epoch of each peer is alive: a nonce challenge, no clocks involved.

An epoch is a random 64-bit number a node draws when it starts; every message
carries it.  A captured message replayed later carries a valid MAC, so the MAC
alone cannot tell a restarted peer from a replay of one of its past lives, and
comparing wall-clock send times fails as soon as the two clocks disagree.
Instead, a message from an epoch this node has not authenticated is not used:
it is counted and answered with a CHALLENGE carrying a fresh random nonce.  Only
a live process can answer a nonce it has never seen, and its RESPONSE names its
epoch (the one in the signed header), so the answer proves which epoch is alive
now.  That epoch becomes the peer's current one, with the peer's control
counter at that moment as the floor below which its control messages are
replays; any other epoch seen meanwhile is refused, with one warning.

This object keeps that bookkeeping, sans-IO; syncd.receiver builds and sends
the messages.  Everything is bounded: a handful of outstanding nonces and
unauthenticated epochs per peer, challenges at most every `retry` seconds per
peer, and answers to challenges from epochs we do not know at most
UNKNOWN_ANSWER_RATE per second (a challenge replayed from a dead epoch can only
ask for a small signed answer, never for state).
"""
from __future__ import annotations

import hmac
import logging
import secrets
from collections import deque

from proto.sync import NONCE_LEN

log = logging.getLogger("tandem.syncd")

#: answers per second to challenges from epochs not (yet) authenticated, and the burst
UNKNOWN_ANSWER_RATE = 20.0
UNKNOWN_ANSWER_BURST = 10.0
_NONCES = 8            # outstanding challenges per peer (a slow answer to an older one still counts)
_SEEN = 8              # unauthenticated epochs remembered per peer
_ANSWERED = 64         # nonces already answered (a duplicated challenge is answered once)
_WARNED = 256          # (node, epoch) pairs already warned about


class PeerAuth:
    __slots__ = ("epoch", "ctl_seq", "nonces", "asked", "seen")

    def __init__(self) -> None:
        self.epoch: int | None = None           # the authenticated, current epoch
        self.ctl_seq = 0                        # the highest control seq accepted from it
        self.nonces: deque[bytes] = deque(maxlen=_NONCES)
        self.asked = float("-inf")              # when the last challenge went out
        self.seen: dict[int, float] = {}        # unauthenticated epoch -> first seen


class EpochAuth:
    def __init__(self, retry: float, refuse_after: float, stats: dict | None = None) -> None:
        #: a peer is challenged at most this often
        self.retry = retry
        #: an epoch still unanswered this long after it was first seen is refused
        self.refuse_after = refuse_after
        self.peers: dict[str, PeerAuth] = {}
        self._answered: deque[bytes] = deque(maxlen=_ANSWERED)
        self._tokens = UNKNOWN_ANSWER_BURST
        self._tokens_at = float("-inf")
        self._warned: deque[tuple[str, int]] = deque(maxlen=_WARNED)
        #: counters, kept in the caller's dict if one is given (the receiver's)
        self.stats = {} if stats is None else stats
        for k in ("unauthenticated", "challenges_sent", "responses_sent", "challenges_unanswered",
                  "responses_stale", "authenticated", "epochs_refused"):
            self.stats.setdefault(k, 0)

    def current(self, node: str) -> int | None:
        p = self.peers.get(node)
        return None if p is None else p.epoch

    def is_current(self, node: str, epoch: int) -> bool:
        p = self.peers.get(node)
        return p is not None and p.epoch == epoch

    def fresh_control(self, node: str, seq: int) -> bool:
        """A control message (NACK, RESYNC_REQUEST) of the current epoch: only a
        higher counter than any accepted so far (or than at authentication)."""
        p = self.peers[node]
        if seq <= p.ctl_seq:
            return False
        p.ctl_seq = seq
        return True

    def unknown(self, node: str, epoch: int, now: float) -> bytes | None:
        """A message from an epoch that is not node's current one.  Returns the
        nonce of a new challenge if one is due, else None."""
        self.stats["unauthenticated"] += 1
        p = self.peers.get(node)
        if p is None:
            p = self.peers[node] = PeerAuth()
        first = p.seen.get(epoch)
        if first is None:
            if len(p.seen) >= _SEEN:
                p.seen.pop(next(iter(p.seen)))
            p.seen[epoch] = now
        elif now - first >= self.refuse_after:
            self._refuse(node, epoch)
        if now < p.asked + self.retry:
            return None
        nonce = secrets.token_bytes(NONCE_LEN)
        p.nonces.append(nonce)
        p.asked = now
        self.stats["challenges_sent"] += 1
        return nonce

    def may_answer(self, node: str, epoch: int, nonce: bytes, now: float) -> bool:
        """Whether to answer a challenge: once per nonce; from an epoch we have
        not authenticated, within a small rate."""
        if nonce in self._answered:
            return False
        if not self.is_current(node, epoch):
            self._tokens = min(UNKNOWN_ANSWER_BURST,
                               self._tokens + (now - self._tokens_at) * UNKNOWN_ANSWER_RATE)
            self._tokens_at = now
            if self._tokens < 1:
                self.stats["challenges_unanswered"] += 1
                return False
            self._tokens -= 1
        self._answered.append(nonce)
        self.stats["responses_sent"] += 1
        return True

    def verify(self, node: str, nonce: bytes) -> bool:
        """A RESPONSE is genuine if it echoes one of our outstanding nonces (each
        is used once)."""
        p = self.peers.get(node)
        if p is not None:
            for n in p.nonces:
                if hmac.compare_digest(n, nonce):
                    p.nonces.clear()
                    return True
        self.stats["responses_stale"] += 1
        return False

    def accept(self, node: str, epoch: int, ctl_seq: int) -> tuple[bool, int | None]:
        """node proved that `epoch` is alive.  Returns (is it a new current epoch,
        the previous one).  The other epochs seen meanwhile are refused."""
        p = self.peers[node]
        for e in list(p.seen):
            if e != epoch:
                self._refuse(node, e)
        p.seen.clear()
        old = p.epoch
        if old == epoch:
            return False, old
        p.epoch, p.ctl_seq = epoch, ctl_seq
        self.stats["authenticated"] += 1
        log.info("sync: node %s is alive with epoch %016x%s", node, epoch,
                 "" if old is None else f" (was {old:016x})")
        return True, old

    def _refuse(self, node: str, epoch: int) -> None:
        key = (node, epoch)
        if key in self._warned:
            return
        self._warned.append(key)
        self.stats["epochs_refused"] += 1
        log.warning("sync: refusing epoch %016x of node %s: it did not answer a challenge "
                    "(a replay of an earlier run, or a process that is gone); its messages "
                    "are counted as unauthenticated and ignored", epoch, node)
