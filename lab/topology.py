"""The lab topology: eight network namespaces wired with veth pairs and two bridges.

::

    {p}-client  eth0 198.18.1.10/24 ── client 198.18.1.1/24  {p}-router  front 198.18.0.1/24
                                                                              │
    {p}-sw: br-front ── r-front, a-front, b-front          (front segment 198.18.0.0/24)
            br-back  ── a-back, b-back, rs1-back, rs2-back, rs3-back  (back 198.18.2.0/24)

    {p}-a  front 198.18.0.11/24 (+ VIP 198.18.0.100/32)   back 198.18.2.11/24 (+ laddrs /32)
    {p}-b  front 198.18.0.12/24                            back 198.18.2.12/24
    {p}-rs1..3  eth0 198.18.2.21..23/24, echo server on :8080 (tcp + udp)

Links, addresses and routes are made with pyroute2; sysctls are written from a thread that
entered the namespace (lab.nsutil).  Processes are started with ``ip netns exec``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import signal
import os
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2 import netns as _netns

from schema.core import dump_toml
from schema.keys import INTERFACES, LIMITS, TIMEOUTS

from . import nsutil
from . import state as st

# dump_toml is the schema's one TOML writer, re-exported here for the lab's callers

LAB_NET = ipaddress.ip_network("198.18.0.0/15")

CLIENT_NET = "198.18.1.0/24"
FRONT_NET = "198.18.0.0/24"
BACK_NET = "198.18.2.0/24"
ROUTER_CLIENT_ADDR = "198.18.1.1"
ROUTER_FRONT_ADDR = "198.18.0.1"
CLIENT_ADDR = "198.18.1.10"
VIP = "198.18.0.100"
LADDRS = ["198.18.2.100", "198.18.2.101"]
SERVICE_PORT = 80
RS_PORT = 8080
API_PORT = 9100
VRID = 51
#: the lab pair's shared sync secret (a lab value, never a production one)
SYNC_KEY = "tandem-lab-sync-key-not-secret"

DIRECTORS = [
    {"name": "a", "front_addr": "198.18.0.11", "back_addr": "198.18.2.11"},
    {"name": "b", "front_addr": "198.18.0.12", "back_addr": "198.18.2.12"},
]
REAL_SERVERS = [
    {"name": "rs1", "addr": "198.18.2.21"},
    {"name": "rs2", "addr": "198.18.2.22"},
    {"name": "rs3", "addr": "198.18.2.23"},
]

ROLES = ["client", "router", "sw", "a", "b", "rs1", "rs2", "rs3"]

#: the node's own defaults (schema.keys), written out in the lab's configs
DEFAULT_TIMEOUTS = TIMEOUTS.defaults()
DEFAULT_LIMITS = LIMITS.defaults()
#: the lab's segments are one bridge away: a shorter GARP spacing than the product's
LAB_GARP_INTERVAL = 0.02

# sanity: every lab address is in 198.18.0.0/15
for _a in [ROUTER_CLIENT_ADDR, ROUTER_FRONT_ADDR, CLIENT_ADDR, VIP, *LADDRS] + [
    d[k] for d in DIRECTORS for k in ("front_addr", "back_addr")
] + [r["addr"] for r in REAL_SERVERS]:
    assert ipaddress.ip_address(_a) in LAB_NET, _a


def ns_name(prefix: str, role: str) -> str:
    return f"{prefix}-{role}"


def namespaces(prefix: str) -> list[str]:
    st.check_prefix(prefix)
    return [ns_name(prefix, r) for r in ROLES]


def _venv_bin() -> Path:
    return Path(sys.executable).parent


# ---------------------------------------------------------------------------------------------
# node configuration (TOML)


def node_config(
    name: str = "a",
    *,
    scheduler: str = "wlc",
    timeouts: dict[str, float] | None = None,
    limits: dict[str, int] | None = None,
    weights: dict[str, int] | None = None,
    queue: int = 0,
    extra: dict[str, Any] | None = None,
    ha: bool = False,
    advert_interval: float = 0.1,
) -> dict[str, Any]:
    """The node configuration for director ``name`` as a dict (see dump_toml)."""
    d = next(x for x in DIRECTORS if x["name"] == name)
    weights = weights or {}
    rs = [
        {"addr": r["addr"], "port": RS_PORT, "weight": int(weights.get(r["name"], 1))}
        for r in REAL_SERVERS
    ]
    cfg: dict[str, Any] = {
        "node": {"name": name, "api": f"{d['front_addr']}:{API_PORT}", "queue": queue,
                 "api_token": nsutil.LAB_API_TOKEN},
        "timeouts": {**DEFAULT_TIMEOUTS, **(timeouts or {})},
        "limits": {**DEFAULT_LIMITS, **(limits or {})},
        "services": [
            {
                "proto": proto,
                "vip": VIP,
                "port": SERVICE_PORT,
                "scheduler": scheduler,
                "laddrs": list(LADDRS),
                "real_servers": [dict(x) for x in rs],
            }
            for proto in ("tcp", "udp")
        ],
    }
    if ha:
        prio = {"a": 150, "b": 100}[name]
        cfg["interfaces"] = {"front": "front", "back": "back",
                             "garp_count": INTERFACES.default("garp_count"),
                             "garp_interval": LAB_GARP_INTERVAL}
        cfg["vrrp"] = {"vrid": VRID, "priority": prio, "advert_interval": advert_interval,
                       "primary_address": d["front_addr"]}
        cfg["sync"] = {"key": SYNC_KEY, "sync_id": VRID, "mode": "multicast",
                       "interface": d["back_addr"]}
    for k, v in (extra or {}).items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v
    return cfg


# ---------------------------------------------------------------------------------------------
# the description returned by up()


def describe(prefix: str, node: bool = False, config_path: str | None = None,
             configs: dict[str, str] | None = None, ha: bool = False) -> dict[str, Any]:
    p = st.check_prefix(prefix)
    configs = configs or ({"a": config_path} if config_path else {})
    running = {"a", "b"} if (node and ha) else ({"a"} if node else set())
    return {
        "prefix": p,
        "vip": VIP,
        "services": [
            {"proto": "tcp", "port": SERVICE_PORT, "rs_port": RS_PORT},
            {"proto": "udp", "port": SERVICE_PORT, "rs_port": RS_PORT},
        ],
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
                "front_if": "front",
                "back_if": "back",
                "api": f"http://{d['front_addr']}:{API_PORT}",
                "config": configs.get(d["name"]),
                "node": d["name"] in running,
                "priority": {"a": 150, "b": 100}[d["name"]] if ha else None,
            }
            for d in DIRECTORS
        ],
        "vip_holder": "a",
        "ha": bool(ha),
        "vrid": VRID if ha else None,
        "real_servers": [
            {"name": r["name"], "ns": ns_name(p, r["name"]), "addr": r["addr"], "port": RS_PORT}
            for r in REAL_SERVERS
        ],
        "laddrs": list(LADDRS),
        "nets": {"client": CLIENT_NET, "front": FRONT_NET, "back": BACK_NET},
        "state_dir": str(st.state_dir(p)),
        "node": bool(node),
    }


# ---------------------------------------------------------------------------------------------
# building


def _ipr(ns: str) -> IPRoute:
    return IPRoute(netns=ns, flags=0)  # flags=0: fail rather than create a missing namespace


def _idx(ipr: IPRoute, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise RuntimeError(f"interface {ifname} not found in {ipr.status.get('netns')}")
    return found[0]


def _veth(ns: str, ifname: str, peer_ns: str, peer_name: str) -> None:
    """veth pair ifname (in ns) <-> peer_name (in peer_ns), created inside ns (names are local)."""
    with _ipr(ns) as ipr:
        ipr.link("add", ifname=ifname, kind="veth", peer={"ifname": peer_name, "net_ns_fd": peer_ns})


def _link_up(ipr: IPRoute, ifname: str) -> None:
    ipr.link("set", index=_idx(ipr, ifname), state="up")


def _addr(ipr: IPRoute, ifname: str, address: str, prefixlen: int) -> None:
    ipr.addr("add", index=_idx(ipr, ifname), address=address, prefixlen=prefixlen)


def _base_sysctls(ns: str, extra: dict[str, Any] | None = None) -> None:
    values: dict[str, Any] = {
        # the lab is IPv4 only: keep IPv6 (DAD, router solicitations, MLD) off the bridges
        "net.ipv6.conf.all.disable_ipv6": 1,
        "net.ipv6.conf.default.disable_ipv6": 1,
    }
    nsutil.set_sysctls(ns, values, optional=True)
    if extra:
        nsutil.set_sysctls(ns, extra)


def _build(prefix: str, state: dict[str, Any]) -> None:
    p = prefix
    N = {r: ns_name(p, r) for r in ROLES}

    # namespaces, each recorded as soon as it exists
    for role in ROLES:
        _netns.create(N[role])
        state["namespaces"].append(N[role])
        st.save_state(p, state)

    # per-namespace sysctls that do not depend on interfaces
    for role in ROLES:
        _base_sysctls(N[role])
    nsutil.set_sysctls(
        N["sw"],
        {
            "net.bridge.bridge-nf-call-iptables": 0,
            "net.bridge.bridge-nf-call-ip6tables": 0,
            "net.bridge.bridge-nf-call-arptables": 0,
        },
        optional=True,
    )
    nsutil.set_sysctls(
        N["router"],
        {
            "net.ipv4.ip_forward": 1,
            "net.ipv4.conf.all.rp_filter": 0,
            "net.ipv4.conf.default.rp_filter": 0,
        },
    )
    for d in DIRECTORS:
        nsutil.set_sysctls(
            N[d["name"]],
            {
                "net.ipv4.ip_forward": 1,
                "net.ipv4.conf.all.rp_filter": 0,
                "net.ipv4.conf.default.rp_filter": 0,
                "net.ipv4.conf.all.accept_local": 1,
                "net.ipv4.conf.default.accept_local": 1,
                "net.ipv4.conf.all.arp_ignore": 1,
                "net.ipv4.conf.all.arp_announce": 2,
            },
        )
    # the client makes many short connections to the same VIP:port
    nsutil.set_sysctls(
        N["client"],
        {"net.ipv4.tcp_tw_reuse": 1, "net.ipv4.ip_local_port_range": "10000 65000"},
        optional=True,
    )

    # the switch: two bridges and nothing else
    with _ipr(N["sw"]) as ipr:
        for br in ("br-front", "br-back"):
            ipr.link("add", ifname=br, kind="bridge")
        _link_up(ipr, "lo")

    # links (created in the endpoint namespace, peer moved into the switch or router)
    _veth(N["client"], "eth0", N["router"], "client")
    _veth(N["router"], "front", N["sw"], "r-front")
    for d in DIRECTORS:
        _veth(N[d["name"]], "front", N["sw"], f"{d['name']}-front")
        _veth(N[d["name"]], "back", N["sw"], f"{d['name']}-back")
    for r in REAL_SERVERS:
        _veth(N[r["name"]], "eth0", N["sw"], f"{r['name']}-back")

    with _ipr(N["sw"]) as ipr:
        ports = {"br-front": ["r-front"] + [f"{d['name']}-front" for d in DIRECTORS]}
        ports["br-back"] = [f"{d['name']}-back" for d in DIRECTORS] + [
            f"{r['name']}-back" for r in REAL_SERVERS
        ]
        for br, members in ports.items():
            bri = _idx(ipr, br)
            for m in members:
                ipr.link("set", index=_idx(ipr, m), master=bri)
                _link_up(ipr, m)
            _link_up(ipr, br)

    # per-interface sysctls (now that the interfaces exist)
    nsutil.set_sysctls(
        N["router"],
        {"net.ipv4.conf.client.rp_filter": 0, "net.ipv4.conf.front.rp_filter": 0},
    )
    for d in DIRECTORS:
        vals: dict[str, Any] = {}
        for ifn in ("front", "back", "lo"):
            vals[f"net.ipv4.conf.{ifn}.rp_filter"] = 0
            vals[f"net.ipv4.conf.{ifn}.accept_local"] = 1
        nsutil.set_sysctls(N[d["name"]], vals)

    # addresses and routes
    with _ipr(N["client"]) as ipr:
        _link_up(ipr, "lo")
        _addr(ipr, "eth0", CLIENT_ADDR, 24)
        _link_up(ipr, "eth0")
        ipr.route("add", dst="default", gateway=ROUTER_CLIENT_ADDR)
    with _ipr(N["router"]) as ipr:
        _link_up(ipr, "lo")
        _addr(ipr, "client", ROUTER_CLIENT_ADDR, 24)
        _addr(ipr, "front", ROUTER_FRONT_ADDR, 24)
        _link_up(ipr, "client")
        _link_up(ipr, "front")
    for d in DIRECTORS:
        with _ipr(N[d["name"]]) as ipr:
            _link_up(ipr, "lo")
            _addr(ipr, "front", d["front_addr"], 24)
            _addr(ipr, "back", d["back_addr"], 24)
            if d["name"] == "a" and not state.get("ha"):
                # without the pair, director a holds the VIP and the local addresses;
                # with it, the elected master's node adds them itself
                _addr(ipr, "front", VIP, 32)
                for la in LADDRS:
                    _addr(ipr, "back", la, 32)
            _link_up(ipr, "front")
            _link_up(ipr, "back")
            ipr.route("add", dst="default", gateway=ROUTER_FRONT_ADDR)
    for r in REAL_SERVERS:
        with _ipr(N[r["name"]]) as ipr:
            _link_up(ipr, "lo")
            _addr(ipr, "eth0", r["addr"], 24)
            _link_up(ipr, "eth0")


def _start_echo_servers(prefix: str, state: dict[str, Any], wait: float) -> None:
    d = st.state_dir(prefix)
    for r in REAL_SERVERS:
        ns = ns_name(prefix, r["name"])
        cmd = [sys.executable, "-m", "lab.echo", "--name", r["name"], "--port", str(RS_PORT)]
        rec = st.start_process(ns, f"echo-{r['name']}", cmd, d / f"{r['name']}.log")
        state["processes"].append(rec)
        st.save_state(prefix, state)

    pending = {r["name"]: r for r in REAL_SERVERS}
    end = time.monotonic() + wait
    last_err: dict[str, str] = {}
    while pending:
        for name in list(pending):
            rec = next(x for x in state["processes"] if x["name"] == f"echo-{name}")
            if st.process_exited(rec) is not None:
                raise RuntimeError(
                    f"echo server {name} exited during start-up; log {rec['log']}:\n"
                    + st.tail(rec["log"])
                )
            try:
                reply = nsutil.tcp_whoami(ns_name(prefix, name), "127.0.0.1", RS_PORT, timeout=0.5)
                if reply.split(" ")[0] == name:
                    del pending[name]
                else:
                    last_err[name] = f"unexpected reply {reply!r}"
            except OSError as exc:
                last_err[name] = repr(exc)
        if not pending:
            break
        if time.monotonic() >= end:
            raise TimeoutError(f"echo servers not accepting after {wait}s: {last_err}")
        time.sleep(0.05)


def _tandem_cmd(config_path: Path) -> list[str]:
    exe = _venv_bin() / "tandem"
    if exe.exists():
        return [str(exe), "node", "--config", str(config_path)]
    # console script not installed (no editable install yet): call the entry point directly
    return [
        sys.executable,
        "-c",
        "import sys; sys.argv[0] = 'tandem'; from tandem.cli import main; sys.exit(main())",
        "node",
        "--config",
        str(config_path),
    ]


def _start_node(prefix: str, state: dict[str, Any], config_path: Path, wait: float,
                name: str = "a") -> dict[str, Any]:
    ns = ns_name(prefix, name)
    rec = st.start_process(ns, f"node-{name}", _tandem_cmd(config_path),
                           st.state_dir(prefix) / f"{name}.log")
    state["processes"].append(rec)
    st.save_state(prefix, state)
    host = next(d["front_addr"] for d in DIRECTORS if d["name"] == name)
    end = time.monotonic() + wait
    last = ""
    while True:
        rc = st.process_exited(rec)
        if rc is not None:
            raise RuntimeError(
                f"node {name} exited with {rc} during start-up; log {rec['log']}:\n" + st.tail(rec["log"])
            )
        try:
            status, _body = nsutil.http_get(ns, host, API_PORT, "/status", timeout=0.5)
            if status == 200:
                st.note_cmdline(rec)
                st.save_state(prefix, state)
                return rec
            last = f"HTTP {status}"
        except Exception as exc:  # noqa: BLE001 - not ready yet (refused, reset, bad reply)
            last = repr(exc)
        if time.monotonic() >= end:
            raise TimeoutError(
                f"node {name}: GET http://{host}:{API_PORT}/status not OK after {wait}s ({last}); "
                f"log {rec['log']}:\n" + st.tail(rec["log"])
            )
        time.sleep(0.1)


def node_status(prefix: str, name: str, timeout: float = 1.0) -> dict[str, Any]:
    """GET /status of director `name`'s node from inside its namespace."""
    host = next(d["front_addr"] for d in DIRECTORS if d["name"] == name)
    code, body = nsutil.http_get(ns_name(prefix, name), host, API_PORT, "/status", timeout=timeout)
    if code != 200:
        raise OSError(f"node {name}: HTTP {code}")
    return json.loads(body)


def wait_role(prefix: str, name: str, role: str, wait: float = 10.0) -> dict[str, Any]:
    """Poll (bounded) until director `name` reports `role`."""
    end = time.monotonic() + wait
    last: Any = None
    while time.monotonic() < end:
        try:
            last = node_status(prefix, name)
            if last.get("role") == role:
                return last
        except Exception as exc:  # noqa: BLE001 - restarting, links down, ...
            last = repr(exc)
        time.sleep(0.05)
    raise TimeoutError(f"node {name} not {role} after {wait}s (last: {last})")


def _in_plain_thread_if_loop_running(fn, *args, **kw):
    """pyroute2's synchronous IPRoute runs its own event loop; if the caller is inside a running
    loop (an async test), do the work in a helper thread."""
    try:
        asyncio.get_running_loop()
        running = True
    except RuntimeError:
        running = False
    if not running:
        return fn(*args, **kw)
    box: dict[str, Any] = {}

    def runner():
        try:
            box["r"] = fn(*args, **kw)
        except BaseException as exc:
            box["e"] = exc

    t = threading.Thread(target=runner, name="lab-worker")
    t.start()
    t.join()
    if "e" in box:
        raise box["e"]
    return box["r"]


def up(
    prefix: str = "tandem",
    node: bool = True,
    *,
    scheduler: str = "wlc",
    timeouts: dict[str, float] | None = None,
    limits: dict[str, int] | None = None,
    weights: dict[str, int] | None = None,
    config_extra: dict[str, Any] | None = None,
    echo_wait: float = 10.0,
    node_wait: float = 20.0,
    ha: bool = True,
    advert_interval: float = 0.1,
) -> dict[str, Any]:
    """Build the lab (removing a previous lab of the same prefix first) and return its
    description.  On failure everything built is removed again (logs are kept) and the
    exception is re-raised."""
    return _in_plain_thread_if_loop_running(
        _up,
        prefix,
        node,
        scheduler=scheduler,
        timeouts=timeouts,
        limits=limits,
        weights=weights,
        config_extra=config_extra,
        echo_wait=echo_wait,
        node_wait=node_wait,
        ha=ha,
        advert_interval=advert_interval,
    )


def _up(prefix, node, *, scheduler, timeouts, limits, weights, config_extra, echo_wait, node_wait,
        ha=True, advert_interval=0.1):
    st.check_prefix(prefix)
    with st.prefix_lock(prefix):
        _down(prefix)
        d = st.state_dir(prefix)
        d.mkdir(parents=True, exist_ok=True)
        for old in d.glob("*.log"):
            old.unlink(missing_ok=True)
        config_path = d / "a.toml"
        state: dict[str, Any] = {
            "prefix": prefix,
            "created": time.time(),
            "namespaces": [],
            "processes": [],
            "configs": {},
            "info": None,
            "ha": bool(ha and node),
        }
        st.save_state(prefix, state)
        try:
            _build(prefix, state)
            pair = ("a", "b") if state["ha"] else ("a",)
            for name in pair:
                cfg = node_config(
                    name,
                    scheduler=scheduler,
                    timeouts=timeouts,
                    limits=limits,
                    weights=weights,
                    extra=config_extra,
                    ha=state["ha"],
                    advert_interval=advert_interval,
                )
                path = d / f"{name}.toml"
                path.write_text(dump_toml(cfg))
                path.chmod(0o600)           # it holds the sync key
                state["configs"][name] = str(path)
            st.save_state(prefix, state)
            _start_echo_servers(prefix, state, echo_wait)
            if node:
                for name in pair:
                    _start_node(prefix, state, Path(state["configs"][name]), node_wait, name)
                if state["ha"]:
                    wait_role(prefix, "a", "master", node_wait)
                    wait_role(prefix, "b", "backup", node_wait)
            info = describe(prefix, node=node, configs=state["configs"], ha=state["ha"])
            info["processes"] = [
                {"name": p["name"], "ns": p["ns"], "pid": p["pid"]} for p in state["processes"]
            ]
            state["info"] = info
            st.save_state(prefix, state)
            return info
        except BaseException:
            _down(prefix, keep_logs=True)
            raise


FAULTS = ("kill", "link", "stop", "restore")


def _links(prefix: str, name: str, up_: bool) -> float:
    """Set both links of a director; returns the wall time just before the change
    (the netlink socket and indexes are ready by then, so it is the fault's time)."""
    with _ipr(ns_name(prefix, name)) as ipr:
        idx = [_idx(ipr, ifn) for ifn in ("front", "back")]
        at = time.time()
        for i in idx:
            ipr.link("set", index=i, state="up" if up_ else "down")
        if up_:
            # the kernel flushed the default route with its link; a host's network
            # configuration would put it back, so the lab does
            try:
                ipr.route("add", dst="default", gateway=ROUTER_FRONT_ADDR)
            except Exception as exc:  # noqa: BLE001 - already there is fine
                if "exists" not in str(exc).lower() and getattr(exc, "code", None) != 17:
                    raise
    return at


def _strip_service_addresses(prefix: str, name: str) -> None:
    """Remove a VIP or laddr a killed node left behind (it never got to release them)."""
    with _ipr(ns_name(prefix, name)) as ipr:
        for ifn, addrs in (("front", [VIP]), ("back", LADDRS)):
            idx = _idx(ipr, ifn)
            for a in addrs:
                try:
                    ipr.addr("del", index=idx, address=a, prefixlen=32)
                except Exception:  # noqa: BLE001 - not there: nothing to strip
                    pass


def _node_record(state: dict[str, Any], name: str) -> dict[str, Any] | None:
    recs = [p for p in state.get("processes", []) if p.get("name") == f"node-{name}"]
    return recs[-1] if recs else None


def fault(prefix: str, name: str, kind: str, wait: float = 20.0) -> dict[str, Any]:
    """Inject a fault into director `name` (a or b) of a running pair lab.

    kill: links down, then SIGKILL (a crashed box: it never says goodbye, and it
          loses its links before its process, so it cannot answer anything after);
    link: links down, the process lives on (it sees the links go and enters FAULT);
    stop: SIGTERM, a graceful stop (priority 0: the peer takes over after its skew);
    restore: addresses a killed node left are stripped, links up, the node
          restarted if it is not running.
    Returns what was done, with wall-clock times (time.time()) of each step.
    """
    return _in_plain_thread_if_loop_running(_fault, prefix, name, kind, wait)


def _fault(prefix: str, name: str, kind: str, wait: float) -> dict[str, Any]:
    if kind not in FAULTS:
        raise ValueError(f"fault kind must be one of {', '.join(FAULTS)}, not {kind!r}")
    if name not in ("a", "b"):
        raise ValueError(f"director must be a or b, not {name!r}")
    with st.prefix_lock(prefix):
        state = st.load_state(prefix)
        if not state or not state.get("ha"):
            raise RuntimeError(f"no pair lab {prefix!r} is up (tandem lab up first)")
        rec = _node_record(state, name)
        out: dict[str, Any] = {"director": name, "fault": kind}
        if kind in ("kill", "link"):
            out["at"] = _links(prefix, name, False)
            if kind == "kill" and rec is not None and st.process_matches(rec):
                os.kill(rec["pid"], signal.SIGKILL)
                out["killed_pid"] = rec["pid"]
        elif kind == "stop":
            out["at"] = time.time()
            if rec is not None:
                out["stopped"] = st.stop_process(rec, term_wait=wait)
        else:
            _strip_service_addresses(prefix, name)
            out["at"] = _links(prefix, name, True)
            if rec is None or not st.process_matches(rec):
                new = _start_node(prefix, state, Path(state["configs"][name]), wait, name)
                out["restarted_pid"] = new["pid"]
        st.save_state(prefix, state)
        return out


def sync_loss(prefix: str, percent: int) -> None:
    """Drop `percent`% of sync datagrams arriving at each director, at random
    (an nftables numgen rule on the sync path); 0 removes the rule."""
    import subprocess
    if not 0 <= percent <= 100:
        raise ValueError("percent must be 0..100")
    for d in DIRECTORS:
        ns = ns_name(prefix, d["name"])
        subprocess.run(["ip", "netns", "exec", ns, "nft", "delete", "table", "inet", "tandem_lab_loss"],
                       capture_output=True)
        if percent:
            script = "\n".join([
                "table inet tandem_lab_loss {",
                "  chain input {",
                "    type filter hook input priority 0;",
                f"    udp dport 8848 numgen random mod 100 < {percent} counter drop",
                "  }",
                "}"])
            subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=script, text=True,
                           check=True, capture_output=True)


def down(prefix: str = "tandem", keep_logs: bool = False) -> dict[str, Any]:
    """Stop the recorded processes, delete the lab's namespaces (if present) and its state.
    Never raises (errors are reported in the returned dict)."""
    try:
        st.check_prefix(prefix)
    except ValueError as exc:
        return {"prefix": prefix, "errors": [str(exc)]}
    try:
        with st.prefix_lock(prefix, remove=not keep_logs):
            return _in_plain_thread_if_loop_running(_down, prefix, keep_logs)
    except Exception as exc:
        return {"prefix": prefix, "errors": [repr(exc)]}


def _down(prefix: str, keep_logs: bool = False) -> dict[str, Any]:
    result: dict[str, Any] = {"prefix": prefix, "processes": {}, "namespaces": [], "errors": []}
    state = st.load_state(prefix) or {}
    # processes first (they live in the namespaces), latest started first
    for rec in reversed(state.get("processes") or []):
        if not isinstance(rec, dict):
            continue
        outcome = st.stop_process(rec)
        result["processes"][f"{rec.get('name')}:{rec.get('pid')}"] = outcome
        if outcome in ("survived", "error"):
            result["errors"].append(f"process {rec.get('name')} pid {rec.get('pid')}: {outcome}")
    names = namespaces(prefix)
    for n in state.get("namespaces") or []:
        if isinstance(n, str) and n.startswith(f"{prefix}-") and n not in names:
            names.append(n)
    present = set(nsutil.list_netns())
    # processes still inside the namespaces that were not recorded: reported, not signalled
    try:
        recorded = {int(r.get("pid", 0)) for r in state.get("processes") or [] if isinstance(r, dict)}
        for n, pids in _netns.ns_pids().items():
            if n in names:
                for pid in pids:
                    if pid not in recorded:
                        cmd = st._read_cmdline(pid) or []
                        result.setdefault("stray_processes", []).append(
                            {"ns": n, "pid": pid, "cmdline": " ".join(cmd)}
                        )
    except Exception as exc:  # noqa: BLE001 - informational only
        result["errors"].append(f"listing processes in namespaces: {exc!r}")
    for n in names:
        if n not in present:
            continue
        try:
            _netns.remove(n)
            result["namespaces"].append(n)
        except OSError as exc:
            result["errors"].append(f"netns {n}: {exc!r}")
    try:
        st.remove_state(prefix, keep_logs=keep_logs)
    except OSError as exc:
        result["errors"].append(f"state: {exc!r}")
    return result


def status(prefix: str = "tandem") -> dict[str, Any]:
    """What is there: namespaces present, recorded processes alive, the description."""
    st.check_prefix(prefix)
    state = st.load_state(prefix)
    present = set(nsutil.list_netns())
    ns_state = {n: n in present for n in namespaces(prefix)}
    procs = []
    for rec in (state or {}).get("processes") or []:
        procs.append(
            {
                "name": rec.get("name"),
                "ns": rec.get("ns"),
                "pid": rec.get("pid"),
                "alive": st.process_matches(rec),
                "log": rec.get("log"),
            }
        )
    return {
        "prefix": prefix,
        "up": bool(state) and all(ns_state.values()) and all(p["alive"] for p in procs),
        "state": str(st.state_path(prefix)) if state else None,
        "namespaces": ns_state,
        "processes": procs,
        "info": (state or {}).get("info"),
    }
