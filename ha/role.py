"""The HA role machine, sans-IO: election results in, address work out, in the failover order.

    machine = RoleMachine(RoleConfig(election=True, sync=True, startup_sync_wait=1.0))
    actions = machine.handle(Starting(), now)       # before the node reads its queue
    actions = machine.handle(Started(), now)        # queue, rules and sync up
    actions = machine.handle(StateChanged(Role.MASTER, Cause.PREEMPT, "preempting ..."), now)
    actions = machine.on_timer(now)               # at machine.next_deadline() or later

Events: `Starting`, `Started`, `SyncComplete`, `StateChanged` (from the VRRP machine, with an enum `Cause`),
`LowerPriorityClaim` (a master heard a lower-priority node claim mastership), `LinkChanged`,
`Stopping`.  Actions, executed in order by the runner (tandem/ha.py): `Wait`, `StartElection`,
`SetFault`, `AddAddresses`, `Announce`, `FlushSync`, `RemoveAddresses`, `RoleSet`, `RunHook`, `Log`.

The failover order (docs/architecture.md, "Failover order"):

    becoming master:  [Wait(preempt_yield) when taking over from a live master (Cause.PREEMPT)]
                      AddAddresses, RoleSet, Announce, RunHook("master")
    leaving master:   FlushSync, RemoveAddresses, RoleSet, RunHook(new role)
    any other change: RoleSet, RunHook(new role)

A newer state change supersedes one still waiting (a preempt yield cut short by a higher
master adds nothing), and the machine compares the wanted role with the role it last acted on,
so a change that the inbox coalesced (Master -> Backup -> Master) only announces again.

Re-announces (keepalived's garp_lower_prio_repeat) are rate-limited to one per
`reannounce_interval`; the log line says how many claims were suppressed meanwhile.

`Inbox` is the bounded queue between the VRRP runner and the machine: one slot per kind of
event, a later state change replacing an earlier one (only the latest wanted state matters), so a
flood of adverts can never queue work ahead of a state change.
"""
from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, replace
from typing import Union

from ha.vrrp import Cause, State

__all__ = ["Role", "Cause", "RoleConfig", "RoleMachine", "Inbox", "role_of",
           "Starting", "Started", "SyncComplete", "StateChanged", "LowerPriorityClaim", "LinkChanged",
           "Stopping", "Wait", "StartElection", "SetFault", "AddAddresses", "Announce",
           "FlushSync", "RemoveAddresses", "RoleSet", "RunHook", "Log",
           "REANNOUNCE_INTERVAL"]

#: at most one re-announce (gratuitous ARPs) per this many seconds, however many lower-priority
#: claims a master hears (each claim still gets its VRRP advert at once)
REANNOUNCE_INTERVAL = 1.0


class Role(str, enum.Enum):
    """The node's role as the API reports it ("role" in /status)."""
    INIT = "init"
    BACKUP = "backup"
    MASTER = "master"
    FAULT = "fault"


_ROLE_OF_STATE = {State.INITIALIZE: Role.INIT, State.BACKUP: Role.BACKUP,
                  State.MASTER: Role.MASTER, State.FAULT: Role.FAULT}


def role_of(state: State) -> Role:
    return _ROLE_OF_STATE[state]


# -- events ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Starting:
    """The node is starting: nothing is read from the queue yet."""


@dataclass(frozen=True)
class Started:
    """The node is up: NFQUEUE read, rules in place, sync running."""


@dataclass(frozen=True)
class SyncComplete:
    """The peer's bulk resync has arrived."""


@dataclass(frozen=True)
class StateChanged:
    new: Role
    cause: Cause
    reason: str = ""


@dataclass(frozen=True)
class LowerPriorityClaim:
    reason: str
    count: int = 1          # claims merged into this one by the inbox


@dataclass(frozen=True)
class LinkChanged:
    up: bool
    names: tuple[str, ...] = ()


@dataclass(frozen=True)
class Stopping:
    """A planned stop: the election (if any) has shut down; release what is held."""


Event = Union[Starting, Started, SyncComplete, StateChanged, LowerPriorityClaim, LinkChanged, Stopping]

# -- actions -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Wait:
    """Nothing more until `until` (the machine's next_deadline); then call on_timer."""
    until: float
    why: str


@dataclass(frozen=True)
class StartElection:
    pass


@dataclass(frozen=True)
class SetFault:
    on: bool


@dataclass(frozen=True)
class AddAddresses:
    pass


@dataclass(frozen=True)
class Announce:
    pass


@dataclass(frozen=True)
class FlushSync:
    """Send every pending sync entry to the peer now."""


@dataclass(frozen=True)
class RemoveAddresses:
    pass


@dataclass(frozen=True)
class RoleSet:
    """The role changed hands (the addresses are where the new role says): record it."""
    old: Role
    new: Role
    cause: Cause
    reason: str
    decided: float


@dataclass(frozen=True)
class RunHook:
    role: Role


@dataclass(frozen=True)
class Log:
    level: int
    message: str


Action = Union[Wait, StartElection, SetFault, AddAddresses, Announce, FlushSync, RemoveAddresses,
               RoleSet, RunHook, Log]


@dataclass(frozen=True)
class RoleConfig:
    election: bool                      # VRRP decides; else `fixed_role`
    fixed_role: Role = Role.BACKUP
    addresses: bool = True              # front and back interfaces named: VIPs and laddrs to move
    sync: bool = False                  # connection sync runs (FlushSync, the startup wait)
    startup_sync_wait: float = 1.0      # s: no election before the peer's bulk or this long
    preempt_yield: float = 0.3          # s: let a preempted live master drop the addresses
    reannounce_interval: float = REANNOUNCE_INTERVAL


class _Phase(enum.Enum):
    IDLE = "idle"
    WAIT_SYNC = "wait_sync"
    RUNNING = "running"
    STOPPED = "stopped"


class RoleMachine:
    def __init__(self, cfg: RoleConfig) -> None:
        self.cfg = cfg
        self.role = Role.INIT           # the role last acted on
        self.held = False               # whether the addresses were added (and not removed since)
        self.fault = False
        self.suppressed = 0             # lower-priority claims not re-announced since the last one
        self._phase = _Phase.IDLE
        self._deadline: float | None = None
        self._yielding: tuple[StateChanged, float] | None = None   # a master-to-be, waiting
        self._next_announce = float("-inf")

    # -- views ----------------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        return self._deadline

    @property
    def waiting_for_sync(self) -> bool:
        return self._phase is _Phase.WAIT_SYNC

    # -- input ------------------------------------------------------------------------------------

    def handle(self, ev: Event, now: float) -> list[Action]:
        if self._phase is _Phase.STOPPED:
            return []
        if isinstance(ev, StateChanged):
            return self._state_changed(ev, now)
        if isinstance(ev, LowerPriorityClaim):
            return self._claim(ev, now)
        if isinstance(ev, LinkChanged):
            return self._link(ev)
        if isinstance(ev, Starting):
            # with an election, a VIP or laddr left by a killed predecessor is not ours yet
            return [RemoveAddresses()] if self.cfg.election and self.cfg.addresses else []
        if isinstance(ev, Started):
            return self._started(now)
        if isinstance(ev, SyncComplete):
            return self._sync_done(True)
        if isinstance(ev, Stopping):
            return self._stopping()
        raise TypeError(f"not a role event: {ev!r}")

    def on_timer(self, now: float) -> list[Action]:
        if self._deadline is None or now < self._deadline:
            return []
        self._deadline = None
        if self._phase is _Phase.WAIT_SYNC:
            return self._sync_done(False)
        if self._yielding is None:
            return []
        ev, decided = self._yielding
        self._yielding = None
        return self._become_master(ev, decided)

    # -- transitions ------------------------------------------------------------------------------

    def _started(self, now: float) -> list[Action]:
        if self._phase is not _Phase.IDLE:
            return []
        if not self.cfg.election:
            self._phase = _Phase.RUNNING
            return self._state_changed(StateChanged(self.cfg.fixed_role, Cause.CONFIG,
                                                    "fixed role from config"), now)
        out: list[Action] = []
        if self.cfg.sync:
            self._phase = _Phase.WAIT_SYNC
            self._deadline = now + self.cfg.startup_sync_wait
            out.append(Wait(self._deadline, "the peer's bulk resync"))
        else:
            self._phase = _Phase.RUNNING
            out.append(StartElection())
        return out

    def _sync_done(self, complete: bool) -> list[Action]:
        if self._phase is not _Phase.WAIT_SYNC:
            return []
        self._phase = _Phase.RUNNING
        self._deadline = None
        said = "complete" if complete else \
            f"not answered within {self.cfg.startup_sync_wait:.1f} s"
        return [Log(logging.INFO, f"initial resync {said}"), StartElection()]

    def _state_changed(self, ev: StateChanged, now: float) -> list[Action]:
        if self._yielding is not None:      # a newer state supersedes a wait still running
            self._yielding, self._deadline = None, None
        old, new = self.role, ev.new
        if new is Role.MASTER:
            if old is Role.MASTER:
                return [Announce()] if self.held else []
            if ev.cause is Cause.PREEMPT and self.cfg.preempt_yield > 0 and self.cfg.addresses:
                # the preempted master still holds the addresses; it lets go when it hears our
                # advert: never own them together
                self._deadline = now + self.cfg.preempt_yield
                self._yielding = (ev, now)
                return [Wait(self._deadline, "a preempted master drops the addresses")]
            return self._become_master(ev, now)
        out = self._release(old)
        if new is old:
            return out
        self.role = new
        return out + [RoleSet(old, new, ev.cause, ev.reason, now), RunHook(new)]

    def _become_master(self, ev: StateChanged, decided: float) -> list[Action]:
        old = self.role
        out: list[Action] = [AddAddresses()] if self.cfg.addresses else []
        self.held = self.cfg.addresses
        self.role = Role.MASTER
        return out + [RoleSet(old, Role.MASTER, ev.cause, ev.reason, decided), Announce(),
                      RunHook(Role.MASTER)]

    def _release(self, old: Role) -> list[Action]:
        """Leaving master: every pending sync entry to the peer, then the addresses go."""
        out: list[Action] = []
        if old is Role.MASTER and self.cfg.sync:
            out.append(FlushSync())
        if self.held:
            out.append(RemoveAddresses())
            self.held = False
        return out

    def _claim(self, ev: LowerPriorityClaim, now: float) -> list[Action]:
        if self.role is not Role.MASTER or not self.held:
            return []
        if now < self._next_announce:
            self.suppressed += ev.count
            return []
        skipped = self.suppressed + ev.count - 1
        self.suppressed = 0
        self._next_announce = now + self.cfg.reannounce_interval
        more = f" ({skipped} more claims suppressed)" if skipped else ""
        return [Log(logging.INFO, f"{ev.reason}: announcing our addresses again{more}"), Announce()]

    def _link(self, ev: LinkChanged) -> list[Action]:
        fault = not ev.up
        if not self.cfg.election or fault == self.fault:
            return []
        self.fault = fault
        names = ", ".join(ev.names)
        msg = f"tracked interfaces down: {names}" if fault else f"tracked interfaces up again: {names}"
        return [Log(logging.WARNING, msg), SetFault(fault)]

    def _stopping(self) -> list[Action]:
        old = self.role
        self._phase = _Phase.STOPPED
        self._yielding, self._deadline = None, None
        out = self._release(old)
        if self.cfg.addresses and not any(isinstance(a, RemoveAddresses) for a in out):
            out.append(RemoveAddresses())      # idempotent: also what a predecessor left
        self.held = False
        return out


class Inbox:
    """Events waiting for the machine: at most one per kind, so bounded by construction.

    A state change replaces a waiting one (the latest wanted state is all that matters);
    lower-priority claims merge into one with a count; the other kinds keep their latest.
    `take` hands them out most urgent first: a state change never waits behind anything."""

    _ORDER = (Starting, Started, StateChanged, LinkChanged, SyncComplete, LowerPriorityClaim, Stopping)

    def __init__(self) -> None:
        self._slots: dict[type, Event] = {}
        self.coalesced = 0          # events merged into a waiting one

    def put(self, ev: Event) -> None:
        kind = type(ev)
        if kind not in self._ORDER:
            raise TypeError(f"not a role event: {ev!r}")
        waiting = self._slots.get(kind)
        if waiting is not None:
            self.coalesced += 1
            if isinstance(ev, LowerPriorityClaim) and isinstance(waiting, LowerPriorityClaim):
                ev = replace(ev, count=waiting.count + ev.count)
        self._slots[kind] = ev

    def take(self) -> Event | None:
        for kind in self._ORDER:
            ev = self._slots.pop(kind, None)
            if ev is not None:
                return ev
        return None

    def __len__(self) -> int:
        return len(self._slots)

