"""The client's address for real servers: the one interface the engine drives.

A connection of a service with `client_address` other than "none" holds, in
`Conn.client_address_state`, one object of the kind that mode makes for its
protocol (director.client_address_kinds.KINDS):

- a PROXY header in front of a TCP stream (director.proxy_insert.StreamHeader,
  sequence numbers shifted from then on),
- a PROXY v2 header on every UDP datagram (director.proxy_dgram.DgramProxy),
- a TOA option on the segments that can complete the handshake (director.toa.Toa).

The engine never asks which kind it holds: it calls the methods of `State` on
the packets of the connection and counts the `Event` each client packet
reports.  A plain connection holds None and pays one attribute test per packet.
This module names the interface only; it imports none of the kinds, so they can
import it.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Protocol

__all__ = ["Event", "State", "Kind"]


class Event(NamedTuple):
    """What one client packet did: the engine stats to count, the drop reason when the
    packet is dropped (the engine's DROP_REASONS), and whether the connection can let
    its state go (nothing left to do on any later packet)."""
    stats: tuple[str, ...] = ()
    drop: str | None = None
    release: bool = False


class State(Protocol):
    """One connection's client-address state, whatever its kind."""

    #: the sync policy (syncd.policy): `decided` and not yet `announced` means the peer
    #: must learn this state at once (URGENT), or a takeover would act differently
    announced: bool

    @property
    def decided(self) -> bool:
        ...

    def client_to_server(self, data: bytes, pkt: Any, handshake: bool) -> tuple[bytes | None, Any, Event | None]:
        """A client packet before the FULLNAT rewrite: (data, pkt) as the real server
        must see them (data None: drop it, event.drop says why) and what happened (None:
        nothing to count).  `handshake`: the packet moves a TCP connection out of SYN_RECV."""
        ...

    def server_to_client(self, data: bytes, pkt: Any) -> bytes:
        """A real server's packet before the FULLNAT rewrite, in the client's terms."""
        ...

    def quoted_shifts(self, data: bytes, inner: Any) -> tuple[int, int]:
        """(what to add mod 2**32 to the sequence number an ICMP error quotes from a
        packet sent to the real server, how much lower its "too big" MTU must be at the
        client)."""
        ...

    def sync_options(self) -> dict | None:
        """The sync entry's options map (proto.sync: "seq", "toa") that carries this state
        to the peer, or None when the peer rebuilds it from the entry's addresses."""
        ...

    def take_sync(self, name: str, value: Any) -> bool:
        """The peer's entry option `name` (proto.sync) for this connection: True when this
        state is the one it describes (and has learnt from it), False when it must be
        replaced."""
        ...


class Kind(NamedTuple):
    """One registered kind: how a connection gets its state."""
    #: begin(data, pkt, svc): the state for a connection this packet opens here (None:
    #: the packet cannot open one, e.g. no TCP SYN)
    begin: Callable[[bytes, Any, Any], State | None]
    #: synced(conn, svc): the state of a connection learnt from the peer, before any
    #: option of the entry is applied (None: the option must bring it)
    synced: Callable[[Any, Any], State | None]
