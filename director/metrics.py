"""Prometheus metrics for a director node, computed at scrape time.

The collectors are prometheus_client custom collectors: nothing is counted
twice and nothing sits on the packet path; every scrape reads the engine's own
counters (the per-real-server ones IPVS keeps, the engine's drop reasons, the
connection table), the kernel's NFQUEUE counters and, if given, the sync
daemon's counters, and turns them into metric families.

Names follow what people already scrape, with a `tandem_` prefix:

* node_exporter's IPVS collector: `tandem_ipvs_connections_total`,
  `tandem_ipvs_{incoming,outgoing}_{packets,bytes}_total` (node-wide) and the
  per-backend gauges `tandem_ipvs_backend_connections_{active,inactive}` and
  `tandem_ipvs_backend_weight`, with node_exporter's labels `local_address,
  local_port, remote_address, remote_port, proto, local_mark` (proto is `TCP` /
  `UDP` as /proc/net/ip_vs spells it, local_mark is "" as there are no fwmark
  services).  node_exporter has no per-backend counters; tandem adds
  `tandem_ipvs_backend_{connections,incoming_packets,outgoing_packets,
  incoming_bytes,outgoing_bytes}_total` with the same labels.
* keepalived-exporter's `keepalived_vrrp_state{iname,intf,vrid,ip_address}` as
  `tandem_vrrp_state`, same numeric encoding (0 INIT, 1 BACKUP, 2 MASTER,
  3 FAULT) and labels, and the VRRP counters (`tandem_vrrp_advertisements_
  {received,sent}_total`, `tandem_vrrp_become_master_total`, ...) with labels
  `{iname,intf,vrid}`, from the election's VrrpStatus (director/status.py).
* the engine: `tandem_engine_packets_total`, `tandem_engine_drops_total{reason}`
  (every reason, zeros included, so rate() works from the first scrape),
  `tandem_engine_conns` and friends.
* the kernel queue: `tandem_nfqueue_dropped_total`,
  `tandem_nfqueue_user_dropped_total`, `tandem_nfqueue_queued`,
  `tandem_nfqueue_packets_total` (handed to user space), and the reader's own
  `tandem_nfqueue_wakeups_total`, `tandem_nfqueue_serve_errors_total` `{queue}`.
* kernel-mode forwarding (director.metrics_kernel): `tandem_kernel_flows`,
  `tandem_kernel_flows_{active,inactive}`, `tandem_kernel_events_total`,
  `tandem_kernel_events_lost_total` (ENOBUFS overruns), `tandem_kernel_dump_repairs_total`,
  `tandem_kernel_dump_repaired_flows_total`, `tandem_kernel_dump_failures_total`,
  `tandem_kernel_dumps_coalesced_total`, `tandem_kernel_repair_steps_total`,
  `tandem_kernel_dump_entries_total`,
  `tandem_kernel_flows_deleted_total`, `tandem_kernel_flows_adopted_total`,
  `tandem_kernel_drops_total{reason="invalid"|"untranslated"}` (the `inet tandem` table's
  counters), `tandem_kernel_drop_counter_read_failures_total`, and with sync
  `tandem_kernel_sync_{entries,urgent,refreshes,ends}_total`,
  `tandem_kernel_inject_{created,updated,deleted,failed}_total`, the gauge
  `tandem_kernel_inject_backlog`; nothing without a kernel-mode service.
* cluster mode (director.metrics_cluster): `tandem_cluster_state{state}`,
  `tandem_cluster_member_{alive,leaving,flows}{member}`,
  `tandem_cluster_laddr_served_by{laddr,owner,member}`, `tandem_cluster_announced{prefix}`,
  `tandem_cluster_adopted_laddrs`, `tandem_cluster_announcements_total`,
  `tandem_cluster_bird_errors_total`, `tandem_cluster_laddrs_{adopted,given_back}_total`;
  nothing in pair mode.
* sync: `tandem_sync_apply_*_total` from the engine's sync_stats, and from the
  sync link's SyncStats `tandem_sync_{sender,receiver,transport,applied}_<key>_total`,
  the gauges `tandem_sync_missing` and `tandem_sync_lag_seconds{quantile}`.

There is one collector per source (`collectors()` builds them for a node); each
reads a typed contract or the engine's own objects at scrape time, and what is a
counter or a gauge is declared with the contract's fields, not guessed from names.
The IPVS, VRRP and sync collectors have a module each (director.metrics_ipvs,
metrics_vrrp, metrics_sync, on the base in metrics_source); the node's, the engine's
and the queue's are here.  Every exported name is listed above, in this one place.

The node-wide IPVS totals are sums over real servers.  So that a reload which
removes a real server does not make them go backwards (a counter reset to
rate()), the collector keeps what removed servers had counted.
"""
from __future__ import annotations

import ipaddress
from typing import Callable, Mapping

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from director.metrics_ipvs import BACKEND_LABELS, IpvsCollector
from director.metrics_source import PREFIX, Source
from director.metrics_cluster import ClusterCollector
from director.metrics_kernel import KernelCollector
from director.metrics_sync import SyncCollector
from director.metrics_vrrp import ROLE_STATE, VRRP_LABELS, VrrpCollector
from director.nfqueue import kernel_queue_stats
from director.status import NodeSource

try:    # the classic text format: what every Prometheus, 2.x included, scrapes
    from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4 as CONTENT_TYPE
except ImportError:     # prometheus_client < 0.22, where LATEST is 0.0.4
    from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE

__all__ = ["PREFIX", "CONTENT_TYPE", "BACKEND_LABELS", "VRRP_LABELS", "ROLE_STATE", "IpvsCollector",
           "NodeCollector", "VrrpCollector", "EngineCollector", "QueueCollector", "SyncCollector",
           "collectors", "render"]

_ENGINE_COUNTERS = (
    ("conns_created", "conns_new", "Connections opened by this node's scheduler."),
    ("conns_expired", "conns_expired", "Connections that timed out."),
    ("conns_reused", "conns_reused", "Closing connections re-opened by a new SYN (conn_reuse_mode)."),
    ("early_drops", "early_drops", "Unassured connections dropped to make room at max_conns."),
    ("icmp_errors", "icmp_errors", "ICMP errors translated for a known connection."),
    ("passed_local", "passed_local", "Packets to a VIP or laddr left to the host (ICMP echo etc.)."),
    ("proxy_headers", "proxy_headers",
     "Connections whose PROXY header went to the real server (client_address proxy-v1/v2)."),
    ("proxy_headers_resent", "proxy_headers_resent",
     "PROXY headers sent again with a retransmitted first data segment."),
    ("proxy_headers_refused", "proxy_headers_refused",
     "Connections refused for opening with a PROXY header of their own (client_proxy_header refuse)."),
    ("proxy_headers_passed", "proxy_headers_passed",
     "Connections whose own PROXY header went through in place of the node's (client_proxy_header pass)."),
    ("toa_inserted", "toa_inserted",
     "Client segments given the TOA option (client_address toa): handshake ACKs and early data."),
    ("toa_pruned", "toa_pruned",
     "TOA insertions that first dropped client options to make room (NOPs, its own 254, SACK)."),
    ("toa_no_room", "toa_no_room",
     "Client segments that should have carried the TOA option and went without (no room)."),
)


class NodeCollector(Source):
    """The node's identity: `<prefix>_node_info{node}` = 1."""

    def __init__(self, name: str, prefix: str = PREFIX) -> None:
        super().__init__(prefix)
        self.name = name

    def families(self, p: str) -> list[Metric]:
        info = GaugeMetricFamily(f"{p}_node_info", "The node's name (always 1).", labels=("node",))
        info.add_metric([self.name], 1)
        return [info]


class EngineCollector(Source):
    """The engine's own counters, its connection table and FULLNAT port use."""

    def __init__(self, engine, prefix: str = PREFIX) -> None:
        super().__init__(prefix)
        self.engine = engine

    def families(self, p: str) -> list[Metric]:
        eng = self.engine
        stats, drops = dict(eng.stats), dict(eng.drops)
        fams: list[Metric] = [CounterMetricFamily(f"{p}_engine_packets", "Packets the engine was handed.",
                                                  value=stats.get("packets", 0))]
        d = CounterMetricFamily(f"{p}_engine_drops", "Packets dropped by the engine, by reason.",
                                labels=("reason",))
        for reason, n in drops.items():
            d.add_metric([reason], n)
        fams.append(d)
        fw = CounterMetricFamily(f"{p}_engine_forwarded_packets",
                                 "Packets forwarded (rewritten) by direction: in = client to real server.",
                                 labels=("direction",))
        fw.add_metric(["in"], stats.get("forwarded_in", 0))
        fw.add_metric(["out"], stats.get("forwarded_out", 0))
        fams.append(fw)
        for name, key, doc in _ENGINE_COUNTERS:
            fams.append(CounterMetricFamily(f"{p}_engine_{name}", doc, value=stats.get(key, 0)))
        counts = eng.conn_counts()
        fams.append(GaugeMetricFamily(f"{p}_engine_conns", "Entries in the connection table.",
                                      value=counts["total"]))
        by = GaugeMetricFamily(f"{p}_engine_conns_by_activity",
                               "Connections bound to a real server, active (ESTABLISHED) or inactive.",
                               labels=("activity",))
        by.add_metric(["active"], counts["active"])
        by.add_metric(["inactive"], counts["inactive"])
        fams.append(by)
        fams.append(GaugeMetricFamily(f"{p}_engine_conns_max", "The connection table's limit (max_conns).",
                                      value=eng.table.max_conns))
        fams.append(GaugeMetricFamily(f"{p}_engine_templates", "Persistence templates.",
                                      value=len(eng.templates)))
        used = GaugeMetricFamily(f"{p}_fullnat_laddr_ports_used",
                                 "Local (laddr, lport) pairs held by connections, by laddr.",
                                 labels=("laddr",))
        # the node's PortSpace: one count per laddr however many services share it
        laddrs = {a for svc in list(eng.services.values()) for a in svc.laddrs.laddrs}
        per_laddr = {str(ipaddress.ip_address(a)): 0 for a in laddrs}
        for (_proto, laddr, _daddr, _dport), n in eng.ports.used(laddrs).items():
            k = str(ipaddress.ip_address(laddr))
            per_laddr[k] = per_laddr.get(k, 0) + n
        conflicts = eng.ports.conflicts
        for k in sorted(per_laddr):
            used.add_metric([k], per_laddr[k])
        fams.append(used)
        fams.append(CounterMetricFamily(f"{p}_fullnat_laddr_port_conflicts",
                                        "Local ports skipped because the pair was in use.", value=conflicts))
        return fams


class QueueCollector(Source):
    """The kernel's NFQUEUE counters for the node's queue, and its reader's own.

    stats: () -> kernel_queue_stats()-shaped dict; {} (off-node) exports nothing.
    """

    def __init__(self, queue: int, stats: Callable[[], Mapping[str, int]] | None = None,
                 prefix: str = PREFIX) -> None:
        super().__init__(prefix)
        self.queue = queue
        self.stats_fn = stats if stats is not None else (lambda: kernel_queue_stats(queue))

    def families(self, p: str) -> list[Metric]:
        qs = self.stats_fn() or {}
        fams: list[Metric] = []
        for key, name, kind, doc in (
            ("queue_dropped", "nfqueue_dropped", CounterMetricFamily,
             "Packets the kernel dropped because our queue was full (queue_dropped)."),
            ("user_dropped", "nfqueue_user_dropped", CounterMetricFamily,
             "Packets the kernel could not send us over netlink (user_dropped: socket buffer full)."),
            ("queue_total", "nfqueue_queued", GaugeMetricFamily,
             "Packets waiting in the queue for a verdict."),
            ("queued", "nfqueue_packets", CounterMetricFamily,
             "Packets the kernel has handed to user space through the queue."),
            ("wakeups", "nfqueue_wakeups", CounterMetricFamily,
             "Times the queue's socket woke the node's loop (each serves a batch)."),
            ("serve_errors", "nfqueue_serve_errors", CounterMetricFamily,
             "Verdict rounds that failed inside the conntrack event reader's turn "
             "(the first ten logged)."),
        ):
            if key in qs:
                f = kind(f"{p}_{name}", doc, labels=("queue",))
                f.add_metric([str(self.queue)], qs[key])
                fams.append(f)
        return fams


def collectors(engine, node: "NodeSource", *, health: Callable[[], Mapping[tuple, bool]] | None = None,
               queue_stats: Callable[[], Mapping[str, int]] | None = None,
               prefix: str = PREFIX) -> list[Collector]:
    """One collector per source of a running node."""
    return [NodeCollector(node.name, prefix), IpvsCollector(engine, health, prefix),
            EngineCollector(engine, prefix),
            QueueCollector(engine.cfg.queue, queue_stats or node.queue_stats, prefix),
            VrrpCollector(node.vrrp_status, lambda: (node.name, node.status().role), prefix),
            KernelCollector(getattr(node, "kernel_stats", lambda: None), prefix),
            ClusterCollector(getattr(node, "cluster_status", lambda: None), prefix),
            SyncCollector(engine, node.sync_stats, prefix)]


def render(*collectors: Collector) -> tuple[bytes, str]:
    """The text exposition of the given collectors, and its Content-Type.

    For the HTTP handler: `body, ctype = render(collector)`, then
    `web.Response(body=body, headers={"Content-Type": ctype})`.
    """
    registry = CollectorRegistry(auto_describe=False)
    for c in collectors:
        registry.register(c)
    return generate_latest(registry), CONTENT_TYPE
