"""IPv6 in the lab: addresses from 2001:2::/48 (lab.plan6) on the same links, and echo servers.

The lab is built IPv4-only unless asked (lab.netns keeps IPv6 off the bridges). ``build``
turns IPv6 on in the namespaces and gives each the address that mirrors its IPv4 one;
``tandem lab up --ipv6`` calls it with the rest of the lab (the pair's nodes then serve
VIP6 through the IPv6 laddrs, and take them over as they do the IPv4 ones).  ``enable(prefix)``
does the same in a running lab without the pair (``up(node=..., ha=False)``): director a
holds the service addresses, as it does for IPv4 there.  ``service()`` is a node's UDP or
TCP service for VIP6:80.

Duplicate address detection and router advertisements are off, so every address is usable
at once and the routes are the ones set here; the directors keep their IPv6 addresses while
a fault takes their links down (``keep_addr_on_down``), as their IPv4 ones are kept.
"""

from __future__ import annotations

import errno
import sys
import time
from typing import Any

from . import nsutil, procs
from . import state as st
from .netns import idx, ipr
from .plan import BACK_IF, FRONT_IF, PREFERRED, PROXY_RS_PORT, RS_PORT, ns_name
from .plan6 import (CLIENT6, DIRECTOR6, LADDR6, LADDRS6, LAB_NET6, REAL_SERVER6,  # noqa: F401
                    ROUTER_CLIENT6, ROUTER_FRONT6, VIP6, services6)

#: each namespace's interfaces and their addresses (/64, or /128 for a service address)
_PLAN: dict[str, list[tuple[str, str, int]]] = {
    "client": [("eth0", CLIENT6, 64)],
    "router": [("client", ROUTER_CLIENT6, 64), ("front", ROUTER_FRONT6, 64)],
    **{n: [(FRONT_IF, f, 64), (BACK_IF, b, 64)] for n, (f, b) in DIRECTOR6.items()},
    **{n: [("eth0", a, 64)] for n, a in REAL_SERVER6.items()},
}
#: the service addresses the preferred director holds in a lab without the pair
_HELD = [(FRONT_IF, VIP6, 128)] + [(BACK_IF, a, 128) for a in LADDRS6]
_FORWARDS = {"router", *DIRECTOR6}
_GATEWAY = {"client": ROUTER_CLIENT6, **{n: ROUTER_FRONT6 for n in DIRECTOR6}}


def service(proto: str = "udp") -> dict[str, Any]:
    """A node's service for VIP6:80 over the three real servers, through LADDR6."""
    svc = next(s for s in services6(laddrs=[LADDR6]) if s["proto"] == proto)
    return svc


def _sysctls(role: str, ifnames: list[str]) -> dict[str, int]:
    vals = {"net.ipv6.conf.all.accept_dad": 0, "net.ipv6.conf.default.accept_dad": 0,
            "net.ipv6.conf.all.disable_ipv6": 0, "net.ipv6.conf.default.disable_ipv6": 0,
            "net.ipv6.conf.lo.disable_ipv6": 0}
    for ifn in ifnames:
        vals |= {f"net.ipv6.conf.{ifn}.accept_dad": 0, f"net.ipv6.conf.{ifn}.accept_ra": 0,
                 f"net.ipv6.conf.{ifn}.disable_ipv6": 0}
        if role in DIRECTOR6:
            vals[f"net.ipv6.conf.{ifn}.keep_addr_on_down"] = 1
    if role in _FORWARDS:
        vals["net.ipv6.conf.all.forwarding"] = 1
    return vals


def build(prefix: str, pair: bool) -> None:
    """Turn IPv6 on in the lab `prefix`'s namespaces: sysctls, addresses, default routes.
    Without the pair (`pair` false) the preferred director also holds VIP6 and the laddrs."""
    for role, addrs in _PLAN.items():
        ns = ns_name(prefix, role)
        ifnames = sorted({ifn for ifn, _, _ in addrs})
        nsutil.set_sysctls(ns, _sysctls(role, ifnames))
        held = _HELD if role == PREFERRED and not pair else []
        with ipr(ns) as i:
            for ifn, addr, plen in addrs:
                i.addr("add", index=idx(i, ifn), address=addr, prefixlen=plen)
            for ifn, addr, plen in held:    # as a node adds them (tandem.kernel): deprecated
                i.addr("add", index=idx(i, ifn), address=addr, prefixlen=plen, preferred_lft=0)
            if role in _GATEWAY:
                i.route("add", dst="::/0", gateway=_GATEWAY[role], family=10)


def default_route(i, role: str) -> None:
    """Put a namespace's IPv6 default route back (a link that went down took it along)."""
    try:
        i.route("add", dst="::/0", gateway=_GATEWAY[role], family=10)
    except Exception as exc:  # noqa: BLE001 - already there is fine
        if "exists" not in str(exc).lower() and getattr(exc, "code", None) != errno.EEXIST:
            raise


def start_echo(prefix: str, state: dict[str, Any], echo_wait: float = 10.0,
               names: list[str] | None = None) -> None:
    """An echo server on each real server's IPv6 address (or those of `names`; recorded in
    the lab's state, so ``down`` stops it), and wait until each answers."""
    d = st.state_dir(prefix)
    for name, addr in REAL_SERVER6.items():
        if names is not None and name not in names:
            continue
        cmd = [sys.executable, "-m", "lab.echo", "--name", name, "--port", str(RS_PORT), "--host", addr,
               "--proxy-port", str(PROXY_RS_PORT)]
        rec = st.start_process(ns_name(prefix, name), f"echo6-{name}", cmd, d / f"echo6-{name}.log")
        procs.record(state, rec)
        st.save_state(prefix, state)
    _wait_echo(prefix, state, echo_wait, names)


def enable(prefix: str, echo_wait: float = 10.0) -> None:
    """Turn IPv6 on in the lab `prefix`, built without the pair, and start an echo server on
    each real server's IPv6 address."""
    state = st.load_state(prefix)
    if state is None:
        raise RuntimeError(f"lab {prefix} is not up")
    build(prefix, pair=False)
    start_echo(prefix, state, echo_wait)


def _wait_echo(prefix: str, state: dict[str, Any], wait: float,
               names: list[str] | None = None) -> None:
    """Bounded: until each IPv6 echo server answers WHOAMI on its address."""
    pending = {n: a for n, a in REAL_SERVER6.items() if names is None or n in names}
    last_err: dict[str, str] = {}
    end = time.monotonic() + wait
    while pending:
        for name, addr in sorted(pending.items()):
            rec = procs.find(state, f"echo6-{name}")
            if rec is None or st.process_exited(rec) is not None:
                raise RuntimeError(f"IPv6 echo server {name} exited during start-up")
            try:
                if nsutil.tcp_whoami(ns_name(prefix, name), addr, RS_PORT, timeout=0.5).startswith(name):
                    del pending[name]
            except OSError as exc:
                last_err[name] = repr(exc)
        if pending and time.monotonic() >= end:
            raise TimeoutError(f"IPv6 echo servers not accepting after {wait}s: {last_err}")
        time.sleep(0.05)
