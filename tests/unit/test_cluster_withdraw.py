"""A cluster director's routes go when its node does (tandem/cluster_cli.py): `tandem cluster
withdraw --config FILE` empties the announcement include and makes a real BIRD daemon read
it (its routes are gone from BIRD's table), says why it could not, by file and field, with
an exit status a service manager can read; and a starting node announces nothing before
anything else it does, so a stale include never outlives a start.

BIRD runs here with a config of the include alone (static protocols, no BGP, no kernel
protocol): it opens its control socket in the test's directory and nothing else."""
from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from ha.bird import announce_include
from schema.core import dump_toml
from tandem import cli
from tandem.cluster_cli import BAD_CONFIG, BIRD_NOT_TOLD, NOT_WRITTEN, WITHDRAWN

VIP, LADDR = "198.18.0.100", "198.18.0.11"
needs_bird = pytest.mark.skipif(not shutil.which("bird") or not shutil.which("birdc"),
                                reason="make setup installs bird2")


def node_doc(d: Path, mode: str = "cluster") -> dict:
    doc = {"node": {"name": "a", "mode": mode, "state_dir": ""},
           "services": [{"proto": "tcp", "vip": VIP, "port": 80, "scheduler": "maglev",
                         "laddrs": [LADDR], "real_servers": [{"addr": "198.18.1.21", "port": 8080}]}]}
    if mode == "cluster":
        doc["cluster"] = {"bird_socket": str(d / "bird.ctl"),
                          "announce_include": str(d / "tandem" / "announce.conf")}
    return doc


def write_config(d: Path, doc: dict) -> Path:
    path = d / "a.toml"
    path.write_text(dump_toml(doc))
    return path


def birdc(d: Path, *cmd: str) -> str:
    cp = subprocess.run(["birdc", "-s", str(d / "bird.ctl"), *cmd], capture_output=True,
                        text=True, timeout=10)
    return cp.stdout + cp.stderr


@pytest.fixture
def bird_running(tmp_path):
    """A BIRD daemon announcing (in its table) what a node that died left in the include."""
    (tmp_path / "tandem").mkdir()
    (tmp_path / "tandem" / "announce.conf").write_text(announce_include([VIP, LADDR]))
    conf = tmp_path / "bird.conf"
    conf.write_text(f'router id 198.18.0.1;\ninclude "{tmp_path}/tandem/announce.conf";\n')
    pid = tmp_path / "bird.pid"
    subprocess.run(["bird", "-c", str(conf), "-s", str(tmp_path / "bird.ctl"), "-P", str(pid)],
                   check=True, capture_output=True, timeout=10)
    try:
        for _ in range(100):
            if f"{VIP}/32" in birdc(tmp_path, "show", "route"):
                break
            time.sleep(0.05)
        yield tmp_path
    finally:
        subprocess.run(["kill", pid.read_text().strip()], capture_output=True)


@needs_bird
def test_withdraw_empties_the_include_and_bird_drops_the_routes(bird_running, capsys):
    d = bird_running
    before = birdc(d, "show", "route")
    assert f"{VIP}/32" in before and f"{LADDR}/32" in before, before
    rc = cli.main(["cluster", "withdraw", "--config", str(write_config(d, node_doc(d)))])
    assert rc == WITHDRAWN, capsys.readouterr()
    assert capsys.readouterr().out.startswith("withdrawn: ")
    assert (d / "tandem" / "announce.conf").read_text() == announce_include([])
    after = birdc(d, "show", "route")
    assert f"{VIP}/32" not in after and f"{LADDR}/32" not in after, after
    # again (a graceful stop already withdrew): the same answer
    assert cli.main(["cluster", "withdraw", "--config", str(d / "a.toml")]) == WITHDRAWN


def test_bird_not_running_leaves_the_include_empty_and_says_so(tmp_path, capsys):
    (tmp_path / "tandem").mkdir()
    (tmp_path / "tandem" / "announce.conf").write_text(announce_include([VIP, LADDR]))
    path = write_config(tmp_path, node_doc(tmp_path))
    rc = cli.main(["cluster", "withdraw", "--config", str(path)])
    err = capsys.readouterr().err
    assert rc == BIRD_NOT_TOLD and err.startswith("not-told: "), err
    assert f"{path}: cluster.bird_socket" in err
    assert (tmp_path / "tandem" / "announce.conf").read_text() == announce_include([])
    # before BIRD starts (at boot), the file alone: nothing to tell
    (tmp_path / "tandem" / "announce.conf").write_text(announce_include([VIP]))
    assert cli.main(["cluster", "withdraw", "--config", str(path), "--file-only"]) == WITHDRAWN
    assert (tmp_path / "tandem" / "announce.conf").read_text() == announce_include([])


def test_an_include_that_cannot_be_written_is_named(tmp_path, capsys):
    path = write_config(tmp_path, node_doc(tmp_path))     # its directory was never made
    rc = cli.main(["cluster", "withdraw", "--config", str(path)])
    err = capsys.readouterr().err
    assert rc == NOT_WRITTEN and err.startswith("failed: "), err
    assert f"{path}: cluster.announce_include: cannot write {tmp_path}/tandem/announce.conf" in err


@pytest.mark.parametrize("change, field", [
    (lambda doc: doc["cluster"].update(drain_timeout=-1.0), "cluster.drain_timeout"),
    (lambda doc: doc["cluster"].update(bird_sock="/x"), "cluster.bird_sock"),
    (lambda doc: [doc.pop("cluster"), doc["node"].update(mode="pair")], "node.mode"),
], ids=["bad value", "unknown key", "pair mode"])
def test_a_bad_config_names_the_file_and_field(tmp_path, capsys, change, field):
    doc = node_doc(tmp_path)
    change(doc)
    path = write_config(tmp_path, doc)
    assert cli.main(["cluster", "withdraw", "--config", str(path)]) == BAD_CONFIG
    err = capsys.readouterr().err
    assert err.startswith(f"tandem cluster withdraw: bad config: {path}: {field}: "), err


async def test_a_starting_node_announces_nothing_before_anything_else():
    """The first thing a cluster node tells BIRD, before its queue rules exist, is the
    empty announcement (a stale include from a node that died is withdrawn at once)."""
    from tandem.node import Edges, Node
    from tests.fake_kernel import FakeKernel
    from tests.unit.test_cluster_node import FakeBird, config, own

    kernel = FakeKernel()

    class Recording(FakeBird):
        def apply(self, prefixes, adopted=()):
            self.when.append(kernel.rules)
            return super().apply(prefixes, adopted)

    bird = Recording()
    bird.when = []
    node = Node(config("a", ["a"], None), edges=Edges(kernel=kernel, bird=bird))
    try:
        await node.start()
        assert bird.applied[0] == frozenset() and bird.when[0] is None     # no rules yet
        assert bird.last == own("a")
    finally:
        await node.stop()
