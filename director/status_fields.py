"""Fields of a status contract that become metrics (director.status): each declares its
kind, help text and exported name in its metadata, so the collector (director.metrics)
needs no naming rules of its own and a counter cannot turn into a gauge by a key's
spelling."""
from __future__ import annotations

import dataclasses
from dataclasses import field
from typing import Any

COUNTER = "counter"
GAUGE = "gauge"


def counter(doc: str, name: str) -> Any:
    """A field exported as the counter `<prefix>_<name>_total`."""
    return field(metadata={"kind": COUNTER, "doc": doc, "name": name})


def gauge(doc: str, name: str, default: Any = dataclasses.MISSING) -> Any:
    return field(default=default, metadata={"kind": GAUGE, "doc": doc, "name": name})


def metric_fields(obj: Any) -> list[tuple[dataclasses.Field, Any]]:
    """(field, value) for every field of a contract that declares a metric kind."""
    return [(f, getattr(obj, f.name)) for f in dataclasses.fields(obj) if "kind" in f.metadata]
