"""The production `apply` and `apply_bulk` of a SyncReceiver: synced entries
installed into a director Engine (its public apply_synced and index)."""
from __future__ import annotations

from typing import Callable

from proto.consts import SYNCED
from proto.packet import flow_key
from proto.sync import SyncEntry


def engine_apply(engine) -> Callable[[SyncEntry, float], str]:
    """The production `apply`: install an entry into a director Engine."""
    def apply(entry: SyncEntry, now: float) -> str:
        return engine.apply_synced(**entry.apply_kwargs(), now=now)
    return apply


def engine_apply_bulk(engine) -> Callable[[SyncEntry, float], str]:
    """The production `apply_bulk`: as engine_apply, except that a connection this
    node created itself (not SYNCED) is kept as it is.

    A bulk resync is the peer's whole table, and that includes its copies of our
    own connections, which may be older than ours (a resync answered late, or
    asked for after a gap).  Normal sync keeps "the peer wins" (Engine.apply_synced);
    a bulk only fills in what we lack or hold as copies.
    """
    index = engine.index

    def apply(entry: SyncEntry, now: float) -> str:
        key = flow_key(entry.proto, entry.caddr, entry.vaddr, entry.cport, entry.vport)
        conn = index.get(key)
        if conn is not None and conn.orig_key == key and not conn.flags & SYNCED:
            return "kept"
        return engine.apply_synced(**entry.apply_kwargs(), now=now)
    return apply

