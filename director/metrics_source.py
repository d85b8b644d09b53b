"""The base of the node's metric collectors (director.metrics): one collector per source,
each fails alone."""
from __future__ import annotations

import logging
from typing import Iterable

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

log = logging.getLogger("tandem.metrics")

PREFIX = "tandem"


class Source(Collector):
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
