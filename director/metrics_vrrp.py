"""The VRRP election as metrics, under keepalived-exporter's names and labels
(director.metrics lists every exported name)."""
from __future__ import annotations

from typing import Callable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from director.metrics_source import PREFIX, Source
from director.status import KEEPALIVED_DROPS, VrrpStatus, metric_fields

#: keepalived-exporter's labels for keepalived_vrrp_state.
VRRP_LABELS = ("iname", "intf", "vrid", "ip_address")

#: a node's role -> keepalived's VRRP_STATE_* number, for a node without an election
ROLE_STATE = {"init": 0, "backup": 1, "master": 2, "fault": 3}


class VrrpCollector(Source):
    """The election, under keepalived-exporter's names and labels.

    status: () -> VrrpStatus, or None while no election runs.
    role:   () -> (node name, role) for a node without an election (a fixed role, or
            before the election starts): its state alone, `{iname=<node>}` with the other
            labels empty, so a dashboard still sees which node is master.  None = nothing.
    """

    def __init__(self, status: Callable[[], VrrpStatus | None],
                 role: Callable[[], tuple[str, str]] | None = None, prefix: str = PREFIX) -> None:
        super().__init__(prefix)
        self.status_fn = status
        self.role_fn = role

    def _state(self, p: str) -> GaugeMetricFamily:
        return GaugeMetricFamily(f"{p}_vrrp_state",
                                 "State of the VRRP instance: 0 INIT, 1 BACKUP, 2 MASTER, 3 FAULT.",
                                 labels=VRRP_LABELS)

    def families(self, p: str) -> list[Metric]:
        st = self.status_fn()
        if st is None:
            if self.role_fn is None:
                return []
            name, role = self.role_fn()
            number = ROLE_STATE.get(role)
            if number is None:
                return []
            fam = self._state(p)
            fam.add_metric([name, "", "", ""], number)
            return [fam]
        base = [st.name, st.interface, str(st.vrid)]
        fam = self._state(p)
        for vip in st.addresses or ("",):
            fam.add_metric(base + [vip], st.state_number)
        fams: list[Metric] = [fam]
        labels = VRRP_LABELS[:3]
        prio = GaugeMetricFamily(f"{p}_vrrp_priority", "Configured VRRP priority.", labels=labels)
        prio.add_metric(base, st.priority)
        fams.append(prio)
        for f, value in metric_fields(st.counters):
            c = CounterMetricFamily(f"{p}_vrrp_{f.metadata['name']}", f.metadata["doc"], labels=labels)
            c.add_metric(base, value)
            fams.append(c)
        drops = CounterMetricFamily(f"{p}_vrrp_drops", "Adverts dropped, by reason.",
                                    labels=labels + ("reason",))
        for reason, n in sorted(st.counters.drops.items()):
            drops.add_metric(base + [reason], n)
        fams.append(drops)
        for reason, name in KEEPALIVED_DROPS.items():
            if reason in st.counters.drops:
                c = CounterMetricFamily(f"{p}_vrrp_{name}", f"Adverts dropped: {reason} "
                                        "(keepalived's name; also in drops).", labels=labels)
                c.add_metric(base, st.counters.drops[reason])
                fams.append(c)
        return fams
