"""The Ansible role's variable checks, run by ansible-playbook itself (no hosts: the
checks run against localhost before anything else of the role would)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
ROLE = REPO / "ansible/roles/tandem"

pytestmark = pytest.mark.skipif(not PLAYBOOK.exists(), reason="make setup installs ansible-core")


def run_asserts(tmp_path: Path, **extra) -> subprocess.CompletedProcess:
    play = tmp_path / "play.yml"
    play.write_text(
        "- hosts: localhost\n  gather_facts: false\n  connection: local\n"
        f"  vars_files: ['{ROLE}/defaults/main.yml', '{ROLE}/vars/main.yml']\n"
        f"  tasks:\n    - ansible.builtin.include_tasks: '{ROLE}/tasks/assert.yml'\n")
    evars = {"tandem_services": [{"proto": "tcp", "vip": "198.18.0.100", "port": 80}],
             "tandem_service_manager": "supervisor", "tandem_ha": False, **extra}
    (tmp_path / "extra.json").write_text(json.dumps(evars))
    env = dict(os.environ, ANSIBLE_LOCALHOST_WARNING="false", ANSIBLE_INVENTORY_UNPARSED_WARNING="false",
               ANSIBLE_HOME=str(tmp_path / ".ansible"), ANSIBLE_NOCOLOR="1")
    return subprocess.run([str(PLAYBOOK), "-i", "localhost,", str(play), "-e", f"@{tmp_path / 'extra.json'}"],
                          capture_output=True, text=True, env=env, timeout=120)


def test_an_api_beyond_loopback_needs_a_token(tmp_path):
    cp = run_asserts(tmp_path, tandem_api="198.18.0.11:9100")
    assert cp.returncode != 0 and "tandem_api_token" in cp.stdout, cp.stdout[-2000:]


def test_an_api_beyond_loopback_with_a_token_passes(tmp_path):
    cp = run_asserts(tmp_path, tandem_api="198.18.0.11:9100", tandem_api_token="x" * 8 + "0123456789abcdef")
    assert cp.returncode == 0, cp.stdout[-2000:]


def test_an_api_on_loopback_needs_no_token(tmp_path):
    cp = run_asserts(tmp_path, tandem_api="127.0.0.1:9100")
    assert cp.returncode == 0, cp.stdout[-2000:]
