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


def render(tmp_path: Path, mode: str) -> Path:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters["to_json"] = json.dumps                 # Ansible's filter of that name
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    text = env.from_string(TEMPLATE.read_text()).render(
        ansible_managed="managed", tandem_node_name="a", tandem_venv=str(venv),
        tandem_config_file=str(tmp_path / "a.toml"), tandem_pid_file=str(tmp_path / "a.pid"),
        tandem_log_file=str(tmp_path / "a.log"), tandem_start_wait=5, tandem_stop_wait=5,
        tandem_ctl_max_restarts=2, tandem_mode=mode)
    ctl = tmp_path / "tandemctl"
    ctl.write_text(text)
    tandem = venv / "bin" / "tandem"
    tandem.write_text(STAND_IN.format(python=sys.executable, calls=str(tmp_path / "calls")))
    tandem.chmod(0o755)
    return ctl


@pytest.mark.parametrize("mode", ["cluster", "pair"])
def test_the_supervisor_withdraws_a_cluster_directors_routes_after_every_exit(tmp_path, mode):
    ctl = render(tmp_path, mode)
    cp = subprocess.run([sys.executable, str(ctl), "supervise"], capture_output=True,
                        text=True, timeout=60)
    assert cp.returncode == 1 and "giving up" in cp.stdout, cp.stdout + cp.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    node = f"node --config {tmp_path}/a.toml"
    withdraw = f"cluster withdraw --config {tmp_path}/a.toml"
    # two starts (at most 2 in 60 s), each exit followed by the withdrawal
    assert calls == ([node, withdraw] * 2 if mode == "cluster" else [node] * 2), calls
    said = [ln for ln in cp.stdout.splitlines() if "routes:" in ln]
    assert len(said) == (2 if mode == "cluster" else 0), cp.stdout
    assert all(ln.endswith("node a: routes: withdrawn: stand-in") for ln in said), said
