"""The Ansible role's systemd unit runs the node as its own user with only CAP_NET_ADMIN and
CAP_NET_RAW, the same credentials the unprivileged lab test gives its nodes."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import jinja2
import pytest

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "ansible/roles/tandem/templates/tandem.service.j2"
VARS = {"ansible_managed": "managed", "tandem_node_name": "a", "tandem_ctl_max_restarts": 5,
        "tandem_user": "tandem", "tandem_group": "tandem", "tandem_venv": "/opt/tandem/venv",
        "tandem_config_file": "/etc/tandem/a.toml", "tandem_stop_wait": 20,
        "tandem_watchdog_sec": 5}


def render(**extra) -> str:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters["dirname"] = os.path.dirname        # Ansible's filter of that name
    return env.from_string(TEMPLATE.read_text()).render(**{**VARS, **extra})


def directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            k, _, v = line.partition("=")
            out.setdefault(k, []).append(v)
    return out


def test_the_unit_runs_as_its_user_with_only_the_two_capabilities():
    d = directives(render())
    assert d["User"] == ["tandem"] and d["Group"] == ["tandem"]
    assert d["AmbientCapabilities"] == ["CAP_NET_ADMIN CAP_NET_RAW"]
    assert d["CapabilityBoundingSet"] == ["CAP_NET_ADMIN CAP_NET_RAW"]
    assert d["NoNewPrivileges"] == ["yes"]
    for hardening in ("ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices",
                      "ProtectKernelTunables", "ProtectKernelModules", "RestrictAddressFamilies",
                      "SystemCallFilter", "RestrictSUIDSGID"):
        assert hardening in d, hardening
    # only the xtables-lock step runs as root ("+"), and it runs no tandem code
    privileged = [v for v in d["ExecStartPre"] if v.startswith("+")]
    assert len(privileged) == 1 and privileged[0].startswith("+/bin/sh -c 'touch /run/xtables.lock")


def test_the_lab_gives_its_unprivileged_nodes_the_units_capabilities():
    from tests.lab.test_unprivileged import CAPS
    d = directives(render())
    unit = {c.removeprefix("CAP_").lower() for c in d["AmbientCapabilities"][0].split()}
    assert CAPS == "-all," + ",".join(f"+{c}" for c in sorted(unit))


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="no systemd-analyze")
@pytest.mark.parametrize("mode", ["pair", "cluster"])
def test_systemd_accepts_the_unit(tmp_path, mode):
    unit = tmp_path / "tandem-test.service"
    unit.write_text(render(**(CLUSTER if mode == "cluster" else {})))
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True,
                       timeout=60)
    # it may note that the ExecStart binary is missing here; nothing else may be wrong
    problems = [ln for ln in (r.stdout + r.stderr).splitlines()
                if ln.strip() and "/opt/tandem/venv" not in ln and "/etc/tandem" not in ln]
    assert not problems, problems


def test_a_cluster_node_may_write_its_announcement_include_and_reach_birds_socket():
    """Cluster mode: under ProtectSystem=strict the node could write nothing in /etc, and
    BIRD's control socket is BIRD's group's; the unit opens exactly the include's own
    directory and adds that group (a pair node gets neither)."""
    d = directives(render(**CLUSTER))
    assert d["ReadWritePaths"] == ["/etc/bird/tandem"] and d["SupplementaryGroups"] == ["bird"]
    assert d["ProtectSystem"] == ["strict"]
    pair = directives(render())
    assert "ReadWritePaths" not in pair and "SupplementaryGroups" not in pair


CLUSTER = dict(tandem_mode="cluster", tandem_bird_group="bird", tandem_bird_service="bird",
               tandem_bird_announce_include="/etc/bird/tandem/announce.conf")


def runs_withdraw(command: str) -> list[str]:
    """The `tandem cluster withdraw` a unit line runs, read by tandem's own parser: the
    config it names and whether it only empties the file; AssertionError if it is not."""
    from tandem.cli import build_parser
    argv = command.lstrip("-").split()
    assert argv[0] == "/opt/tandem/venv/bin/tandem", argv
    args = build_parser().parse_args(argv[1:])
    assert (args.command, args.cluster_command) == ("cluster", "withdraw"), argv
    return [args.config, "file-only" if args.file_only else "then birdc"]


def test_a_cluster_unit_withdraws_the_routes_after_every_exit_of_the_node():
    """A node that dies leaves its routes announced (BIRD runs on): the unit withdraws them
    after every exit (ExecStopPost, best effort), and stops before BIRD at shutdown; a pair
    node's unit has neither."""
    d = directives(render(**CLUSTER))
    [post] = d["ExecStopPost"]
    assert post.startswith("-")                 # best effort: never fails the unit
    assert runs_withdraw(post) == ["/etc/tandem/a.toml", "then birdc"]
    assert "bird.service" in d["After"]
    pair = directives(render())
    assert "ExecStopPost" not in pair and "bird.service" not in pair["After"]


def test_birds_unit_gets_a_drop_in_that_empties_the_include_before_bird_starts():
    """At boot BIRD starts before the node: the include a dead node left would be announced
    until the node runs, so BIRD's unit empties it first (the file alone, BIRD not yet up)."""
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    text = env.from_string((TEMPLATE.parent / "bird-withdraw.conf.j2").read_text()).render(**VARS)
    d = directives(text)
    assert "[Service]" in text.splitlines()
    [pre] = d["ExecStartPre"]
    assert pre.startswith("-") and runs_withdraw(pre) == ["/etc/tandem/a.toml", "file-only"]


def test_the_node_tells_systemd_it_is_ready_and_a_hung_node_is_killed_by_the_watchdog():
    """Type=notify: `systemctl start` returns once the node says READY=1; WatchdogSec: a node
    whose loop stops its pings is killed and, as any failure, restarted."""
    d = directives(render())
    assert d["Type"] == ["notify"] and d["NotifyAccess"] == ["main"]
    assert d["WatchdogSec"] == ["5"] and d["Restart"] == ["on-failure"]
