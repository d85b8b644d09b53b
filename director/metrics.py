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
  `tandem_nfqueue_user_dropped_total`, `tandem_nfqueue_queued` `{queue}`.
* sync: `tandem_sync_apply_*_total` from the engine's sync_stats, and from the
  sync link's SyncStats `tandem_sync_{sender,receiver,transport,applied}_<key>_total`,
  the gauges `tandem_sync_missing` and `tandem_sync_lag_seconds{quantile}`.

There is one collector per source (`collectors()` builds them for a node); each
reads a typed contract or the engine's own objects at scrape time, and what is a
counter or a gauge is declared with the contract's fields, not guessed from names.

(Over 400 lines on purpose: every exported name lives in this one file, so a
dashboard's author reads them all in one place.)

The node-wide IPVS totals are sums over real servers.  So that a reload which
removes a real server does not make them go backwards (a counter reset to
rate()), the collector keeps what removed servers had counted.
"""
from __future__ import annotations

import ipaddress
import logging
from typing import Any, Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from director.nfqueue import kernel_queue_stats
from director.status import GAUGE, KEEPALIVED_DROPS, NodeSource, SyncLag, SyncStats, VrrpStatus, metric_fields

try:    # the classic text format: what every Prometheus, 2.x included, scrapes
    from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4 as CONTENT_TYPE
except ImportError:     # prometheus_client < 0.22, where LATEST is 0.0.4
    from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE

log = logging.getLogger("tandem.metrics")

PREFIX = "tandem"

#: node_exporter's backend labels, in its order.
BACKEND_LABELS = ("local_address", "local_port", "remote_address", "remote_port", "proto",
                  "local_mark")

#: keepalived-exporter's labels for keepalived_vrrp_state.
VRRP_LABELS = ("iname", "intf", "vrid", "ip_address")

#: a node's role -> keepalived's VRRP_STATE_* number, for a node without an election
ROLE_STATE = {"init": 0, "backup": 1, "master": 2, "fault": 3}

# node_exporter's help texts for the node-wide counters
_TOTALS = (
    ("connections", "conns_total", "The total number of connections made."),
    ("incoming_packets", "packets_in", "The total number of incoming packets."),
    ("outgoing_packets", "packets_out", "The total number of outgoing packets."),
    ("incoming_bytes", "bytes_in", "The total amount of incoming data."),
    ("outgoing_bytes", "bytes_out", "The total amount of outgoing data."),
)

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
)

def _proto_label(proto: Any) -> str:
    """ /proc/net/ip_vs spells protocols in capitals: TCP, UDP."""
    return str(proto).upper()


class _Retired:
    """Counters of real servers no longer configured, kept so totals never decrease.

    A dest removed by a reload may still carry connections (removed_server_conns
    = "keep") and go on counting; it is watched until its last connection is
    gone, then its final figures are folded into `totals` and it is forgotten.
    """

    FIELDS = ("conns_total", "packets_in", "packets_out", "bytes_in", "bytes_out")

    def __init__(self) -> None:
        self.totals = dict.fromkeys(self.FIELDS, 0)
        self.seen: dict[int, Any] = {}          # id(dest) -> dest, for every dest ever scraped

    def update(self, current: Iterable[Any]) -> list[Any]:
        """Note the dests in service now; return the removed ones still counting."""
        now = {id(d): d for d in current}
        lingering = []
        for key, d in list(self.seen.items()):
            if key in now:
                continue
            if getattr(d, "active", 0) or getattr(d, "inactive", 0):
                lingering.append(d)
            else:
                for f in self.FIELDS:
                    self.totals[f] += getattr(d, f, 0)
                del self.seen[key]
        self.seen.update(now)
        return lingering


class _Source(Collector):
    """A collector for one source.  A broken source yields nothing and is logged: it must
    not take the other sources' metrics down with it (each is registered on its own)."""

    def __init__(self, prefix: str = PREFIX) -> None:
        self.prefix = prefix

    def describe(self) -> list[Metric]:
        return []       # registering must not run a scrape

    def collect(self) -> Iterable[Metric]:
        try:
            fams = self.families(self.prefix)
        except Exception:
            log.exception("metrics: %s failed", type(self).__name__)
            return []
        return fams

    def families(self, p: str) -> list[Metric]:
        raise NotImplementedError


class IpvsCollector(_Source):
    """The engine's services and real servers, under node_exporter's IPVS names.

    health: () -> {(service_name, addr, port): up} (from the node's control); None = none.
    """

    def __init__(self, engine, health: Callable[[], Mapping[tuple, bool]] | None = None,
                 prefix: str = PREFIX) -> None:
        super().__init__(prefix)
        self.engine = engine
        self.health_fn = health
        self._retired = _Retired()

    def families(self, p: str) -> list[Metric]:
        rows = []       # (labels, dest, service name)
        for svc in list(self.engine.services.values()):
            cfg = svc.cfg
            for d in list(svc.dests):
                labels = [cfg.vip, str(cfg.port), d.addr_str, str(d.port), _proto_label(cfg.proto), ""]
                rows.append((labels, d, svc.name))
        lingering = self._retired.update(d for _, d, _ in rows)

        fams: list[Metric] = []
        for name, field, doc in _TOTALS:
            total = (sum(getattr(d, field) for _, d, _ in rows)
                     + sum(getattr(d, field) for d in lingering)
                     + self._retired.totals[field])
            fams.append(CounterMetricFamily(f"{p}_ipvs_{name}", doc, value=total))

        def backend(name, doc, kind=GaugeMetricFamily):
            return kind(f"{p}_ipvs_backend_{name}", doc, labels=BACKEND_LABELS)

        active = backend("connections_active", "The current active connections by local and remote address.")
        inactive = backend("connections_inactive", "The current inactive connections by local and remote address.")
        weight = backend("weight", "The current backend weight by local and remote address.")
        overloaded = backend("overloaded", "1 while the backend is over its upper connection threshold.")
        persist = backend("persistent_templates", "Persistence templates pinning clients to the backend.")
        counters = [(backend(name, doc, CounterMetricFamily), field) for name, field, doc in (
            ("connections", "conns_total", "Connections scheduled to the backend."),
            ("incoming_packets", "packets_in", "Packets from clients forwarded to the backend."),
            ("outgoing_packets", "packets_out", "Packets from the backend forwarded to clients."),
            ("incoming_bytes", "bytes_in", "Bytes from clients forwarded to the backend."),
            ("outgoing_bytes", "bytes_out", "Bytes from the backend forwarded to clients."),
        )]
        seen = set()
        for labels, d, _ in rows:
            key = tuple(labels)
            if key in seen:     # same backend twice in one service: node_exporter would sum; keep first
                continue
            seen.add(key)
            active.add_metric(labels, d.active)
            inactive.add_metric(labels, d.inactive)
            weight.add_metric(labels, d.weight)
            overloaded.add_metric(labels, 1 if d.overloaded else 0)
            persist.add_metric(labels, d.persist)
            for fam, field in counters:
                fam.add_metric(labels, getattr(d, field))
        fams += [active, inactive, weight, overloaded, persist] + [f for f, _ in counters]

        if self.health_fn is not None:
            states = self.health_fn() or {}
            up = backend("up", "1 if the backend passes its health check, 0 if not.")
            for labels, d, svc_name in rows:
                state = states.get((svc_name, d.addr_str, d.port))
                if state is not None and tuple(labels) in seen:
                    up.add_metric(labels, 1 if state else 0)
            fams.append(up)
        return fams



class NodeCollector(_Source):
    """The node's identity: `<prefix>_node_info{node}` = 1."""

    def __init__(self, name: str, prefix: str = PREFIX) -> None:
        super().__init__(prefix)
        self.name = name

    def families(self, p: str) -> list[Metric]:
        info = GaugeMetricFamily(f"{p}_node_info", "The node's name (always 1).", labels=("node",))
        info.add_metric([self.name], 1)
        return [info]


class VrrpCollector(_Source):
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


class EngineCollector(_Source):
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



class QueueCollector(_Source):
    """The kernel's NFQUEUE counters for the node's queue.

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
        ):
            if key in qs:
                f = kind(f"{p}_{name}", doc, labels=("queue",))
                f.add_metric([str(self.queue)], qs[key])
                fams.append(f)
        return fams


class SyncCollector(_Source):
    """Connection sync: what the engine applied (its sync_stats, all counters) and the sync
    link's SyncStats, whose fields declare their kinds.

    stats: () -> SyncStats, or None when the node does not sync.
    """

    def __init__(self, engine, stats: Callable[[], SyncStats | None] | None = None,
                 prefix: str = PREFIX) -> None:
        super().__init__(prefix)
        self.engine = engine
        self.stats_fn = stats or (lambda: None)

    def families(self, p: str) -> list[Metric]:
        fams: list[Metric] = []
        for key, value in dict(self.engine.sync_stats).items():
            name = "apply" if key == "applied" else f"apply_{key}"
            fams.append(CounterMetricFamily(f"{p}_sync_{name}", f"Sync entries from the peer: {key}.",
                                            value=value))
        st = self.stats_fn()
        if st is None:
            return fams
        for f, value in metric_fields(st):
            meta = f.metadata
            if meta["kind"] == GAUGE:
                fams.append(GaugeMetricFamily(f"{p}_sync_{meta['name']}", meta["doc"], value=value))
                continue
            for key, n in value.items():      # a family of counters, one per key
                fams.append(CounterMetricFamily(f"{p}_sync_{meta['name']}_{key}",
                                                meta["doc"].format(key=key), value=n))
        lag = GaugeMetricFamily(f"{p}_sync_lag_seconds",
                                "Sync lag (apply time minus send time) over the recent messages, "
                                "by quantile (1 = the maximum).", labels=("quantile",))
        for q, attr in SyncLag.QUANTILES:
            ms = getattr(st.lag_ms, attr)
            if ms is not None:
                lag.add_metric([q], ms / 1000.0)
        fams.append(lag)
        return fams


def collectors(engine, node: "NodeSource", *, health: Callable[[], Mapping[tuple, bool]] | None = None,
               queue_stats: Callable[[], Mapping[str, int]] | None = None,
               prefix: str = PREFIX) -> list[Collector]:
    """One collector per source of a running node."""
    return [NodeCollector(node.name, prefix), IpvsCollector(engine, health, prefix),
            EngineCollector(engine, prefix),
            QueueCollector(engine.cfg.queue, queue_stats or node.queue_stats, prefix),
            VrrpCollector(node.vrrp_status, lambda: (node.name, node.status().role), prefix),
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
