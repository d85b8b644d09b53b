"""The VRRP election's status contract (director.status): an instance's state and counters,
built strictly from the running election (ha.vrrp_io.VrrpRunner)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol

from director.status_fields import counter


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


class ElectionSource(Protocol):
    """A running VRRP election (ha.vrrp_io.VrrpRunner)."""
    ifname: str
    cfg: Any                    # ha.vrrp.VrrpConfig: .addresses, .unicast_peers
    instance: Any               # ha.vrrp.VrrpInstance: .status(), .state, .last_advert, ...

    def clock(self) -> float: ...

    def resign(self) -> None: ...

    def resume(self) -> None: ...
