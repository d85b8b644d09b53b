"""The sender's bulk resync, sans-IO: the whole table as sequenced DATA messages flagged
F_BULK, paced at cfg.bulk_rate entries/s while normal sync goes on (syncd.sender's
docstring says when one starts and what the receiver makes of it).

A mixin of syncd.sender.SyncSender, kept apart so each file reads alone (as syncd.repair
is for the receiver); it uses the sender's config, stats, budget and _seal.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

from proto import sync as S
from proto.sync import SyncEntry
from syncd.config import SyncConfig

Snapshot = Callable[[], Iterable[Any]]

ToEntry = Callable[[Any, float], "SyncEntry | None"]


class BulkSend:
    """The bulk half of SyncSender."""
    # what SyncSender provides (declared for the type checker)
    cfg: SyncConfig
    stats: dict[str, int]
    seq: int
    budget: int
    snapshot: Snapshot | None
    to_entry: ToEntry | None
    _seal: Callable[[list[bytes], int, float], bytes]

    def _init_bulk(self) -> None:
        self._bulk: Iterator | None = None
        self._bulk_to_entry: ToEntry | None = None
        self._bulk_first = True
        self._bulk_entries: list[bytes] = []
        self._bulk_size = 0
        self._bulk_tokens = 0.0
        self._bulk_last = 0.0
        self._bulk_again: tuple[Snapshot | None, ToEntry | None] | None = None
        self._bulk_base = -1        # the last seq before the most recent bulk's first message
        self._bulk_burst = max(self.cfg.bulk_rate * self.cfg.bulk_interval * 2, 64.0)

    @property
    def bulk_active(self) -> bool:
        return self._bulk is not None

    def start_bulk(self, now: float, snapshot: Snapshot | None = None,
                   to_entry: Callable[[Any, float], SyncEntry | None] | None = None) -> None:
        """Begin sending the whole table (or queue one more run if one is going)."""
        snapshot = snapshot or self.snapshot
        if self._bulk is not None:
            if self._bulk_again is None:
                self._bulk_again = (snapshot, to_entry)
            return
        self.stats["bulk_runs"] += 1
        self._bulk_base = self.seq
        self._bulk = iter(snapshot() if snapshot is not None else ())
        self._bulk_to_entry = to_entry or self.to_entry
        self._bulk_first = True
        self._bulk_entries, self._bulk_size = [], 0
        self._bulk_tokens = self.cfg.bulk_rate * self.cfg.bulk_interval
        self._bulk_last = now
        # Seal the first message now, before any normal message takes a seq: a
        # receiver may then take "seq < the BULK_START seq" to mean "covered by
        # this bulk" (every such message was sealed before the snapshot).
        self._run_bulk(now)
        if self._bulk is not None and self._bulk_first:
            self._seal_bulk(now, end=False)

    def _seal_bulk(self, now: float, end: bool) -> None:
        flags = S.F_BULK | (S.F_BULK_START if self._bulk_first else 0) | (S.F_BULK_END if end else 0)
        self._seal(self._bulk_entries, flags, now)
        self._bulk_first = False
        self._bulk_entries, self._bulk_size = [], 0

    def _run_bulk(self, now: float) -> None:
        rate = self.cfg.bulk_rate
        self._bulk_tokens = min(self._bulk_tokens + (now - self._bulk_last) * rate, self._bulk_burst)
        self._bulk_last = now
        it, to_entry, budget = self._bulk, self._bulk_to_entry, self.budget
        assert it is not None       # called only while a bulk runs
        done = object()
        while self._bulk_tokens >= 1:
            item: Any = next(it, done)
            if item is done:
                self._seal_bulk(now, end=True)
                self._bulk = None
                if self._bulk_again is not None:
                    (snap, conv), self._bulk_again = self._bulk_again, None
                    self.start_bulk(now, snap, conv)
                return
            self._bulk_tokens -= 1
            entry = to_entry(item, now) if to_entry is not None else item
            if entry is None:
                continue
            b = S.pack_entry(entry)
            if self._bulk_size + len(b) > budget:
                self._seal_bulk(now, end=False)
            self._bulk_entries.append(b)
            self._bulk_size += len(b)
            self.stats["bulk_entries"] += 1
