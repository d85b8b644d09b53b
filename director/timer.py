"""A hashed timer wheel with lazy re-arming, for connection expiry.

Why lazy: a connection's deadline moves forward on every packet.  Moving an
entry between slots per packet would cost more than the packet itself, so a
refresh only writes `item.expires`; the entry is re-filed when its slot comes
due (as the kernel's mod_timer avoids work for timers that are pushed later).
Only a deadline that moves *earlier* (ESTABLISHED 900 s -> CLOSE 10 s) files a
second entry; the older one is recognised as stale by `item.timer_tick`.

Items need three attributes: `expires` (float, seconds), `timer_tick` (int)
and `alive` (bool).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable


class TimerWheel:
    def __init__(self, tick: float = 0.1, start: float = 0.0) -> None:
        if tick <= 0:
            raise ValueError("tick must be > 0")
        self.tick = tick
        self._slots: dict[int, list] = {}
        self._next = self._tick_of(start)

    def _tick_of(self, t: float) -> int:
        return math.ceil(t / self.tick)

    def __len__(self) -> int:
        return sum(len(s) for s in self._slots.values())

    def schedule(self, item) -> None:
        """File `item` for its current `expires` (call after creating it, or
        after moving its deadline earlier)."""
        tick = max(self._tick_of(item.expires), self._next)
        item.timer_tick = tick
        slot = self._slots.get(tick)
        if slot is None:
            self._slots[tick] = [item]
        else:
            slot.append(item)

    def refresh(self, item, expires: float) -> None:
        """Set a new deadline; re-file only when it moved earlier than its slot."""
        item.expires = expires
        if self._tick_of(expires) < item.timer_tick:
            self.schedule(item)

    def advance(self, now: float, on_expire: Callable[[Any], None]) -> int:
        """Expire every live item whose deadline is <= now; return how many."""
        target = math.floor(now / self.tick)
        if target < self._next:
            return 0
        slots = self._slots
        due: Iterable[int]
        if target - self._next > len(slots):
            due = sorted(t for t in slots if t <= target)
        else:
            due = range(self._next, target + 1)
        self._next = target + 1
        expired = 0
        for tick in due:
            items = slots.pop(tick, None)
            if not items:
                continue
            for item in items:
                if not item.alive or item.timer_tick != tick:
                    continue
                if item.expires <= now:
                    item.alive = False
                    on_expire(item)
                    expired += 1
                else:
                    self.schedule(item)
        return expired
