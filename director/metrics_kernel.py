"""Kernel-mode forwarding as metrics: the flows the node follows from conntrack events and
the event path's own counters (director.metrics lists every exported name)."""
from __future__ import annotations

from typing import Any, Callable, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from director.metrics_source import PREFIX, Source

#: stats key -> (metric name, kind, doc)
_EXPORTED = (
    ("flows", "kernel_flows", GaugeMetricFamily, "Kernel-forwarded flows the node follows."),
    ("active", "kernel_flows_active", GaugeMetricFamily,
     "Kernel-forwarded TCP flows in ESTABLISHED (active, as IPVS counts)."),
    ("inactive", "kernel_flows_inactive", GaugeMetricFamily,
     "Kernel-forwarded flows not active (TCP in another state, UDP)."),
    ("events", "kernel_events", CounterMetricFamily, "Conntrack events received."),
    ("overruns", "kernel_events_lost", CounterMetricFamily,
     "Times the kernel dropped conntrack events for us (ENOBUFS); each starts a dump."),
    ("resyncs", "kernel_dump_repairs", CounterMetricFamily,
     "Dumps of the conntrack table that rebuilt the view after lost events."),
    ("repaired", "kernel_dump_repaired_flows", CounterMetricFamily,
     "Flows those dumps added, removed or changed."),
    ("dump_failures", "kernel_dump_failures", CounterMetricFamily,
     "Dumps that failed (the next overrun tries again)."),
    ("deleted", "kernel_flows_deleted", CounterMetricFamily,
     "Flows the node deleted from conntrack (quiescing, removed real servers)."),
)


class KernelCollector(Source):
    """stats: () -> tandem.kernel_mode.KernelPath.describe(), or None (no kernel mode)."""

    def __init__(self, stats: Callable[[], Mapping[str, Any] | None], prefix: str = PREFIX) -> None:
        super().__init__(prefix)
        self.stats_fn = stats

    def families(self, p: str) -> list[Metric]:
        st = self.stats_fn()
        if st is None:
            return []
        return [kind(f"{p}_{name}", doc, value=st[key])
                for key, name, kind, doc in _EXPORTED if key in st]
