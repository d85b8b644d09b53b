"""The VRRP state machine (RFC 5798 §6, VRRPv3; VRRPv2 timers for version=2), sans-IO.

Inputs carry the time; outputs are actions for the caller to carry out, in order:

    inst = VrrpInstance(cfg)
    actions = inst.start(now)
    actions = inst.on_packet(payload, src, dst, ttl, now)        # raw IP payload: decodes, counts
    actions = inst.on_advert(advert, src, ttl, now, unicast=False)  # an already decoded advert
    actions = inst.on_timer(now)                                  # at inst.next_deadline() or later
    actions = inst.set_fault(True|False, now)
    actions = inst.resign(now) / inst.resume(now)
    inst.note_peer(address, resigned=True)                       # what the peer said over sync
    outlook = inst.outlook(now)                                   # what this instance will become
    actions = inst.shutdown(now)

Actions: `SendAdvert(priority)` (the caller builds it with `inst.advert(priority)` and sends it to
224.0.0.18 / ff02::12 or to every unicast peer), `StateChange(old, new, reason, cause)` (`cause` a
`Cause`, for code; `reason` a sentence, for the log) and `Reannounce(reason)`.

Timers (RFC 5798 §6.1): `skew_time` and `master_down_interval`, with VrrpConfig in
ha.vrrp_config; the states, causes and actions in ha.vrrp_types.

Rules:

* start: priority 255 (address owner) -> advert + Master at once; otherwise Backup with
  Master_Down_Timer = Master_Down_Interval.  Leaving Fault does the same (owner -> Master, else Backup).
* Backup: Master_Down_Timer fires -> advert, Master.  Priority 0 received -> Master_Down_Timer =
  Skew_Time.  An advert with priority >= ours, or any advert when preemption is off (nopreempt, or
  preempt=False, or after resign), is a live master: adopt its Max Adver Int, recompute, reset
  Master_Down_Timer.  A lower priority with preemption on is discarded (so we time out and take
  over), but with preempt_delay > 0 a lower-priority master is first tolerated for preempt_delay
  seconds from the first of its adverts seen (takeover ~ preempt_delay + Master_Down_Interval, as
  keepalived's man page example).
* Master: Adver_Timer fires -> advert.  Priority 0 received -> advert at once.  Higher priority,
  or equal priority from a higher primary address (unsigned, network byte order; IPv6: the
  128-bit link-local) -> Backup (adopting its interval).  Lower priority (or equal from a lower address) -> advert at once
  (RFC 9568 §6.4.3, keepalived's "forcing new election"), so the other side yields.
* Address owner (priority 255): every received advert is discarded (RFC 5798 §7.1), counted as
  drop_owner (and owner_conflict when the other side claims 255 too); nopreempt does not apply.
* shutdown: Master sends priority 0 then -> Initialize; Backup/Fault -> Initialize silently.
* set_fault(True): -> Fault (a Master sends priority 0 first, so the peer takes over after its
  Skew_Time rather than Master_Down_Interval); set_fault(False): leave Fault as at start.
* resign: see `VrrpInstance.resign`; resume: `VrrpInstance.resume`.
* A priority-0 advert means "the master is leaving" whether it resigned or stopped (RFC 5798
  §5.2.4): the advert cannot tell them apart.  The node's sync channel can: the peer says so
  there (`note_peer(address, resigned=True)`), and a Backup that takes over after a priority 0
  from a peer noted as resigned says "master resigned" (Cause.PEER_RESIGNED), "master stopped"
  (Cause.PEER_STOPPED) otherwise, as before.  The note is read when the skew timer expires, so
  it may arrive just after the priority-0 advert.
* `last_advert`: (source, priority, time) of the last accepted advert from another router,
  whatever our state: on a Backup the master's, on a Master the peer's when it ever advertised
  (a priority 0, a lower-priority claim, or a higher priority that preempted us); None if none.

Receive validation, each failure dropped, counted in `counters["drop_<reason>"]`, never a state
change: not running (Initialize/Fault: drop_state), then the packet's checks in the order that
ha/vrrp_validate.py states (drop_own, drop_ttl, drop_not_link_local, drop_dst, drop_peer, drop_version, drop_vrid,
drop_addresses), then the address-owner rule (drop_owner).  `on_packet` adds the decode failures:
drop_bad_checksum, drop_truncated, drop_count_mismatch, drop_bad_version, drop_bad_type,
drop_bad_address, drop_malformed.

Size: one RFC 5798 §6 state machine whose rules are this docstring; its config, timers and
types are apart (ha.vrrp_config, ha.vrrp_types), and split further the transitions would be
read in several files.
"""
from __future__ import annotations

import ipaddress

from proto import vrrp as P
from proto.vrrp import Advert, VrrpError
from ha.vrrp_config import VrrpConfig, master_down_interval, skew_time
from ha.vrrp_types import Action, Cause, Outlook, Reannounce, SendAdvert, State, StateChange
from ha.vrrp_validate import AdvertFilter, canonical as _canon

__all__ = ["State", "Cause", "VrrpConfig", "SendAdvert", "StateChange", "Reannounce", "Action",
           "VrrpInstance", "Outlook", "skew_time", "master_down_interval"]


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


_COUNTERS = (
    "rx", "accepted", "tx", "tx_priority0", "rx_priority0", "became_master", "became_backup",
    "faults", "reannounced", "discard_lower_priority", "preempt_delayed", "owner_conflict", "interval_changes",
    "drop_state", "drop_own", "drop_ttl", "drop_not_link_local", "drop_dst", "drop_version", "drop_vrid",
    "drop_addresses", "drop_peer",
    "drop_owner",
) + tuple(f"drop_{r}" for r in P.REASONS)


class VrrpInstance:
    """One VRRP instance's state machine.  See the module docstring for the rules."""

    def __init__(self, cfg: VrrpConfig) -> None:
        self.cfg = cfg
        self._state = State.INITIALIZE
        self.counters: dict[str, int] = dict.fromkeys(_COUNTERS, 0)
        self._primary_int = int(ipaddress.ip_address(cfg.primary_address))
        self._filter = AdvertFilter(cfg)
        self.master_adver_int_cs = cfg.advert_interval_cs
        self.master_down_at: float | None = None
        self.adver_at: float | None = None
        self.master_address: str | None = None   # the current master as last heard (Backup)
        self.master_priority: int | None = None
        self.resigned = False
        self._fault = False
        self._preempt_at: float | None = None   # preempt_delay running against a lower-priority master
        self._down_reason = ""
        self._down_cause = Cause.MASTER_DOWN
        self._down_src = ""                     # the master whose priority 0 armed Skew_Time
        self._resigned_peers: set[str] = set()  # peers that said (over sync) they resigned
        #: (source, priority, time) of the last accepted advert from another router
        self.last_advert: tuple[str, int, float] | None = None

    # -- read-only views ------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def priority(self) -> int:
        return self.cfg.priority

    @property
    def is_owner(self) -> bool:
        return self.cfg.priority == 255

    @property
    def preempting(self) -> bool:
        """Whether a Backup discards lower-priority adverts (and so takes over)."""
        if self.is_owner:
            return True
        return self.cfg.preempt and not self.cfg.nopreempt and not self.resigned

    @property
    def skew_time(self) -> float:
        return skew_time(self.cfg.priority, self.master_adver_int_cs, self.cfg.version)

    @property
    def master_down_interval(self) -> float:
        mai = self.master_adver_int_cs if self.cfg.version == 3 else self.cfg.advert_interval_cs
        return master_down_interval(self.cfg.priority, mai, self.cfg.version)

    @property
    def advert_interval(self) -> float:
        return self.cfg.advert_interval_cs / 100

    def advert(self, priority: int | None = None) -> Advert:
        """The advertisement to send for a SendAdvert(priority)."""
        return Advert(self.cfg.vrid, self.cfg.priority if priority is None else priority,
                      self.cfg.advert_interval_cs, self.cfg.addresses, self.cfg.version)

    def next_deadline(self) -> float | None:
        if self._state is State.MASTER:
            return self.adver_at
        if self._state is State.BACKUP:
            return self.master_down_at
        return None

    def status(self) -> dict:
        return {"name": self.cfg.name, "vrid": self.cfg.vrid, "state": self._state.value,
                "priority": self.cfg.priority, "master": self.master_address,
                "master_priority": self.master_priority,
                "master_adver_int_ms": self.master_adver_int_cs * 10, "resigned": self.resigned,
                "fault": self._fault, "counters": dict(self.counters)}

    # -- transitions -------------------------------------------------------------------------

    def _send(self, out: list[Action], priority: int) -> None:
        self.counters["tx"] += 1
        if priority == 0:
            self.counters["tx_priority0"] += 1
        out.append(SendAdvert(priority))

    def _goto(self, out: list[Action], new: State, reason: str, cause: Cause) -> None:
        old = self._state
        self._state = new
        self._preempt_at = None
        if new is State.MASTER:
            self.counters["became_master"] += 1
            self.master_address, self.master_priority = self.cfg.primary_address, self.cfg.priority
            self.master_down_at = None
        elif new is State.BACKUP:
            self.counters["became_backup"] += 1
            self.adver_at = None
        else:
            self.adver_at = self.master_down_at = None
            self.master_address = self.master_priority = None
            if new is State.FAULT:
                self.counters["faults"] += 1
        out.append(StateChange(old, new, reason, cause))

    def _become_master(self, out: list[Action], now: float, reason: str, cause: Cause) -> None:
        self._send(out, self.cfg.priority)
        self.adver_at = now + self.advert_interval
        self._goto(out, State.MASTER, reason, cause)

    def _become_backup(self, out: list[Action], now: float, reason: str, cause: Cause) -> None:
        self._goto(out, State.BACKUP, reason, cause)
        self._arm_down(now, "")

    def _arm_down(self, now: float, why: str, cause: Cause = Cause.MASTER_DOWN) -> None:
        self.master_down_at = now + self.master_down_interval
        self._down_reason = why
        self._down_cause = cause

    def _enter_running(self, out: list[Action], now: float, why: str, cause: Cause) -> None:
        """Initialize's Startup event (RFC 5798 §6.4.1)."""
        self.master_adver_int_cs = self.cfg.advert_interval_cs
        self.master_address = self.master_priority = None
        if self.is_owner:
            self._become_master(out, now, f"{why}, priority 255 (address owner)", cause)
        else:
            self._become_backup(out, now, why, cause)

    def start(self, now: float) -> list[Action]:
        out: list[Action] = []
        if self._state is not State.INITIALIZE:
            return out
        if self._fault:
            self._goto(out, State.FAULT, "started while in fault", Cause.FAULT)
        else:
            self._enter_running(out, now, "startup", Cause.STARTUP)
        return out

    def shutdown(self, now: float) -> list[Action]:
        out: list[Action] = []
        if self._state is State.MASTER:
            self._send(out, 0)
        if self._state is not State.INITIALIZE:
            self._goto(out, State.INITIALIZE, "shutdown", Cause.SHUTDOWN)
        return out

    def set_fault(self, on: bool, now: float) -> list[Action]:
        """Fault when this node's engine or a tracked interface is down."""
        out: list[Action] = []
        on = bool(on)
        if on == self._fault:
            return out
        self._fault = on
        if self._state is State.INITIALIZE:
            return out
        if on:
            if self._state is State.MASTER:
                self._send(out, 0)
            self._goto(out, State.FAULT, "fault: engine or tracked interface down", Cause.FAULT)
        else:
            self._enter_running(out, now, "fault cleared", Cause.FAULT_CLEARED)
        return out

    def resign(self, now: float) -> list[Action]:
        """An operator's "resign": stop being master in favour of a peer.

        A Master advertises priority 0 once (the peer, as Backup, then takes over after its
        Skew_Time) and becomes Backup at once.  Until `resume`, this instance does not preempt:
        it accepts a lower-priority master's adverts as a live master, as with nopreempt.  If no
        peer takes over, its Master_Down_Timer still expires and it becomes Master again (the VIPs
        are never left without a master), which also ends the resignation.  In Backup it only sets
        the no-preempt hold.  An address owner (255) cannot resign (no-op)."""
        out: list[Action] = []
        if self.is_owner or self._state in (State.INITIALIZE, State.FAULT):
            return out
        self.resigned = True
        if self._state is State.MASTER:
            self._send(out, 0)
            self.master_adver_int_cs = self.cfg.advert_interval_cs
            self.master_address = self.master_priority = None
            self._become_backup(out, now, "resigned by operator (sent priority 0)", Cause.RESIGNED)
        self._preempt_at = None
        return out

    def resume(self, now: float) -> list[Action]:
        """End a resignation: preempt normally again (a higher-priority Backup then takes over
        from a lower-priority master after Master_Down_Interval, or preempt_delay + that: see
        `outlook`).  Nothing is sent: a Backup is silent, and the next advert of a lower-priority
        master is discarded, so the Master_Down_Timer it last armed runs out."""
        self.resigned = False
        return []

    def note_peer(self, address: str, resigned: bool) -> None:
        """What the router at `address` (its primary address, the source of its adverts) said
        of itself over the node's own channel (sync): whether it has resigned.  Only changes
        what a priority 0 from it is called (see the module docstring)."""
        try:
            address = _canon(address)
        except ValueError:
            return
        if resigned:
            self._resigned_peers.add(address)
        else:
            self._resigned_peers.discard(address)

    def outlook(self, now: float) -> Outlook:
        """What this instance will become if nothing else happens (no new router, no fault),
        for an operator who has just resigned or resumed it."""
        st = self._state
        if st is State.MASTER:
            return Outlook(st, None, "master until a higher priority appears or it resigns")
        if st is not State.BACKUP or self.master_down_at is None:
            return Outlook(st, None, "not in the election" if st is State.INITIALIZE else
                           "in fault until the tracked interfaces are up")
        left = max(0.0, self.master_down_at - now)
        if self.master_priority is None:
            if self.resigned:
                return Outlook(State.BACKUP, None,
                               f"resigned: the peer takes over after its skew time; if no master"
                               f" is heard within {_ms(left)} this node is master again")
            return Outlook(State.MASTER, left, "no master heard: master down timer")
        master = f"{self.master_address} (priority {self.master_priority})"
        if self.resigned:
            return Outlook(State.BACKUP, None, f"resigned: not preempting master {master}")
        if self.preempting and self.master_priority < self.cfg.priority:
            within = self.master_down_interval + self.cfg.preempt_delay
            return Outlook(State.MASTER, max(left, within),
                           f"preempting lower priority master {master} (ours {self.cfg.priority})")
        why = ("preemption is off" if not self.preempting else
               f"its priority is not below ours ({self.cfg.priority})")
        return Outlook(State.BACKUP, None, f"backup to master {master}: {why}")

    # -- timers ----------------------------------------------------------------------------------

    def on_timer(self, now: float) -> list[Action]:
        out: list[Action] = []
        if self._state is State.MASTER and self.adver_at is not None and now >= self.adver_at:
            self._send(out, self.cfg.priority)
            self.adver_at = now + self.advert_interval
        elif (self._state is State.BACKUP and self.master_down_at is not None
              and now >= self.master_down_at):
            cause = self._down_cause
            if cause is Cause.PEER_STOPPED:
                resigned = self._down_src in self._resigned_peers
                cause = Cause.PEER_RESIGNED if resigned else Cause.PEER_STOPPED
                reason = (f"priority 0 from {self._down_src} (master "
                          f"{'resigned' if resigned else 'stopped'}), "
                          f"skew timer expired ({_ms(self.skew_time)})")
            elif self._down_reason:
                reason = self._down_reason
            elif self.cfg.version == 3:
                reason = (f"master down timer expired (3 x {self.master_adver_int_cs * 10} ms"
                          f" + skew {_ms(self.skew_time)})")
            else:
                reason = (f"master down timer expired (3 x {self.cfg.advert_interval_cs // 100} s"
                          f" + skew {_ms(self.skew_time)})")
            self.resigned = False
            self._become_master(out, now, reason, cause)
        return out

    # -- receive -----------------------------------------------------------------------------------

    def _drop(self, reason: str) -> list[Action]:
        self.counters["drop_" + reason] += 1
        return []

    def on_packet(self, payload: bytes, src: str, dst: str, ttl: int, now: float) -> list[Action]:
        """A received IP payload (dst: the destination address of its IP header): decode
        (counting failures), then `on_advert`."""
        try:
            advert = P.decode(payload, src, dst)
        except VrrpError as exc:
            self.counters["rx"] += 1
            return self._drop(exc.reason)
        return self.on_advert(advert, src, ttl, now, dst=dst)

    def on_advert(self, advert: Advert, src: str, ttl: int, now: float,
                  dst: str | None = None) -> list[Action]:
        """A decoded advert from src, received with that TTL / hop limit, sent to dst (None: the
        VRRP group, for callers that have no IP header)."""
        self.counters["rx"] += 1
        if self._state not in (State.BACKUP, State.MASTER):
            return self._drop("state")
        why, src_ip = self._filter.reject(advert, src, ttl, dst)
        if why:
            return self._drop(why)
        src = str(src_ip)
        if self.is_owner:
            if advert.priority == 255:
                self.counters["owner_conflict"] += 1
            return self._drop("owner")
        self.counters["accepted"] += 1
        self.last_advert = (src, advert.priority, now)
        if advert.priority == 0:
            self.counters["rx_priority0"] += 1
        out: list[Action] = []
        if self._state is State.BACKUP:
            self._backup_rx(out, advert, src, now)
        else:
            self._master_rx(out, advert, src, src_ip, now)
        return out

    def _adopt_interval(self, advert: Advert) -> None:
        if self.cfg.version == 3 and advert.max_adver_int_cs != self.master_adver_int_cs:
            if 1 <= advert.max_adver_int_cs <= 4095:
                self.counters["interval_changes"] += 1
                self.master_adver_int_cs = advert.max_adver_int_cs

    def _backup_rx(self, out: list[Action], advert: Advert, src: str, now: float) -> None:
        if advert.priority == 0:
            self.master_down_at = now + self.skew_time
            self._down_reason, self._down_src = "", src     # said at expiry: see note_peer
            self._down_cause = Cause.PEER_STOPPED
            return
        lower = advert.priority < self.cfg.priority
        if lower and self.preempting:
            if self.cfg.preempt_delay > 0:
                if self._preempt_at is None:
                    self._preempt_at = now + self.cfg.preempt_delay
                if now < self._preempt_at:
                    self.counters["preempt_delayed"] += 1
                    self._accept_master(advert, src, now)
                    return
            self.counters["discard_lower_priority"] += 1
            self._down_reason = (f"preempting lower priority {advert.priority} master {src}"
                                 f" (ours {self.cfg.priority}; master down timer"
                                 f" {_ms(self.master_down_interval)})")
            self._down_cause = Cause.PREEMPT
            return
        if not lower:
            self._preempt_at = None
        self._accept_master(advert, src, now)

    def _accept_master(self, advert: Advert, src: str, now: float) -> None:
        self._adopt_interval(advert)
        self.master_address, self.master_priority = src, advert.priority
        self._arm_down(now, "")

    def _master_rx(self, out: list[Action], advert: Advert, src: str, src_ip, now: float) -> None:
        cfg = self.cfg
        if advert.priority == 0:
            self._send(out, cfg.priority)
            self.adver_at = now + self.advert_interval
            return
        if advert.priority > cfg.priority:
            reason = f"higher priority {advert.priority} from {src} (ours {cfg.priority})"
        elif advert.priority == cfg.priority and int(src_ip) > self._primary_int:
            reason = (f"equal priority {advert.priority} from higher address {src}"
                      f" (ours {cfg.primary_address})")
        else:
            # RFC 9568 §6.4.3 / keepalived: re-assert at once so the other side yields.
            self._send(out, cfg.priority)
            self.adver_at = now + self.advert_interval
            self.counters["reannounced"] += 1
            out.append(Reannounce(f"lower priority {advert.priority} from {src} claimed master"))
            return
        self.master_adver_int_cs = cfg.advert_interval_cs
        self._adopt_interval(advert)
        self._goto(out, State.BACKUP, reason, Cause.PREEMPTED)
        self.master_address, self.master_priority = src, advert.priority
        self._arm_down(now, "")
