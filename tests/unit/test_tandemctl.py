"""The role's supervisor script (templates/tandemctl.j2, for hosts without systemd) runs
`tandem cluster withdraw` after every exit of a cluster director's node, as the systemd
unit's ExecStopPost does: a node that died leaves its routes announced otherwise.

The script is rendered as the role renders it and its supervisor run for real; `tandem`
is a stand-in program that notes how it was called, and whose node exits at once with an
error (a crash), so the supervisor restarts it until it gives up."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jinja2
import pytest

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "ansible/roles/tandem/templates/tandemctl.j2"

STAND_IN = """#!{python}
import sys
with open({calls!r}, "a") as fh:
    fh.write(" ".join(sys.argv[1:]) + "\\n")
if sys.argv[1] == "cluster":
    print("withdrawn: stand-in")
sys.exit(1 if sys.argv[1] == "node" else 0)
"""


#: a node that starts, says READY=1 and one WATCHDOG=1 over sd_notify, then hangs (its loop
#: never runs again), as a deadlocked or SIGSTOPped node does
HUNG = """#!{python}
import os, socket, sys, time
with open({calls!r}, "a") as fh:
    fh.write(" ".join(sys.argv[1:]) + "\\n")
if sys.argv[1] == "cluster":
    print("withdrawn: stand-in")
    sys.exit(0)
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
for msg in (b"READY=1", b"WATCHDOG=1"):
    s.sendto(msg, os.environ["NOTIFY_SOCKET"])
with open({calls!r}, "a") as fh:
    fh.write("watchdog " + os.environ["WATCHDOG_USEC"] + "\\n")
time.sleep(60)
"""


def render(tmp_path: Path, mode: str, stand_in: str = STAND_IN, watchdog: float = 5) -> Path:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters["to_json"] = json.dumps                 # Ansible's filter of that name
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    text = env.from_string(TEMPLATE.read_text()).render(
        ansible_managed="managed", tandem_node_name="a", tandem_venv=str(venv),
        tandem_config_file=str(tmp_path / "a.toml"), tandem_pid_file=str(tmp_path / "a.pid"),
        tandem_log_file=str(tmp_path / "a.log"), tandem_start_wait=5, tandem_stop_wait=5,
        tandem_ctl_max_restarts=2, tandem_mode=mode, tandem_watchdog_sec=watchdog)
    ctl = tmp_path / "tandemctl"
    ctl.write_text(text)
    tandem = venv / "bin" / "tandem"
    tandem.write_text(stand_in.format(python=sys.executable, calls=str(tmp_path / "calls")))
    tandem.chmod(0o755)
    return ctl


def supervise_until_it_gives_up(ctl: Path, tmp_path: Path) -> tuple[str, list[str], str, str]:
    """Run the rendered supervisor until it gives up; its output, the stand-in's calls, and
    the node's and the withdrawal's command lines as the stand-in notes them."""
    cp = subprocess.run([sys.executable, str(ctl), "supervise"], capture_output=True,
                        text=True, timeout=60)
    assert cp.returncode == 1 and "giving up" in cp.stdout, cp.stdout + cp.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    return (cp.stdout, calls, f"node --config {tmp_path}/a.toml",
            f"cluster withdraw --config {tmp_path}/a.toml")


@pytest.mark.parametrize("mode", ["cluster", "pair"])
def test_the_supervisor_withdraws_a_cluster_directors_routes_after_every_exit(tmp_path, mode):
    out, calls, node, withdraw = supervise_until_it_gives_up(render(tmp_path, mode), tmp_path)
    # two starts (at most 2 in 60 s), each exit followed by the withdrawal
    assert calls == ([node, withdraw] * 2 if mode == "cluster" else [node] * 2), calls
    said = [ln for ln in out.splitlines() if "routes:" in ln]
    assert len(said) == (2 if mode == "cluster" else 0), out
    assert all(ln.endswith("node a: routes: withdrawn: stand-in") for ln in said), said


def test_a_node_whose_loop_hangs_is_killed_by_the_watchdog_its_routes_withdrawn(tmp_path):
    """As systemd's WatchdogSec: the node's pings stop (its loop hung), the supervisor kills
    it after the watchdog time, withdraws a cluster director's routes and restarts it."""
    ctl = render(tmp_path, "cluster", HUNG, watchdog=1)
    out, calls, node, withdraw = supervise_until_it_gives_up(ctl, tmp_path)
    assert calls == [node, "watchdog 1000000", withdraw] * 2, calls
    hung = [ln for ln in out.splitlines() if "sent no watchdog ping" in ln]
    assert len(hung) == 2 and all(ln.endswith("(hung); SIGKILL") for ln in hung), out
    assert "exited with -9" in out, out
    assert not (tmp_path / "a.pid.notify").exists()
