"""ha.role: the HA role machine against the failover order of docs/architecture.md, its bounded
inbox, and the runner (tandem.ha.RoleRunner) executing its actions with a fake takeover."""
from __future__ import annotations

import asyncio
import logging
import socket

import pytest

from ha import role as R
from ha.role import (AddAddresses, Announce, Cause, FlushSync, LinkChanged, Log,
                     LowerPriorityClaim, RemoveAddresses, Role, RoleConfig, RoleMachine, RoleSet,
                     RunHook, SetFault, StartElection, Started, StateChanged, Starting, Stopping,
                     SyncComplete, Wait)
from ha.vrrp import Reannounce, State, StateChange, VrrpConfig, VrrpInstance
from proto.vrrp import Advert
from tandem.ha import RoleRunner

ELECTION = RoleConfig(election=True, sync=True, startup_sync_wait=1.0, preempt_yield=0.3)


def kinds(actions) -> list[type]:
    return [type(a) for a in actions]


def running(cfg: RoleConfig = ELECTION, now: float = 0.0) -> RoleMachine:
    m = RoleMachine(cfg)
    m.handle(Starting(), now)
    m.handle(Started(), now)
    m.handle(SyncComplete(), now)
    return m


def master(cfg: RoleConfig = ELECTION, now: float = 0.0) -> RoleMachine:
    m = running(cfg, now)
    m.handle(StateChanged(Role.BACKUP, Cause.STARTUP), now)
    m.handle(StateChanged(Role.MASTER, Cause.MASTER_DOWN), now)
    assert m.role is Role.MASTER and m.held
    return m


# -- the failover order --------------------------------------------------------------------------------

def test_start_strips_leftovers_then_waits_for_the_bulk_before_the_election():
    m = RoleMachine(ELECTION)
    assert m.handle(Starting(), 0.0) == [RemoveAddresses()]
    assert m.handle(Started(), 0.0) == [Wait(1.0, "the peer's bulk resync")]
    assert m.waiting_for_sync and m.next_deadline() == 1.0
    assert m.on_timer(0.99) == []
    acts = m.handle(SyncComplete(), 0.5)
    assert kinds(acts) == [Log, StartElection] and "complete" in acts[0].message
    assert m.next_deadline() is None and not m.waiting_for_sync
    assert m.handle(SyncComplete(), 0.6) == []


def test_an_unanswered_resync_starts_the_election_at_the_deadline():
    m = RoleMachine(ELECTION)
    m.handle(Starting(), 0.0)
    m.handle(Started(), 0.0)
    acts = m.on_timer(1.0)
    assert kinds(acts) == [Log, StartElection] and "not answered within 1.0 s" in acts[0].message


def test_no_sync_starts_the_election_at_once():
    m = RoleMachine(RoleConfig(election=True))
    m.handle(Starting(), 0.0)
    assert m.handle(Started(), 0.0) == [StartElection()]


def test_becoming_master_adds_then_announces_then_runs_the_hook():
    m = running()
    m.handle(StateChanged(Role.BACKUP, Cause.STARTUP, "startup"), 0.1)
    acts = m.handle(StateChanged(Role.MASTER, Cause.MASTER_DOWN, "master down timer expired"), 0.5)
    assert kinds(acts) == [AddAddresses, RoleSet, Announce, RunHook]
    assert acts[1] == RoleSet(Role.BACKUP, Role.MASTER, Cause.MASTER_DOWN,
                              "master down timer expired", 0.5)
    assert acts[3] == RunHook(Role.MASTER)


def test_preempting_a_live_master_waits_preempt_yield_first():
    m = running()
    m.handle(StateChanged(Role.BACKUP, Cause.STARTUP), 0.0)
    acts = m.handle(StateChanged(Role.MASTER, Cause.PREEMPT, "preempting lower priority 100"), 2.0)
    assert acts == [Wait(2.3, "a preempted master drops the addresses")]
    assert m.role is Role.BACKUP and not m.held       # nothing acted on yet
    assert m.on_timer(2.29) == []
    acts = m.on_timer(2.3)
    assert kinds(acts) == [AddAddresses, RoleSet, Announce, RunHook]
    assert acts[1].decided == 2.0 and acts[1].cause is Cause.PREEMPT


def test_a_newer_state_cuts_a_preempt_yield_short_and_nothing_was_added():
    m = running()
    m.handle(StateChanged(Role.BACKUP, Cause.STARTUP), 0.0)
    m.handle(StateChanged(Role.MASTER, Cause.PREEMPT), 2.0)
    assert m.handle(StateChanged(Role.BACKUP, Cause.PREEMPTED), 2.1) == []
    assert m.on_timer(2.3) == [] and m.next_deadline() is None and not m.held


@pytest.mark.parametrize("cause", [Cause.PREEMPTED, Cause.RESIGNED, Cause.SHUTDOWN, Cause.FAULT])
def test_leaving_master_flushes_sync_before_the_addresses_go(cause):
    """On a planned release (stop, resign, being preempted), and on a fault, every pending
    sync entry goes to the peer before the addresses are removed: the peer must know a
    connection before the neighbours send it there.  (IPVS's master sync thread discards its
    unsent buffer when it stops, and keepalived leaves the order to notify scripts; tandem
    does better here on purpose: issue 12 item 7.)"""
    m = master()
    new = {Cause.SHUTDOWN: Role.INIT, Cause.FAULT: Role.FAULT}.get(cause, Role.BACKUP)
    acts = m.handle(StateChanged(new, cause, "why"), 3.0)
    assert kinds(acts) == [FlushSync, RemoveAddresses, RoleSet, RunHook]
    assert acts[2].old is Role.MASTER and acts[2].new is new and not m.held


def test_backup_to_fault_and_back_only_records_and_runs_hooks():
    m = running()
    m.handle(StateChanged(Role.BACKUP, Cause.STARTUP), 0.0)
    assert kinds(m.handle(StateChanged(Role.FAULT, Cause.FAULT), 1.0)) == [RoleSet, RunHook]
    assert kinds(m.handle(StateChanged(Role.BACKUP, Cause.FAULT_CLEARED), 2.0)) == [RoleSet, RunHook]
    assert m.handle(StateChanged(Role.BACKUP, Cause.STARTUP), 3.0) == []


def test_a_master_told_master_again_only_announces():
    m = master()
    assert m.handle(StateChanged(Role.MASTER, Cause.MASTER_DOWN), 1.0) == [Announce()]


def test_fixed_role_from_config():
    m = RoleMachine(RoleConfig(election=False, fixed_role=Role.MASTER))
    assert m.handle(Starting(), 0.0) == []
    acts = m.handle(Started(), 0.0)
    assert kinds(acts) == [AddAddresses, RoleSet, Announce, RunHook] and acts[1].cause is Cause.CONFIG
    assert m.handle(LinkChanged(False, ("eth0",)), 1.0) == []     # no election: no fault
    assert kinds(m.handle(Stopping(), 2.0)) == [RemoveAddresses]


def test_no_interfaces_no_address_work():
    m = running(RoleConfig(election=True, addresses=False))
    acts = m.handle(StateChanged(Role.MASTER, Cause.PREEMPT), 0.0)     # no yield either
    assert kinds(acts) == [RoleSet, Announce, RunHook]
    assert kinds(m.handle(StateChanged(Role.BACKUP, Cause.PREEMPTED), 1.0)) == [RoleSet, RunHook]


def test_links_set_and_clear_the_fault_once_each():
    m = running()
    acts = m.handle(LinkChanged(False, ("back0",)), 0.0)
    assert acts == [Log(logging.WARNING, "tracked interfaces down: back0"), SetFault(True)]
    assert m.handle(LinkChanged(False, ("back0",)), 0.2) == []
    assert kinds(m.handle(LinkChanged(True, ("front0", "back0")), 0.4)) == [Log, SetFault]
    assert m.handle(LinkChanged(True, ()), 0.6) == []


def test_stopping_a_master_flushes_then_removes_and_ignores_what_follows():
    m = master()
    acts = m.handle(Stopping(), 5.0)
    assert acts == [FlushSync(), RemoveAddresses()]
    assert m.handle(StateChanged(Role.MASTER, Cause.MASTER_DOWN), 5.1) == []


def test_reannounce_rate_limited_and_the_log_counts_the_suppressed():
    m = master()
    first = m.handle(LowerPriorityClaim("lower priority 50 from 198.18.0.12 claimed master"), 1.0)
    assert kinds(first) == [Log, Announce] and "suppressed" not in first[0].message
    for k in range(9_999):
        assert m.handle(LowerPriorityClaim("x"), 1.0 + k * 1e-5) == []
    again = m.handle(LowerPriorityClaim("lower priority 50 from 198.18.0.12 claimed master"), 2.0)
    assert kinds(again) == [Log, Announce]
    assert again[0].message.endswith("announcing our addresses again (9999 more claims suppressed)")
    assert m.handle(LowerPriorityClaim("x"), 2.5) == []
    assert m.suppressed == 1


def test_claims_heard_by_a_backup_do_nothing():
    m = running()
    assert m.handle(LowerPriorityClaim("x"), 0.0) == []


# -- the inbox --------------------------------------------------------------------------------------------

def test_inbox_keeps_only_the_latest_state_and_puts_it_first():
    box = R.Inbox()
    for k in range(10_000):
        box.put(LowerPriorityClaim("claim"))
    box.put(StateChanged(Role.BACKUP, Cause.PREEMPTED))
    box.put(StateChanged(Role.MASTER, Cause.MASTER_DOWN))
    box.put(StateChanged(Role.BACKUP, Cause.RESIGNED))
    box.put(Stopping())
    assert len(box) == 3
    assert box.take() == StateChanged(Role.BACKUP, Cause.RESIGNED)
    assert box.take() == LowerPriorityClaim("claim", count=10_000)
    assert box.take() == Stopping() and box.take() is None
    assert box.coalesced == 10_001
    with pytest.raises(TypeError):
        box.put("master")


# -- the runner -------------------------------------------------------------------------------------------

class FakeTakeover:
    """The address edge: records what was done.  A GARP burst never finishes by itself (as if
    the interval were endless): only cancelling it ends it, so a runner that waited for one
    would never get to the next action."""

    def __init__(self, log: list) -> None:
        self.log = log
        self.held = False
        self.garp_started = 0
        self.garp_cancelled = 0

    async def acquire(self) -> None:
        self.log.append("add")
        self.held = True

    async def release(self) -> None:
        self.log.append("remove")
        self.held = False

    async def announce(self) -> None:
        self.garp_started += 1
        self.log.append("garp")
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.garp_cancelled += 1
            raise


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def make_runner(cfg: RoleConfig = ELECTION, **kw):
    done: list = []
    clock = Clock()
    tk = FakeTakeover(done)
    runner = RoleRunner(RoleMachine(cfg), node="a", takeover=tk, clock=clock, **kw)
    return runner, tk, done, clock


async def to_master(runner: RoleRunner, clock: Clock) -> None:
    for ev in (Starting(), Started(), SyncComplete(), StateChanged(Role.BACKUP, Cause.STARTUP),
               StateChanged(Role.MASTER, Cause.MASTER_DOWN, "master down timer expired")):
        runner.post(ev)
        await runner.step()


async def test_runner_executes_the_order_and_records_the_change():
    roles: list[str] = []
    runner, tk, done, clock = make_runner(set_role=roles.append)
    await to_master(runner, clock)
    await asyncio.sleep(0)                       # the GARP burst's task gets going
    assert done == ["remove", "add", "garp"] and roles == ["backup", "master"]
    assert runner.changes[-1]["from"] == "backup" and runner.changes[-1]["to"] == "master"
    assert runner.changes[-1]["reason"] == "master down timer expired"
    assert runner.announcing
    runner.post(StateChanged(Role.BACKUP, Cause.PREEMPTED))
    await runner.step()
    assert done[-1] == "remove" and not runner.announcing
    await asyncio.sleep(0)                       # the cancellation lands in the burst
    assert tk.garp_cancelled == 1
    await runner.close()


async def test_a_flood_of_lower_priority_adverts_does_not_delay_the_address_work():
    """Issue 12 item 2: 10,000 lower-priority adverts heard by a master, then a higher-priority
    master appears.  Each lower-priority advert gets its VRRP advert back at once (RFC 9568
    6.4.3, keepalived's "forcing a new election"), but the re-announce (keepalived's
    garp_lower_prio_repeat) is rate-limited to one per REANNOUNCE_INTERVAL and never queues
    ahead of a state change: the release starts within 50 ms of (injected) time of the change,
    after at most one GARP burst, which it cancels.  Before, every advert queued a GARP burst
    and a log line ahead of the state change (300 adverts delayed a release by 3.2 s)."""
    runner, tk, done, clock = make_runner()
    executed: list[R.Action] = []
    changed_at: list[float] = []
    released_at: list[float] = []
    real = runner._do

    async def counted(a):
        """Every action executed; after the change, each costs 1 ms of injected time."""
        executed.append(a)
        if changed_at:
            if isinstance(a, RemoveAddresses):
                released_at.append(clock.t)
            clock.t += 0.001
        await real(a)

    runner._do = counted
    await to_master(runner, clock)
    inst = VrrpInstance(VrrpConfig(vrid=51, priority=150, addresses=("198.18.0.100",),
                                   primary_address="198.18.0.11"))
    inst.start(0.0)
    inst.on_timer(inst.next_deadline())
    assert inst.state is State.MASTER

    def deliver(actions) -> None:           # what VrrpRunner does with the machine's actions
        for a in actions:
            if isinstance(a, Reannounce):
                runner.on_lower_priority_claim(a.reason)
            elif isinstance(a, StateChange):
                runner.on_vrrp_change(a)

    low = Advert(51, 100, 10, ("198.18.0.100",))
    adverts_back = 0
    for k in range(10_000):
        clock.t = 1.0 + k * 1e-5            # 10,000 adverts within 0.1 s
        acts = inst.on_advert(low, "198.18.0.12", 255, clock.t)
        adverts_back += sum(1 for a in acts if not isinstance(a, (Reannounce, StateChange)))
        deliver(acts)
        if k % 100 == 0:
            await runner.step()             # the pump runs now and then meanwhile
    assert adverts_back == 10_000 and inst.counters["reannounced"] == 10_000
    for a in list(runner.inbox._slots.values()):     # claims still waiting: the flood's tail
        assert isinstance(a, LowerPriorityClaim)
    clock.t = 1.1
    changed_at.append(clock.t)
    deliver(inst.on_advert(Advert(51, 200, 10, ("198.18.0.100",)), "198.18.0.13", 255, clock.t))
    assert inst.state is State.BACKUP
    await asyncio.wait_for(runner.step(), 5.0)
    assert released_at and released_at[0] - changed_at[0] <= 0.050
    announces = [a for a in executed if isinstance(a, Announce)]
    said = [a.message for a in executed if isinstance(a, Log) and "announcing" in a.message]
    assert len(announces) == 2                  # the takeover's, and one re-announce
    assert len(said) == 1
    assert isinstance(executed[-1], RunHook) and not tk.held and done[-1] == "remove"
    assert not runner.announcing
    await runner.close()


async def test_a_slow_hook_never_holds_up_the_next_change_and_hooks_never_overlap():
    running_now, most, order = [0], [0], []
    gate = asyncio.Event()

    async def hook(argv, state, node):
        running_now[0] += 1
        most[0] = max(most[0], running_now[0])
        order.append(state)
        await gate.wait()
        running_now[0] -= 1

    runner, tk, done, clock = make_runner(
        hooks={"master": ("m",), "backup": ("b",)}, run_hook=hook)
    await to_master(runner, clock)
    runner.post(StateChanged(Role.BACKUP, Cause.PREEMPTED))
    await runner.step()
    assert done[-1] == "remove"               # while the master hook still runs
    await asyncio.sleep(0)
    gate.set()
    await runner.close()
    assert order == ["backup", "master", "backup"] and most[0] == 1


async def test_planned_release_sends_pending_sync_entries_before_the_addresses_go():
    """A resigning (or preempted, or stopping) master sends every pending sync entry to the peer
    before it removes the addresses: a connection opened in the last flush_delay (20 ms) before
    the release reaches the peer first.  Before, the entry waited for the flush timer while
    the addresses went, and the peer became master without it."""
    from proto.sync import SyncEntry, decode
    from syncd.config import SyncConfig
    from syncd.receiver import SyncReceiver
    from syncd.sender import SyncSender
    from syncd.transport import SyncTransport

    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.setblocking(False)
    scfg = SyncConfig(key=b"k" * 32, mode="unicast", peers=(peer.getsockname(),),
                      bind="127.0.0.1", port=0)
    sender = SyncSender(scfg, "a")
    transport = SyncTransport(scfg, sender, SyncReceiver(scfg, "a", None, lambda e, n: None))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    await transport.start(sock)

    class Link:
        def flush(self) -> int:
            return transport.flush()

    seen_before_release: list[int] = []
    runner, tk, done, clock = make_runner(sync=Link())
    real_release = tk.release

    async def release() -> None:
        while True:                              # what the peer holds at that moment
            try:
                msg = decode(peer.recv(2048), scfg.key, None)
            except BlockingIOError:
                break
            seen_before_release.extend(e.cport for e in msg.entries)
        await real_release()

    tk.release = release
    try:
        await to_master(runner, clock)
        while True:                              # heartbeats so far
            try:
                peer.recv(2048)
            except BlockingIOError:
                break
        a = socket.inet_aton
        entry = SyncEntry(6, 1, 0, a("198.18.1.10"), 40000, a("198.18.0.100"), 80,
                          a("198.18.2.100"), 5001, a("198.18.2.21"), 8080, 900.0)
        transport.queue(entry)
        runner.post(StateChanged(Role.BACKUP, Cause.RESIGNED, "resigned by operator"))
        await runner.step()
        assert done[-1] == "remove"
        assert seen_before_release == [40000]
    finally:
        transport.close()
        peer.close()
        await runner.close()


# -- the operator's resign and resume through the node (issue 17 item 2) ------------------------------

async def test_resign_answers_with_the_role_after_the_change_and_resume_undoes_it():
    """Issue 17 item 2: POST /resign answered with the role before the change (the role machine
    had not run yet: "master"), and nothing could undo it.  Now the node answers once the role
    machine has carried the change out (addresses removed: role "backup"), and resume ends the
    resignation, answering with what the node is and what it expects to become."""
    from tests.unit.test_node import Fakes, node, until
    f = Fakes()
    n = node(f)
    await n.start()
    try:
        f.bulk_done = True
        assert await until(lambda: f.vrrp is not None and f.vrrp.instance.state is State.BACKUP)
        f.vrrp.fire()                                    # master down timer: master
        assert await until(lambda: n.state.status().role == "master")
        f.ops.clear()
        at_priority_0: list[list[str]] = []
        resign = f.vrrp.resign
        f.vrrp.resign = lambda: (at_priority_0.append(list(f.ops)), resign())
        answer = await n.state.resign()
        assert f.vrrp.sent[-1] == 0 and f.ops[-1] == "remove addresses"
        assert at_priority_0 == [f.ops]          # the addresses went before the priority 0
        assert answer["role"] == "backup" and answer["vrrp_state"] == "Backup"
        assert answer["resigned"] is True and answer["expected"]["role"] == "backup"
        assert answer["expected"]["within_ms"] is None
        f.vrrp.advert(100)                               # the peer took over
        answer = await n.state.resume()
        assert answer["resigned"] is False and not f.vrrp.instance.resigned
        assert answer["role"] == "backup" and answer["expected"]["role"] == "master"
        inst = f.vrrp.instance
        assert answer["expected"]["within_ms"] == pytest.approx(
            (inst.master_down_interval + n.cfg.ha.preempt_yield) * 1000, abs=0.1)
        assert "preempting lower priority master 198.18.0.12 (priority 100)" in \
            answer["expected"]["reason"]
    finally:
        await n.stop()


async def test_a_stopping_master_lets_its_addresses_go_before_its_priority_0():
    """A graceful stop advertised priority 0 first and removed the addresses after (in a worker
    thread): under load the peer, taking over within its skew time, held them while this node
    still did (two masters, as resign had).  Now a stop releases as resign does: sync flushed,
    addresses removed, then priority 0 (keepalived's master also sends its priority 0 as it
    goes; the peer then takes over after Skew_Time, RFC 5798 6.4.3)."""
    from tests.unit.test_node import Fakes, node, until
    f = Fakes()
    n = node(f)
    await n.start()
    stopped = False
    try:
        f.bulk_done = True
        assert await until(lambda: f.vrrp is not None and f.vrrp.instance.state is State.BACKUP)
        f.vrrp.fire()                                    # master down timer: master
        assert await until(lambda: n.state.status().role == "master")
        f.ops.clear()
        at_election_stop: list[list[str]] = []
        stop = f.vrrp.stop

        async def recording_stop(graceful: bool = True) -> None:
            at_election_stop.append(list(f.ops))
            await stop(graceful)
        f.vrrp.stop = recording_stop
        await n.stop()
        stopped = True
        assert f.vrrp.sent[-1] == 0                      # it did say it was leaving
        assert at_election_stop and "remove addresses" in at_election_stop[0], (at_election_stop, f.ops)
        before = at_election_stop[0]
        flush = next(i for i, op in enumerate(before) if op.startswith("sync flush"))
        assert flush < before.index("remove addresses"), before
    finally:
        if not stopped:
            await n.stop()


# -- what each node of the pair shows of the other (issue 17 item 5) ----------------------------------

def _wire(a, b, first: list, now: float) -> None:
    """Deliver datagrams both ways between two SyncLinks until nothing more is sent."""
    wire = [(b, d) for d in first]
    for _ in range(100):
        if not wire:
            return
        dst, d = wire.pop(0)
        wire += [(a if dst is b else b, r) for r in dst.receiver.on_datagram(d, now)]
    raise AssertionError("the exchange does not settle")


async def test_status_shows_the_peer_on_the_master_too():
    """Issue 17 item 5: `/status` promised `peer`, but a master always said null (only a backup
    named the master it heard).  Now both nodes show the peer's address, role, priority, the
    last advert seen from it (on a master: none, with the reason) and the sync link's health;
    the role and the master's view of the peer's address come from what the peer says of
    itself over sync (real SyncLinks, real VRRP instances, the real API)."""
    import time

    from aiohttp.test_utils import TestClient, TestServer

    from director.api import make_app
    from director.status import NodeParts
    from ha.vrrp_io import VrrpRunner
    from proto import vrrp as V
    from tests.unit.test_metrics import sync_node

    A, B, VIP = "198.18.250.11", "198.18.250.12", "198.18.250.100"
    ea, a = sync_node("a", "198.18.3.1", "198.18.3.2")
    eb, b = sync_node("b", "198.18.3.2", "198.18.3.1")
    ra = VrrpRunner(VrrpConfig(vrid=51, priority=150, addresses=(VIP,), primary_address=A), "front")
    rb = VrrpRunner(VrrpConfig(vrid=51, priority=100, addresses=(VIP,), primary_address=B), "front")
    now = time.monotonic()
    ra.instance.start(now)
    ra.instance.on_timer(ra.instance.next_deadline())                  # a: master
    rb.instance.start(now)
    rb.instance.on_advert(V.Advert(51, 150, 10, (VIP,)), A, 255, now)  # b hears a: backup
    _wire(a, b, a.sender.poll(now) + b.sender.poll(now), now)          # epochs proven
    _wire(a, b, [a.sender.state("master", 150, A, False, now)], now)
    _wire(b, a, [b.sender.state("backup", 100, B, False, now)], now)
    na, nb = NodeParts("a", "master", sync=a), NodeParts("b", "backup", sync=b)
    na.attach_election(ra, 150)
    nb.attach_election(rb, 100)

    async def status(node):
        async with TestClient(TestServer(make_app(ea, node))) as client:
            return await (await client.get("/status")).json()

    sa, sb = await status(na), await status(nb)
    assert sa["peer"] == B and sb["peer"] == A
    jsonschema = pytest.importorskip("jsonschema")
    from director import openapi
    for body in (sa, sb):
        jsonschema.validate(body, openapi.schema("Status"))
    pa, pb = sa["peer_status"], sb["peer_status"]
    assert (pa["address"], pa["address_from"], pa["node"], pa["role"], pa["role_from"],
            pa["priority"], pa["resigned"]) == (B, "sync", "b", "backup", "sync", 100, False)
    assert pa["last_advert"] is None and "a backup does not advertise" in pa["last_advert_note"]
    assert pa["sync"]["state"] == "ok" and pa["sync"]["missing"] == 0
    assert (pb["address"], pb["role"], pb["priority"], pb["node"]) == (A, "master", 150, "a")
    assert pb["last_advert"]["from"] == A and pb["last_advert"]["priority"] == 150
    assert pb["last_advert_note"] is None and pb["sync"]["state"] == "ok"
    assert abs(pb["last_advert"]["at"] - time.time()) < 60          # epoch seconds, not monotonic
    # a replayed older STATE changes nothing; a newer one does
    old = a.sender.state("master", 150, A, True, now)
    _wire(a, b, [a.sender.state("master", 150, A, False, now)], now)
    before = b.receiver.stats["replayed"]
    _wire(a, b, [old], now)
    assert b.receiver.stats["replayed"] == before + 1
    assert (await status(nb))["peer_status"]["resigned"] is False
    # without sync, a backup still names the master it hears, from its adverts
    nc = NodeParts("c", "backup")
    nc.attach_election(rb, 100)
    pc = (await status(nc))["peer_status"]
    assert (pc["address"], pc["role"], pc["role_from"], pc["priority"], pc["sync"]) == \
        (A, "master", "advert", 150, None)


async def test_the_node_calls_a_priority_0_from_a_peer_that_said_it_resigned_a_resignation():
    """Issue 17 item 2, the wiring: what the peer says over sync reaches the election, so the
    takeover after its priority 0 is logged and recorded as a resignation, not a stop; and this
    node tells the peer its own state (before its priority 0 when it resigns)."""
    from proto.sync import Message
    from proto import sync as S
    from tests.unit.test_node import Fakes, node, until
    f = Fakes()
    n = node(f)
    await n.start()
    try:
        f.bulk_done = True
        assert await until(lambda: f.vrrp is not None and f.vrrp.instance.state is State.BACKUP)
        f.vrrp.advert(200)                               # the peer (.12) is master
        f.peer_state_cb("b", Message(S.STATE, 51, "b", 1, 1, 0.0, role="master", priority=200,
                                     address="198.18.0.12", resigned=True))
        f.vrrp.advert(0)
        f.vrrp.fire()
        assert await until(lambda: n.state.status().role == "master")
        assert n.state.status().role_changes[-1]["reason"] == \
            "priority 0 from 198.18.0.12 (master resigned), skew timer expired (41 ms)"
        assert f.announced[-1] == ("master", 150, "198.18.0.11", False)
        f.announced.clear()
        await n.state.resign()
        assert f.announced[0] == ("master", 150, "198.18.0.11", True)   # before the priority 0
        assert f.announced[-1] == ("backup", 150, "198.18.0.11", True)
    finally:
        await n.stop()


def test_a_state_sent_before_the_peer_knew_our_epoch_reaches_it_when_the_epoch_is_proven():
    """A STATE from an epoch the receiver has not authenticated yet cannot be used (it is not
    held, unlike DATA); the sender sends it again as soon as the peer's challenge is answered,
    so a starting pair knows each other's role at once, not a STATE_INTERVAL later."""
    import time

    from tests.unit.test_metrics import sync_node
    _, a = sync_node("a", "198.18.3.1", "198.18.3.2")
    _, b = sync_node("b", "198.18.3.2", "198.18.3.1")
    now = time.monotonic()
    first = a.sender.state("master", 150, "198.18.250.11", False, now)
    challenge = b.receiver.on_datagram(first, now)       # unknown epoch: challenged, not used
    assert challenge and b.peer_state() is None
    wire = [(a, d) for d in challenge]                   # the challenge, answered ...
    for _ in range(100):
        if not wire:
            break
        dst, d = wire.pop(0)
        wire += [(a if dst is b else b, r) for r in dst.receiver.on_datagram(d, now)]
    said = b.peer_state()                                # ... and the STATE again at once
    assert (said.role, said.priority, said.address, said.resigned) == \
        ("master", 150, "198.18.250.11", False)
    assert a.sender.stats["states"] == 2
