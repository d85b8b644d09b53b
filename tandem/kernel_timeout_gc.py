"""Old `ct timeout` objects deleted once no kernel flow may use them.

A change of [timeouts] (a reload, or a start over a predecessor's table) gives new flows
the next generation of objects, and the older ones stay for the flows that started on
them (director.kernel_timeouts).  `TimeoutGc` follows those flows in the view
(director.kernel_timeouts.RetiredTimeouts): each flow's end (its DESTROY, or the expiry
checks' retirement) takes it out of the sets it is held in, so the look from the node's
tick, at most every COLLECT_EVERY, only asks whether a set is empty, and the objects of
an empty one are deleted in a worker thread.  A repair (lost events) holds every deletion
until it is done; it ends with one walk of the view, a step at a time, which makes the
flows it leaves the ones held (flows that left the view unseen are let go there).
"""
from __future__ import annotations

import asyncio
import logging
import subprocess
from typing import Any, Callable, Iterable, Iterator

from director.kernel_flows import RESYNC_STEP, KernelFlows
from director.kernel_timeouts import TIMEOUT_POLICY, RetiredTimeouts, timeout_name
from proto import ctnetlink as ct
from proto.flow_table import VIEW

log = logging.getLogger("tandem.kernel_mode")

#: s between two looks for objects no flow uses (a look at each retired set, not its flows)
COLLECT_EVERY = 2.0


def generation_names(generation: int) -> list[str]:
    """The objects of one generation: one per protocol and family."""
    return [timeout_name(p, f, generation) for p in TIMEOUT_POLICY for f in (4, 6)]


class TimeoutGc:
    """`kernel`: the node's privileged interface (remove_timeouts); `flows`: the view."""

    def __init__(self, kernel: Any, flows: KernelFlows, clock: Callable[[], float],
                 on_error: Callable[[str], None]) -> None:
        self.kernel = kernel
        self.flows = flows
        self.clock = clock
        self.retired = RetiredTimeouts()
        self.removed = 0
        self._on_error = on_error
        self._next = 0.0
        self._task: asyncio.Task | None = None
        #: the flows a repair's walk found in the view so far (None between walks)
        self._sweep: set[int] | None = None
        flows.watch(self._seen)
        flows.watch_resync(self._resynced)

    def switched(self, names: Iterable[str]) -> None:
        """New flows no longer get these objects (call once the rules' commit is done)."""
        rows = self.flows.table.rows
        self.retired.retire(names, [k for k, r in rows.items() if r & VIEW], self.clock())

    def _seen(self, msg: ct.Message, flow: Any) -> None:
        if not self.retired.pending or msg.ct.orig is None:
            return
        if flow is None:
            if msg.event == "destroy":      # the flow left the view: nothing held for it
                k = self.flows.table.find(msg.ct.orig)[0]
                self.retired.ended(k)
                if self._sweep is not None:
                    self._sweep.discard(k)
        elif msg.event == "new" and self.retired.window_open:
            self.retired.seen_new(self.flows.table.key(msg.ct.orig))

    def _resynced(self, flows: Any, entries: list) -> Iterator[None] | None:
        return self._sweep_steps() if self.retired.pending else None

    def _sweep_steps(self) -> Iterator[None]:
        """After a repair: the flows it left in the view become the ones held, found by a
        walk of the rows RESYNC_STEP at a time (run in the repair's steps)."""
        rows = self.flows.table.rows
        before = list(self.retired.pending)
        keys = list(rows)           # one copy in C; the lookups below go a step at a time
        found = self._sweep = set()
        try:
            for i in range(0, len(keys), RESYNC_STEP):
                found.update(k for k in keys[i:i + RESYNC_STEP] if rows.get(k, 0) & VIEW)
                yield
            self.retired.resynced(found, before)
        finally:
            self._sweep = None

    def read_empty(self) -> None:
        """The event socket was just read empty."""
        if self.retired.window_open:
            self.retired.read_empty(self.clock())

    def poll(self, repairing: bool) -> None:
        """From the node's tick: delete what no flow may use (never during a repair)."""
        now = self.clock()
        self.retired.tick(now)
        if now < self._next or repairing or self.flows.needs_resync or not self.retired.pending \
                or self._sweep is not None or (self._task is not None and not self._task.done()):
            return
        self._next = now + COLLECT_EVERY
        names = self.retired.collect()
        if names:
            self._task = asyncio.get_running_loop().create_task(self._remove(names),
                                                                name="kernel-timeout-gc")

    async def _remove(self, names: list[str]) -> None:
        try:
            gone = await asyncio.to_thread(self.kernel.remove_timeouts, names)
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            self._on_error(f"old timeout objects {names} not deleted: {exc}; tried again later")
            self.retired.retire(names, (), float("-inf"))
            self.retired.read_empty(self.clock())
            return
        self.removed += len(gone)
        log.info("timeout objects no flow uses any more deleted: %s", " ".join(gone) or "none left")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
