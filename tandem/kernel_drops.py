"""The kernel-mode table's drop counters (director.kernel_rules.DROP_COUNTERS), read cheaply.

Reading them runs `nft` (a child process, some milliseconds), so it never runs on the event
loop and never on a timer of its own: a read of /status or /metrics gets the last reading
at once and, when that is older than MAX_AGE, starts the next one in a worker thread.  An
operator polling /status, or Prometheus scraping, sees counts at most MAX_AGE plus one read
old; a node nobody reads runs no `nft` at all.
"""
from __future__ import annotations

import asyncio
import logging
import subprocess
import time
from typing import Any, Callable

from director.kernel_rules import DROP_COUNTERS

log = logging.getLogger("tandem.kernel_mode")

#: seconds a reading is served before a read starts another
MAX_AGE = 1.0


class DropCounters:
    """`kernel`: the node's privileged interface (kernel_drop_counters())."""

    def __init__(self, kernel: Any, clock: Callable[[], float] = time.monotonic) -> None:
        self.kernel = kernel
        self.clock = clock
        self.values = dict.fromkeys(DROP_COUNTERS, 0)
        self.failures = 0
        self._at = float("-inf")
        self._task: asyncio.Task | None = None

    def reset(self) -> None:
        """A table loaded afresh: its counters start at 0."""
        self.values = dict.fromkeys(DROP_COUNTERS, 0)

    def read(self) -> dict[str, int]:
        """The last reading; one older than MAX_AGE starts the next (on the event loop)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        stale = self.clock() - self._at >= MAX_AGE
        if loop is not None and stale and (self._task is None or self._task.done()):
            self._task = loop.create_task(self.refresh(), name="kernel-drops")
        return dict(self.values)

    async def refresh(self) -> dict[str, int]:
        """Read the counters now (in a worker thread)."""
        try:
            got = await asyncio.to_thread(self.kernel.kernel_drop_counters)
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            self.failures += 1
            if self.failures <= 10:
                log.warning("kernel-mode drop counters not read: %s", exc)
        else:
            self.values = {k: int(got.get(k, 0)) for k in DROP_COUNTERS}
        finally:
            self._at = self.clock()
        return dict(self.values)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
