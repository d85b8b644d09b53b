"""The health-check runner: one asyncio task per real server, probes through the kinds'
plug-ins, verdicts through the rise/fall machine (director.health.state).

The checks of one server never overlap; each probe is bounded by its timeout; the next
starts `interval` seconds after the previous one started (at once if the probe took
longer).  Every transition calls `on_change(service_key, addr, port, up)` and is logged
here, once, in one line as keepalived logs it:

    Removing service [198.18.2.22]:tcp:8080 from VS [198.18.0.100]:tcp:80 (http check: HTTP 503)
    Adding service [198.18.2.22]:tcp:8080 to VS [198.18.0.100]:tcp:80 (http check: HTTP 200)

A reload (`set_targets`) keeps the state (streaks, up/down, counters) of every target whose
check is unchanged; only new or changed ones start afresh.

Its times are on the injected monotonic clock; what the operator reads (GET /services) turns
them into epoch seconds in one place, director.status.EpochClock.
"""
from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterable

from director.health.config import HealthCheckConfig
from director.health.probe import run_probe
from director.health.state import HealthState, transition_message

if TYPE_CHECKING:
    from director.config import ServiceConfig

log = logging.getLogger("tandem.health")


@dataclass(frozen=True)
class CheckTarget:
    """One real server of one service, and how to check it."""
    service_key: str
    proto: str          # the service's: tcp | udp (for the log line)
    vip: str
    vport: int
    addr: str
    port: int
    check: HealthCheckConfig

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.service_key, self.addr, self.port)


def targets_for_service(svc: "ServiceConfig", check: HealthCheckConfig) -> list[CheckTarget]:
    return [CheckTarget(svc.key, svc.proto, svc.vip, svc.port, r.addr, r.port, check)
            for r in svc.real_servers]


@dataclass(frozen=True)
class CheckResult:
    """What one real server's check says now; times on the checker's monotonic clock."""
    kind: str
    up: bool
    since: float                # the last transition, or when checking began (initial state)
    last_check: float | None    # when the last probe ended; None before the first
    last_ok: bool | None
    detail: str                 # the last probe's one-line detail ("HTTP 503", "timed out ...")
    rise: int                   # successes in a row that bring a down server up
    fall: int                   # failures in a row that take an up server down
    ok_streak: int              # successes in a row so far (counted while down)
    fail_streak: int            # failures in a row so far (counted while up)
    checks: int
    changes: int


@dataclass
class _Tracked:
    target: CheckTarget
    state: HealthState
    since: float                            # the last transition, or when tracking began
    task: asyncio.Task | None = None
    last_check: float | None = None
    last_detail: str = ""
    last_ok: bool | None = None
    running: int = 0                        # probes in flight (never > 1)

    def result(self) -> CheckResult:
        st = self.state
        return CheckResult(self.target.check.kind, st.up, self.since, self.last_check,
                           self.last_ok, self.last_detail, st.rise, st.fall, st.ok_streak,
                           st.fail_streak, st.checks, st.changes)


OnChange = Callable[[str, str, int, bool], Any]
Probe = Callable[[CheckTarget], Awaitable[tuple[bool, str]]]


class HealthChecker:
    """Runs every target's checks until stopped.

    on_change(service_key, addr, port, up) is called on each transition (it
    may be a coroutine function; its exceptions are logged, never fatal).
    `probe` replaces the real probes (tests).
    """

    def __init__(self, targets: Iterable[CheckTarget], on_change: OnChange | None = None, *,
                 probe: Probe | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.on_change = on_change
        self._probe = probe or (lambda t: run_probe(t.check, t.addr, t.port))
        self._clock = clock
        self._tracked: dict[tuple[str, str, int], _Tracked] = {}
        self._running = False
        self._pending_callbacks: set[asyncio.Task] = set()
        for t in targets:
            self._add(t)

    def _add(self, t: CheckTarget) -> None:
        self._tracked[t.key] = _Tracked(t, HealthState(t.check.rise, t.check.fall, t.check.initial),
                                        since=self._clock())

    # -- life cycle --

    async def start(self) -> None:
        self._running = True
        for tr in self._tracked.values():
            self._spawn(tr)

    def _spawn(self, tr: _Tracked) -> None:
        if tr.task is None or tr.task.done():
            tr.task = asyncio.get_running_loop().create_task(
                self._loop(tr), name=f"health {tr.target.addr}:{tr.target.port}")

    async def stop(self) -> None:
        """Cancel every check and wait for them (and pending callbacks) to end."""
        self._running = False
        tasks = [tr.task for tr in self._tracked.values() if tr.task is not None]
        tasks += list(self._pending_callbacks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for tr in self._tracked.values():
            tr.task = None

    async def __aenter__(self) -> "HealthChecker":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    async def set_targets(self, targets: Iterable[CheckTarget]) -> None:
        """Reload: keep the state of targets that stay with the same check,
        start new ones, stop removed ones."""
        new = {t.key: t for t in targets}
        gone = []
        for key, tr in list(self._tracked.items()):
            if key not in new or new[key] != tr.target:
                gone.append(tr)
                del self._tracked[key]
        for tr in gone:
            if tr.task is not None:
                tr.task.cancel()
        if gone:
            await asyncio.gather(*(tr.task for tr in gone if tr.task is not None),
                                 return_exceptions=True)
        for key, t in new.items():
            if key not in self._tracked:
                self._add(t)
                if self._running:
                    self._spawn(self._tracked[key])

    # -- what the API and the metrics read --

    def states(self) -> dict[tuple[str, str, int], bool]:
        return {k: tr.state.up for k, tr in self._tracked.items()}

    def is_up(self, service_key: str, addr: str, port: int) -> bool | None:
        tr = self._tracked.get((service_key, addr, port))
        return None if tr is None else tr.state.up

    def result(self, service_key: str, addr: str, port: int) -> CheckResult | None:
        """The check of one real server as it stands; None when it has none."""
        tr = self._tracked.get((service_key, addr, port))
        return None if tr is None else tr.result()

    def status(self) -> list[dict]:
        """Every target's result with its service, addr and port (monotonic times)."""
        return [{"service": tr.target.service_key, "addr": tr.target.addr,
                 "port": tr.target.port, **dataclasses.asdict(tr.result())}
                for tr in self._tracked.values()]

    # -- the per-server loop --

    async def _loop(self, tr: _Tracked) -> None:
        t = tr.target
        while True:
            started = self._clock()
            tr.running += 1
            try:
                ok, detail = await self._probe(t)
            except Exception as exc:        # a probe bug counts as a failed check
                ok, detail = False, f"probe error: {exc!r}"
            finally:
                tr.running -= 1
            tr.last_check, tr.last_ok, tr.last_detail = self._clock(), ok, detail
            changed = tr.state.record(ok)
            if changed is not None:
                tr.since = tr.last_check
                log.info("%s (%s check: %s)", transition_message(changed, t.proto, t.vip, t.vport,
                                                                 t.addr, t.port),
                         t.check.kind, detail)
                self._notify(t, changed)
            delay = t.check.interval - (self._clock() - started)
            await asyncio.sleep(max(delay, 0.0))

    def _notify(self, t: CheckTarget, up: bool) -> None:
        if self.on_change is None:
            return
        try:
            res = self.on_change(t.service_key, t.addr, t.port, up)
        except Exception:
            log.exception("health: on_change failed for %s:%d", t.addr, t.port)
            return
        if inspect.isawaitable(res):
            task = asyncio.ensure_future(res)
            self._pending_callbacks.add(task)
            task.add_done_callback(self._callback_done)

    def _callback_done(self, task: asyncio.Task) -> None:
        self._pending_callbacks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("health: on_change failed: %r", task.exception())
