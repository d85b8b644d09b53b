"""What the VRRP state machine (ha.vrrp) speaks: its states, the causes of a change, the
actions it returns (SendAdvert, StateChange, Reannounce) and its Outlook.  Imported by
ha.vrrp, which re-exports every name."""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Union


class State(str, enum.Enum):
    INITIALIZE = "Initialize"
    BACKUP = "Backup"
    MASTER = "Master"
    FAULT = "Fault"

    def __str__(self) -> str:
        return self.value

    @property
    def keepalived_name(self) -> str:
        """As keepalived logs it: INIT, BACKUP, MASTER, FAULT."""
        return "INIT" if self is State.INITIALIZE else self.name


@dataclass(frozen=True)
class SendAdvert:
    priority: int


class Cause(str, enum.Enum):
    """Why a state changed: what the role machine (ha/role.py) decides on; the reason string
    beside it is only for the log."""
    STARTUP = "startup"                  # Initialize -> Backup (or Master as address owner)
    MASTER_DOWN = "master_down"          # Backup: Master_Down_Timer expired, no master heard
    PEER_STOPPED = "peer_stopped"        # Backup: the master sent priority 0, Skew_Time expired
    PEER_RESIGNED = "peer_resigned"      # the same, and the master said (over sync) it resigned
    PREEMPT = "preempt"                  # Backup: took over from a live lower-priority master,
                                         # which still holds the addresses
    PREEMPTED = "preempted"              # Master: a higher-priority master appeared
    RESIGNED = "resigned"                # Master: the operator resigned it
    FAULT = "fault"                      # engine or tracked interface down
    FAULT_CLEARED = "fault_cleared"
    SHUTDOWN = "shutdown"                # stopping (a Master sent priority 0)
    CONFIG = "config"                    # no election: the role fixed in the config


@dataclass(frozen=True)
class StateChange:
    old: State
    new: State
    reason: str
    cause: Cause


@dataclass(frozen=True)
class Reannounce:
    """A master heard a lower-priority node claim mastership: that node may have sent
    gratuitous ARPs meanwhile, so the master announces its addresses again
    (keepalived's garp_lower_prio_repeat)."""
    reason: str


Action = Union[SendAdvert, StateChange, Reannounce]


@dataclass(frozen=True)
class Outlook:
    """What an instance will be if nothing else happens: `state`, and `within` (s, an upper
    bound) when that is a change still to come (None: it is so now, or nothing is due)."""
    state: State
    within: float | None
    reason: str
