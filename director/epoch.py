"""One clock for the operator (director.status and what reports on a node).

The cores run on the injected monotonic clock and keep their instants on it; every
time the API reports is turned into epoch seconds (UTC, to the ms) by `EpochClock`,
when the answer is built, and human output shows it as ISO 8601 UTC (`iso_utc`).  Durations stay durations (`uptime_s`, `expires_in`,
`lag_ms`), rounded to what can be measured: seconds to the ms, milliseconds to 0.1
(the sync lag is rounded where it is measured, syncd.receiver).
"""
from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Callable


class EpochClock:
    """The one conversion from the node's monotonic clock to epoch seconds.

    The offset is read again for each answer (`offset()`), so a wall clock stepped after
    the node started (NTP's first sync at boot) shows at once; one answer converts all its
    instants with the same offset, so they agree with each other to the ms.
    """

    def __init__(self, mono: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self._mono, self._wall = mono, wall

    def offset(self) -> float:
        """Epoch seconds minus monotonic seconds, now."""
        return self._wall() - self._mono()

    def epoch(self, t: float, offset: float | None = None) -> float:
        """A monotonic instant as epoch seconds, to the ms."""
        return round(t + (self.offset() if offset is None else offset), 3)

    def now(self) -> float:
        return round(self._wall(), 3)


def iso_utc(epoch: float) -> str:
    """Epoch seconds as ISO 8601 UTC to the ms, for human output: 2026-12-03T22:10:45.123Z."""
    at = datetime.fromtimestamp(epoch, timezone.utc)
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
