"""The lab as a whole: ``up``, ``down`` and ``status``, and the names its users import.

The lab is eight network namespaces wired with veth pairs and two bridges; see lab.plan for
the addresses and roles. Its parts:

- ``lab.plan``: addresses, roles, the director table, the description ``up`` returns;
- ``lab.nodeconf``: the directors' node configs (TOML);
- ``lab.netns``: building the namespaces (links, addresses, routes, sysctls);
- ``lab.procs``: the echo servers and nodes, started and recorded;
- ``lab.faults``: faults injected into a running pair;
- ``lab.state``: the state file and process bookkeeping.

This module re-exports the names tests, benchmarks and the CLI use (``topology.VIP``,
``topology.fault``, ...), so they need not know where each lives.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from . import ipv6 as lab_ipv6
from . import netns, nsutil, procs
from . import state as st
from .faults import FAULT_TABLE, FAULTS, fault, service_udp_loss, sync_loss
from .netns import strip_service_addresses
from .nodeconf import DEFAULT_LIMITS, DEFAULT_TIMEOUTS, dump_toml, node_config, write_config
from .plan import (API_PORT, API_TOKEN, BACK_NET, CLIENT_ADDR, CLIENT_NET, DIRECTOR_NAMES,
                   DIRECTORS, FRONT_NET, LAB_NET, LADDRS, PREFERRED, REAL_SERVERS, ROLES, ROUTER_CLIENT_ADDR,
                   ROUTER_FRONT_ADDR, PROXY_RS_PORT, RS_PORT, SERVICE_PORT, SERVICES, SYNC_KEY,
                   SYNC_PORT, VIP, VRID, describe, namespaces, ns_name)
from .plan6 import describe6
from .procs import node_status, start_node, wait_role

__all__ = [
    "up", "down", "status", "fault", "sync_loss", "service_udp_loss", "FAULTS", "FAULT_TABLE", "node_config", "dump_toml",
    "write_config", "DEFAULT_LIMITS", "DEFAULT_TIMEOUTS", "node_status", "start_node", "wait_role",
    "strip_service_addresses", "describe", "namespaces", "ns_name", "API_PORT", "API_TOKEN",
    "BACK_NET", "CLIENT_ADDR", "CLIENT_NET", "DIRECTOR_NAMES", "DIRECTORS", "FRONT_NET", "LAB_NET",
    "LADDRS", "PREFERRED", "REAL_SERVERS", "ROLES", "ROUTER_CLIENT_ADDR", "ROUTER_FRONT_ADDR",
    "RS_PORT", "SERVICE_PORT", "SYNC_KEY", "SYNC_PORT", "VIP", "VRID", "PROXY_RS_PORT", "SERVICES",
]

# the names these had before the lab was split (bench/ and tests/ use them)
_start_node = start_node
_strip_service_addresses = strip_service_addresses


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
    kernel: bool = False,
    ipv6: bool = False,
    sync_ipv6: bool = False,
) -> dict[str, Any]:
    """Build the lab (removing a previous lab of the same prefix first) and return its
    description.  On failure everything built is removed again (logs are kept) and the
    exception is re-raised.  `ipv6`: dual-stack (lab.plan6: VIP6, IPv6 laddrs and real
    servers, the IPv6 keys in the description); `sync_ipv6` (with it): the pair syncs over
    IPv6 only."""
    return nsutil.outside_event_loop(
        _up, prefix, node, scheduler=scheduler, timeouts=timeouts, limits=limits,
        weights=weights, config_extra=config_extra, echo_wait=echo_wait, node_wait=node_wait,
        ha=ha, advert_interval=advert_interval, kernel=kernel, ipv6=ipv6 or sync_ipv6,
        sync_ipv6=sync_ipv6,
    )


def _up(prefix, node, *, scheduler, timeouts, limits, weights, config_extra, echo_wait, node_wait,
        ha=True, advert_interval=0.1, kernel=False, ipv6=False, sync_ipv6=False):
    st.check_prefix(prefix)
    with st.prefix_lock(prefix):
        _down(prefix)
        d = st.state_dir(prefix)
        d.mkdir(parents=True, exist_ok=True)
        for old in d.glob("*.log"):
            old.unlink(missing_ok=True)
        state: dict[str, Any] = {
            "prefix": prefix,
            "created": time.time(),
            "namespaces": [],
            "processes": [],
            "configs": {},
            "info": None,
            "ha": bool(ha and node),
            "ipv6": bool(ipv6),
        }
        st.save_state(prefix, state)
        try:
            netns.build(prefix, state)
            if ipv6:
                lab_ipv6.build(prefix, pair=state["ha"])
            pair = DIRECTOR_NAMES if state["ha"] else (PREFERRED,)
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
                    kernel=kernel,
                    ipv6=ipv6,
                    sync_ipv6=sync_ipv6,
                )
                # each node's state file (its operator overrides) in the lab's own directory
                cfg["node"].setdefault("state_dir", str(d / f"{name}-state"))
                token = cfg["node"].get("api_token")   # config_extra may set another
                path = d / f"{name}.toml"
                write_config(path, cfg)
                state["configs"][name] = str(path)
            st.save_state(prefix, state)
            procs.start_echo_servers(prefix, state, echo_wait)
            if ipv6:
                lab_ipv6.start_echo(prefix, state, echo_wait)
            if node:
                for name in pair:
                    procs.start_node(prefix, state, Path(state["configs"][name]), node_wait, name)
                if state["ha"]:
                    # the preferred master (the higher priority) wins, the other backs up
                    ranked = sorted(DIRECTORS, key=lambda r: -r["priority"])
                    for rank, row in enumerate(ranked):
                        wait_role(prefix, row["name"], "backup" if rank else "master", node_wait)
            info = describe(prefix, node=node, configs=state["configs"], ha=state["ha"],
                            api_token=token)
            info["ipv6"] = False
            if ipv6:
                describe6(info)
            info["processes"] = [
                {"name": p["name"], "ns": p["ns"], "pid": p["pid"]} for p in state["processes"]
            ]
            state["info"] = info
            st.save_state(prefix, state)
            return info
        except BaseException:
            _down(prefix, keep_logs=True)
            raise


def down(prefix: str = "tandem", keep_logs: bool = False,
         logs_to: str | Path | None = None) -> dict[str, Any]:
    """Stop the recorded processes, delete the lab's namespaces (if present) and its state.
    With `logs_to`, the logs are copied there once the processes have stopped (`logs_kept`
    lists the copies). Never raises (errors are reported in the returned dict)."""
    try:
        st.check_prefix(prefix)
    except ValueError as exc:
        return {"prefix": prefix, "errors": [str(exc)]}
    try:
        with st.prefix_lock(prefix, remove=not keep_logs):
            return nsutil.outside_event_loop(_down, prefix, keep_logs, logs_to)
    except Exception as exc:
        return {"prefix": prefix, "errors": [repr(exc)]}


def _down(prefix: str, keep_logs: bool = False,
          logs_to: str | Path | None = None) -> dict[str, Any]:
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
    if logs_to is not None:
        # after the stop, so a node's last line (what became of its connections) is in
        try:
            result["logs_kept"] = st.copy_logs(prefix, logs_to)
        except OSError as exc:
            result["errors"].append(f"keeping the logs in {logs_to}: {exc}")
    names = namespaces(prefix)
    for n in state.get("namespaces") or []:
        if isinstance(n, str) and n.startswith(f"{prefix}-") and n not in names:
            names.append(n)
    # processes still inside the namespaces that were not recorded: reported, not signalled
    try:
        recorded = {int(r.get("pid", 0)) for r in state.get("processes") or [] if isinstance(r, dict)}
        for n, pids in netns.pids(names).items():
            for pid in pids:
                if pid not in recorded:
                    cmd = st._read_cmdline(pid) or []
                    result.setdefault("stray_processes", []).append(
                        {"ns": n, "pid": pid, "cmdline": " ".join(cmd)}
                    )
    except Exception as exc:  # noqa: BLE001 - informational only
        result["errors"].append(f"listing processes in namespaces: {exc!r}")
    removed, errors = netns.remove(names)
    result["namespaces"] += removed
    result["errors"] += errors
    try:
        st.remove_state(prefix, keep_logs=keep_logs)
    except OSError as exc:
        result["errors"].append(f"state: {exc!r}")
    return result


def status(prefix: str = "tandem") -> dict[str, Any]:
    """What is there: namespaces present, the processes the lab runs (the latest of each
    name: one killed and restarted is the restarted one) alive or not, each node's role,
    and the description."""
    st.check_prefix(prefix)
    state = st.load_state(prefix)
    present = set(nsutil.list_netns())
    ns_state = {n: n in present for n in namespaces(prefix)}
    latest: dict[str, dict[str, Any]] = {}
    for rec in (state or {}).get("processes") or []:
        if isinstance(rec, dict):
            latest[str(rec.get("name"))] = rec     # recorded in start order: the last one wins
    procs_ = []
    for rec in latest.values():
        entry = {
            "name": rec.get("name"),
            "ns": rec.get("ns"),
            "pid": rec.get("pid"),
            "alive": st.process_matches(rec),
            "log": rec.get("log"),
        }
        node = str(rec.get("name")).removeprefix("node-")
        if node in DIRECTOR_NAMES and entry["alive"] and ns_state.get(ns_name(prefix, node)):
            try:
                entry["role"] = node_status(prefix, node, timeout=0.5).get("role")
            except Exception:  # noqa: BLE001 - links down, starting: no role to show
                entry["role"] = None
        procs_.append(entry)
    return {
        "prefix": prefix,
        "up": bool(state) and all(ns_state.values()) and all(p["alive"] for p in procs_),
        "state": str(st.state_path(prefix)) if state else None,
        "namespaces": ns_state,
        "processes": procs_,
        "info": (state or {}).get("info"),
    }
