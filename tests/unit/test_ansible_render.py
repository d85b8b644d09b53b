"""The Ansible role's templates rendered by ansible-playbook itself (on localhost, no hosts):
the node config it writes is the one the node reads, for IPv4 and for dual-stack nodes, and
the kernel settings follow the families the node uses."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from director.config import parse
from lab import topology
from schema.core import dump_toml

REPO = Path(__file__).resolve().parents[2]
PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
ROLE = REPO / "ansible/roles/tandem"

pytestmark = pytest.mark.skipif(not PLAYBOOK.exists(), reason="make setup installs ansible-core")


def role_vars(cfg: dict) -> dict:
    """The role's variables for a lab node's config, as an inventory would give them."""
    node, ifs, vrrp, sync = cfg["node"], cfg["interfaces"], cfg["vrrp"], cfg["sync"]
    return {
        "tandem_node_name": node["name"], "tandem_api": node["api"], "tandem_queue": node["queue"],
        "tandem_api_token": node["api_token"], "tandem_timeouts": cfg["timeouts"],
        "tandem_limits": cfg["limits"], "tandem_laddrs": cfg.get("laddrs", []),
        "tandem_services": cfg["services"], "tandem_front_interface": ifs["front"],
        "tandem_back_interface": ifs["back"], "tandem_garp_count": ifs["garp_count"],
        "tandem_garp_interval": ifs["garp_interval"], "tandem_vrrp_vrid": vrrp["vrid"],
        "tandem_vrrp_priority": vrrp["priority"], "tandem_vrrp_advert_interval": vrrp["advert_interval"],
        "tandem_vrrp_primary_address": vrrp["primary_address"], "tandem_sync_key": sync["key"],
        "tandem_sync_id": sync["sync_id"], "tandem_sync_mode": sync["mode"],
        "tandem_sync_interface": sync["interface"],
    }


def render(tmp_path: Path, evars: dict, bird: bool = False) -> tuple[str, str]:
    """(node config, sysctl file) as the role's templates write them (and BIRD's config,
    to tmp_path/bird.conf, with `bird`)."""
    play = tmp_path / "play.yml"
    play.write_text(
        "- hosts: localhost\n  gather_facts: false\n  connection: local\n"
        f"  vars_files: ['{ROLE}/defaults/main.yml', '{ROLE}/vars/main.yml']\n"
        "  tasks:\n"
        f"    - ansible.builtin.include_tasks: '{ROLE}/tasks/assert.yml'\n"
        f"    - ansible.builtin.template: {{src: '{ROLE}/templates/node.toml.j2', dest: '{tmp_path}/n.toml'}}\n"
        f"    - ansible.builtin.template: {{src: '{ROLE}/templates/sysctl.conf.j2', dest: '{tmp_path}/s.conf'}}\n"
        + (f"    - ansible.builtin.template: {{src: '{ROLE}/templates/bird.conf.j2', dest: '{tmp_path}/bird.conf'}}\n"
           if bird else ""))
    (tmp_path / "extra.json").write_text(json.dumps({"tandem_service_manager": "supervisor", "ansible_python_interpreter": sys.executable, **evars}))
    env = dict(os.environ, ANSIBLE_LOCALHOST_WARNING="false", ANSIBLE_INVENTORY_UNPARSED_WARNING="false",
               ANSIBLE_HOME=str(tmp_path / ".ansible"), ANSIBLE_NOCOLOR="1")
    cp = subprocess.run([str(PLAYBOOK), "-i", "localhost,", str(play), "-e", f"@{tmp_path / 'extra.json'}"],
                        capture_output=True, text=True, env=env, timeout=120)
    assert cp.returncode == 0, cp.stdout[-3000:] + cp.stderr[-2000:]
    return (tmp_path / "n.toml").read_text(), (tmp_path / "s.conf").read_text()


@pytest.mark.parametrize("ipv6", [False, True], ids=["ipv4", "dual-stack"])
def test_the_role_writes_the_config_the_node_reads_and_forwards_the_families_it_uses(tmp_path, ipv6):
    """A dual-stack node (IPv6 services and laddrs, sync over IPv6) is deployed as the lab
    runs it, and the role turns IPv6 forwarding on for it, where an IPv4 node's host is left
    as it was (forwarding on, a Linux router ignores router advertisements)."""
    import tomllib
    cfg = topology.node_config("a", ha=True, ipv6=ipv6, sync_ipv6=ipv6)
    toml, sysctls = render(tmp_path, role_vars(cfg))
    assert parse(tomllib.loads(toml), "n.toml") == parse(tomllib.loads(dump_toml(cfg)), "n.toml")
    settings = dict(line.split(" = ") for line in sysctls.splitlines() if " = " in line)
    assert settings["net.ipv4.ip_forward"] == "1"
    assert settings.get("net.ipv6.conf.all.forwarding") == ("1" if ipv6 else None), settings


@pytest.mark.parametrize("track", [False, True], ids=["untracked", "tracked links"])
def test_a_cluster_director_gets_the_node_config_and_the_bird_config_the_lab_runs(tmp_path, track):
    """tandem_mode = "cluster": the role writes director b's node config exactly as the
    cluster lab runs it (mode, unicast sync to every peer, [cluster] members, BIRD's
    include and socket, its state directory; no [vrrp]; [interfaces], the links tracked,
    with tandem_cluster_track_links) and BIRD's config as the lab's (the same lines, plus
    the log file asked for), which `bird -p` accepts.  A director on one interface (front
    and back the same) gets each kernel setting once."""
    import shutil
    import tomllib

    from ha.bird import announce_include
    from lab import bgp, cluster, cluster_plan
    desc = cluster_plan.plan("tcl", 3)
    cfg = cluster.node_config("tcl", desc, "b")
    node, sync, cl = cfg["node"], cfg["sync"], cfg["cluster"]
    include = tmp_path / "announce.conf"
    log = tmp_path / "log" / "bird.log"
    evars = {
        "tandem_node_name": "b", "tandem_api": node["api"], "tandem_api_token": node["api_token"],
        "tandem_state_dir": node["state_dir"], "tandem_services": cfg["services"],
        "tandem_mode": "cluster", "tandem_sync_key": sync["key"], "tandem_sync_id": sync["sync_id"],
        "tandem_sync_extra": {k: sync[k] for k in ("bind", "port", "peers")},
        "tandem_cluster": {"members": cl["members"]}, "tandem_bird_socket": cl["bird_socket"],
        "tandem_bird_announce_include": cl["announce_include"], "tandem_bird_log_file": str(log),
        "tandem_bgp_local_address": "198.19.40.12", "tandem_bgp_neighbor": bgp.ROUTER_ADDR,
        "tandem_front_interface": "eth0", "tandem_back_interface": "eth0",
    }
    if track:
        evars.update(tandem_cluster_track_links=True, tandem_front_interface="eth0",
                     tandem_back_interface="eth1")
        cfg = {**cfg, "interfaces": {"front": "eth0", "back": "eth1"}}
    toml, sysctls = render(tmp_path, evars, bird=True)
    assert parse(tomllib.loads(toml), "n.toml") == parse(tomllib.loads(dump_toml(cfg)), "n.toml")
    keys = [line.split(" = ")[0] for line in sysctls.splitlines() if " = " in line]
    assert len(keys) == len(set(keys)) and "net.ipv4.conf.eth0.rp_filter" in keys, keys
    code = lambda text: [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    rendered = (tmp_path / "bird.conf").read_text()
    log_line = f'log "{log}" all;'
    assert log_line in code(rendered)
    lab_conf = bgp.director_config({"addr": "198.19.40.12"}, cl["announce_include"])
    assert [ln for ln in code(rendered) if ln != log_line] == code(lab_conf)
    if shutil.which("bird"):
        log.parent.mkdir()
        include.write_text(announce_include([]))
        conf = tmp_path / "check.conf"
        conf.write_text(rendered.replace(cl["announce_include"], str(include)))
        bgp.check_config(conf)


def test_the_role_starts_bird_with_the_include_the_node_writes_for_nothing():
    """Before its node runs, a director's BIRD reads the include the role writes: the one
    the node itself writes when it announces nothing (ha/bird.py), so BIRD's view of it
    is the same whoever wrote it last."""
    import yaml

    from ha.bird import announce_include
    role_vars = yaml.safe_load((ROLE / "vars/main.yml").read_text())
    assert role_vars["tandem_bird_empty_include"] == announce_include([])


def test_a_service_that_names_no_forwarding_runs_in_kernel_mode_unless_it_needs_the_engine(tmp_path):
    """Issue 13: kernel mode is the role's default (tandem_forwarding). A service without
    `forwarding` gets it; one with a client address, every other service on its VIP (an
    address is forwarded one way: the node refuses a mix) and a service that says
    "engine" keep the engine; the node reads the result."""
    import tomllib
    cfg = topology.node_config("a", ha=True)
    rs = [{"addr": "198.18.2.21", "port": 8080}]
    svc = lambda vip, port, **kw: {"proto": "tcp", "vip": vip, "port": port, "scheduler": "wlc",
                                   "laddrs": [kw.pop("laddr")], "real_servers": rs, **kw}
    services = [svc("198.18.0.101", 80, laddr="198.18.2.102"),
                svc("198.18.0.101", 443, laddr="198.18.2.102"),
                svc("198.18.0.100", 80, laddr="198.18.2.100"),
                svc("198.18.0.100", 81, laddr="198.18.2.100", client_address="proxy-v2"),
                svc("198.18.0.102", 80, laddr="198.18.2.103", forwarding="engine")]
    toml, _ = render(tmp_path, {**role_vars(cfg), "tandem_services": services})
    node = parse(tomllib.loads(toml), "n.toml")
    got = {(s.vip, s.port): s.forwarding for s in node.services}
    assert got == {("198.18.0.101", 80): "kernel", ("198.18.0.101", 443): "kernel",
                   ("198.18.0.100", 80): "engine", ("198.18.0.100", 81): "engine",
                   ("198.18.0.102", 80): "engine"}
    everything_engine = render(tmp_path, {**role_vars(cfg), "tandem_services": services[:2],
                                          "tandem_forwarding": "engine"})[0]
    assert {s.forwarding for s in parse(tomllib.loads(everything_engine), "n.toml").services} == {"engine"}
