"""ha.vrrp: the VRRP state machine with an injected clock (RFC 5798 §6 timers and transitions,
preempt / nopreempt / preempt_delay, ties, interval adoption, fault, resign, receive validation)."""
from __future__ import annotations

import pytest

from proto import vrrp as V
from proto.vrrp import Advert
from ha.vrrp import (Cause, SendAdvert, State, StateChange, VrrpConfig, VrrpInstance,
                    master_down_interval, skew_time)

VIP = "198.18.250.100"
ME, PEER = "198.18.250.2", "198.18.250.1"
GROUP = V.VRRP_GROUP4


def cfg(**kw) -> VrrpConfig:
    base = dict(vrid=51, priority=100, advert_interval=0.1, addresses=(VIP,), primary_address=ME)
    base.update(kw)
    return VrrpConfig(**base)


def adv(priority: int, interval_cs: int = 10, vrid: int = 51, addresses=(VIP,), version: int = 3) -> Advert:
    return Advert(vrid, priority, interval_cs, tuple(addresses), version)


def changes(actions) -> list[StateChange]:
    return [a for a in actions if isinstance(a, StateChange)]


def sends(actions) -> list[int]:
    return [a.priority for a in actions if isinstance(a, SendAdvert)]


def started(c: VrrpConfig, now: float = 0.0) -> VrrpInstance:
    i = VrrpInstance(c)
    i.start(now)
    return i


def master(c: VrrpConfig, now: float = 0.0) -> VrrpInstance:
    i = started(c, now)
    if i.state is not State.MASTER:
        i.on_timer(i.next_deadline())
    assert i.state is State.MASTER
    return i


# -- timer figures (the reference's table) -----------------------------------------------------------

def test_timer_formulas_exact():
    assert skew_time(100, 10) == pytest.approx(156 * 10 / 256 / 100)
    assert master_down_interval(100, 10) == pytest.approx(0.3609375)
    assert round(master_down_interval(100, 10), 3) == 0.361
    assert round(skew_time(100, 10), 3) == 0.061
    assert round(master_down_interval(100, 1), 3) == 0.036
    assert round(skew_time(100, 1), 3) == 0.006
    assert round(master_down_interval(100, 100), 3) == 3.609
    assert round(skew_time(100, 100), 3) == 0.609
    assert skew_time(150, 10) == pytest.approx(106 * 10 / 256 / 100)
    # v2: the skew is in seconds, not scaled by the interval
    assert skew_time(100, 100, version=2) == pytest.approx(156 / 256)
    assert master_down_interval(100, 100, version=2) == pytest.approx(3 + 156 / 256)


def test_instance_intervals():
    i = VrrpInstance(cfg())
    assert i.master_down_interval == pytest.approx(0.3609375)
    assert i.skew_time == pytest.approx(0.0609375)
    assert VrrpInstance(cfg(advert_interval=0.01)).master_down_interval == pytest.approx(0.0360938, abs=1e-6)
    v2 = VrrpInstance(cfg(version=2, advert_interval=1))
    assert v2.master_down_interval == pytest.approx(3.609375)


# -- Initialize -> Backup -> Master ---------------------------------------------------------------------

def test_start_goes_backup_and_times_out_to_master_exactly():
    i = VrrpInstance(cfg())
    assert i.state is State.INITIALIZE and i.next_deadline() is None
    acts = i.start(10.0)
    assert changes(acts) == [StateChange(State.INITIALIZE, State.BACKUP, "startup",
                                         Cause.STARTUP)]
    assert sends(acts) == []
    assert i.next_deadline() == pytest.approx(10.3609375)
    assert i.on_timer(10.3609) == [] and i.state is State.BACKUP
    acts = i.on_timer(10.3609375)
    assert sends(acts) == [100]
    (ch,) = changes(acts)
    assert (ch.old, ch.new) == (State.BACKUP, State.MASTER)
    assert ch.reason == "master down timer expired (3 x 100 ms + skew 61 ms)"
    assert i.next_deadline() == pytest.approx(10.4609375)


def test_start_twice_is_a_noop():
    i = started(cfg())
    assert i.start(1.0) == []


def test_master_advertises_every_interval():
    i = master(cfg())
    t = i.next_deadline()
    sent = []
    for _ in range(10):
        sent += sends(i.on_timer(t))
        assert i.next_deadline() == pytest.approx(t + 0.1)
        t = i.next_deadline()
    assert sent == [100] * 10
    assert i.on_timer(t - 0.01) == []


def test_master_down_interval_at_10ms():
    i = started(cfg(advert_interval=0.01), 0.0)
    assert i.next_deadline() == pytest.approx(0.03 + 156 * 1 / 256 / 100)
    assert round(i.next_deadline(), 3) == 0.036


def test_backup_resets_timer_on_higher_or_equal_priority():
    i = started(cfg(), 0.0)
    for t, prio in ((0.3, 150), (0.6, 100), (0.9, 255)):
        assert i.on_advert(adv(prio), PEER, 255, t) == []
        assert i.next_deadline() == pytest.approx(t + 0.3609375)
        assert i.state is State.BACKUP
    assert i.master_address == PEER and i.master_priority == 255
    assert i.counters["accepted"] == 3


def test_backup_equal_priority_stays_backup_whatever_the_address():
    for peer in ("198.18.250.1", "198.18.250.3"):
        i = started(cfg(), 0.0)
        i.on_advert(adv(100), peer, 255, 0.2)
        assert i.state is State.BACKUP and i.next_deadline() == pytest.approx(0.5609375)


def test_backup_priority_zero_sets_skew_time():
    i = started(cfg(), 0.0)
    i.on_advert(adv(150), PEER, 255, 0.1)
    assert i.on_advert(adv(0), PEER, 255, 0.2) == []
    assert i.next_deadline() == pytest.approx(0.2 + 0.0609375)
    assert round(i.next_deadline() - 0.2, 3) == 0.061
    acts = i.on_timer(0.2 + 0.0609375)
    assert sends(acts) == [100]
    (ch,) = changes(acts)
    assert ch.new is State.MASTER
    assert ch.reason == f"priority 0 from {PEER} (master stopped), skew timer expired (61 ms)"
    assert i.counters["rx_priority0"] == 1


def test_priority_zero_then_master_returns_cancels_takeover():
    i = started(cfg(), 0.0)
    i.on_advert(adv(0), PEER, 255, 0.1)
    i.on_advert(adv(150), PEER, 255, 0.12)
    assert i.next_deadline() == pytest.approx(0.12 + 0.3609375)
    acts = i.on_timer(0.12 + 0.3609375)
    assert changes(acts)[0].reason.startswith("master down timer expired")


def test_backup_adopts_master_interval():
    i = started(cfg(), 0.0)
    i.on_advert(adv(150, interval_cs=100), PEER, 255, 0.1)
    assert i.master_adver_int_cs == 100
    assert i.next_deadline() == pytest.approx(0.1 + 3.609375)
    assert i.counters["interval_changes"] == 1
    # our own sending interval does not change
    assert i.advert(100).max_adver_int_cs == 10
    acts = i.on_timer(0.1 + 3.609375)
    assert changes(acts)[0].reason == "master down timer expired (3 x 1000 ms + skew 609 ms)"
    # as master it sends at its own configured interval
    assert i.next_deadline() == pytest.approx(0.1 + 3.609375 + 0.1)


def test_priority_zero_skew_uses_learned_interval():
    i = started(cfg(), 0.0)
    i.on_advert(adv(150, interval_cs=100), PEER, 255, 0.1)
    i.on_advert(adv(0, interval_cs=100), PEER, 255, 0.2)
    assert i.next_deadline() == pytest.approx(0.2 + 0.609375)


# -- preemption -------------------------------------------------------------------------------------------

def lower_master_feed(i: VrrpInstance, start: float, stop: float, prio: int = 100, step: float = 0.1):
    """Feed adverts from a lower-priority master every step s in [start, stop), running our timers.
    Returns the time we became master (or None)."""
    t = start
    n = 0
    while t < stop and n < 10_000:
        n += 1
        d = i.next_deadline()
        if d is not None and d <= t:
            acts = i.on_timer(d)
            if any(c.new is State.MASTER for c in changes(acts)):
                return d
        i.on_advert(adv(prio), PEER, 255, t)
        t = round(t + step, 9)
    d = i.next_deadline()
    if d is not None and d <= stop:
        if any(c.new is State.MASTER for c in changes(i.on_timer(d))):
            return d
    return None


def test_preempt_backup_discards_lower_priority_and_takes_over():
    i = started(cfg(priority=150), 0.0)
    mdi = 0.3 + 106 * 10 / 256 / 100
    assert i.master_down_interval == pytest.approx(mdi)
    became = lower_master_feed(i, 0.05, 2.0)
    assert became == pytest.approx(mdi)  # timer from start, never reset by the lower adverts
    assert i.counters["discard_lower_priority"] >= 3
    assert i.state is State.MASTER


def test_preempt_reason_names_the_lower_master():
    i = started(cfg(priority=150), 0.0)
    i.on_advert(adv(100), PEER, 255, 0.05)
    acts = i.on_timer(i.next_deadline())
    assert changes(acts)[0].reason.startswith(f"preempting lower priority 100 master {PEER}")


@pytest.mark.parametrize("kw", [dict(nopreempt=True), dict(preempt=False)])
def test_nopreempt_never_takes_over_from_live_lower_master(kw):
    i = started(cfg(priority=150, **kw), 0.0)
    assert not i.preempting
    assert lower_master_feed(i, 0.05, 5.0) is None
    assert i.state is State.BACKUP and i.master_priority == 100
    # the lower master goes silent: normal timeout
    d = i.next_deadline()
    assert d == pytest.approx(4.95 + 0.3 + 106 * 10 / 256 / 100)
    assert changes(i.on_timer(d))[0].new is State.MASTER


def test_preempt_delay_tolerates_lower_master_for_the_delay():
    c = cfg(priority=150, preempt_delay=1.0)
    i = started(c, 0.0)
    mdi = i.master_down_interval
    became = lower_master_feed(i, 0.05, 5.0)
    # first lower advert at 0.05 -> preempt allowed from 1.05; last tolerated advert at 0.95
    assert became == pytest.approx(0.95 + mdi)
    assert i.counters["preempt_delayed"] == 10


def test_preempt_delay_does_not_delay_when_nobody_is_master():
    i = started(cfg(priority=150, preempt_delay=5.0), 0.0)
    d = i.next_deadline()
    assert d == pytest.approx(i.master_down_interval)
    assert changes(i.on_timer(d))[0].new is State.MASTER


def test_preempt_delay_restarts_after_a_higher_master():
    i = started(cfg(priority=150, preempt_delay=1.0), 0.0)
    i.on_advert(adv(100), PEER, 255, 0.05)          # delay starts: preempt from 1.05
    i.on_advert(adv(200), "198.18.250.3", 255, 0.5)  # a higher master: delay forgotten
    became = lower_master_feed(i, 0.6, 5.0)
    assert became == pytest.approx(1.5 + i.master_down_interval)


# -- Master receiving ---------------------------------------------------------------------------------------

def test_master_yields_to_higher_priority_and_adopts_interval():
    i = master(cfg())
    t = 5.0
    acts = i.on_advert(adv(150, interval_cs=20), "198.18.250.11", 255, t)
    assert sends(acts) == []
    (ch,) = changes(acts)
    assert (ch.old, ch.new) == (State.MASTER, State.BACKUP)
    assert ch.reason == "higher priority 150 from 198.18.250.11 (ours 100)"
    assert i.master_adver_int_cs == 20
    assert i.next_deadline() == pytest.approx(t + 0.6 + 156 * 20 / 256 / 100)
    assert i.master_address == "198.18.250.11"


def test_master_tie_higher_address_wins_compared_as_unsigned_integers():
    # "198.18.250.9" > "198.18.250.10" as strings, but 10 > 9 as numbers
    i = master(cfg(primary_address="198.18.250.9"))
    acts = i.on_advert(adv(100), "198.18.250.10", 255, 1.0)
    (ch,) = changes(acts)
    assert ch.new is State.BACKUP
    assert ch.reason == "equal priority 100 from higher address 198.18.250.10 (ours 198.18.250.9)"


def test_master_tie_lower_address_stays_and_readvertises():
    i = master(cfg(primary_address="198.18.250.10"))
    acts = i.on_advert(adv(100), "198.18.250.9", 255, 1.0)
    assert changes(acts) == [] and sends(acts) == [100]
    assert i.state is State.MASTER and i.next_deadline() == pytest.approx(1.1)


def test_master_lower_priority_sends_advert_at_once():
    i = master(cfg(priority=150))
    acts = i.on_advert(adv(100), PEER, 255, 2.0)
    # re-assert at once, and announce our addresses again: the peer that claimed
    # master may have moved the neighbours' ARP entries to itself meanwhile
    assert acts[0] == SendAdvert(150)
    assert [type(a).__name__ for a in acts[1:]] == ["Reannounce"]
    assert i.state is State.MASTER and i.counters["reannounced"] == 1
    assert i.next_deadline() == pytest.approx(2.1)


def test_master_priority_zero_sends_advert_at_once():
    i = master(cfg())
    acts = i.on_advert(adv(0), PEER, 255, 3.0)
    assert acts == [SendAdvert(100)]
    assert i.state is State.MASTER and i.next_deadline() == pytest.approx(3.1)


def test_two_nodes_starting_together_higher_address_wins():
    a = VrrpInstance(cfg(primary_address="198.18.250.1"))
    b = VrrpInstance(cfg(primary_address="198.18.250.2"))
    net = Wire([a, b])
    net.run(0.0, 2.0)
    assert (a.state, b.state) == (State.BACKUP, State.MASTER)


# -- owner (255) -----------------------------------------------------------------------------------------

def test_owner_starts_master_at_once():
    i = VrrpInstance(cfg(priority=255))
    acts = i.start(0.0)
    assert acts[0] == SendAdvert(255)
    assert changes(acts)[0].new is State.MASTER
    assert "address owner" in changes(acts)[0].reason
    assert i.next_deadline() == pytest.approx(0.1)


def test_owner_discards_all_adverts_and_ignores_nopreempt():
    i = VrrpInstance(cfg(priority=255, nopreempt=True))
    assert i.preempting
    i.start(0.0)
    for prio in (0, 100, 255):
        assert i.on_advert(adv(prio), PEER, 255, 0.5) == []
    assert i.state is State.MASTER
    assert i.counters["drop_owner"] == 3 and i.counters["owner_conflict"] == 1


def test_backup_accepts_owner():
    i = started(cfg(), 0.0)
    i.on_advert(adv(255), PEER, 255, 0.1)
    assert i.master_priority == 255 and i.state is State.BACKUP


# -- shutdown, fault, resign -----------------------------------------------------------------------------

def test_shutdown_master_sends_priority_zero():
    i = master(cfg())
    acts = i.shutdown(9.0)
    assert acts == [SendAdvert(0), StateChange(State.MASTER, State.INITIALIZE, "shutdown", Cause.SHUTDOWN)]
    assert i.next_deadline() is None
    assert i.counters["tx_priority0"] == 1
    assert i.shutdown(9.1) == []


def test_shutdown_backup_is_silent():
    i = started(cfg())
    assert i.shutdown(1.0) == [StateChange(State.BACKUP, State.INITIALIZE, "shutdown",
                                                  Cause.SHUTDOWN)]


def test_restart_after_shutdown():
    i = master(cfg())
    i.shutdown(1.0)
    acts = i.start(2.0)
    assert changes(acts)[0].new is State.BACKUP
    assert i.next_deadline() == pytest.approx(2.3609375)


def test_fault_from_master_sends_priority_zero_and_leaving_goes_backup():
    i = master(cfg())
    acts = i.set_fault(True, 4.0)
    assert sends(acts) == [0]
    assert changes(acts)[0].new is State.FAULT
    assert i.next_deadline() is None
    assert i.on_advert(adv(150), PEER, 255, 4.1) == []
    assert i.counters["drop_state"] == 1
    assert i.on_timer(100.0) == []
    assert i.set_fault(True, 4.2) == []
    acts = i.set_fault(False, 5.0)
    assert changes(acts) == [StateChange(State.FAULT, State.BACKUP, "fault cleared",
                                         Cause.FAULT_CLEARED)]
    assert sends(acts) == []
    assert i.next_deadline() == pytest.approx(5.3609375)


def test_fault_from_backup_is_silent():
    i = started(cfg())
    acts = i.set_fault(True, 1.0)
    assert sends(acts) == [] and changes(acts)[0].new is State.FAULT


def test_fault_before_start():
    i = VrrpInstance(cfg())
    assert i.set_fault(True, 0.0) == []
    assert changes(i.start(0.0))[0].new is State.FAULT
    assert changes(i.set_fault(False, 1.0))[0].new is State.BACKUP


def test_owner_leaving_fault_goes_master():
    i = VrrpInstance(cfg(priority=255))
    i.start(0.0)
    i.set_fault(True, 1.0)
    acts = i.set_fault(False, 2.0)
    assert sends(acts) == [255] and i.state is State.MASTER


def test_resign_hands_over_and_does_not_preempt_back():
    i = master(cfg(priority=150))
    acts = i.resign(1.0)
    assert sends(acts) == [0]
    assert changes(acts)[0].new is State.BACKUP and "resign" in changes(acts)[0].reason
    assert i.resigned and not i.preempting
    # the peer (100) takes over and advertises; we accept it as a live master
    assert lower_master_feed(i, 1.07, 4.0) is None
    assert i.state is State.BACKUP and i.master_priority == 100
    # resume: normal preemption again
    i.resume(4.0)
    became = lower_master_feed(i, 4.0, 6.0)
    assert became == pytest.approx(3.97 + i.master_down_interval)


def test_resign_without_peer_comes_back_after_master_down_interval():
    i = master(cfg(priority=150))
    i.resign(1.0)
    d = i.next_deadline()
    assert d == pytest.approx(1.0 + i.master_down_interval)
    assert changes(i.on_timer(d))[0].new is State.MASTER
    assert not i.resigned


def test_owner_cannot_resign():
    i = VrrpInstance(cfg(priority=255))
    i.start(0.0)
    assert i.resign(1.0) == [] and i.state is State.MASTER


# -- receive validation: drop and count, no state change, no timer change ---------------------------------

@pytest.mark.parametrize("args,counter", [
    ((adv(150), PEER, 64), "drop_ttl"),
    ((adv(150), PEER, 254), "drop_ttl"),
    ((adv(150, vrid=52), PEER, 255), "drop_vrid"),
    ((adv(150, addresses=(VIP, "198.18.250.101")), PEER, 255), "drop_addresses"),
    ((adv(150, addresses=("198.18.250.101",)), PEER, 255), "drop_addresses"),
    ((adv(150, addresses=()), PEER, 255), "drop_addresses"),
    ((adv(150, interval_cs=100, version=2), PEER, 255), "drop_version"),
    ((adv(150), ME, 255), "drop_own"),
    ((adv(0), ME, 255), "drop_own"),
])
def test_invalid_adverts_dropped(args, counter):
    for i in (started(cfg(), 0.0), master(cfg(), 0.0)):
        state, deadline = i.state, i.next_deadline()
        assert i.on_advert(*args, 0.2) == []
        assert i.state is state and i.next_deadline() == deadline
        assert i.counters[counter] == 1 and i.counters["accepted"] == 0


def test_ttl_not_checked_for_unicast_but_peer_is():
    i = started(cfg(unicast_peers=(PEER,)), 0.0)
    i.on_advert(adv(150), PEER, 64, 0.2, dst=ME)
    assert i.counters["accepted"] == 1 and i.next_deadline() == pytest.approx(0.5609375)
    i.on_advert(adv(150), "198.18.250.7", 255, 0.3, dst=ME)
    assert i.counters["drop_peer"] == 1


@pytest.mark.parametrize("dst", [ME, "224.0.0.1", "255.255.255.255"])
def test_multicast_instance_drops_off_link_claims_whatever_the_destination(dst):
    """Unicast is decided from the configuration, never per packet, as keepalived does: an
    instance without unicast_peers drops every advert whose TTL is not 255 or whose destination
    is not the VRRP group (224.0.0.18).  Before, an advert sent to the node itself, to 224.0.0.1
    or to the broadcast address skipped the TTL check, so a host several hops away could claim
    priority 255 and hold both directors in BACKUP (nobody holding the VIP)."""
    i = master(cfg())
    forged = V.encode(adv(255), PEER, dst)
    assert i.on_packet(forged, PEER, dst, 60, 0.1) == []
    assert i.on_packet(forged, PEER, dst, 255, 0.1) == []      # on-link, but not to the group
    assert i.state is State.MASTER and i.counters["accepted"] == 0
    assert i.counters["drop_ttl"] == 1 and i.counters["drop_dst"] == 1
    b = started(cfg(), 0.0)
    b.on_packet(V.encode(adv(100), PEER, dst), PEER, dst, 60, 0.2)
    assert b.counters["accepted"] == 0 and b.next_deadline() == pytest.approx(0.3609375)


def test_unicast_instance_drops_any_source_not_a_peer_whatever_the_destination():
    """keepalived's unicast mode (unicast_peer configured): an advert whose source is not a
    configured peer is dropped, to the group as much as to us; a peer's is accepted whatever
    its TTL."""
    i = master(cfg(unicast_peers=(PEER,)))
    stranger = "198.18.250.7"
    for dst in (GROUP, ME):
        assert i.on_packet(V.encode(adv(255), stranger, dst), stranger, dst, 255, 0.1) == []
    assert i.counters["drop_peer"] == 2 and i.state is State.MASTER
    i.on_packet(V.encode(adv(200), PEER, ME), PEER, ME, 64, 0.2)
    assert i.counters["accepted"] == 1 and i.state is State.BACKUP


def test_address_list_order_does_not_matter():
    i = started(cfg(addresses=(VIP, "198.18.250.101")), 0.0)
    i.on_advert(adv(150, addresses=("198.18.250.101", VIP)), PEER, 255, 0.2)
    assert i.counters["accepted"] == 1


def test_on_packet_decodes_and_counts_errors():
    i = started(cfg(), 0.0)
    good = V.encode(adv(150), PEER, GROUP)
    assert i.on_packet(good, PEER, GROUP, 255, 0.1) == []
    assert i.counters["accepted"] == 1 and i.next_deadline() == pytest.approx(0.4609375)
    bad = good[:6] + b"\0\0" + good[8:]
    assert i.on_packet(bad, PEER, GROUP, 255, 0.2) == []
    assert i.on_packet(good[:5], PEER, GROUP, 255, 0.2) == []
    assert i.on_packet(good, "198.18.250.9", GROUP, 255, 0.2) == []   # checksum covers src
    assert i.counters["drop_bad_checksum"] == 2 and i.counters["drop_truncated"] == 1
    assert i.next_deadline() == pytest.approx(0.4609375)
    # RFC 9568 message-only form from a peer is accepted
    m = V.encode(adv(150), PEER, GROUP, checksum_form=V.CSUM_MESSAGE)
    i.on_packet(m, PEER, GROUP, 255, 0.3)
    assert i.counters["accepted"] == 2
    # unicast is never recognised from the destination (issue 12 item 1): dropped
    u = V.encode(adv(150), PEER, ME)
    i.on_packet(u, PEER, ME, 64, 0.4)
    assert i.counters["accepted"] == 2 and i.counters["rx"] == 6 and i.counters["drop_ttl"] == 1


def test_counters_and_status():
    i = master(cfg())
    s = i.status()
    assert s["state"] == "Master" and s["name"] == "VI_51" and s["counters"]["became_master"] == 1
    assert i.counters["tx"] == 1


# -- config ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw", [
    dict(advert_interval=0.005), dict(advert_interval=40.96), dict(advert_interval=0.015),
    dict(version=2, advert_interval=0.5), dict(priority=0), dict(priority=256), dict(vrid=0),
    dict(primary_address=""), dict(addresses=()), dict(addresses=("fe80::1",)),
    dict(preempt_delay=-1), dict(unicast_peers=("fe80::2",)), dict(version=4),
])
def test_bad_config(kw):
    with pytest.raises(ValueError):
        cfg(**kw)


def test_config_defaults_and_normalisation():
    c = VrrpConfig(51, addresses=("198.18.250.100",), primary_address="198.18.250.2")
    assert (c.priority, c.advert_interval, c.advert_interval_cs, c.preempt, c.nopreempt,
            c.preempt_delay, c.version, c.unicast_peers, c.name) == \
        (100, 0.1, 10, True, False, 0.0, 3, (), "VI_51")
    assert cfg(advert_interval=40.95).advert_interval_cs == 4095
    assert cfg(version=2, advert_interval=1).advert_interval_cs == 100


def test_v2_instance_times_out_in_seconds():
    i = started(cfg(version=2, advert_interval=1), 0.0)
    acts = i.on_timer(i.next_deadline())
    assert changes(acts)[0].reason == "master down timer expired (3 x 1 s + skew 609 ms)"
    assert i.advert().version == 2 and i.advert().max_adver_int_cs == 100


# -- a simulated wire between instances ----------------------------------------------------------------------

class Wire:
    """Zero-loss multicast between instances, delivery delay `latency`, through encode/decode."""

    def __init__(self, nodes: list[VrrpInstance], latency: float = 0.001) -> None:
        self.nodes = nodes
        self.latency = latency
        self.inflight: list[tuple[float, int, bytes, str]] = []
        self.log: list[tuple[float, str, StateChange]] = []

    def _out(self, node: VrrpInstance, acts, now: float) -> None:
        for a in acts:
            if isinstance(a, SendAdvert):
                src = node.cfg.primary_address
                data = V.encode(node.advert(a.priority), src, GROUP)
                for k, other in enumerate(self.nodes):
                    if other is not node:
                        self.inflight.append((now + self.latency, k, data, src))
            else:
                self.log.append((now, node.cfg.primary_address, a))

    def run(self, start: float, stop: float, started: bool = False) -> None:
        if not started:
            for n in self.nodes:
                self._out(n, n.start(start), start)
        now = start
        for _ in range(100_000):
            cands = [(d, k) for k, n in enumerate(self.nodes) if (d := n.next_deadline()) is not None]
            t_timer = min(cands)[0] if cands else float("inf")
            t_pkt = min((p[0] for p in self.inflight), default=float("inf"))
            now = min(t_timer, t_pkt)
            if now > stop:
                return
            if t_pkt <= t_timer:
                p = min(self.inflight)
                self.inflight.remove(p)
                _, k, data, src = p
                node = self.nodes[k]
                self._out(node, node.on_packet(data, src, GROUP, 255, now), now)
            else:
                node = self.nodes[min(cands)[1]]
                self._out(node, node.on_timer(now), now)
        raise AssertionError("simulation did not finish")


def test_simulated_pair_graceful_and_silent_failover():
    a = VrrpInstance(cfg(priority=150, primary_address="198.18.250.1"))
    b = VrrpInstance(cfg(priority=100, primary_address="198.18.250.2"))
    w = Wire([a, b])
    w.run(0.0, 2.0)
    assert (a.state, b.state) == (State.MASTER, State.BACKUP)
    # graceful stop of a: b takes over after its skew time (+ latency)
    w._out(a, a.shutdown(2.0), 2.0)
    w.nodes = [a, b]
    w.run(2.0, 3.0, started=True)
    took = [t for t, who, ch in w.log if who == "198.18.250.2" and ch.new is State.MASTER]
    assert took[-1] == pytest.approx(2.0 + 0.001 + 0.0609375)
    # a restarts: as Backup it discards b's lower adverts and preempts after its own MDI
    w._out(a, a.start(3.0), 3.0)
    w.run(3.0, 5.0, started=True)
    assert (a.state, b.state) == (State.MASTER, State.BACKUP)
    back = [t for t, who, ch in w.log if who == "198.18.250.1" and ch.new is State.MASTER][-1]
    assert back == pytest.approx(3.0 + a.master_down_interval)


# -- the asyncio runner, over a fake socket (no privileges needed) ------------------------------------------

import asyncio  # noqa: E402
import logging  # noqa: E402
import socket  # noqa: E402
import struct  # noqa: E402
import time  # noqa: E402

from ha.vrrp_io import IP_PKTINFO, VrrpRunner, parse_ipv4  # noqa: E402


class FakeSock:
    """Stands in for the raw socket: received datagrams come from a socketpair (written by the
    test), sent ones are recorded."""

    def __init__(self) -> None:
        self.a, self.b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.a.setblocking(False)
        self.sent: list[tuple[float, bytes, list, tuple]] = []

    def fileno(self) -> int:
        return self.a.fileno()

    def recv(self, n: int) -> bytes:
        return self.a.recv(n)

    def sendmsg(self, bufs, anc, flags, addr) -> int:
        data = b"".join(bufs)
        self.sent.append((time.monotonic(), data, anc, addr))
        return len(data)

    def close(self) -> None:
        self.a.close()
        self.b.close()

    def inject(self, payload: bytes, src: str, dst: str, ttl: int = 255) -> None:
        hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0xC0, 20 + len(payload), 1, 0, ttl, 112, 0,
                          socket.inet_aton(src), socket.inet_aton(dst))
        self.b.send(hdr + payload)


def test_parse_ipv4():
    hdr = struct.pack("!BBHHHBBH4s4s", 0x46, 0, 24 + 3, 0, 0, 64, 112, 0,
                      socket.inet_aton(PEER), socket.inet_aton(GROUP))
    assert parse_ipv4(hdr + b"\0" * 4 + b"abc" + b"pad") == (PEER, GROUP, 64, b"abc")
    assert parse_ipv4(b"\x60" + bytes(39)) is None
    assert parse_ipv4(hdr[:19]) is None


async def test_runner_drives_instance_and_serialises_callbacks(caplog):
    caplog.set_level(logging.INFO, logger="tandem.vrrp")
    seen: list[tuple[State, State, str]] = []
    active = [0, 0]   # current, max

    async def cb(old, new, reason):
        active[0] += 1
        active[1] = max(active[1], active[0])
        await asyncio.sleep(0.02)
        seen.append((old, new, reason))
        active[0] -= 1

    r = VrrpRunner(cfg(), "vtd", cb)
    fake = FakeSock()
    r._sock, r._ifindex = fake, 7
    try:
        await r.start()
        assert r.state is State.BACKUP

        async def until(pred, timeout):
            end = time.monotonic() + timeout
            while time.monotonic() < end and not pred():
                await asyncio.sleep(0.005)
            return pred()

        assert await until(lambda: r.state is State.MASTER, 2.0)
        assert await until(lambda: len(fake.sent) >= 3, 2.0)
        t, data, anc, addr = fake.sent[0]
        assert addr == (GROUP, 0)
        assert anc == [(socket.IPPROTO_IP, IP_PKTINFO,
                        struct.pack("=i4s4s", 7, socket.inet_aton(ME), b"\0" * 4))]
        a = V.decode(data, ME, GROUP)
        assert (a.vrid, a.priority, a.max_adver_int_cs, a.addresses) == (51, 100, 10, (VIP,))
        gaps = [y[0] - x[0] for x, y in zip(fake.sent, fake.sent[1:])]
        assert all(0.08 < g < 0.2 for g in gaps), gaps

        # a higher-priority master appears
        fake.inject(V.encode(adv(150), PEER, GROUP), PEER, GROUP)
        assert await until(lambda: r.state is State.BACKUP, 1.0)
        fake.inject(V.encode(adv(150), PEER, GROUP), PEER, GROUP, ttl=64)      # dropped: TTL
        fake.inject(b"\x45garbage", PEER, GROUP)                                # dropped: decode
        assert await until(lambda: r.counters["drop_ttl"] == 1, 1.0)
        # a burst of changes while the callback is slow: in order, never two at once
        r.set_fault(True)
        r.set_fault(False)
        r.set_fault(True)
        r.set_fault(False)
        assert await until(lambda: len(seen) == 7, 2.0)
        assert [(o, n) for o, n, _ in seen] == [
            (State.INITIALIZE, State.BACKUP), (State.BACKUP, State.MASTER),
            (State.MASTER, State.BACKUP), (State.BACKUP, State.FAULT), (State.FAULT, State.BACKUP),
            (State.BACKUP, State.FAULT), (State.FAULT, State.BACKUP)]
        assert active[1] == 1
        assert seen[2][2] == f"higher priority 150 from {PEER} (ours 100)"
        # the peer resigns: we take over after the skew time, then stop gracefully
        fake.inject(V.encode(adv(150), PEER, GROUP), PEER, GROUP)
        await asyncio.sleep(0.01)
        fake.inject(V.encode(adv(0), PEER, GROUP), PEER, GROUP)
        t0 = time.monotonic()
        assert await until(lambda: r.state is State.MASTER, 1.0)
        assert time.monotonic() - t0 < 0.0609375 + 0.05
        n = len(fake.sent)
        await r.stop(graceful=True)
        assert [V.decode(d, ME, GROUP).priority for _, d, _, _ in fake.sent[n:]][-1] == 0
        assert seen[-1][1] is State.INITIALIZE
    finally:
        await r.stop(graceful=False)
        fake.close()
    lines = [rec.getMessage() for rec in caplog.records]
    assert "VRRP_Instance(VI_51) Entering MASTER STATE (master down timer expired " \
           "(3 x 100 ms + skew 61 ms))" in lines
    assert any(ln.startswith("VRRP_Instance(VI_51) Entering BACKUP STATE (higher priority 150")
               for ln in lines)
    assert "VRRP_Instance(VI_51) Entering INIT STATE (shutdown)" in lines


async def test_runner_resign_and_unicast_targets():
    r = VrrpRunner(cfg(priority=150, unicast_peers=(PEER, "198.18.250.3")), "vtd")
    fake = FakeSock()
    r._sock, r._ifindex = fake, 3
    try:
        await r.start()
        end = time.monotonic() + 2.0
        while r.state is not State.MASTER and time.monotonic() < end:
            await asyncio.sleep(0.005)
        assert r.state is State.MASTER
        # one copy per peer, each with its own pseudo-header checksum
        (_, d1, _, a1), (_, d2, _, a2) = fake.sent[:2]
        assert {a1, a2} == {(PEER, 0), ("198.18.250.3", 0)}
        for d, (dst, _) in ((d1, a1), (d2, a2)):
            assert V.decode(d, ME, dst).checksum_form == V.CSUM_PSEUDO
        assert d1 != d2
        n = len(fake.sent)
        r.resign()
        assert r.state is State.BACKUP and r.instance.resigned
        assert [V.decode(d, ME, a[0]).priority for _, d, _, a in fake.sent[n:n + 2]] == [0, 0]
        # a unicast advert from the lower peer (TTL not checked in unicast) is accepted
        fake.inject(V.encode(adv(100), PEER, ME), PEER, ME, ttl=64)
        await asyncio.sleep(0.02)
        assert r.counters["accepted"] == 1 and r.state is State.BACKUP
        r.resume()
        assert not r.instance.resigned
    finally:
        await r.stop()
        fake.close()


async def test_runner_hands_changes_on_at_once_and_bounds_the_slow_callback_queue(caplog):
    """Issue 12 item 2: a lower-priority advert heard by a master used to queue a re-announce
    and a log line in front of the state-change callbacks (300 adverts delayed a VIP release
    by 3.2 s).  Now re-announces and state changes reach on_reannounce / on_change at once,
    nothing is logged per re-announce (the role machine logs them, rate-limited), and the queue
    in front of a slow on_state_change is bounded: beyond CALLBACK_QUEUE_MAX waiting changes a
    new one merges into the last, so only the latest wanted state is delivered."""
    from ha.vrrp_io import CALLBACK_QUEUE_MAX
    caplog.set_level(logging.INFO, logger="tandem.vrrp")
    gate = asyncio.Event()
    slow: list[tuple[State, State]] = []
    now_changes: list[StateChange] = []
    claims: list[str] = []

    async def cb(old, new, reason):
        await gate.wait()
        slow.append((old, new))

    r = VrrpRunner(cfg(priority=150), "vtd", cb, on_change=now_changes.append,
                   on_reannounce=claims.append)
    fake = FakeSock()
    r._sock, r._ifindex = fake, 7
    try:
        await r.start()
        end = time.monotonic() + 2.0
        while r.state is not State.MASTER and time.monotonic() < end:
            await asyncio.sleep(0.005)
        assert r.state is State.MASTER
        low = V.encode(adv(100), PEER, GROUP)
        for _ in range(6):                    # 300 lower-priority adverts, in socket-sized batches
            for _ in range(50):
                fake.inject(low, PEER, GROUP)
            end = time.monotonic() + 2.0
            want = len(claims) + 50
            while len(claims) < want and time.monotonic() < end:
                await asyncio.sleep(0.002)
        assert len(claims) == 300 and r.counters["reannounced"] == 300
        assert not any("announcing" in rec.getMessage() for rec in caplog.records)
        for k in range(40):                   # a burst of changes behind a stuck callback
            r.set_fault(k % 2 == 0)
        assert r.state is State.BACKUP        # 40 toggles: fault cleared last
        assert len(now_changes) == 2 + 40     # Init->Backup, Backup->Master, then each toggle
        assert len(r._events) <= CALLBACK_QUEUE_MAX and r.stats["callbacks_coalesced"] > 0
        gate.set()
        end = time.monotonic() + 2.0
        while r._events and time.monotonic() < end:
            await asyncio.sleep(0.005)
        assert slow[-1][1] is State.BACKUP and len(slow) <= CALLBACK_QUEUE_MAX + 1
    finally:
        gate.set()
        await r.stop(graceful=False)
        fake.close()


# -- resume, the peer's resignation, what an operator is told (issue 17 items 2 and 5) ----------------

def test_priority_zero_from_a_peer_that_said_it_resigned_is_called_a_resignation():
    """Issue 17 item 2: a priority 0 means "the master is leaving" whether it resigned or stopped
    (RFC 5798 §5.2.4), so the backup called every one "master stopped".  The peer now says so
    over sync (`note_peer`), and the takeover line and cause say "resigned"; a peer that said
    nothing (or withdrew it, as a resumed node does) is still "master stopped", as keepalived
    says for every priority 0."""
    i = started(cfg(), 0.0)
    i.on_advert(adv(150), PEER, 255, 0.1)
    i.note_peer(PEER, resigned=True)
    i.on_advert(adv(0), PEER, 255, 0.2)
    (ch,) = changes(i.on_timer(0.2 + 0.0609375))
    assert ch.cause is Cause.PEER_RESIGNED
    assert ch.reason == f"priority 0 from {PEER} (master resigned), skew timer expired (61 ms)"
    # the note may arrive after the advert (sync and VRRP are two paths): read at expiry
    j = started(cfg(), 0.0)
    j.on_advert(adv(150), PEER, 255, 0.1)
    j.on_advert(adv(0), PEER, 255, 0.2)
    j.note_peer(PEER, resigned=True)
    assert changes(j.on_timer(0.3))[0].cause is Cause.PEER_RESIGNED
    # withdrawn, or another router: stopped
    for notes in (((PEER, True), (PEER, False)), (("198.18.250.9", True),)):
        k = started(cfg(), 0.0)
        for addr, resigned in notes:
            k.note_peer(addr, resigned)
        k.on_advert(adv(150), PEER, 255, 0.1)
        k.on_advert(adv(0), PEER, 255, 0.2)
        (ch,) = changes(k.on_timer(0.3))
        assert ch.cause is Cause.PEER_STOPPED and "(master stopped)" in ch.reason


def test_outlook_after_resign_and_resume():
    """What /resign and /resume answer: a resigned node expects to stay backup (or, with no
    master heard, to be master again only if nobody takes over); after resume, the higher
    priority expects to preempt the lower-priority master within its master down interval
    (+ preempt_delay), and then does so."""
    i = master(cfg(priority=150, preempt_delay=0.5))
    i.resign(1.0)
    o = i.outlook(1.0)
    assert o.state is State.BACKUP and o.within is None and "resigned" in o.reason
    lower_master_feed(i, 1.07, 2.0)                  # the peer (100) took over
    o = i.outlook(2.0)
    assert (o.state, o.within) == (State.BACKUP, None)
    assert o.reason == f"resigned: not preempting master {PEER} (priority 100)"
    assert i.resume(2.0) == []                       # a backup stays silent
    o = i.outlook(2.0)
    assert o.state is State.MASTER
    assert o.within == pytest.approx(i.master_down_interval + 0.5)
    assert o.reason == f"preempting lower priority master {PEER} (priority 100) (ours 150)"
    became = lower_master_feed(i, 2.0, 6.0)
    assert became is not None and became - 2.0 <= o.within
    assert i.outlook(became).state is State.MASTER and i.outlook(became).within is None


def test_outlook_of_a_backup_that_will_not_preempt():
    i = started(cfg(priority=100), 0.0)
    i.on_advert(adv(150), PEER, 255, 0.1)
    o = i.outlook(0.1)
    assert (o.state, o.within) == (State.BACKUP, None) and "not below ours" in o.reason
    j = started(cfg(priority=150, nopreempt=True), 0.0)
    j.on_advert(adv(100), PEER, 255, 0.1)
    assert j.outlook(0.1).state is State.BACKUP and "preemption is off" in j.outlook(0.1).reason
    k = started(cfg(), 0.0)
    assert k.outlook(0.1).state is State.MASTER
    assert k.outlook(0.1).within == pytest.approx(k.master_down_interval - 0.1)


def test_last_advert_is_the_last_accepted_one_on_either_side():
    """Issue 17 item 5: what /status shows as the last advert seen from the peer.  A backup
    sees the master's every interval; a master sees the peer's only when it advertises (a
    priority 0, a lower-priority claim): never, for a master whose peer has always been backup."""
    i = master(cfg(priority=150))
    assert i.last_advert is None
    i.on_advert(adv(100), PEER, 64, 1.0)             # dropped (TTL): not seen
    assert i.last_advert is None
    i.on_advert(adv(100), PEER, 255, 1.1)
    assert i.last_advert == (PEER, 100, 1.1) and i.state is State.MASTER
    j = started(cfg(), 0.0)
    j.on_advert(adv(150), PEER, 255, 0.1)
    j.on_advert(adv(150), PEER, 255, 0.2)
    assert j.last_advert == (PEER, 150, 0.2)
