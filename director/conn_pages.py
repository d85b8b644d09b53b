"""Pages of the connection table for GET /conns, without holding the event loop.

The loop that answers HTTP also reads NFQUEUE and sends VRRP adverts, so a page is
built in bounded slices with a yield to the loop between them: walking a 100k
table in one go held the loop ~25-50 ms, and describing and encoding a 10,000-entry
page ~200-600 ms.  The walk runs over a copy of the index's values (one C-level
copy, no Python work per entry: all of them for a filtered query, ~3-12 ms at 100k,
only the first 2 x (offset + limit) for an unfiltered one); an entry that goes away
during the walk is skipped, one that comes after the copy is not in the page.  `total` is exact for an
unfiltered query (the table's count) and counts the matches seen by the walk for a
filtered one.  One walk runs at a time; other requests wait for it without blocking.

Client addresses are personal data: without the API token a page carries the
connections with `client` set to null (see docs/operations.md).

Times: the table's `expires` and `created` are on the engine's monotonic clock; a page
gives them, and its `now`, in epoch seconds (director.status.EpochClock, one offset for the
whole page), and `expires_in` in seconds left, to the ms.

Kernel-forwarded flows (`forwarding = "kernel"` services) follow the engine's entries, in
the same paging and filters, each with `"forwarding": "kernel"` (the engine's say
"engine").  The node's view of them (tandem.kernel_mode) holds only what the schedulers
need, so the flows of the page are then asked of the kernel itself, in a worker thread, in
one batch: their laddr:lport and real server as the kernel's NAT bound them, their state
and the time left.  A flow that ended in between is left out of the page (which is then
shorter than `limit`); such flows have no `created` (null): conntrack does not keep it.
"""
from __future__ import annotations

import asyncio
import ipaddress
import itertools
import json
from dataclasses import dataclass
from typing import Any, Callable

from director.status import EpochClock
from proto import ctnetlink as ct
from proto.consts import FLAG_NAMES, INACTIVE, NOOUTPUT, ASSURED, PROTO_NAMES, STATE_NAMES

#: index entries examined between two yields to the loop (~0.5 ms of Python work)
WALK_SLICE = 2048
#: entries described and encoded between two yields
DESCRIBE_SLICE = 256
#: the most entries one page may ask for
MAX_LIMIT = 10_000
DEFAULT_LIMIT = 100


class BadQuery(ValueError):
    """A query parameter that cannot be used: `PARAM: PROBLEM`."""


def parse_addr_port(text: str) -> tuple[str, int]:
    """`addr:port` ([v6]:port or v6:port) -> (the address as written canonically, port);
    ValueError in words when it is not one."""
    addr, _, port = text.rpartition(":")
    if not text:
        raise ValueError("must be addr:port, got an empty value")
    if not addr or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"must be addr:port with a port 1..65535, got {json.dumps(text)}")
    try:
        ip = ipaddress.ip_address(addr.strip("[]"))
    except ValueError:
        raise ValueError(f"{json.dumps(addr)} is not an IP address") from None
    return str(ip), int(port)


def _int_param(q: Any, name: str, default: int) -> int:
    """A non-negative integer query parameter, as /openapi.json declares it."""
    raw = q.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()):
        raise BadQuery(f"{name}: must be an integer >= 0, got {json.dumps(raw)}")
    return int(raw)


@dataclass(frozen=True)
class ConnQuery:
    """The documented query parameters of GET /conns."""

    limit: int = DEFAULT_LIMIT
    offset: int = 0
    service: str | None = None
    real: tuple[bytes, int] | None = None       # (packed address, port)

    @classmethod
    def parse(cls, q: Any) -> "ConnQuery":
        """The query, checked against the limits /openapi.json declares (BadQuery)."""
        # a larger limit is served as MAX_LIMIT, and the answer's `limit` says so
        limit = min(_int_param(q, "limit", DEFAULT_LIMIT), MAX_LIMIT)
        offset = _int_param(q, "offset", 0)
        service = q.get("service")
        if service is not None and not service:
            raise BadQuery("service: must be a service name, got an empty value")
        real = q.get("real")
        real_key = None
        if real is not None:
            try:
                addr, port = parse_addr_port(real)
            except ValueError as exc:
                raise BadQuery(f"real: {exc}") from None
            real_key = (ipaddress.ip_address(addr).packed, port)
        return cls(limit, offset, service, real_key)

    @property
    def filtered(self) -> bool:
        return self.service is not None or self.real is not None

    def matches(self, c: Any) -> bool:
        if self.service is not None and (c.service is None or c.service.name != self.service):
            return False
        return self.real is None or (c.daddr, c.dport) == self.real


async def _walk(table: Any, query: ConnQuery) -> tuple[list[Any], int]:
    """The page's entries and the number of matches, in bounded slices."""
    # One C-level copy of the index's values: each entry is there once per key it is
    # indexed under (twice, or once for one-packet entries); the walk below never sees
    # the dict change.  An unfiltered page needs only the first 2 x (offset + limit)
    # values; a filtered one copies them all, the one step that grows with the table.
    want_end = query.offset + query.limit
    values = table.index.values()
    entries = list(values if query.filtered else itertools.islice(values, 2 * want_end))
    seen: set[Any] = set()
    page: list[Any] = []
    matched = 0
    for start in range(0, len(entries), WALK_SLICE):
        for c in entries[start:start + WALK_SLICE]:
            if c in seen or not c.alive:        # its other key, or gone since the copy
                continue
            seen.add(c)
            if not query.matches(c):
                continue
            if query.offset <= matched < want_end:
                page.append(c)
            matched += 1
        if not query.filtered and matched >= want_end:
            return page, table.count        # the rest would only be counted
        await asyncio.sleep(0)
    return page, (matched if query.filtered else table.count)


def _kernel_match(query: ConnQuery, engine: Any, key: ct.Tuple, flow: Any) -> bool:
    if query.service is not None:
        svc = engine.services.get((key.proto, key.dst, key.dport))
        if svc is None or svc.name != query.service:
            return False
    if query.real is not None:
        b = engine.marks.binding(flow.mark)
        if b is None or (ipaddress.ip_address(b.rs_addr).packed, b.rs_port) != query.real:
            return False
    return True


async def _walk_kernel(flows: Any, engine: Any, query: ConnQuery, skip: int,
                       want: int) -> tuple[list[ct.Tuple], int]:
    """The original tuples of the kernel flows `skip` .. `skip + want` of those matching,
    and how many match, in bounded slices (as _walk).  `flows` is KernelFlows.flows: its
    rows are taken packed and unpacked a slice at a time."""
    if not query.filtered:
        if not want:
            return [], len(flows)       # a page the engine's entries filled: only the count
        items = flows.packed(skip + want)
    else:
        items = flows.packed()
    page: list[ct.Tuple] = []
    matched = 0
    for start in range(0, len(items), WALK_SLICE):
        for item in items[start:start + WALK_SLICE]:
            key, flow = flows.unpack(item)
            if query.filtered and not _kernel_match(query, engine, key, flow):
                continue
            if skip <= matched < skip + want:
                page.append(key)
            matched += 1
        await asyncio.sleep(0)
    return page, (matched if query.filtered else len(flows))


def describe_kernel(c: ct.Conntrack, now: float) -> dict | None:
    """A kernel flow as the kernel holds it, in the engine's entry's form (times on the
    engine's clock, as Conn.describe gives them)."""
    o, r = c.orig, c.reply
    if o is None or r is None:
        return None
    ip = ipaddress.ip_address
    status = c.status or 0
    if c.tcp is not None and c.tcp.state is not None:
        state = STATE_NAMES[o.proto][ct.IPVS_STATE_OF_CT[c.tcp.state]] \
            if c.tcp.state < len(ct.IPVS_STATE_OF_CT) else str(c.tcp.state)
        active = c.tcp.state == ct.TCP_CT_ESTABLISHED
    else:
        state, active = STATE_NAMES.get(o.proto, ("?",))[0], False
    flags = (INACTIVE if not active else 0) | (0 if status & ct.IPS_SEEN_REPLY else NOOUTPUT) \
        | (ASSURED if status & ct.IPS_ASSURED else 0)
    return {"proto": PROTO_NAMES.get(o.proto, str(o.proto)),
            "client": f"{ip(o.src)}:{o.sport}", "vip": f"{ip(o.dst)}:{o.dport}",
            "local": f"{ip(r.dst)}:{r.dport}", "real": f"{ip(r.src)}:{r.sport}",
            "state": state, "flags": [n for n, f in FLAG_NAMES if flags & f],
            "expires": now + (c.timeout or 0), "created": None, "forwarding": "kernel",
            "mark": f"0x{c.mark or 0:08x}"}


async def _encode(page: list[Any], describe: Callable[[Any], dict], show_clients: bool,
                  now: float, offset: float) -> list[bytes]:
    """The page's entries as the pieces of a JSON array's inside, each encoded in its own
    slice (no step copies the whole page: at 10,000 entries that is ~2.4 MB)."""
    parts: list[bytes] = []
    for start in range(0, len(page), DESCRIBE_SLICE):
        chunk = []
        for c in page[start:start + DESCRIBE_SLICE]:
            d = describe(c)
            d["expires_in"] = round(d["expires"] - now, 3)
            d["expires"] = round(d["expires"] + offset, 3)
            d["created"] = None if d["created"] is None else round(d["created"] + offset, 3)
            if not show_clients:
                d["client"] = None
            chunk.append(d)
        if chunk:
            parts.append((("," if parts else "") + json.dumps(chunk)[1:-1]).encode())
        await asyncio.sleep(0)
    return parts


def _engine_entry(c: Any) -> dict:
    return {**c.describe(), "forwarding": "engine"}


class ConnPages:
    """Serves pages of one engine's table and of the kernel's flows, one walk at a time.

    kernel: () -> the node's kernel path (tandem.kernel_mode.KernelPath: `flows.flows`, the
    view, and `entries(tuples)`, the kernel's entries), or None without kernel mode."""

    def __init__(self, engine: Any, clock: Callable[[], float], epoch: EpochClock | None = None,
                 kernel: Callable[[], Any] | None = None) -> None:
        self.engine = engine
        self.clock = clock
        self.epoch = epoch or EpochClock(clock)
        self.kernel = kernel or (lambda: None)
        self._one_walk = asyncio.Lock()

    async def page(self, query: ConnQuery, show_clients: bool) -> list[bytes]:
        """The JSON body of GET /conns, in pieces to be sent one after the other."""
        async with self._one_walk:
            page, total = await _walk(self.engine.table, query)
            kpath = self.kernel()
            kernel_rows: list[dict] = []
            if kpath is not None:
                end = query.offset + query.limit
                skip, want = max(0, query.offset - total), max(0, end - max(total, query.offset))
                keys, ktotal = await _walk_kernel(kpath.flows.flows, self.engine, query, skip, want)
                found = await kpath.entries(keys) if keys else {}
                now = self.clock()
                kernel_rows = [d for d in (describe_kernel(found[k], now) for k in keys if k in found)
                               if d is not None]
                total += ktotal
            now, offset = self.clock(), self.epoch.offset()
            conns = await _encode([*page, *kernel_rows],
                                  lambda c: c if isinstance(c, dict) else _engine_entry(c),
                                  show_clients, now, offset)
        head = json.dumps({"total": total, "offset": query.offset, "limit": query.limit,
                           "now": round(now + offset, 3),
                           "clients": "shown" if show_clients else "hidden"})
        return [(head[:-1] + ', "conns": [').encode(), *conns, b"]}"]
