"""The repairs of the kernel-flows view after lost conntrack events: the loop's side.

A repair (director.kernel_repair.Repair) reads the dump on the event loop without blocking,
at most kernel_repair.SLICE s per loop turn, then reconciles and applies the events read
meanwhile, a slice per turn: the loop that sends the VRRP adverts is never held for long
(before, the whole table was decoded in a worker thread, holding the GIL, and reconciled
in one go: at 100 ms adverts the backup took over during a burst).

One task takes the repairs in turn.  Overruns are counted as they come (KernelFlows.overrun);
a repair is asked for once the event socket was read empty after one (tandem.kernel_mode);
those asked for within DUMP_SPACING s of the last repair's end wait for it and share one
dump, instead of one dump each, back to back.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

from director.ct_events import DUMP_TRIES
from director.kernel_flows import KernelFlows
from director.kernel_repair import SLICE, Repair

log = logging.getLogger("tandem.kernel_mode")

#: seconds from the end of one repair dump to the next at least: overruns meanwhile are
#: counted and wait for it (conntrackd waits NetlinkOverrunResync, 30 s by default)
DUMP_SPACING = 1.0
#: seconds a repair dump may go without a datagram before it counts as failed
DUMP_TIMEOUT = 5.0


class Repairs:
    def __init__(self, flows: KernelFlows, kernel: Any, clock: Callable[[], float],
                 stats: dict[str, int], on_error: Callable[[str], None],
                 account: Callable[[], None]) -> None:
        self.flows, self.kernel, self.clock = flows, kernel, clock
        self.stats, self._on_error, self._account = stats, on_error, account
        #: the repair running (it holds the events read meanwhile), None between repairs
        self.repair: Repair | None = None
        #: s between the end of a repair and the next dump at least
        self.dump_spacing = DUMP_SPACING
        self._wanted = False
        self._last_repair = -float("inf")
        self._task: asyncio.Task | None = None

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def start(self) -> None:
        """A repair is wanted: one task takes them in turn, every overrun since the last
        dump's request coalesced into the next dump (see _repairs)."""
        self._wanted = True
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._repairs(), name="ct-resync")

    async def _repairs(self) -> None:
        """While a repair is wanted: wait until dump_spacing s have passed since the last
        repair ended (overruns meanwhile add no dump of their own), then repair."""
        while self._wanted:
            wait = self._last_repair + self.dump_spacing - self.clock()
            if wait > 0:
                self.stats["dumps_coalesced"] += 1
                await asyncio.sleep(wait)
            self._wanted = False
            try:
                await self._repair_once()
            except Exception:           # never the end of all repairs: logged, view marked
                log.exception("conntrack repair failed; the next overrun retries")
                self.flows.overrun()        # what it held is lost: counted, view marked
            self._last_repair = self.clock()

    async def _repair_once(self) -> bool:
        """One repair: the dump read on the loop a slice per turn, then reconciled and the
        events read meanwhile applied, a slice per turn (director.kernel_repair)."""
        repair = Repair(self.flows, self.clock)
        self.repair = repair
        try:
            try:
                await self._read_dump(repair)
            except (OSError, TimeoutError) as exc:
                self.stats["dump_failures"] += 1
                repair.dump_failed()
                self._on_error(f"conntrack dump after lost events failed: {exc}; next overrun "
                               "retries")
            else:
                repair.dump_done()
            while not repair.step():
                await asyncio.sleep(0)
        finally:
            if self.repair is repair:
                self.repair = None     # in the step that applied the last held event
        self.stats["repair_steps"] += repair.steps
        self._account()
        if repair.failed:
            return False
        self.stats["dump_repairs"] += 1
        log.info("conntrack events were lost: view rebuilt from a dump (%d flows, %d repaired, "
                 "%d loop turns)", len(self.flows.flows), repair.repaired, repair.steps)
        return True

    async def _read_dump(self, repair: Repair) -> None:
        """The dump into `repair`, read for at most kernel_repair.SLICE s per loop turn; one
        the kernel flags interrupted is taken again (up to ct_events.DUMP_TRIES).  Raises
        TimeoutError when the kernel sends nothing for DUMP_TIMEOUT s."""
        for attempt in range(DUMP_TRIES):
            reader = self.kernel.open_ct_dump()
            try:
                while not reader.done:
                    if await self._read_slice(reader, repair):
                        await asyncio.sleep(0)
                    elif not reader.done:
                        await self._readable(reader.fileno())
            finally:
                reader.close()
            if not reader.interrupted or attempt == DUMP_TRIES - 1:
                return
            repair.restart()

    async def _read_slice(self, reader: Any, repair: Repair) -> bool:
        """Datagrams of the dump for at most SLICE s; whether any was read."""
        end = self.clock() + SLICE
        read = False
        while not reader.done:
            got = reader.read(limit=1)
            if not got and not reader.done:
                break               # nothing waiting (or a datagram without entries)
            repair.add(got)
            self.stats["dump_entries"] += len(got)
            read = True
            if self.clock() >= end:
                break
        return read

    async def _readable(self, fd: int) -> None:
        loop = asyncio.get_running_loop()
        ready = loop.create_future()
        loop.add_reader(fd, lambda: None if ready.done() else ready.set_result(None))
        try:
            await asyncio.wait_for(ready, DUMP_TIMEOUT)
        except asyncio.TimeoutError:
            raise TimeoutError(f"conntrack dump: nothing for {DUMP_TIMEOUT} s") from None
        finally:
            loop.remove_reader(fd)

