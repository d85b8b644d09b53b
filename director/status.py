"""Typed contracts between a running node and what reports on it (the HTTP API, /metrics).

Each source of status has one dataclass here; the producers build it from their
live objects, and the consumers read its fields, never a dict's keys.  Fields
that become metrics say so in their metadata (`counter(...)` / `gauge(...)`):
kind, help text and exported name, so the collector needs no naming rules of its
own and a counter cannot turn into a gauge by a key's spelling.  Conversions from
a core's own status (a VRRP instance's counters, the sync link's description)
are strict: a key the contract does not know, or one it misses, raises, and the
unit tests build every contract from the real objects, so a renamed counter
fails a test instead of silently leaving a metric at nothing.

This module imports no runtime code: the parts it reads (VRRP runner, sync link,
operator control, health checks) are described by Protocols.

**One clock for the operator.**  The cores run on the injected monotonic clock and keep
their instants on it; every time the API reports is turned into epoch seconds (UTC, to
the ms) here, by `EpochClock`, when the answer is built, and human output shows it as
ISO 8601 UTC (`iso_utc`).  Durations stay durations (`uptime_s`, `expires_in`,
`lag_ms`), rounded to what can be measured: seconds to the ms, milliseconds to 0.1
(the sync lag is rounded where it is measured, syncd.receiver).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, Mapping, Protocol

COUNTER = "counter"
GAUGE = "gauge"


def counter(doc: str, name: str) -> Any:
    """A field exported as the counter `<prefix>_<name>_total`."""
    return field(metadata={"kind": COUNTER, "doc": doc, "name": name})


def gauge(doc: str, name: str, default: Any = dataclasses.MISSING) -> Any:
    return field(default=default, metadata={"kind": GAUGE, "doc": doc, "name": name})


def metric_fields(obj: Any) -> list[tuple[dataclasses.Field, Any]]:
    """(field, value) for every field of a contract that declares a metric kind."""
    return [(f, getattr(obj, f.name)) for f in dataclasses.fields(obj) if "kind" in f.metadata]


# -- time -----------------------------------------------------------------------------------

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


# -- VRRP -----------------------------------------------------------------------------------

#: keepalived's VRRP_STATE_* numbers (vrrp.h), which keepalived-exporter exposes as they are
KEEPALIVED_STATE = {"Initialize": 0, "Backup": 1, "Master": 2, "Fault": 3}

#: drop reasons of the VRRP core that keepalived counts under a name of its own:
#: reason -> keepalived-exporter metric name (its `ip_ttl_err`, `packet_len_err`, ...)
KEEPALIVED_DROPS = {
    "ttl": "ip_ttl_errors",
    "truncated": "packet_length_errors",
    "bad_type": "invalid_type_received",
    "addresses": "address_list_errors",
}

DROP_PREFIX = "drop_"


@dataclass(frozen=True)
class VrrpCounters:
    """A VRRP instance's counters; field names are the core's (ha/vrrp.py), metric names
    keepalived-exporter's where keepalived counts the same thing."""

    rx: int = counter("Adverts received for this instance, before any check (keepalived's "
                      "advert_rcvd).", "advertisements_received")
    accepted: int = counter("Adverts that passed every check.", "advertisements_accepted")
    tx: int = counter("Adverts sent (keepalived's advert_sent).", "advertisements_sent")
    tx_priority0: int = counter("Priority-0 adverts sent (resign, stop, fault).",
                                "priority_zero_sent")
    rx_priority0: int = counter("Priority-0 adverts received.", "priority_zero_received")
    became_master: int = counter("Transitions to MASTER (keepalived's become_master).",
                                 "become_master")
    became_backup: int = counter("Transitions to BACKUP.", "become_backup")
    faults: int = counter("Transitions to FAULT.", "faults")
    reannounced: int = counter("Re-announcements after a lower-priority node claimed mastership.",
                               "reannounced")
    discard_lower_priority: int = counter("Lower-priority adverts a preempting backup ignored.",
                                          "lower_priority_discarded")
    preempt_delayed: int = counter("Preemptions held back by preempt_delay.", "preempt_delayed")
    owner_conflict: int = counter("Priority-255 adverts heard while owning the addresses.",
                                  "owner_conflicts")
    interval_changes: int = counter("Changes of the master's advert interval.", "interval_changes")
    #: dropped adverts by reason (the core's `drop_<reason>` counters)
    drops: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def from_core(cls, counters: Mapping[str, int]) -> "VrrpCounters":
        """From a VrrpInstance's `counters`; every non-drop key must be a field."""
        drops = {k[len(DROP_PREFIX):]: v for k, v in counters.items() if k.startswith(DROP_PREFIX)}
        rest = {k: v for k, v in counters.items() if not k.startswith(DROP_PREFIX)}
        return cls(drops=drops, **rest)

    def to_json(self) -> dict[str, int]:
        """The core's own keys, as /status has always shown them."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "drops"}
        out.update({DROP_PREFIX + r: n for r, n in self.drops.items()})
        return out


@dataclass(frozen=True)
class VrrpStatus:
    """One VRRP instance as the election runs it."""

    name: str                   # keepalived's iname, VI_<vrid> by default
    vrid: int
    state: str                  # Initialize | Backup | Master | Fault
    priority: int
    master: str | None          # the master's address as last heard
    master_priority: int | None
    master_adver_int_ms: int
    resigned: bool
    fault: bool
    interface: str              # keepalived's intf: where the adverts go
    addresses: tuple[str, ...]  # the VIPs advertised
    counters: VrrpCounters

    @property
    def state_number(self) -> int:
        return KEEPALIVED_STATE[self.state]

    @classmethod
    def of(cls, runner: "ElectionSource") -> "VrrpStatus":
        """From a running election (ha.vrrp_io.VrrpRunner)."""
        core = dict(runner.instance.status())
        counters = VrrpCounters.from_core(core.pop("counters"))
        return cls(interface=runner.ifname, addresses=tuple(runner.cfg.addresses),
                   counters=counters, **core)

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["addresses"] = list(self.addresses)
        out["counters"] = self.counters.to_json()
        return out


# -- connection sync ------------------------------------------------------------------------

@dataclass(frozen=True)
class SyncLag:
    """Apply time minus send time over the last `lag_samples` DATA messages, in ms."""

    p50: float | None
    p99: float | None
    max: float | None
    samples: int

    #: quantile label -> field, for the lag gauge
    QUANTILES = (("0.5", "p50"), ("0.99", "p99"), ("1", "max"))


@dataclass(frozen=True)
class SyncStats:
    """The sync link's counters.  sender, receiver, transport and applied hold counters
    only (every key counts up from 0); lag and missing are gauges."""

    sender: Mapping[str, int] = counter("Sync sender: {key}.", "sender")
    receiver: Mapping[str, int] = counter("Sync receiver: {key}.", "receiver")
    transport: Mapping[str, int] = counter("Sync socket: {key}.", "transport")
    applied: Mapping[str, int] = counter("Synced entries the engine applied, by result: {key}.",
                                         "applied")
    missing: int = gauge("Sequence numbers from the peer still missing (being asked for again).",
                         "missing")
    lag_ms: SyncLag = field(default_factory=lambda: SyncLag(None, None, None, 0))

    @classmethod
    def of(cls, link: "SyncSource") -> "SyncStats":
        """From a running sync link (tandem.ha.SyncLink)."""
        d = dict(link.describe())
        return cls(lag_ms=SyncLag(**d.pop("lag_ms")), **d)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["lag_ms"] = dataclasses.asdict(self.lag_ms)
        for k in ("sender", "receiver", "transport", "applied"):
            out[k] = dict(out[k])
        return out


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


# -- the peer -------------------------------------------------------------------------------

@dataclass(frozen=True)
class PeerStatus:
    """The other node of the pair as this one knows it, on either role.  Sources, best first:
    what the peer says of itself over sync (its STATE: role, priority, VRRP address,
    resigned), the VRRP adverts heard from it, and the config (one unicast peer).
    `*_from` says which gave a field; a field nothing gave is null."""

    address: str | None         # its VRRP address (the source of its adverts)
    address_from: str | None    # sync | advert | config
    node: str | None            # its node name (sync)
    role: str | None            # master | backup | fault | init
    role_from: str | None       # sync | advert (a backup hears the master's adverts)
    priority: int | None
    resigned: bool | None       # it said (over sync) that it has resigned
    #: the last advert this node accepted from it: from, priority, at (epoch s), age_s.
    #: A backup hears the master's every interval; a master hears one only when the peer
    #: advertises (a priority 0 when leaving, a claim, a preempting higher priority)
    last_advert: Mapping[str, Any] | None
    last_advert_note: str | None        # why last_advert is null
    sync: Mapping[str, Any] | None      # state (ok|repairing|silent|none), last_heard_s, missing,
                                        # lag_ms; null when the node does not sync

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def _advert_note(election: "ElectionSource | None") -> str | None:
    if election is None:
        return "no VRRP election runs on this node"
    state = election.instance.state.value
    if election.instance.last_advert is not None:
        return None
    if state == "Master":
        return ("none received since this node started: the peer has only been backup, and a "
                "backup does not advertise")
    if state == "Backup":
        return "none received since this node started: no master heard"
    return f"none received: not in the election ({state})"


def peer_status(election: "ElectionSource | None", sync: "SyncSource | None",
                epoch: EpochClock | None = None) -> PeerStatus:
    """Built from the running election (ha.vrrp_io.VrrpRunner) and sync link (tandem.ha.SyncLink)."""
    view = sync.peer_view() if sync is not None else None
    said = view["said"] if view is not None else None
    inst = election.instance if election is not None else None
    last = inst.last_advert if inst is not None else None
    address, address_from = None, None
    if said is not None and said["address"]:
        address, address_from = said["address"], "sync"
    elif last is not None:
        address, address_from = last[0], "advert"
    elif election is not None and len(election.cfg.unicast_peers) == 1:
        address, address_from = election.cfg.unicast_peers[0], "config"
    role, role_from = None, None
    if said is not None:
        role, role_from = said["role"], "sync"
    elif inst is not None and inst.state.value == "Backup" and inst.master_address is not None:
        role, role_from = "master", "advert"
        address, address_from = inst.master_address, "advert"
    priority = said["priority"] if said is not None else None
    if priority is None and last is not None and last[0] == address and last[1]:
        priority = last[1]
    advert = None
    if last is not None and election is not None:
        epoch = epoch or EpochClock(election.clock)
        advert = {"from": last[0], "priority": last[1], "at": epoch.epoch(last[2]),
                  "age_s": round(max(0.0, election.clock() - last[2]), 3)}
    return PeerStatus(address=address, address_from=address_from,
                      node=view["node"] if view is not None else None,
                      role=role, role_from=role_from, priority=priority,
                      resigned=said["resigned"] if said is not None else None,
                      last_advert=advert, last_advert_note=_advert_note(election),
                      sync=view["sync"] if view is not None else None)


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


class ElectionSource(Protocol):
    """A running VRRP election (ha.vrrp_io.VrrpRunner)."""
    ifname: str
    cfg: Any                    # ha.vrrp.VrrpConfig: .addresses, .unicast_peers
    instance: Any               # ha.vrrp.VrrpInstance: .status(), .state, .last_advert, ...

    def clock(self) -> float: ...

    def resign(self) -> None: ...

    def resume(self) -> None: ...


class SyncSource(Protocol):
    """A running sync link (tandem.ha.SyncLink)."""

    def describe(self) -> Mapping[str, Any]: ...

    def peer_view(self) -> Mapping[str, Any]: ...


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
                 resume: Callable[[], Awaitable[dict | None]] | None = None) -> None:
        self.name = name
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
