"""Cluster mode as metrics (director.metrics lists every exported name): membership as
this director sees it, what it announces and does, and the flows it holds per member.
Read at scrape time from the cluster runner's status (tandem.cluster), as /status
`cluster` shows it; nothing in pair mode."""
from __future__ import annotations

from typing import Any, Callable, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from director.metrics_source import PREFIX, Source

#: every value /status `cluster.state` takes (tandem.cluster.ClusterRunner.state), each
#: exported, the one in force at 1, so a dashboard can alert on `isolated` from the start
STATES = ("starting", "joining", "active", "isolated", "down", "draining", "drained", "stopping")
#: the runner's counters: key in its stats, metric name, help
_COUNTERS = (
    ("announces", "cluster_announcements_total", "Announcements BIRD took (birdc configure)."),
    ("bird_errors", "cluster_bird_errors_total",
     "Announcements BIRD refused or could not be asked (retried every step)."),
    ("adopted", "cluster_laddrs_adopted_total", "Peers' laddrs this director took over."),
    ("given_back", "cluster_laddrs_given_back_total", "Adopted laddrs given back to their owner."),
)


class ClusterCollector(Source):
    """status: () -> the cluster runner's status (/status `cluster`), or None (pair mode)."""

    def __init__(self, status: Callable[[], Mapping[str, Any] | None], prefix: str = PREFIX) -> None:
        super().__init__(prefix)
        self.status_fn = status

    def families(self, p: str) -> list[Metric]:
        st = self.status_fn()
        if st is None:
            return []
        state = GaugeMetricFamily(f"{p}_cluster_state", "What this director does now: 1 for "
                                  "the state in force, 0 for the others.", labels=("state",))
        for s in STATES:
            state.add_metric([s], 1 if st.get("state") == s else 0)
        alive = GaugeMetricFamily(f"{p}_cluster_member_alive", "1 while this director hears "
                                  "the member over sync (itself always), else 0.",
                                  labels=("member",))
        leaving = GaugeMetricFamily(f"{p}_cluster_member_leaving", "1 while the member drains "
                                    "or stops (it said so), else 0.", labels=("member",))
        flows = GaugeMetricFamily(f"{p}_cluster_member_flows", "Connections this director "
                                  "holds that use the member's laddrs.", labels=("member",))
        serves = GaugeMetricFamily(f"{p}_cluster_laddr_served_by", "1 for the member that "
                                   "answers for a laddr, as this director sees it (the owner, "
                                   "or its adopter).", labels=("laddr", "owner", "member"))
        for m, v in st["members"].items():
            alive.add_metric([m], int(bool(v["alive"])))
            leaving.add_metric([m], int(bool(v["leaving"])))
            flows.add_metric([m], v["flows"])
            for laddr, by in v.get("served_by", {}).items():
                serves.add_metric([laddr, m, by or ""], 1)
        announced = GaugeMetricFamily(f"{p}_cluster_announced", "1 for each prefix this "
                                      "director announces over BGP.", labels=("prefix",))
        for prefix in st["announced"]:
            announced.add_metric([prefix], 1)
        adopted = GaugeMetricFamily(f"{p}_cluster_adopted_laddrs",
                                    "Peers' laddrs this director announces for them now.",
                                    value=len(st["adopted"]))
        fams: list[Metric] = [state, alive, leaving, flows, serves, announced, adopted]
        stats = st.get("stats", {})
        fams += [CounterMetricFamily(f"{p}_{name}", doc, value=stats[key])
                 for key, name, doc in _COUNTERS if key in stats]
        return fams
