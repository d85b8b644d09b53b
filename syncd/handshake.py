"""The receiver's half of the epoch handshake (see syncd.auth): challenge an
epoch nobody has vouched for, answer the peer's challenges, and take up a
peer's epoch once its RESPONSE proves it alive.

A mixin of syncd.receiver.SyncReceiver, kept apart so each file reads alone;
it uses the receiver's peers, held messages, gap repair and control encoding.
"""
from __future__ import annotations

from typing import Any, Callable

from proto import sync as S
from proto.sync import Message
from syncd.auth import EpochAuth
from syncd.config import SyncConfig

#: data messages kept per node while its epoch is being challenged
HOLD = 64


class EpochHandshake:
    # what SyncReceiver provides (declared for the type checker)
    auth: EpochAuth
    cfg: SyncConfig
    node_id: str
    stats: dict[str, int]
    peers: dict[str, Any]
    sender: Any
    on_control: Callable[[Message, float], list[bytes]] | None
    _held: dict[str, list[Message]]
    _startup_want: float | None
    _new_peer: Callable[[int, float], Any]

    def _control(self, mtype: int, now: float, **body: Any) -> bytes:
        raise NotImplementedError

    def _resync_request(self, now: float, target: str | None) -> bytes:
        raise NotImplementedError

    def _gap(self, node: str, peer: Any, upto: int, now: float) -> list[bytes]:
        raise NotImplementedError

    def on_message(self, msg: Message, now: float) -> list[bytes]:
        raise NotImplementedError

    def _challenge(self, node: str, epoch: int, now: float) -> list[bytes]:
        nonce = self.auth.unknown(node, epoch, now)
        if nonce is None:
            return []
        return [self._control(S.CHALLENGE, now, target=node, nonce=nonce)]

    def _hold(self, msg: Message) -> None:
        """Keep a few data messages of an epoch being challenged: used once its
        RESPONSE proves it alive, so a stream that starts meanwhile is not lost
        (nor NACKed).  Only the latest epoch seen per node, at most HOLD."""
        held = self._held.get(msg.node_id)
        if held is None or held[0].epoch != msg.epoch:
            held = self._held[msg.node_id] = []
        if len(held) < HOLD:
            held.append(msg)

    def _wants(self, node: str) -> bool:
        """Whether this node wants `node`'s whole table now."""
        if self._startup_want is not None:
            return True
        peer = self.peers.get(node)
        return peer is not None and peer.want_after is not None

    def _on_challenge(self, msg: Message, now: float) -> list[bytes]:
        if msg.target != self.node_id:
            return []                           # for another node on the group
        node = msg.node_id
        out: list[bytes] = []
        if not self.auth.is_current(node, msg.epoch):
            # Ask back first: the challenger's answer to us then carries its last
            # seq from before any bulk our answer makes it start.
            out += self._challenge(node, msg.epoch, now)
        if self.auth.may_answer(node, msg.epoch, msg.nonce, now):
            last = self.sender.seq if self.sender is not None else 0
            out.append(self._control(S.RESPONSE, now, target=node, nonce=msg.nonce,
                                     last_seq=last, wants=self._wants(node)))
        return out

    def _on_response(self, msg: Message, now: float) -> list[bytes]:
        node = msg.node_id
        if msg.target != self.node_id or not self.auth.verify(node, msg.nonce):
            return []
        new, old = self.auth.accept(node, msg.epoch, msg.seq)
        if not new:
            self._held.pop(node, None)          # held from a refused epoch: never used
            return []
        cfg = self.cfg
        out: list[bytes] = []
        if old is not None:
            self.stats["epoch_changes"] += 1
        prev = self.peers.get(node)
        wanted: float | None
        if self._startup_want is not None:
            wanted = self._startup_want                 # when we last asked
        else:
            wanted = prev.want_asked if prev is not None and prev.want_after is not None else None
        peer = self.peers[node] = self._new_peer(msg.epoch, msg.send_time)
        before = msg.last_seq
        if wanted is not None:
            # only a bulk begun after this answer was made answers our request
            peer.want_after, peer.want_asked = before, wanted
            # and that bulk carries the current state of every connection: the
            # epoch's history is not replayed from the window (it would apply old
            # incarnations of reused client ports, which the bulk's INACTIVE
            # entries for the new ones could then not replace)
            peer.highest = before
        # what arrived while it was being challenged, oldest first
        for m in sorted(self._held.pop(node, ()), key=lambda m: m.seq):
            if m.epoch != msg.epoch:
                continue
            if cfg.max_age and msg.send_time - m.send_time > cfg.max_age:
                self.stats["too_old"] += 1
                continue
            out += self.on_message(m, now)
        # the epoch's seqs so far: repair them from the window if they can be
        if before - peer.highest > cfg.resend_window:
            # too old to repair seq by seq: only a bulk started from here on will do
            peer.highest = before
            if peer.want_after is None:
                self.stats["gave_up"] += 1
                peer.want_after, peer.want_asked = before, now
                out.append(self._resync_request(now, node))
        elif before > peer.highest:
            out += self._gap(node, peer, before, now)
        if msg.wants and self.on_control is not None:
            # its fresh, authenticated request for our table (a replayed
            # RESYNC_REQUEST can never do this: it answers no nonce)
            self.stats["control"] += 1
            out += self.on_control(Message(S.RESYNC_REQUEST, msg.sync_id, node, msg.epoch, msg.seq,
                                           msg.send_time, target=self.node_id), now)
        return out
