"""A node installs its own iptables rules and removes them on exit; a bad config changes nothing."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab.testing import require_lab

pytestmark = pytest.mark.lab
NS = "tnode-x"
TANDEM = [sys.executable, "-m", "tandem.cli"]

CONFIG = """
[node]
name = "x"
api = "127.0.0.1:9199"
queue = 7
[[services]]
proto = "tcp"
vip = "198.18.9.100"
port = 80
laddrs = ["198.18.9.200"]
  [[services.real_servers]]
  addr = "198.18.9.21"
  port = 8080
"""


def sh(*argv, check=True):
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=30)


def ruleset() -> str:
    """The namespace's whole ruleset: tandem's table and the iptables-nft queue chain."""
    return sh("ip", "netns", "exec", NS, "nft", "list", "ruleset").stdout


@pytest.fixture
def netns():
    require_lab()
    sh("ip", "netns", "del", NS, check=False)
    sh("ip", "netns", "add", NS)
    sh("ip", "-n", NS, "link", "set", "lo", "up")
    try:
        yield NS
    finally:
        sh("ip", "netns", "del", NS, check=False)


def wait_for_api(proc, deadline_s=15.0) -> bool:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline and proc.poll() is None:
        r = sh("ip", "netns", "exec", NS, sys.executable, "-c",
               "import urllib.request as u; print(u.urlopen('http://127.0.0.1:9199/status', timeout=1).status)",
               check=False)
        if r.stdout.strip() == "200":
            return True
        time.sleep(0.2)
    return False


def test_node_installs_its_rules_and_removes_them_on_sigterm(netns, tmp_path: Path):
    cfg = tmp_path / "x.toml"
    cfg.write_text(CONFIG)
    proc = subprocess.Popen(["ip", "netns", "exec", NS, *TANDEM, "node", "--config", str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert wait_for_api(proc), proc.stdout.read() if proc.poll() is not None else "no API"
        rules = ruleset()
        # both addresses untracked and marked for the queue, one queue rule matching the mark
        assert "elements = { 198.18.9.100, 198.18.9.200 }" in rules
        assert "ip daddr @engine4 notrack meta mark set 0x54450000" in rules
        mangle = sh("ip", "netns", "exec", NS, "iptables-nft", "-t", "mangle", "-S").stdout
        assert "-A PREROUTING -j TANDEM_QUEUE" in mangle
        assert "-A TANDEM_QUEUE -m mark --mark 0x54450000 -j NFQUEUE --queue-num 7" in mangle
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0, out
    assert ruleset() == ""              # nothing of ours left, not even an empty mangle table
    assert "node x: stopped" in out


def test_bad_config_names_the_field_and_touches_nothing(netns, tmp_path: Path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(CONFIG.replace('port = 8080', 'port = 80800'))
    r = sh("ip", "netns", "exec", NS, *TANDEM, "node", "--config", str(cfg), check=False)
    assert r.returncode == 2
    assert "bad.toml: services[0].real_servers[0].port: must be <= 65535" in r.stderr
    assert ruleset() == ""
