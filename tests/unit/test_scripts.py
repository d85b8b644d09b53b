"""director/scripts.py: notify hooks and `command` probes run as the script user, without the
node's capabilities; and `[node] script_user` in the config."""
from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import sys
import tempfile

import pytest

from director import scripts
from director.config import ConfigError
from director.health.probe import ProbeFailed
from director.scripts import SETPRIV, ScriptUser, ScriptUserError
from tests.helpers import make_config


async def probe_command(argv, timeout):
    # imported here: loading a health kind at collection time changes what
    # test_config's docs check sees (kinds load on demand)
    from director.health.kinds.command import probe_command
    return await probe_command(argv, timeout)

ME = pwd.getpwuid(os.geteuid())
CAP_NET_ADMIN_RAW = (1 << 12) | (1 << 13)


def test_a_node_with_ambient_capabilities_drops_them_for_its_scripts():
    u = ScriptUser.resolve("", euid=ME.pw_uid, ambient=CAP_NET_ADMIN_RAW, setpriv="/usr/bin/setpriv")
    assert u.argv(["/bin/hook", "master"]) == ["/usr/bin/setpriv", *SETPRIV, "/bin/hook", "master"]
    assert u.spawn_kwargs() == {}
    assert SETPRIV == ("--inh-caps=-all", "--ambient-caps=-all", "--")


def test_without_setpriv_a_node_with_ambient_capabilities_is_refused():
    with pytest.raises(ScriptUserError, match="setpriv"):
        ScriptUser.resolve("", euid=ME.pw_uid, ambient=CAP_NET_ADMIN_RAW, setpriv="")


def test_an_unprivileged_node_runs_scripts_only_as_itself():
    other = next(p for p in pwd.getpwall() if p.pw_uid != 0 and p.pw_uid != 4242)
    with pytest.raises(ScriptUserError, match="only as that user") as exc:
        ScriptUser.resolve(other.pw_name, euid=4242, ambient=0)
    assert other.pw_name in str(exc.value)
    me = ScriptUser.resolve(other.pw_name, euid=other.pw_uid, ambient=0)
    assert (me.name, me.uid, me.wrap) == (other.pw_name, None, ())


def test_a_root_node_switches_to_the_script_user_and_its_groups():
    nobody = pwd.getpwnam("nobody")
    u = ScriptUser.resolve("nobody", euid=0, ambient=0)
    assert u.spawn_kwargs()["user"] == nobody.pw_uid
    assert u.spawn_kwargs()["group"] == nobody.pw_gid
    assert nobody.pw_gid in u.spawn_kwargs()["extra_groups"]
    assert ScriptUser.resolve(str(nobody.pw_uid), euid=0, ambient=0).uid == nobody.pw_uid


def test_an_unknown_script_user_is_refused():
    with pytest.raises(ScriptUserError, match="no user"):
        ScriptUser.resolve("no-such-user-tandem", euid=0, ambient=0)


def test_script_user_in_the_config_must_exist():
    assert make_config().script_user == ""
    assert make_config(node={"script_user": "nobody"}).script_user == "nobody"
    with pytest.raises(ConfigError) as exc:
        make_config(node={"script_user": "no-such-user-tandem"})
    assert exc.value.field == "node.script_user" and "no user" in exc.value.problem


def _caps_script(out: str) -> list[str]:
    # a system shell: the script user may not reach the test's own interpreter
    return ["/bin/sh", "-c", f"grep -E '^(Uid|Cap)' /proc/self/status > {out}"]


def _status(path: str) -> dict[str, int]:
    got = {}
    for line in open(path):
        k, _, v = line.partition(":")
        got[k] = int(v.split()[1]) if k == "Uid" else int(v.strip(), 16)
    return got


@pytest.fixture
def policy():
    saved = scripts._current
    yield
    scripts._current = saved


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root")
def test_a_probe_run_by_a_root_node_runs_as_the_script_user_with_no_capability(policy):
    """A root node with script_user = nobody: the probe's process is nobody's, with empty
    effective, permitted and ambient sets (setuid from root clears them, as capabilities(7)
    says)."""
    d = tempfile.mkdtemp(prefix="tandem-scripts-")     # tmp_path's parents are root's only
    try:
        os.chmod(d, 0o777)
        out = os.path.join(d, "caps")
        scripts.use(ScriptUser.resolve("nobody"))
        assert asyncio.run(probe_command(_caps_script(out), 10.0)) == "exit 0"
        got = _status(out)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    assert got["Uid"] == pwd.getpwnam("nobody").pw_uid
    assert got["CapEff"] == got["CapPrm"] == got["CapAmb"] == 0


def test_a_failing_probe_still_fails_under_the_policy(policy):
    scripts.use(ScriptUser.resolve(""))
    with pytest.raises(ProbeFailed, match="exit status 3"):
        asyncio.run(probe_command([sys.executable, "-c", "raise SystemExit(3)"], 10.0))
