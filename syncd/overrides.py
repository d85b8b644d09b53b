"""The operator's overrides on the sync channel, sans-IO: OVERRIDES messages out and in.

    link = OverrideLink(receiver, entries=lambda: [...], apply=lambda node, items: ...)
    out = link.changed(items, now)    # a change made here: to the peer at once
    out = link.poll(now)              # every cfg.overrides_interval: everything again
    (the receiver calls link.on_message for OVERRIDES and link.on_peer for a new peer epoch)

Overrides are state, not a stream: each message carries whole entries (director.overrides),
and the peer keeps per real server the one with the larger version.  So there is nothing to
number, NACK or resend: the whole set goes again every cfg.overrides_interval (a lost message
is made good then), and at once to a peer whose new epoch has just been authenticated (a
restarted peer catches up without waiting).  The messages are built by the receiver's
control encoder: the node's epoch, its control counter, the pair's key and MAC, as every
sync message; a receiver uses one only from the peer's authenticated epoch.

`entries()` returns the entries as lists (Override.to_list), clears included; `apply(node,
items)` gets a peer's, as lists, and checks them itself.
"""
from __future__ import annotations

from typing import Callable

from proto import sync as S
from proto.sync import Message


class OverrideLink:
    def __init__(self, receiver, *, entries: Callable[[], list[list]],
                 apply: Callable[[str, list[list]], None], interval: float) -> None:
        self.receiver = receiver
        self.entries = entries
        self.apply = apply
        self.interval = interval
        self._next = float("-inf")
        self.stats = dict.fromkeys(("sent", "received", "resends"), 0)
        receiver.on_overrides = self.on_message
        receiver.on_peer_epoch = self.on_peer

    def _messages(self, items: list[list], now: float) -> list[bytes]:
        r = self.receiver
        out = [r._control(S.OVERRIDES, now, overrides=body)
               for body in S.pack_overrides(items, r.node_id, r.cfg.max_payload)]
        self.stats["sent"] += len(out)
        return out

    def changed(self, items: list[list], now: float) -> list[bytes]:
        return self._messages(items, now)

    def on_peer(self, _node: str, now: float) -> list[bytes]:
        """A peer's new epoch is authenticated (it started, or restarted): all of ours now."""
        self._next = now + self.interval
        return self._messages(self.entries(), now)

    def poll(self, now: float) -> list[bytes]:
        if now < self._next:
            return []
        self._next = now + self.interval
        items = self.entries()
        if not items or not self.receiver.peers:
            return []
        self.stats["resends"] += 1
        return self._messages(items, now)

    def next_deadline(self) -> float:
        return self._next

    def on_message(self, msg: Message, _now: float) -> list[bytes]:
        self.stats["received"] += 1
        self.apply(msg.node_id, msg.overrides)
        return []
