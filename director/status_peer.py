"""The peer's status contract (director.status): the other node of the pair, from what
it says over sync, the adverts heard from it, and the config."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from director.epoch import EpochClock
from director.status_sync import SyncSource
from director.status_vrrp import ElectionSource


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
