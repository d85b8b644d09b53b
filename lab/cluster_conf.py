"""The cluster lab's node configs (lab/cluster.py builds the lab, lab/cluster_plan.py has
every address): each director in cluster mode, `maglev`, its own laddrs, sync unicast to
every other director, `[cluster] members` naming every director's pool (by forwarding
mode once the lab has its kernel-mode service), and its BIRD's include and socket.  With
IPv6 (`vip6`), the IPv6 VIP's service, engine forwarding: its laddr is in the engine pool."""
from __future__ import annotations

from typing import Any

from . import bgp
from . import state as st
from .nodeconf import write_config
from .plan import API_TOKEN, SYNC_KEY

API_PORT, SYNC_PORT, SERVICE_PORT, RS_PORT = 9100, 8848, 80, 8080
#: the lab's health checks (tcp connect): quick, so a stopped echo server is seen soon
HEALTH = {"kind": "tcp", "interval": 0.5, "timeout": 0.4, "rise": 1, "fall": 2}


def node_config(prefix: str, desc: dict[str, Any], name: str,
                extra_services: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Director `name`'s node config (cluster mode).  `extra_services` (a benchmark's own,
    e.g. a UDP service) are added beside VIP:80, each with this director's laddrs."""
    me = next(d for d in desc["directors"] if d["name"] == name)
    files = bgp._files(prefix, name)
    laddr = me["laddrs"][:1]            # the engine-mode services' (the kernel one has its own)
    extra = [{**s, "laddrs": list(laddr)} for s in extra_services or []]
    if desc.get("kernel_vip"):
        extra.append({"proto": "tcp", "vip": desc["kernel_vip"], "port": SERVICE_PORT,
                      "scheduler": "maglev", "forwarding": "kernel",
                      "laddrs": [me["kernel_laddr"]], "health": dict(HEALTH),
                      "real_servers": [{"addr": r["addr"], "port": RS_PORT}
                                       for r in desc["real_servers"]]})
    if desc.get("vip6"):        # engine forwarding, through the director's IPv6 laddr
        extra.append({"proto": "tcp", "vip": desc["vip6"], "port": SERVICE_PORT,
                      "scheduler": "maglev", "laddrs": [me["laddr6"]], "health": dict(HEALTH),
                      "real_servers": [{"addr": r["addr6"], "port": RS_PORT}
                                       for r in desc["real_servers"]]})
    return {
        "node": {"name": name, "api": f"{me['front_addr']}:{API_PORT}", "mode": "cluster",
                 "api_token": API_TOKEN, "state_dir": str(st.state_dir(prefix) / f"{name}-state")},
        "services": [{"proto": "tcp", "vip": desc["vip"], "port": SERVICE_PORT,
                      "scheduler": "maglev", "laddrs": list(laddr), "health": dict(HEALTH),
                      "real_servers": [{"addr": r["addr"], "port": RS_PORT}
                                       for r in desc["real_servers"]]}, *extra],
        "sync": {"key": SYNC_KEY, "sync_id": 61, "mode": "unicast", "bind": me["front_addr"],
                 "port": SYNC_PORT,
                 "peers": [f"{d['front_addr']}:{SYNC_PORT}" for d in desc["directors"]
                           if d["name"] != name]},
        "cluster": {"bird_socket": str(files["ctl"]), "announce_include": str(files["announce"]),
                    "members": {d["name"]: _pool(d) for d in desc["directors"]}},
    }


def _pool(d: dict[str, Any]) -> list[str] | dict[str, list[str]]:
    """A director's `[cluster] members` entry: by forwarding mode once it has a kernel-mode
    laddr (every director must know which of its peers' laddrs conntrack tracks)."""
    if not d.get("kernel_laddr"):
        return list(d["laddrs"])
    return {"engine": [a for a in d["laddrs"] if a != d["kernel_laddr"]],
            "kernel": [d["kernel_laddr"]]}


def write_configs(prefix: str, state: dict[str, Any]) -> None:
    """Every director's node config written from the lab's state: its plan (`cluster`) and
    the services added at `lab up` (`extra_services`, recorded then), so that a join
    rewrites each config as `up` wrote it; `state["configs"]` names the files."""
    desc, sd = state["cluster"], st.state_dir(prefix)
    for d in desc["directors"]:
        path = sd / f"{d['name']}.toml"
        write_config(path, node_config(prefix, desc, d["name"], state.get("extra_services")))
        state["configs"][d["name"]] = str(path)
