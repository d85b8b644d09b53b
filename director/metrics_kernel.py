"""Kernel-mode forwarding as metrics: the flows the node follows from conntrack events, the
event path's own counters, the table's drop counters and the sync of kernel flows
(director.metrics lists every exported name)."""
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
     "Times the kernel dropped conntrack events for us (ENOBUFS); each asks for a dump "
     "(those within 1 s of the last repair share the next one)."),
    ("resyncs", "kernel_dump_repairs", CounterMetricFamily,
     "Dumps of the conntrack table that rebuilt the view after lost events."),
    ("repaired", "kernel_dump_repaired_flows", CounterMetricFamily,
     "Flows those dumps added, removed or changed."),
    ("dump_failures", "kernel_dump_failures", CounterMetricFamily,
     "Dumps that failed (the next overrun tries again)."),
    ("dumps_coalesced", "kernel_dumps_coalesced", CounterMetricFamily,
     "Repair dumps that waited for the spacing after the last repair (overruns coalesced)."),
    ("repair_steps", "kernel_repair_steps", CounterMetricFamily,
     "Event-loop turns the repairs took (each works at most 2 ms)."),
    ("dump_entries", "kernel_dump_entries", CounterMetricFamily,
     "Conntrack entries read by repair dumps."),
    ("deleted", "kernel_flows_deleted", CounterMetricFamily,
     "Flows the node deleted from conntrack (quiescing, removed real servers)."),
    ("adopted", "kernel_flows_adopted", CounterMetricFamily,
     "Flows of a previous run found in conntrack at start and taken into the view."),
    ("expired", "kernel_flows_expired", CounterMetricFamily,
     "Flows retired because the kernel no longer held them once their timeout had passed "
     "(before conntrack's garbage collection sent their DESTROY)."),
    ("late_destroys", "kernel_late_destroys", CounterMetricFamily,
     "DESTROY events of flows already retired at their timeout."),
    ("expiry_checks", "kernel_expiry_checks", CounterMetricFamily,
     "Conntrack GETs of flows past their timeout."),
    ("expiry_check_failures", "kernel_expiry_check_failures", CounterMetricFamily,
     "Of those, GETs that failed (the flows are asked again later)."),
    ("timeout_objects_removed", "kernel_timeout_objects_removed", CounterMetricFamily,
     "Old ct timeout objects deleted once no flow could use them any more."),
    ("counter_read_failures", "kernel_drop_counter_read_failures", CounterMetricFamily,
     "Reads of the table's drop counters that failed."),
    # the sync of kernel flows (tandem.kernel_sync): present when the node syncs
    ("sync_entries", "kernel_sync_entries", CounterMetricFamily,
     "Sync entries made from conntrack events (state changes, refreshes and ends)."),
    ("sync_urgent", "kernel_sync_urgent", CounterMetricFamily,
     "Of those, entries sent at once (a new flow, ESTABLISHED, a closing state)."),
    ("sync_refreshes", "kernel_sync_refreshes", CounterMetricFamily,
     "Of those, periodic refreshes of flows that only carry data."),
    ("sync_ends", "kernel_sync_ends", CounterMetricFamily,
     "Of those, the ends of flows (timeout 0)."),
    ("sync_pruned", "kernel_sync_pruned", CounterMetricFamily,
     "Flows of this node's table from before its start that the peer's bulk did not hold "
     "(ended meanwhile): deleted."),
    ("inject_created", "kernel_inject_created", CounterMetricFamily,
     "Peer's entries created in this node's conntrack."),
    ("inject_updated", "kernel_inject_updated", CounterMetricFamily,
     "Peer's entries that updated one in this node's conntrack (state, timeout, mark)."),
    ("inject_deleted", "kernel_inject_deleted", CounterMetricFamily,
     "Entries deleted from this node's conntrack on the peer's word (a flow's end)."),
    ("inject_stale", "kernel_inject_stale", CounterMetricFamily,
     "Entries here replaced because the peer has another binding for the connection (its "
     "ports reused by a newer connection)."),
    ("inject_failed", "kernel_inject_failed", CounterMetricFamily,
     "Injection requests the kernel refused (by any errno but the handled ones)."),
    ("inject_backlog", "kernel_inject_backlog", GaugeMetricFamily,
     "Peer's entries waiting to be injected."),
)


class KernelCollector(Source):
    """stats: () -> tandem.kernel_mode.KernelPath.describe() (with tandem.kernel_sync's
    counters when the node syncs, as /status "kernel" has them), or None (no kernel mode)."""

    def __init__(self, stats: Callable[[], Mapping[str, Any] | None], prefix: str = PREFIX) -> None:
        super().__init__(prefix)
        self.stats_fn = stats

    def families(self, p: str) -> list[Metric]:
        st = self.stats_fn()
        if st is None:
            return []
        fams: list[Metric] = [kind(f"{p}_{name}", doc, value=st[key])
                              for key, name, kind, doc in _EXPORTED if key in st]
        if "drops" in st:
            drops = CounterMetricFamily(
                f"{p}_kernel_drops",
                "Packets of kernel-mode services the kernel dropped by tandem's rules, by reason: "
                "invalid (conntrack found them invalid: bad checksum, bad or truncated header, "
                "not valid in the TCP state), untranslated (still addressed to a service or laddr "
                "after NAT).", labels=("reason",))
            for reason, n in st["drops"].items():
                drops.add_metric([reason], n)
            fams.append(drops)
        return fams
