"""Overrides on the sync channel: two nodes' real senders, receivers and override links
over an in-memory wire (injected time), with the epoch handshake as in production."""
from __future__ import annotations

from director.overrides import Override, Overrides
from syncd.config import SyncConfig
from syncd.overrides import OverrideLink
from syncd.receiver import SyncReceiver
from syncd.sender import SyncSender

KEY = b"tandem-sync-test-key-0123456789"
CFG = SyncConfig(sync_id=5, key=KEY, overrides_interval=1.0)
K = ("tcp/198.18.0.100:80", "198.18.2.22", 8080)
T0 = 1_800_000_000.0


class End:
    def __init__(self, name: str, cfg: SyncConfig = CFG, key: bytes = KEY,
                 keep: list[Override] | None = None) -> None:
        self.name = name
        self.sender = SyncSender(cfg, name, key=key, snapshot=lambda: [])
        self.receiver = SyncReceiver(cfg, name, key, lambda e, now: None)
        self.receiver.attach(self.sender)
        self.ov = Overrides(name, keep or ())
        self.applied: list[Override] = []
        self.link = OverrideLink(self.receiver, interval=cfg.overrides_interval,
                                 entries=lambda: [o.to_list() for o in self.ov.entries()],
                                 apply=self._apply)

    def _apply(self, _node, items):
        self.applied += [new for _old, new in self.ov.merge(Override.from_list(i) for i in items)]


class Wire:
    """Both ends; `drop(src, datagram)` True loses a datagram."""

    def __init__(self, a: End, b: End, drop=None) -> None:
        self.ends = {a.name: a, b.name: b}
        self.t = 0.0
        self.drop = drop or (lambda src, d: False)
        self.queue: list[tuple[str, bytes]] = []

    def send(self, src: str, datagrams) -> None:
        self.queue += [(src, d) for d in datagrams if not self.drop(src, d)]

    def run(self, seconds: float, step: float = 0.01) -> None:
        end = self.t + seconds
        while self.t < end:
            self.t = round(self.t + step, 6)
            for name, e in self.ends.items():
                self.send(name, e.sender.poll(self.t) + e.receiver.poll(self.t)
                          + e.link.poll(self.t))
            while self.queue:
                src, d = self.queue.pop(0)
                for name, e in self.ends.items():
                    if name != src:
                        self.send(name, e.receiver.on_datagram(d, self.t))


def up(drop=None) -> tuple[End, End, Wire]:
    a, b = End("a"), End("b")
    w = Wire(a, b, drop)
    w.send("a", a.receiver.start(0.0))
    w.send("b", b.receiver.start(0.0))
    w.run(0.5)
    assert a.receiver.peers and b.receiver.peers          # each has authenticated the other
    return a, b, w


def test_a_change_reaches_the_peer_at_once_and_is_applied_once():
    a, b, w = up()
    o = a.ov.set(K, 0, T0, drain=True)
    w.send("a", a.link.changed([o.to_list()], w.t))
    w.run(0.02)
    assert b.ov.get(K) == o and b.applied == [o]
    w.run(3.0)                          # periodic re-sends change nothing more
    assert b.applied == [o] and b.receiver.stats["overrides"] >= 3


def test_a_lost_change_is_made_good_by_the_next_periodic_send():
    lose = {"on": True}
    a, b, w = up(drop=lambda src, d: lose["on"] and src == "a" and b"198.18.2.22" in d)
    o = a.ov.set(K, 4, T0)
    w.send("a", a.link.changed([o.to_list()], w.t))
    w.run(0.1)
    assert b.ov.get(K) is None          # lost
    lose["on"] = False
    w.run(CFG.overrides_interval + 0.1)
    assert b.ov.get(K) == o


def test_a_restarted_peer_gets_every_override_and_clear_as_soon_as_it_is_authenticated():
    a, b, w = up()
    kept = a.ov.set(K, 0, T0, drain=True)
    gone, _ = a.ov.clear(("udp/198.18.0.100:80", "198.18.2.21", 8080), T0 + 1)
    # b restarts from an old state file that still holds the cleared override
    stale = Override("udp/198.18.0.100:80", "198.18.2.21", 8080, gone.gen - 5, "b", T0, 0, True)
    b2 = w.ends["b"] = End("b", keep=[stale])
    a.link._next = float("inf")         # no periodic send: only the new-epoch one
    w.send("b", b2.receiver.start(w.t))
    w.run(0.3)
    assert b2.ov.get(K) == kept and b2.ov.get(gone.key) is None


def test_overrides_from_another_key_are_refused_and_change_nothing():
    a, b, w = up()
    intruder = End("a", key=b"another-key-of-32-bytes-xxxxxxxx",
                   cfg=SyncConfig(sync_id=5, key=b"another-key-of-32-bytes-xxxxxxxx"))
    o = intruder.ov.set(K, 0, T0, drain=True)
    for d in intruder.link.changed([o.to_list()], w.t):
        b.receiver.on_datagram(d, w.t)
    assert b.ov.get(K) is None and b.receiver.stats["bad_mac"] >= 1
