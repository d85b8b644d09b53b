"""The registered kinds of client-address state, by (`client_address`, protocol).

One table, as IPVS keeps its schedulers and applications registered: the engine
and the sync applier look a service's mode up here and call the kind they find
(director.client_address.Kind); a mode with no entry for a protocol ("none",
"proxy-v1" over UDP, "toa" over UDP, which the config refuses) gives a
connection no state at all.
"""
from __future__ import annotations

from director import proxy_dgram, proxy_insert, toa
from director.client_address import Kind, State
from proto.consts import TCP, UDP

__all__ = ["KINDS", "begin", "synced"]


def _stream(mode: str) -> Kind:
    return Kind(begin=lambda data, pkt, svc: proxy_insert.begin(mode, data, pkt, svc.client_proxy_header),
                synced=lambda conn, svc: None)      # the entry's "seq" option brings it


_DGRAM = Kind(begin=lambda data, pkt, svc: proxy_dgram.begin(svc.client_address, pkt, svc.client_proxy_header),
              # no option carries it: the header follows from the entry's addresses
              synced=lambda conn, svc: proxy_dgram.for_conn(conn.caddr, conn.cport, conn.vaddr,
                                                            conn.vport, svc.client_proxy_header))
_TOA = Kind(begin=lambda data, pkt, svc: toa.begin(data, pkt),
            synced=lambda conn, svc: toa.synced(conn))     # rebuilt from the entry

KINDS: dict[tuple[str, int], Kind] = {
    ("proxy-v1", TCP): _stream("proxy-v1"),
    ("proxy-v2", TCP): _stream("proxy-v2"),
    ("proxy-v2", UDP): _DGRAM,
    ("toa", TCP): _TOA,
}


def begin(svc, data: bytes, pkt) -> State | None:
    """The state of a connection this packet opens on `svc`, or None."""
    kind = KINDS.get((svc.client_address, pkt.proto))
    return None if kind is None else kind.begin(data, pkt, svc)


def synced(svc, conn) -> State | None:
    """The state of a connection of `svc` learnt from the peer, or None."""
    kind = KINDS.get((svc.client_address, conn.proto))
    return None if kind is None else kind.synced(conn, svc)
