"""Connection sync as metrics: the engine's sync_stats and the sync link's SyncStats
(director.metrics lists every exported name)."""
from __future__ import annotations

from typing import Callable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from director.metrics_source import PREFIX, Source
from director.status import GAUGE, SyncLag, SyncStats, metric_fields


class SyncCollector(Source):
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
