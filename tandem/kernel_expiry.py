"""Kernel flows past their timeout, asked of the kernel and retired from the view.

conntrack tells an entry's end (DESTROY) only when its garbage collection reaps it, tens
of seconds after it expired; the view knows each flow's deadline as of its last event
(director.kernel_expiry).  From the node's tick, `ExpiryChecks` takes the flows whose
deadline passed (`KernelFlows.due`, at most DUE_PER_TICK a tick) and asks the kernel for
them with a conntrack GET in a worker thread, CHECK_BATCH at a time, one check at a time.
The GET finds an expired entry and reaps it (the kernel's lookup kills what has expired,
so its DESTROY follows at once); the flows the kernel no longer holds are retired from the
view, the others armed again from the time they have left (`KernelFlows.checked`); the
counts follow.  Nothing runs during a repair, which rebuilds the view and its deadlines.
"""
from __future__ import annotations

import asyncio
from typing import Any, Callable

from director.kernel_flows import KernelFlows
from proto import ctnetlink as ct

#: flows past their deadline asked of the kernel per GET (one worker-thread round)
CHECK_BATCH = 1024
#: s until flows whose GET failed are asked again
CHECK_RETRY = 5
#: the wheel's filings looked at per tick at most (KernelFlows.due's limit): the rest of a
#: full slot waits for the next ticks, so the loop that sends VRRP adverts is never held
#: for a whole slot (50k keys in one call took 123 ms)
DUE_PER_TICK = 4 * CHECK_BATCH


class ExpiryChecks:
    """`kernel`: the node's privileged interface (get_conntrack); `flows`: the view;
    `account`: sets the real servers' counts from the view after a change."""

    def __init__(self, kernel: Any, flows: KernelFlows, clock: Callable[[], float],
                 on_error: Callable[[str], None], account: Callable[[], None]) -> None:
        self.kernel = kernel
        self.flows = flows
        self.clock = clock
        self.checks = 0             # GETs made
        self.failures = 0           # GETs that failed (the flows asked again later)
        self._on_error = on_error
        self._account = account
        self._task: asyncio.Task | None = None

    def poll(self, repairing: bool) -> None:
        """From the node's tick: start a check of the flows due, unless one runs."""
        if repairing or (self._task is not None and not self._task.done()):
            return
        due = self.flows.due(self.clock(), DUE_PER_TICK)
        if due:
            self._task = asyncio.get_running_loop().create_task(self._check(due),
                                                                name="kernel-expiry")

    async def _check(self, due: list[ct.Tuple]) -> None:
        for i in range(0, len(due), CHECK_BATCH):
            part = due[i:i + CHECK_BATCH]
            self.checks += 1
            try:
                found = await asyncio.to_thread(self.kernel.get_conntrack, part)
            except (OSError, ValueError) as exc:    # ValueError: an answer ct.decode refuses
                self.failures += 1
                if self.failures <= 10:
                    self._on_error(f"conntrack get of flows past their timeout failed: {exc}")
                # due() disarmed them: armed again, asked again in CHECK_RETRY s
                found = {t: ct.Conntrack(orig=t, timeout=CHECK_RETRY) for t in part}
            self.flows.checked(part, found, self.clock())
            self._account()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
