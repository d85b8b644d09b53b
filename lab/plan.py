"""The lab's plan: every address, name and role, as tables; nothing here touches the system.

::

    {p}-client  eth0 198.18.1.10/24 ── client 198.18.1.1/24  {p}-router  front 198.18.0.1/24
                                                                              │
    {p}-sw: br-front ── r-front, a-front, b-front          (front segment 198.18.0.0/24)
            br-back  ── a-back, b-back, rs1-back, rs2-back, rs3-back  (back 198.18.2.0/24)

    {p}-a  front 198.18.0.11/24 (+ VIP 198.18.0.100/32)   back 198.18.2.11/24 (+ laddrs /32)
    {p}-b  front 198.18.0.12/24                            back 198.18.2.12/24
    {p}-rs1..3  eth0 198.18.2.21..23/24, echo server on :8080 (tcp + udp)

The directors are rows of ``DIRECTORS``; everything that differs between them (addresses,
VRRP priority) is a column there, so no other module names "a" or "b".
"""

from __future__ import annotations

import ipaddress
from typing import Any

from syncd.config import SyncConfig

from . import state as st

LAB_NET = ipaddress.ip_network("198.18.0.0/15")

CLIENT_NET = "198.18.1.0/24"
FRONT_NET = "198.18.0.0/24"
BACK_NET = "198.18.2.0/24"
ROUTER_CLIENT_ADDR = "198.18.1.1"
ROUTER_FRONT_ADDR = "198.18.0.1"
CLIENT_ADDR = "198.18.1.10"
VIP = "198.18.0.100"
LADDRS = ["198.18.2.100", "198.18.2.101"]
#: the kernel-mode service's own VIP and laddr (``up(kernel=True)``: KERNEL_VIP:80 tcp+udp,
#: forwarding = "kernel"); a kernel-mode service shares no address with an engine-mode one
KERNEL_VIP = "198.18.0.101"
KERNEL_LADDRS = ["198.18.2.102"]
SERVICE_PORT = 80
RS_PORT = 8080
#: the real servers' PROXY-aware echo port (lab.echo --proxy-port): v1 and v2 headers
PROXY_RS_PORT = 8081
#: the lab's services: VIP:80 tcp+udp, and VIP:81, VIP:82 tcp with a PROXY header (v2, v1)
SERVICES = (
    {"proto": "tcp", "port": SERVICE_PORT, "rs_port": RS_PORT, "client_address": "none"},
    {"proto": "udp", "port": SERVICE_PORT, "rs_port": RS_PORT, "client_address": "none"},
    {"proto": "tcp", "port": 81, "rs_port": PROXY_RS_PORT, "client_address": "proxy-v2"},
    {"proto": "tcp", "port": 82, "rs_port": PROXY_RS_PORT, "client_address": "proxy-v1"},
)
#: PROXY v2 over UDP (a header on every datagram) to the same PROXY port: VIP:81/udp, served
#: by the dual-stack lab (``up --ipv6``, lab.plan6) beside SERVICES
PROXY_UDP_SERVICE = {"proto": "udp", "port": 81, "rs_port": PROXY_RS_PORT, "client_address": "proxy-v2"}
API_PORT = 9100
VRID = 51
#: the port connection sync uses: the node's own default, read from where it is declared
SYNC_PORT: int = SyncConfig.port
#: the lab pair's shared sync secret (a lab value, never a production one)
SYNC_KEY = "tandem-lab-sync-key-not-secret"
#: the api_token of the lab's nodes (a lab value): ``tandem lab up`` prints it, so the
#: documented change requests run as written, and the lab's own reads of /conns send it
#: (a node hides client addresses from a caller without its token)
API_TOKEN = "tandem-lab-api-token"
#: the interface names inside each director namespace
FRONT_IF, BACK_IF = "front", "back"

#: one row per director: its addresses and its VRRP priority (the higher one is the
#: preferred master, and the one that holds the addresses in a lab without the pair)
DIRECTORS = [
    {"name": "a", "front_addr": "198.18.0.11", "back_addr": "198.18.2.11", "priority": 150},
    {"name": "b", "front_addr": "198.18.0.12", "back_addr": "198.18.2.12", "priority": 100},
]
REAL_SERVERS = [
    {"name": "rs1", "addr": "198.18.2.21"},
    {"name": "rs2", "addr": "198.18.2.22"},
    {"name": "rs3", "addr": "198.18.2.23"},
]
DIRECTOR_NAMES = tuple(d["name"] for d in DIRECTORS)
#: the director that holds the VIP and laddrs when the lab runs without the pair
PREFERRED = max(DIRECTORS, key=lambda d: d["priority"])["name"]

ROLES = ["client", "router", "sw", *DIRECTOR_NAMES, *(r["name"] for r in REAL_SERVERS)]

# sanity: every lab address is in 198.18.0.0/15
for _a in [ROUTER_CLIENT_ADDR, ROUTER_FRONT_ADDR, CLIENT_ADDR, VIP, *LADDRS] + [
    d[k] for d in DIRECTORS for k in ("front_addr", "back_addr")
] + [r["addr"] for r in REAL_SERVERS]:
    assert ipaddress.ip_address(_a) in LAB_NET, _a


def director(name: str) -> dict[str, Any]:
    """The DIRECTORS row of `name`; ValueError naming the directors there are."""
    for d in DIRECTORS:
        if d["name"] == name:
            return d
    raise ValueError(f"director must be one of {', '.join(DIRECTOR_NAMES)}, not {name!r}")


def peer(name: str) -> str:
    """The other director of the pair."""
    director(name)
    return next(n for n in DIRECTOR_NAMES if n != name)


def ns_name(prefix: str, role: str) -> str:
    return f"{prefix}-{role}"


def namespaces(prefix: str) -> list[str]:
    st.check_prefix(prefix)
    return [ns_name(prefix, r) for r in ROLES]


def api_url(name: str) -> str:
    return f"http://{director(name)['front_addr']}:{API_PORT}"


def describe(prefix: str, node: bool = False, config_path: str | None = None,
             configs: dict[str, str] | None = None, ha: bool = False,
             api_token: str | None = None) -> dict[str, Any]:
    """The lab's description, as ``tandem lab up --json`` prints it."""
    p = st.check_prefix(prefix)
    configs = configs or ({PREFERRED: config_path} if config_path else {})
    running = set(DIRECTOR_NAMES) if (node and ha) else ({PREFERRED} if node else set())
    return {
        "prefix": p,
        "vip": VIP,
        "services": [dict(svc) for svc in SERVICES],
        "client": {"ns": ns_name(p, "client"), "addr": CLIENT_ADDR, "gateway": ROUTER_CLIENT_ADDR},
        "router": {
            "ns": ns_name(p, "router"),
            "client_addr": ROUTER_CLIENT_ADDR,
            "front_addr": ROUTER_FRONT_ADDR,
        },
        "switch": {"ns": ns_name(p, "sw"), "bridges": ["br-front", "br-back"]},
        "directors": [
            {
                "name": d["name"],
                "ns": ns_name(p, d["name"]),
                "front_addr": d["front_addr"],
                "back_addr": d["back_addr"],
                "front_if": FRONT_IF,
                "back_if": BACK_IF,
                "api": api_url(d["name"]),
                "config": configs.get(d["name"]),
                "node": d["name"] in running,
                "priority": d["priority"] if ha else None,
            }
            for d in DIRECTORS
        ],
        "vip_holder": PREFERRED,
        "ha": bool(ha),
        "vrid": VRID if ha else None,
        "api_token": api_token,
        "real_servers": [
            {"name": r["name"], "ns": ns_name(p, r["name"]), "addr": r["addr"], "port": RS_PORT}
            for r in REAL_SERVERS
        ],
        "laddrs": list(LADDRS),
        "kernel_vip": KERNEL_VIP,
        "kernel_laddrs": list(KERNEL_LADDRS),
        "nets": {"client": CLIENT_NET, "front": FRONT_NET, "back": BACK_NET},
        "state_dir": str(st.state_dir(p)),
        "node": bool(node),
    }
