"""`tandem lab join <name>`: one more director added to a running cluster lab.

What an operator does to grow a cluster, in the same order:

1. the new director's box: its namespace, its link to the router's segment, forwarding on
   and reverse-path filtering off (as lab/cluster.py sets every director), its default
   route, and its BIRD (announcing nothing yet);
2. the router learns the new BGP neighbour (its BIRD's config rewritten, `birdc
   configure`: the sessions already up stay up);
3. every director's node config gains the new member (`[cluster] members`) and its sync
   address (`[sync] peers`); the running nodes apply it by a reload (`POST /reload`: the
   membership is what a reload applies of those sections, docs/cluster.md "Membership
   changes"), so from then on they send it their sync stream, accept its, queue its laddr
   and do not adopt it while it starts.  A director that is down (killed, stopped) reads
   the new file when `lab fault <name> restore` starts it;
4. the new node starts: it asks every peer for a bulk and announces nothing until its
   table has arrived (ha/announce.py: "joining"), then the VIP and its laddr;
5. done once the router has the VIP and the new laddr via the new director.
"""
from __future__ import annotations

import time
from typing import Any

from ha.bird import host_prefix

from . import bgp, bgp6, bgp_traffic, cluster, cluster6, cluster_plan, netns, nsutil
from . import state as st


def join(prefix: str, name: str, wait: float = 30.0) -> dict[str, Any]:
    """Add director `name` to the cluster lab `prefix`; what was done, `at` the moment the
    join began (the drill's reference: the reloads of the running nodes are part of what a
    join does to the held connections, as is the router's new next hop)."""
    return nsutil.outside_event_loop(_join, prefix, name, wait)


def _join(prefix: str, name: str, wait: float) -> dict[str, Any]:
    with st.prefix_lock(prefix):
        state = st.load_state(prefix)
        if not state or not state.get("cluster"):
            raise RuntimeError(f"no cluster lab {prefix!r} is up (tandem lab up --cluster N)")
        desc = state["cluster"]
        names = [d["name"] for d in desc["directors"]]
        if name in names:
            raise ValueError(f"director {name!r} is already a member ({', '.join(names)})")
        ipv6 = bool(desc.get("vip6"))
        d = cluster_plan.director(prefix, name, kernel=bool(desc.get("kernel_vip")), ipv6=ipv6)
        t0, at = time.monotonic(), time.time()
        cluster.ensure_ns(state, d["ns"])
        st.save_state(prefix, state)
        nsutil.set_sysctls(d["ns"], bgp6.NS_SYSCTLS if ipv6 else
                           {"net.ipv6.conf.all.disable_ipv6": 1}, optional=True)
        rows = [{"name": x["name"], "addr": x["front_addr"], "laddr": x["laddrs"][0]}
                for x in [*desc["directors"], d]]
        bgp.add_director(prefix, state, rows, ipv6=ipv6)
        nsutil.set_sysctls(d["ns"], {"net.ipv4.ip_forward": 1, "net.ipv4.conf.all.rp_filter": 0,
                                     "net.ipv4.conf.eth0.rp_filter": 0}, optional=True)
        with netns.ipr(d["ns"]) as i:
            bgp_traffic._route_default(i, bgp.ROUTER_ADDR)
        if ipv6:
            cluster6.default_route(d)

        desc["directors"].append(d)
        for vip in cluster_plan.vips(desc):
            desc["router"]["routes"][host_prefix(vip)].append(cluster_plan.hop(d, vip))
        for a in d["laddrs"]:
            desc["router"]["routes"][host_prefix(a)] = [cluster_plan.hop(d, a)]
        cluster.write_configs(prefix, state)        # with the services `lab up` added
        st.save_state(prefix, state)

        reloaded, skipped = [], []
        for other in names:
            if cluster.node_running(state, other) is None:
                skipped.append(other)       # reads the new file when it is restored
                continue
            summary = cluster.api(state, other, "POST", "/reload")
            if name not in (summary.get("members_added") or []):
                raise RuntimeError(f"node {other}: the reload did not add {name}: {summary}")
            reloaded.append(other)
        pid = cluster.start_node(prefix, state, name, wait)["pid"]
        started = round(time.monotonic() - t0, 2)
        for vip in cluster_plan.vips(desc):
            bgp.wait_until_via(prefix, vip, cluster_plan.hop(d, vip), wait=wait)
        for a in d["laddrs"]:
            bgp.wait_nexthops(prefix, a, [cluster_plan.hop(d, a)], wait=wait)
        if state.get("info"):
            state["info"]["directors"].append({**d, "node": True})
            state["info"]["router"]["routes"] = cluster.routes(prefix, desc)
        st.save_state(prefix, state)
        return {"director": name, "fault": "join", "at": at, "pid": pid,
                "reloaded": reloaded, "not_running": skipped, "node_started_after_s": started,
                "announced_after_s": round(time.monotonic() - t0, 2),
                "routes": cluster.routes(prefix, desc)}
