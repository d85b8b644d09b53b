"""The connection table, modelled on nf_conn's hash: one dict holds both tuples.

One entry per connection holds both tuples: ORIGINAL (client -> VIP) and REPLY
(real server -> laddr).  Both keys live in one dict, so one lookup per packet
finds the entry, and which key matched gives the direction.  Expiry is a
timer wheel; early drop takes candidates from insertion-ordered sets in O(1).
"""
from __future__ import annotations

from typing import Callable, Iterator

from director.timer import TimerWheel
from proto.consts import ASSURED

#: percent full above which closing entries may be evicted (nf_conntrack_max95)
EVICT_CLOSING_ABOVE = 95


class ConnTable:
    """Both-tuple index, expiry wheel and the sets early drop picks from."""

    def __init__(self, max_conns: int, on_expire: Callable, tick: float = 0.1,
                 start: float = 0.0) -> None:
        self.max_conns = max_conns
        self.index: dict = {}
        self.count = 0
        self.wheel = TimerWheel(tick, start)
        self._on_expire = on_expire
        # Insertion-ordered, so the first key is the oldest unassured entry:
        # early drop takes it in O(1), as conntrack's early_drop takes a
        # non-ASSURED entry before refusing a new one.
        self.unassured: dict = {}
        # Entries in a state their protocol lets early drop take even when
        # ASSURED (TCP's closing states), oldest first.
        self.closing_entries: dict = {}

    def get(self, key: bytes):
        return self.index.get(key)

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator:
        # every entry has its REPLY key indexed (one-packet entries have only that);
        # a caller that changes the table while iterating takes list() first
        for key, conn in self.index.items():
            if key is conn.reply_key:
                yield conn

    def has_key(self, key: bytes) -> bool:
        return key in self.index

    def insert(self, conn, expires: float, *, reply_only: bool = False) -> None:
        """Index both tuples; `reply_only` for one-packet scheduling, where the
        next datagram with the same ORIGINAL tuple must be scheduled afresh."""
        if (not reply_only and conn.orig_key in self.index) or conn.reply_key in self.index:
            raise KeyError("tuple already in the table")
        if not reply_only:
            self.index[conn.orig_key] = conn
        self.index[conn.reply_key] = conn
        self.count += 1
        conn.expires = expires
        self.wheel.schedule(conn)
        if not conn.flags & ASSURED:
            self.unassured[conn] = None

    def closing(self, conn, closing: bool) -> None:
        """Mark or unmark an entry as being in a closing (evictable) state."""
        if closing:
            self.closing_entries[conn] = None
        else:
            self.closing_entries.pop(conn, None)

    def assure(self, conn) -> None:
        conn.flags |= ASSURED
        self.unassured.pop(conn, None)

    def remove(self, conn) -> None:
        """Unhash now (the wheel entry is dropped lazily: `alive` goes False)."""
        reply_key, orig_key = conn.reply_key, conn.orig_key
        if self.index.get(reply_key) is conn:
            del self.index[reply_key]
            if self.index.get(orig_key) is conn:
                del self.index[orig_key]
            self.count -= 1
        self.unassured.pop(conn, None)
        self.closing_entries.pop(conn, None)
        conn.alive = False

    def early_drop_candidate(self):
        """What to evict for a new entry, as nf_conntrack decides: the oldest
        entry not ASSURED; or, once the table is over EVICT_CLOSING_ABOVE full,
        the oldest in a closing state (FIN_WAIT, LAST_ACK, TIME_WAIT, CLOSE,
        CLOSE_WAIT), ASSURED or not (conntrack's gc evicts those when over 95%
        of nf_conntrack_max); else None, and the new connection is refused."""
        for conn in self.unassured:
            return conn
        if self.count * 100 > self.max_conns * EVICT_CLOSING_ABOVE:
            for conn in self.closing_entries:
                return conn
        return None

    def expire(self, now: float) -> int:
        return self.wheel.advance(now, self._expired)

    def _expired(self, conn) -> None:
        self.remove(conn)
        self._on_expire(conn)
