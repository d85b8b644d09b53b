"""What a cluster director shows of itself (/status `cluster`, read by the metrics and the
ipvsadm listing too): its membership as it sees it, what it announces, and the flows it
holds by the member that owns them."""
from __future__ import annotations

import ipaddress
from typing import Any

from ha import announce as A


def flows_owned(members: dict[str, tuple[str, ...]], engine: Any,
                kernel_flows: Any = None) -> dict[str, int]:
    """Connections a node holds by the member whose laddr they use: the engine's table,
    and the kernel-mode flows of its conntrack view (its own and those injected from its
    peers' sync), counted by their binding's laddr."""
    packed = {m: [ipaddress.ip_address(a).packed for a in pool] for m, pool in members.items()}
    owned = {m: sum(engine.ports.used(p).values()) for m, p in packed.items()}
    if kernel_flows is not None:
        owner = {a: m for m, pool in members.items() for a in pool}
        for mark, (active, inactive) in kernel_flows.counts.items():
            b = engine.marks.binding(mark)
            m = owner.get(b.laddr) if b is not None else None
            if m is not None:
                owned[m] += active + inactive
    return owned


def status(runner: Any) -> dict:
    """/status `cluster` of a tandem.cluster.ClusterRunner."""
    now = runner.clock()
    alive, leaving, _joining = runner.membership(now)
    peers = runner._peers()
    d = runner.announcer.last
    owned = runner.flows_owned()
    routed = runner.view.routed(runner.members, runner.name)
    serving = alive | (routed or frozenset())       # a silent peer still routed serves
    candidates = serving - leaving
    members = {}
    for m, pool in sorted(runner.members.items()):
        p = peers.get(m)
        said = (runner.said() if m == runner.name
                else p.state.role if p is not None and p.state is not None else None)
        members[m] = {"laddrs": list(pool), "alive": m in alive, "leaving": m in leaving,
                      "last_heard_s": (None if m == runner.name or p is None
                                       or p.heard == float("-inf")
                                       else round(now - p.heard, 3)),
                      "flows": owned.get(m, 0), "said": said,
                      # who should answer for each of its laddrs, as this node sees it:
                      # itself while alive or routed, else the adopter rendezvous
                      # hashing picks
                      "served_by": {a: (m if m in serving else A.adopter(a, candidates))
                                    for a in pool}}
    return {"name": runner.name, "state": runner.state(), "members": members,
            "announced": sorted(runner.announcer.announced),
            "bird_has": None if runner.applied is None else sorted(runner.applied),
            "adopted": sorted(runner.announcer.adopted),
            # the peers the router routes their own laddrs via; null: no view (quorum)
            "routed": None if routed is None else sorted(routed),
            "reason": d.reason if d is not None else None,
            "links_down": list(runner.links_down),
            "flows_owned": owned.get(runner.name, 0),
            "flows_foreign": sum(v for m, v in owned.items() if m != runner.name),
            "stats": dict(runner.stats), "last_error": runner.last_error or None}
