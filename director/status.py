"""Typed contracts between a running node and what reports on it (the HTTP API, /metrics).

Each source of status has one dataclass; the producers build it from their live
objects, and the consumers read its fields, never a dict's keys.  Fields that become
metrics say so in their metadata (`counter(...)` / `gauge(...)`, director.status_fields).
Conversions from a core's own status (a VRRP instance's counters, the sync link's
description) are strict: a key the contract does not know, or one it misses, raises,
and the unit tests build every contract from the real objects, so a renamed counter
fails a test instead of silently leaving a metric at nothing.

The node's contract, a real server's health check and the Protocols of the node's parts
are here; each other part's contract has a module of its own, imported here so that
every contract is `director.status.X`: the VRRP election's (director.status_vrrp), the
sync link's (director.status_sync), the peer's (director.status_peer).  Times reach the
operator through the one clock of director.epoch (`EpochClock`, `iso_utc`).

These modules import no runtime code: the parts they read (VRRP runner, sync link,
operator control, health checks) are described by Protocols.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Mapping, Protocol

from director.epoch import EpochClock, iso_utc
from director.status_fields import COUNTER, GAUGE, counter, gauge, metric_fields
from director.status_peer import PeerStatus, peer_status
from director.status_sync import SyncLag, SyncStats, SyncSource
from director.status_vrrp import (DROP_PREFIX, KEEPALIVED_DROPS, KEEPALIVED_STATE, ElectionSource,
                                  VrrpCounters, VrrpStatus)

__all__ = [
    "COUNTER", "GAUGE", "counter", "gauge", "metric_fields", "EpochClock", "iso_utc",
    "KEEPALIVED_STATE", "KEEPALIVED_DROPS", "DROP_PREFIX", "VrrpCounters", "VrrpStatus",
    "ElectionSource", "SyncLag", "SyncStats", "SyncSource", "PeerStatus", "peer_status",
    "HealthCheckStatus", "is_scheduled", "NodeStatus", "ControlSource", "HealthSource",
    "NodeSource", "NoReload", "NodeParts",
]


# -- services: health checks and scheduling ---------------------------------------------------

@dataclass(frozen=True)
class HealthCheckStatus:
    """One real server's health check as GET /services reports it (`health_check`): the
    checker's CheckResult (director.health.runner) with its instants in epoch seconds."""

    kind: str                   # tcp | http | udp | command | a plug-in's name
    state: str                  # up | down: the verdict after rise/fall
    since: float                # epoch s: the last transition, or when checking began
    last_check: float | None    # epoch s: when the last probe ended (None before the first)
    last_ok: bool | None        # the last probe's own result (before rise/fall)
    detail: str                 # the last probe's detail: "HTTP 503", "Connection refused", ...
    rise: int
    fall: int
    ok_streak: int              # successes in a row so far, counted while down (up at `rise`)
    fail_streak: int            # failures in a row so far, counted while up (down at `fall`)
    checks: int
    changes: int

    @classmethod
    def of(cls, result: Any, epoch: EpochClock, offset: float | None = None) -> "HealthCheckStatus":
        """From a CheckResult; a field the contract does not know raises."""
        r = dataclasses.asdict(result)
        offset = epoch.offset() if offset is None else offset
        up, last = r.pop("up"), r.pop("last_check")
        return cls(state="up" if up else "down", since=epoch.epoch(r.pop("since"), offset),
                   last_check=None if last is None else epoch.epoch(last, offset), **r)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def is_scheduled(svc: Any, dest: Any) -> bool:
    """Whether the scheduler may give the real server new connections now: in its list and
    weight above 0.  A drained server (weight 0), one its check took down (weight 0, or out
    of the list with action "remove") and one the sorry server stands in for are not."""
    return dest.weight > 0 and dest in svc.scheduler.dests


# -- the node -------------------------------------------------------------------------------

@dataclass(frozen=True)
class NodeStatus:
    """The node as /status reports it (beside the engine's and the queue's counters)."""

    node: str
    role: str                   # master | backup | fault | init
    priority: int | None
    peer: str | None            # the peer's address (peer_status.address)
    uptime_s: float
    vrrp: VrrpStatus | None
    role_changes: tuple[Mapping[str, Any], ...]
    sync_enabled: bool
    peer_status: PeerStatus | None = None


class ControlSource(Protocol):
    """Operator changes and health verdicts (director.control.Control)."""

    def set_weight(self, service: str, addr: str, port: int, weight: int) -> dict: ...

    def drain(self, service: str, addr: str, port: int) -> dict: ...

    def clear(self, service: str, addr: str, port: int) -> dict: ...

    def override_of(self, svc: Any, dest: Any) -> dict | None: ...

    async def kept(self) -> None: ...

    def health_of(self, svc: Any, dest: Any) -> str: ...


class HealthSource(Protocol):
    """The running health checks (director.health.HealthChecker)."""

    def result(self, service_key: str, addr: str, port: int) -> Any | None: ...


class NodeSource(Protocol):
    """What the API and the metrics read from a node and ask of it."""

    name: str
    control: ControlSource | None
    health: HealthSource | None

    @property
    def api_token(self) -> str: ...

    def status(self) -> NodeStatus: ...

    def vrrp_status(self) -> VrrpStatus | None: ...

    def sync_stats(self) -> SyncStats | None: ...

    def queue_stats(self) -> Mapping[str, int]: ...

    async def resign(self) -> dict | None: ...

    async def resume(self) -> dict | None: ...

    async def reload(self) -> dict: ...


class NoReload(LookupError):
    """The node cannot reload (it was not started from a file)."""


class NodeParts:
    """The NodeSource of a running node, made of its live parts.

    The node wiring gives what it has at start; the two parts that come later or change
    are handed over by name: `set_role` (the role runner's callback) and `attach_election`
    (once the VRRP runner exists, after the initial resync); `api_token` follows reloads.
    """

    def __init__(self, name: str, role: str, *, started: float | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time,
                 queue_stats: Callable[[], Mapping[str, int]] = dict,
                 control: ControlSource | None = None, sync: SyncSource | None = None,
                 health: HealthSource | None = None,
                 role_changes: list[dict] | None = None, api_token: str = "",
                 reload: Callable[[], Awaitable[dict]] | None = None,
                 resign: Callable[[], Awaitable[dict | None]] | None = None,
                 resume: Callable[[], Awaitable[dict | None]] | None = None,
                 kernel: Callable[[], Mapping[str, Any] | None] | None = None,
                 cluster: Callable[[], Mapping[str, Any] | None] | None = None,
                 cluster_drain: Callable[[bool], Awaitable[dict | None]] | None = None,
                 kernel_path: Callable[[], Any | None] | None = None) -> None:
        self.name = name
        self._kernel = kernel or (lambda: None)
        self._cluster = cluster or (lambda: None)
        self._cluster_drain = cluster_drain
        #: () -> the running kernel path (tandem.kernel_mode.KernelPath) or None: /conns
        self.kernel_path = kernel_path or (lambda: None)
        self.control = control
        self.health = health
        self.epoch = EpochClock(clock, wall)
        self.api_token = api_token
        self._role = role
        self._clock = clock
        self._started = clock() if started is None else started
        self._queue_stats = queue_stats
        self._sync = sync
        self._role_changes = role_changes if role_changes is not None else []
        self._reload = reload
        self._resign, self._resume = resign, resume
        self._election: ElectionSource | None = None
        self._priority: int | None = None

    def set_role(self, role: str) -> None:
        self._role = role

    def attach_election(self, runner: ElectionSource, priority: int) -> None:
        self._election, self._priority = runner, priority

    def vrrp_status(self) -> VrrpStatus | None:
        return VrrpStatus.of(self._election) if self._election is not None else None

    def sync_stats(self) -> SyncStats | None:
        return SyncStats.of(self._sync) if self._sync is not None else None

    def queue_stats(self) -> Mapping[str, int]:
        return self._queue_stats()

    def kernel_stats(self) -> Mapping[str, Any] | None:
        """Kernel-mode forwarding's counters (tandem.kernel_mode), None without it."""
        return self._kernel()

    async def cluster_drain(self, on: bool) -> dict | None:
        """Start (on) or cancel a cluster member's drain (tandem.cluster); its cluster status
        after the change, None in pair mode."""
        return await self._cluster_drain(on) if self._cluster_drain is not None else None

    def cluster_status(self) -> Mapping[str, Any] | None:
        """Cluster mode's membership, announcements and flows owned (tandem.cluster), None
        in pair mode."""
        return self._cluster()

    def status(self) -> NodeStatus:
        vrrp = self.vrrp_status()
        peer = None
        if self._election is not None or self._sync is not None:
            peer = peer_status(self._election, self._sync, self.epoch)
        return NodeStatus(node=self.name, role=self._role, priority=self._priority,
                          peer=peer.address if peer is not None else None,
                          uptime_s=round(self._clock() - self._started, 3), vrrp=vrrp,
                          role_changes=self._recent_role_changes(),
                          sync_enabled=self._sync is not None, peer_status=peer)

    def _recent_role_changes(self) -> tuple[Mapping[str, Any], ...]:
        """The last 10, their instants (`at`, `decided`: monotonic) in epoch seconds."""
        offset = self.epoch.offset()
        return tuple({**c, "at": self.epoch.epoch(c["at"], offset),
                      "decided": self.epoch.epoch(c["decided"], offset)}
                     for c in self._role_changes[-10:])

    async def resign(self) -> dict | None:
        """Give up mastership; the node's answer (its state after the change), None when no
        election runs.  The node wiring hands in its own (tandem.node.Node.resign); without
        it the election is asked directly."""
        return await self._operator(self._resign, "resign")

    async def resume(self) -> dict | None:
        """End a resignation: preempt normally again; as resign."""
        return await self._operator(self._resume, "resume")

    async def _operator(self, wired: Callable[[], Awaitable[dict | None]] | None,
                        what: str) -> dict | None:
        if wired is not None:
            return await wired()
        if self._election is None:
            return None
        getattr(self._election, what)()
        return {"resigned": bool(self._election.instance.resigned), "role": self._role}

    async def reload(self) -> dict:
        if self._reload is None:
            raise NoReload("the node was not started from a file")
        return await self._reload()
