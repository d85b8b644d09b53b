"""IPv6 in the lab, on demand: addresses from 2001:2::/48 on the same links, and echo servers.

The lab is built IPv4-only (lab.netns keeps IPv6 off the bridges). ``enable(prefix)`` turns
IPv6 on in a running lab without the pair (``up(node=..., ha=False)``: director a holds the
service addresses, as it does for IPv4 there) and gives every namespace the address that
mirrors its IPv4 one::

    client 2001:2:0:1::10 -- router 2001:2:0:1::1 / 2001:2::1
    front 2001:2::/64      a 2001:2::11 (+ VIP6 2001:2::100/128)   b 2001:2::12
    back  2001:2:0:2::/64  a 2001:2:0:2::11 (+ LADDR6 2001:2:0:2::100/128)   b ::12
                           rs1..3 2001:2:0:2::21..23, an echo server on [addr]:8080

Duplicate address detection and router advertisements are off, so every address is usable
at once and the routes are the ones set here.  A node serves VIP6 when its config has a
service for it (``service()``); start it before or after, its rules do not need the address.
"""

from __future__ import annotations

import ipaddress
import sys
import time
from typing import Any

from . import nsutil, procs
from . import state as st
from .netns import idx, ipr
from .plan import BACK_IF, DIRECTORS, FRONT_IF, PREFERRED, REAL_SERVERS, RS_PORT, SERVICE_PORT, ns_name

LAB_NET6 = ipaddress.ip_network("2001:2::/48")
CLIENT6 = "2001:2:0:1::10"
ROUTER_CLIENT6 = "2001:2:0:1::1"
ROUTER_FRONT6 = "2001:2::1"
VIP6 = "2001:2::100"
LADDR6 = "2001:2:0:2::100"
#: director name -> (front, back) addresses
DIRECTOR6 = {d["name"]: (f"2001:2::{d['front_addr'].rsplit('.', 1)[1]}",
                         f"2001:2:0:2::{d['back_addr'].rsplit('.', 1)[1]}") for d in DIRECTORS}
REAL_SERVER6 = {r["name"]: f"2001:2:0:2::{r['addr'].rsplit('.', 1)[1]}" for r in REAL_SERVERS}

for _a in [CLIENT6, ROUTER_CLIENT6, ROUTER_FRONT6, VIP6, LADDR6, *REAL_SERVER6.values(),
           *(a for pair in DIRECTOR6.values() for a in pair)]:
    assert ipaddress.ip_address(_a) in LAB_NET6, _a

#: each namespace's interfaces and their addresses (/64, or /128 for a service address)
_PLAN: dict[str, list[tuple[str, str, int]]] = {
    "client": [("eth0", CLIENT6, 64)],
    "router": [("client", ROUTER_CLIENT6, 64), ("front", ROUTER_FRONT6, 64)],
    **{n: [(FRONT_IF, f, 64), (BACK_IF, b, 64)] for n, (f, b) in DIRECTOR6.items()},
    **{n: [("eth0", a, 64)] for n, a in REAL_SERVER6.items()},
}
_PLAN[PREFERRED] += [(FRONT_IF, VIP6, 128), (BACK_IF, LADDR6, 128)]
_FORWARDS = {"router", *DIRECTOR6}
_GATEWAY = {"client": ROUTER_CLIENT6, **{n: ROUTER_FRONT6 for n in DIRECTOR6}}


def service(proto: str = "udp") -> dict[str, Any]:
    """A node's service for VIP6:80 over the three real servers, through LADDR6."""
    return {"proto": proto, "vip": VIP6, "port": SERVICE_PORT, "scheduler": "rr", "laddrs": [LADDR6],
            "real_servers": [{"addr": a, "port": RS_PORT, "weight": 1} for a in REAL_SERVER6.values()]}


def _sysctls(role: str, ifnames: list[str]) -> dict[str, int]:
    vals = {"net.ipv6.conf.all.accept_dad": 0, "net.ipv6.conf.default.accept_dad": 0,
            "net.ipv6.conf.all.disable_ipv6": 0, "net.ipv6.conf.default.disable_ipv6": 0,
            "net.ipv6.conf.lo.disable_ipv6": 0}
    for ifn in ifnames:
        vals |= {f"net.ipv6.conf.{ifn}.accept_dad": 0, f"net.ipv6.conf.{ifn}.accept_ra": 0,
                 f"net.ipv6.conf.{ifn}.disable_ipv6": 0}
    if role in _FORWARDS:
        vals["net.ipv6.conf.all.forwarding"] = 1
    return vals


def enable(prefix: str, echo_wait: float = 10.0) -> None:
    """Turn IPv6 on in the lab `prefix` and start an echo server on each real server's IPv6
    address (recorded in the lab's state, so ``down`` stops it)."""
    for role, addrs in _PLAN.items():
        ns = ns_name(prefix, role)
        ifnames = sorted({ifn for ifn, _, _ in addrs})
        nsutil.set_sysctls(ns, _sysctls(role, ifnames))
        with ipr(ns) as i:
            for ifn, addr, plen in addrs:
                i.addr("add", index=idx(i, ifn), address=addr, prefixlen=plen)
            if role in _GATEWAY:
                i.route("add", dst="::/0", gateway=_GATEWAY[role], family=10)
    state = st.load_state(prefix)
    if state is None:
        raise RuntimeError(f"lab {prefix} is not up")
    d = st.state_dir(prefix)
    for name, addr in REAL_SERVER6.items():
        cmd = [sys.executable, "-m", "lab.echo", "--name", name, "--port", str(RS_PORT), "--host", addr]
        rec = st.start_process(ns_name(prefix, name), f"echo6-{name}", cmd, d / f"echo6-{name}.log")
        procs.record(state, rec)
        st.save_state(prefix, state)
    _wait_echo(prefix, state, echo_wait)


def _wait_echo(prefix: str, state: dict[str, Any], wait: float) -> None:
    """Bounded: until each IPv6 echo server answers WHOAMI on its address."""
    pending, last_err = dict(REAL_SERVER6), {}
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
