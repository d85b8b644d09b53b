"""director.turn_slices: background work in slices, the urgent work before each slice,
bounded per turn in units and in time (injected clock)."""
from __future__ import annotations

import pytest

from director.turn_slices import Slices


class Work:
    """`units` of background work; each costs `cost` seconds on the fake clock.  The log
    says what ran in which order: "u" for a look at the urgent work, n for a slice of n."""

    def __init__(self, units: int, cost: float = 0.0) -> None:
        self.left, self.cost, self.t, self.log = units, cost, 0.0, []

    def clock(self) -> float:
        return self.t

    def urgent(self) -> None:
        self.log.append("u")

    def step(self, n: int) -> bool:
        k = min(n, self.left)
        self.left -= k
        self.t += k * self.cost
        self.log.append(k)
        return self.left > 0


def test_the_urgent_work_runs_before_every_slice():
    w = Work(40)
    s = Slices(w.urgent, w.clock, slice_size=16, limit=64, budget=1.0)
    assert s.run(w.step) is False            # all done in this turn
    assert w.log == ["u", 16, "u", 16, "u", 8] and w.left == 0


def test_a_turn_ends_at_the_limit_and_leaves_the_rest_for_the_next():
    w = Work(100)
    s = Slices(w.urgent, w.clock, slice_size=16, limit=40, budget=1.0)
    assert s.run(w.step) is True
    assert w.log == ["u", 16, "u", 16, "u", 8] and w.left == 60
    assert s.stats["turns_cut"] == 1
    w.log.clear()
    s.run(w.step)                           # the next turn goes on where this one stopped
    assert w.log[:2] == ["u", 16] and w.left == 20


def test_a_turn_ends_once_its_time_budget_is_spent():
    w = Work(1000, cost=0.0001)             # a slice of 16 costs 1.6 ms
    s = Slices(w.urgent, w.clock, slice_size=16, limit=64, budget=0.002)
    assert s.run(w.step) is True
    # the first slice leaves 0.4 ms, the second spends it: two slices, not four
    assert w.log == ["u", 16, "u", 16] and w.left == 1000 - 32


def test_nothing_waiting_is_one_look_and_one_empty_slice():
    w = Work(0)
    s = Slices(w.urgent, w.clock)
    assert s.run(w.step) is False and w.log == ["u", 0]


@pytest.mark.parametrize("kw", [{"slice_size": 0}, {"limit": 0}, {"budget": 0.0}])
def test_bounds_must_be_positive(kw):
    with pytest.raises(ValueError):
        Slices(lambda: None, lambda: 0.0, **kw)
