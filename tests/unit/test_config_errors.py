"""Broken config files as a new operator writes them, through the real command line and a
running node's reload: each error is `FILE: FIELD: PROBLEM` with the exact words below, the
file named once, no secret, no traceback (issue 17, item 12).

keepalived reports a bad keyword with where it is and carries on with the old config;
ipvsadm refuses a malformed address before it reaches the kernel.  Here a bad file is
refused whole: `tandem check-config` exits 2, `POST /reload` answers 400 with the same
line and the node keeps running as it was."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from director import openapi
from director.api import make_app
from tandem.cli import main

API_TOKEN = "s3cret-api-token-value"
SYNC_KEY = "hex:00112233445566778899aabbccddeeff0123456789abcdef"
#: an operator's file for director a of a pair
BASE = f"""\
[node]
name = "a"
api = "198.18.0.11:9100"
api_token = "{API_TOKEN}"

[interfaces]
front = "front"
back = "back"

[vrrp]
vrid = 51
priority = 150
primary_address = "198.18.0.11"

[sync]
key = "{SYNC_KEY}"
interface = "198.18.2.11"

[[services]]
proto = "tcp"
vip = "198.18.0.100"
port = 80
scheduler = "wlc"
laddrs = ["198.18.2.100", "198.18.2.101"]
  [[services.real_servers]]
  addr = "198.18.2.21"
  port = 8080
  [[services.real_servers]]
  addr = "198.18.2.22"
  port = 8080
"""
SERVICE = BASE[BASE.index("[[services]]"):]
LADDRS = 'laddrs = ["198.18.2.100", "198.18.2.101"]'


def edit(old: str, new: str) -> str:
    assert old in BASE, old
    return BASE.replace(old, new, 1)


def in_node(extra: str) -> str:
    return edit('name = "a"', f'name = "a"\n{extra}')


def in_service(extra: str) -> str:
    return edit('scheduler = "wlc"', f'scheduler = "wlc"\n{extra}')


def in_sync(extra: str) -> str:
    return edit('interface = "198.18.2.11"', extra)


def in_vrrp(extra: str) -> str:
    return edit("priority = 150", f"priority = 150\n{extra}")


#: (case, the file's text, FIELD: PROBLEM)
CASES = [
    # the file itself
    ("empty", "", "node: is required"),
    ("toml syntax", edit('name = "a"', "name = a"),
     "(syntax): Invalid value (at line 2, column 8)"),
    ("key twice", edit('name = "a"', 'name = "a"\nname = "b"'),
     "(syntax): Cannot overwrite a value (at line 3, column 11)"),
    ("unknown top-level key", "foo = 1\n" + BASE, "foo: unknown key (misspelt?)"),
    # [node]
    ("no name", edit('name = "a"\n', ""),
     "node.name: is required (the node's name, shown in logs and `/status`)"),
    ("misspelt key", in_node('nmae = "x"'), "node.nmae: unknown key (misspelt?)"),
    ("role", in_node('role = "primary"'), "node.role: must be one of master, backup, got 'primary'"),
    ("tick as text", in_node('tick = "fast"'), "node.tick: must be float, got str"),
    ("tick too long", in_node("tick = 100"), "node.tick: must be <= 10, got 100"),
    ("api without port", edit('"198.18.0.11:9100"', '"198.18.0.11"'),
     "node.api: must be host:port, got '198.18.0.11'"),
    ("api v6 without brackets", edit('"198.18.0.11:9100"', '"2001:2::11"'),
     "node.api: an IPv6 address is written [addr]:port, got '2001:2::11'"),
    ("api token as number", edit(f'"{API_TOKEN}"', "1234567890123456"),
     "node.api_token: must be str, got int"),
    ("script user", in_node('script_user = "nobody-here"'),
     "node.script_user: no user 'nobody-here' on this host"),
    # [timeouts] [limits]
    ("negative timeout", BASE + "\n[timeouts]\ntcp_established = -1\n",
     "timeouts.tcp_established: must be >= 0.001, got -1"),
    ("port range upside down", BASE + "\n[limits]\nlport_min = 9000\nlport_max = 8000\n",
     "limits.lport_min: 9000 is above lport_max 8000"),
    # [[services]]
    ("no services", BASE[:BASE.index("[[services]]")],
     "services: is required (the virtual services, as `[[services]]` tables)"),
    ("services as one table", edit("[[services]]", "[services]"), "services: must be list, got table"),
    ("vip out of range", edit('vip = "198.18.0.100"', 'vip = "198.18.0.300"'),
     "services[0].vip: '198.18.0.300' is not an IP address"),
    ("vip as host name", edit('vip = "198.18.0.100"', 'vip = "www.example.com"'),
     "services[0].vip: 'www.example.com' is not an IP address"),
    ("port as text", edit("port = 80\n", 'port = "80"\n'), "services[0].port: must be int, got str"),
    ("port too big", edit("port = 80\n", "port = 70000\n"), "services[0].port: must be <= 65535, got 70000"),
    ("proto", edit('proto = "tcp"', 'proto = "sctp"'),
     "services[0].proto: must be one of tcp, udp, got 'sctp'"),
    ("scheduler option", edit('scheduler = "wlc"', 'scheduler = "mh"\nscheduler_options = {table_size = 250}'),
     "services[0].scheduler_options.table_size: must be one of 251, 509, 1021, 2039, 4093, 8191, "
     "16381, 32749, 65521, 131071, got 250"),
    ("flag of another scheduler", edit('scheduler = "wlc"', 'scheduler = "mh"\nflags = ["sh-port"]'),
     "services[0].flags[0]: scheduler mh takes mh-fallback, mh-port, got 'sh-port'"),
    ("flag twice", edit('scheduler = "wlc"', 'scheduler = "sh"\nflags = ["sh-port", "sh-port"]'),
     "services[0].flags[1]: sh-port is listed twice"),
    ("laddr as interface name", edit(LADDRS, 'laddrs = ["eth1"]'),
     "services[0].laddrs[0]: 'eth1' is not an IP address"),
    ("laddr of the other family", edit(LADDRS, 'laddrs = ["2001:2::1"]'),
     "services[0].laddrs[0]: 2001:2::1 is IPv6, the service is IPv4"),
    ("laddr twice", edit(LADDRS, 'laddrs = ["198.18.2.100", "198.18.2.100"]'),
     "services[0].laddrs[1]: 198.18.2.100 is listed twice (laddrs[0])"),
    ("laddr is the VIP", edit(LADDRS, 'laddrs = ["198.18.2.100", "198.18.0.100"]'),
     "services[0].laddrs[1]: 198.18.0.100 is a VIP (services[0].vip): a laddr must be an "
     "address of its own"),
    ("laddr is another service's VIP",
     BASE + SERVICE.replace('vip = "198.18.0.100"', 'vip = "198.18.2.101"'),
     "services[0].laddrs[1]: 198.18.2.101 is a VIP (services[1].vip): a laddr must be an "
     "address of its own"),
    ("top-level laddr is a VIP",
     'laddrs = ["198.18.0.100"]\n' + edit(LADDRS + "\n", ""),
     "laddrs[0]: 198.18.0.100 is a VIP (services[0].vip): a laddr must be an address of its own"),
    ("laddr is a real server", edit(LADDRS, 'laddrs = ["198.18.2.100", "198.18.2.22"]'),
     "services[0].laddrs[1]: 198.18.2.22 is a real server (services[0].real_servers[1].addr): "
     "a laddr must be an address of its own"),
    ("real server is the VIP", edit('addr = "198.18.2.22"', 'addr = "198.18.0.100"'),
     "services[0].real_servers[1].addr: 198.18.0.100 is a VIP (services[0].vip): the director "
     "would send the traffic to itself"),
    ("duplicate service", BASE + SERVICE, "services[1]: duplicate service tcp 198.18.0.100:80"),
    ("duplicate real server", edit('addr = "198.18.2.22"', 'addr = "198.18.2.21"'),
     "services[0].real_servers[1]: 198.18.2.21:8080 is listed twice (real_servers[0])"),
    ("real server as host name", edit('addr = "198.18.2.21"', 'addr = "rs1"'),
     "services[0].real_servers[0].addr: 'rs1' is not an IP address"),
    ("negative weight", edit('addr = "198.18.2.21"', 'addr = "198.18.2.21"\n  weight = -1'),
     "services[0].real_servers[0].weight: must be >= 0, got -1"),
    ("misspelt weight", edit('addr = "198.18.2.21"', 'addr = "198.18.2.21"\n  wieght = 2'),
     "services[0].real_servers[0].wieght: unknown key (misspelt?)"),
    ("sorry server without port", in_service('sorry_server = "198.18.2.9"'),
     "services[0].sorry_server: must be addr:port, got '198.18.2.9'"),
    ("ops on tcp", in_service("ops = true"),
     "services[0].ops: one-packet scheduling is only for UDP services"),
    ("health kind", in_service('health = {kind = "ping"}'),
     "services[0].health.kind: must be one of tcp, http, udp, command, got 'ping'"),
    ("health command as a string", in_service('health = {kind = "command", command = "/bin/true"}'),
     "services[0].health.command: must be list, got str"),
    # [interfaces]
    ("interface as address", edit('front = "front"', 'front = "198.18.0.11"'),
     "interfaces.front: must be an interface's name (e.g. eth1), not an address, got '198.18.0.11'"),
    ("interface name empty", edit('back = "back"', 'back = ""'),
     "interfaces.back: must be an interface's name, got an empty string"),
    ("interface name too long", edit('front = "front"', 'front = "front-of-the-pair"'),
     "interfaces.front: 'front-of-the-pair' cannot be an interface name (at most 15 characters, "
     "no '/', ':' or spaces)"),
    ("vrrp without interfaces", edit('[interfaces]\nfront = "front"\nback = "back"\n', ""),
     "interfaces: is required with [vrrp] (front and back interface names)"),
    # [vrrp]
    ("vrid", edit("vrid = 51", "vrid = 300"), "vrrp.vrid: must be <= 255, got 300"),
    ("primary address as interface name", edit('primary_address = "198.18.0.11"', 'primary_address = "front"'),
     "vrrp.primary_address: 'front' is not an IP address"),
    ("primary address of the other family",
     edit('primary_address = "198.18.0.11"', 'primary_address = "2001:2::11"'),
     "vrrp.primary_address: 2001:2::11 is IPv6, and the VIPs the election advertises are not "
     "(e.g. 198.18.0.100): one VRRP instance advertises one family"),
    ("unicast peer of the other family", in_vrrp('unicast_peers = ["2001:2::12"]'),
     "vrrp.unicast_peers[0]: 2001:2::12 is IPv6, primary_address is IPv4"),
    ("advert interval off the 10 ms grid", in_vrrp("advert_interval = 0.015"),
     "vrrp.advert_interval: must be in 10 ms steps, got 0.015"),
    # [sync]
    ("sync key too short", edit(f'"{SYNC_KEY}"', '"short"'),
     "sync.key: must be at least 16 bytes, got 5 (a shared secret; 'hex:...' for raw bytes)"),
    ("sync key as number", edit(f'"{SYNC_KEY}"', "98765432109876543210987"), "sync.key: must be str, got int"),
    ("sync key not hex", edit(f'"{SYNC_KEY}"', '"hex:zz' + SYNC_KEY[6:] + '"'),
     "sync.key: 'hex:' must be followed by an even number of hex digits (the value is not shown)"),
    ("sync interface by name", in_sync('interface = "back"'),
     "sync.interface: must be the back interface's IP address, not its name or a host name "
     "(got 'back'; [interfaces] back names the interface)"),
    ("sync interface of the other family", in_sync('interface = "2001:2::11"\ngroup = "224.0.0.81"'),
     "sync.group: 224.0.0.81 is IPv4, and interface 2001:2::11 is IPv6: the group is joined on "
     "an address of its own family"),
    ("unicast with no peers", in_sync('mode = "unicast"\nbind = "198.18.2.11"'),
     "sync.peers: a unicast sync needs at least one peer (host:port)"),
    ("unicast with an empty peer list", in_sync('mode = "unicast"\npeers = []'),
     "sync.peers: a unicast sync needs at least one peer (host:port)"),
    ("unicast peer without port", in_sync('mode = "unicast"\npeers = ["198.18.2.12"]'),
     "sync.peers[0]: must be host:port, got '198.18.2.12'"),
    ("unicast bound to the wildcard", in_sync('mode = "unicast"\npeers = ["198.18.2.12:8848"]\nbind = "0.0.0.0"'),
     "sync.bind: must be the back interface's address, not the wildcard (connection data must "
     "not leave on the client side)"),
    ("sync group not multicast", in_sync('interface = "198.18.2.11"\ngroup = "10.0.0.1"'),
     "sync.group: 10.0.0.1 is not a multicast group"),
    ("sync group IPv6", in_sync('interface = "198.18.2.11"\ngroup = "ff02::81"'),
     "sync.group: ff02::81 is IPv6, and interface 198.18.2.11 is IPv4: the group is joined on "
     "an address of its own family"),
    ("unicast link-local peer", in_sync('mode = "unicast"\npeers = ["[fe80::12]:8848"]'),
     "sync.peers[0]: fe80::12 is link-local: a unicast sync needs the back interface's global "
     "(or unique-local) address"),
    ("unicast peer of the other family",
     in_sync('mode = "unicast"\nbind = "198.18.2.11"\npeers = ["[2001:2:0:2::12]:8848"]'),
     "sync.peers[0]: 2001:2:0:2::12 is IPv6, and bind 198.18.2.11 is IPv4: one socket, one family"),
    ("sync threshold above period", in_sync('interface = "198.18.2.11"\nthreshold = 60'),
     "sync.threshold: must be < period (50) unless period is 0, got 60"),
    ("sync max_age under gap_give_up", in_sync('interface = "198.18.2.11"\nmax_age = 2'),
     "sync.max_age: must be 0 (off) or > gap_give_up (5), got 2"),
    # [notify]
    ("notify as a command line", BASE + '\n[notify]\nmaster = "/bin/true"\n',
     "notify.master: must be list, got str"),
]

#: FILE: FIELD: PROBLEM, FIELD being a key's path (services[0].real_servers[1].weight), a
#: list of keys and sections a reload cannot change (node.api, [sync]), or (file) / (syntax)
_ITEM = r"(\[\w+\]|[a-z_]+(\[\d+\])*(\.[a-z_]+(\[\d+\])*)*)"
FIELD = rf"(\(file\)|\(syntax\)|{_ITEM}(, {_ITEM})*)"
FORM = re.compile(rf"^(?P<file>[^:\n]+): (?P<field>{FIELD}): (?P<problem>[^\n]+)$")


def judge(path: Path, message: str, want: str) -> None:
    """The message is exactly FILE: FIELD: PROBLEM, names the file once, and shows no secret."""
    assert message == f"{path}: {want}"
    m = FORM.match(message)
    assert m, message
    assert m["file"] == str(path) and str(path) not in m["problem"]
    assert not re.match(rf"{FIELD}: ", m["problem"]), message       # no second field
    for secret in (API_TOKEN, SYNC_KEY, SYNC_KEY[4:], "98765432109876543210987", "short",
                   "1234567890123456"):
        assert secret not in message
    assert "Traceback" not in message and "Error(" not in message


def test_the_base_file_is_good(tmp_path, capsys):
    f = tmp_path / "a.toml"
    f.write_text(BASE)
    f.chmod(0o600)
    assert main(["check-config", str(f)]) == 0
    assert capsys.readouterr().out == f"{f}: ok (1 services)\n"


@pytest.mark.parametrize("case, text, want", CASES, ids=[c[0] for c in CASES])
def test_check_config_names_file_field_and_problem(tmp_path, capsys, case, text, want):
    f = tmp_path / "a.toml"
    f.write_text(text)
    f.chmod(0o600)
    assert main(["check-config", str(f)]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    prefix = "tandem check-config: bad config: "
    line, = out.err.splitlines()
    assert line.startswith(prefix)
    judge(f, line[len(prefix):], want)


def test_a_file_that_cannot_be_read(tmp_path, capsys):
    for path, want in ((tmp_path / "nope.toml", "(file): No such file or directory"),
                       (tmp_path, "(file): Is a directory")):
        assert main(["check-config", str(path)]) == 2
        line, = capsys.readouterr().err.splitlines()
        judge(path, line.removeprefix("tandem check-config: bad config: "), want)


async def test_reload_through_the_api_answers_each_error_and_changes_nothing(tmp_path):
    """The same files reloaded into a running node: 400 with the same line as the declared
    `Error` body (and `changed: false`); the node keeps its config."""
    jsonschema = pytest.importorskip("jsonschema")
    from tests.unit.test_config import _node_doc, _running_node
    doc = _node_doc()
    doc["node"]["state_dir"] = str(tmp_path / "state")     # not the host's /var/lib/tandem
    n, path = await _running_node(tmp_path, doc)
    token = "reload-test-token"
    n.state.api_token = token
    before = n.cfg
    try:
        async with TestClient(TestServer(make_app(n.engine, n.state))) as client:
            for case, text, want in CASES:
                path.write_text(text)
                resp = await client.post("/reload", headers={"Authorization": f"Bearer {token}"})
                assert resp.status == 400, case
                body = await resp.json()
                jsonschema.validate(body, openapi.schema("Error"))
                assert body["changed"] is False
                judge(path, body["error"], want)
                assert n.cfg is before
    finally:
        await n.stop()


@pytest.mark.parametrize("change, want", [
    ({"node": {"api": "127.0.0.1:1"}}, "node.api"),
    ({"node": {"queue": 7}}, "node.queue"),
    ({"node": {"name": "b"}, "sync": {"threshold": 5}}, "node.name, [sync]"),
], ids=["api", "queue", "name and sync"])
async def test_reload_refuses_node_keys_only_a_restart_applies(tmp_path, change, want):
    """A reload that changed node.api, node.queue or node.name answered 200 and applied
    none of them (the API stayed where it was; a new queue number would even have steered
    the VIPs' traffic, on the next rule change, to a queue nobody reads).  Now it is refused
    as the restart-only sections are, naming the keys, and nothing changes."""
    from schema.core import dump_toml
    from tests.unit.test_config import _node_doc, _running_node
    doc = _node_doc()
    doc["node"]["state_dir"] = str(tmp_path / "state")
    n, path = await _running_node(tmp_path, doc)
    n.state.api_token = token = "reload-test-token"
    before = n.cfg
    try:
        for section, values in change.items():
            doc[section] = {**doc[section], **values}
        path.write_text(dump_toml(doc))
        async with TestClient(TestServer(make_app(n.engine, n.state))) as client:
            resp = await client.post("/reload", headers={"Authorization": f"Bearer {token}"})
            assert resp.status == 400
            body = await resp.json()
        judge(path, body["error"], f"{want}: changed, and a reload does not apply it: restart "
                                   "the node (nothing was changed)")
        assert n.cfg is before
    finally:
        await n.stop()


def test_every_case_is_a_toml_file_an_operator_could_write():
    """The table holds no Python-only value: each case but the syntax ones parses as TOML."""
    for case, text, _ in CASES:
        if "syntax" not in _:
            tomllib.loads(text)
    assert len(CASES) >= 40


def _in_own_netns() -> None:
    import os
    import shutil
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) for a throwaway network namespace")


#: the lab's two interfaces, with this node's addresses, in a throwaway namespace
LINKS = ("ip link set lo up && "
         "ip link add back type veth peer name backp && ip link set backp up && "
         "ip addr add 198.18.2.11/24 dev back && ip link set back up && "
         "ip link add front type veth peer name frontp && ip link set frontp up && "
         "ip addr add 198.18.0.11/24 dev front && ip link set front up && ")


def _pair_file(tmp_path: Path, text: str) -> Path:
    f = tmp_path / "a.toml"
    f.write_text(text.replace('api = "198.18.0.11:9100"', 'api = "127.0.0.1:9100"', 1)
                 .replace('name = "a"', f'name = "a"\nstate_dir = "{tmp_path}"', 1))
    f.chmod(0o600)
    return f


def _unicast_file(tmp_path: Path, back: str) -> Path:
    return _pair_file(tmp_path, edit('interface = "198.18.2.11"',
                                     'mode = "unicast"\npeers = ["198.18.2.12:8848"]')
                      .replace('back = "back"', f'back = "{back}"'))


@pytest.mark.parametrize("text, want", [
    (edit('api = "198.18.0.11:9100"', 'api = "198.18.0.99:9100"'),
     "node.api: cannot listen on 198.18.0.99:9100 (Cannot assign requested address)"),
    (in_sync('interface = "198.18.2.99"'),
     "sync.interface: cannot join 224.0.0.81 on 198.18.2.99 (No such device)"),
    (in_sync('mode = "unicast"\npeers = ["198.18.2.12:8848"]\nbind = "198.18.2.99"'),
     "sync.bind: cannot bind the sync socket to 198.18.2.99:8848 (Cannot assign requested "
     "address)"),
], ids=["api", "multicast interface", "unicast bind"])
def test_node_start_names_an_address_this_host_does_not_have(tmp_path, text, want):
    """A file that is valid but names an address the host does not have: the node stops at
    start with FILE: FIELD: PROBLEM and exit 2, having undone what it did (before: an
    OSError traceback naming no key)."""
    import subprocess
    import sys
    _in_own_netns()
    f = _pair_file(tmp_path, text.replace('api = "198.18.0.11:9100"', 'api = "127.0.0.1:9100"'))
    got = subprocess.run(["unshare", "--net", "sh", "-c",
                          LINKS + f"exec {sys.executable} -m tandem.cli node --config {f}"],
                         capture_output=True, text=True, timeout=60)
    assert got.returncode == 2, got.stderr
    line = got.stderr.splitlines()[-1]
    prefix = "tandem node: bad config: "
    assert line.startswith(prefix) and "Traceback" not in got.stderr, got.stderr
    judge(f, line[len(prefix):], want)
    assert "stopped" in got.stderr


def test_node_start_names_a_sync_bind_it_cannot_find(tmp_path):
    """`tandem node` with a unicast sync and no `bind`: the back interface's address is
    looked up at start; when it has none the node stops there with FILE: FIELD: PROBLEM
    and exit 2 (before: a traceback, see the next test).  Run in a network namespace of its
    own (unshare -n), so a node that went further would touch nothing of this host."""
    import subprocess
    import sys
    _in_own_netns()
    f = _unicast_file(tmp_path, "tdm-none0")
    got = subprocess.run(["unshare", "--net", sys.executable, "-m", "tandem.cli", "node",
                          "--config", str(f)], capture_output=True, text=True, timeout=60)
    assert got.returncode == 2, got.stderr
    line = got.stderr.splitlines()[-1]
    prefix = "tandem node: bad config: "
    assert line.startswith(prefix) and "Traceback" not in got.stderr
    judge(f, line[len(prefix):], "sync.bind: is not set, and the back interface 'tdm-none0' has "
                                 "no IPv4 address to bind the sync socket to: set sync.bind")


def test_node_starts_with_a_unicast_sync_bound_to_the_back_interfaces_address(tmp_path):
    """The documented default of `sync.bind` (the back interface's address) works: before,
    looking it up ran pyroute2's IPRoute on the node's running loop ("this event loop is
    already running"), so such a node never started."""
    import signal
    import subprocess
    import sys
    import time
    _in_own_netns()
    f = _unicast_file(tmp_path, "back")
    setup = LINKS + f"exec {sys.executable} -m tandem.cli node --config {f}"
    node = subprocess.Popen(["unshare", "--net", "sh", "-c", setup], stderr=subprocess.PIPE,
                            text=True)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and node.poll() is None:
            line = node.stderr.readline()
            lines.append(line)
            if "node a: up" in line:
                break
    finally:
        node.send_signal(signal.SIGTERM)
        _, rest = node.communicate(timeout=60)
    log = "".join(lines) + rest
    assert any("node a: up" in x and "syncing" in x for x in lines), log
    assert "Traceback" not in log and "bad config" not in log
