"""The router's view in the node (tandem/cluster_view.py): read from BIRD at most every
ROUTER_VIEW_POLL, held for ROUTER_VIEW_HOLD while BIRD answers without one, trusted once
it has shown a peer routed, and turned into the announcer's `routed` (the peers with an
own laddr routed via them)."""
from __future__ import annotations

import asyncio

from tandem.cluster_view import ROUTER_VIEW_HOLD, ROUTER_VIEW_POLL, RouterView

MEMBERS = {"a": ("198.19.42.11",), "b": ("198.19.42.12",), "c": ("198.19.42.13", "198.19.42.23")}


class FakeBird:
    def __init__(self, answers):
        self.answers, self.calls = list(answers), 0

    def routed_owners(self):
        self.calls += 1
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def run(view: RouterView, now: float):
    asyncio.run(view.refresh(now))
    return view.routed(MEMBERS, "a")


def test_the_view_maps_owned_routes_to_peers_and_is_read_once_per_poll():
    bird = FakeBird([frozenset({"198.19.42.11/32", "198.19.42.23/32"}), frozenset()])
    view = RouterView(bird)
    assert run(view, 10.0) == {"c"}                      # a itself is never listed
    assert run(view, 10.0 + ROUTER_VIEW_POLL / 2) == {"c"} and bird.calls == 1
    assert run(view, 10.0 + ROUTER_VIEW_POLL) == frozenset()   # b and c unrouted: a view
    assert bird.calls == 2


def test_a_failed_read_keeps_the_last_view_for_the_hold_then_none():
    bird = FakeBird([frozenset({"198.19.42.12/32"}), None, OSError("birdc"), None])
    view = RouterView(bird)
    assert run(view, 0.0) == {"b"}
    assert run(view, 1.0) == {"b"} and run(view, 2.0) == {"b"}     # held
    assert run(view, ROUTER_VIEW_HOLD + 0.5) is None and view.failures == 3


def test_a_view_that_never_showed_a_peer_routed_is_not_trusted():
    """A router that sends nothing back gives an empty view on every director: taken at
    its word, every silent peer would be dead.  So no view until one peer was seen."""
    view = RouterView(FakeBird([frozenset(), frozenset({"198.19.42.13/32"}), frozenset()]))
    assert run(view, 0.0) is None and not view.proven
    assert run(view, 1.0) == {"c"} and view.proven
    assert run(view, 2.0) == frozenset()


def test_an_adapter_without_a_view_gives_none():
    view = RouterView(object())
    assert run(view, 0.0) is None
