"""Config errors name the file, the field and the problem."""
import pytest

from tandem.cli import main
from director.config import ConfigError, load, parse

GOOD = {"node": {"name": "a", "api": "198.18.0.11:9100"},
        "services": [{"proto": "tcp", "vip": "198.18.0.100", "port": 80, "laddrs": ["198.18.2.100"],
                      "real_servers": [{"addr": "198.18.2.21", "port": 8080}]}]}


def bad(mutate):
    import copy
    doc = copy.deepcopy(GOOD)
    mutate(doc)
    with pytest.raises(ConfigError) as e:
        parse(doc, "a.toml")
    return str(e.value)


def test_good_config_and_defaults():
    cfg = parse(GOOD, "a.toml")
    assert cfg.max_conns == 1_000_000 and cfg.timeouts["tcp_established"] == 900
    assert cfg.services[0].scheduler == "wlc" and cfg.services[0].real_servers[0].weight == 1
    assert cfg.vips == ["198.18.0.100"] and cfg.laddrs == ["198.18.2.100"]


@pytest.mark.parametrize("mutate, where, what", [
    (lambda d: d["services"][0].update(vip="198.18.0.999"), "services[0].vip", "not an IP address"),
    (lambda d: d["services"][0].update(port=70000), "services[0].port", "<= 65535"),
    (lambda d: d["services"][0].update(proto="sctp"), "services[0].proto", "one of tcp, udp"),
    (lambda d: d["services"][0].update(scheduler="fastest"), "services[0].scheduler", "unknown scheduler"),
    (lambda d: d["services"][0]["real_servers"][0].update(weight=-1), "services[0].real_servers[0].weight", ">= 0"),
    (lambda d: d["services"][0]["real_servers"][0].update(adress="x"), "services[0].real_servers[0].adress", "unknown key"),
    (lambda d: d["services"][0].update(laddrs=["2001:db8::1"]), "services[0].laddrs[0]", "IPv6"),
    (lambda d: d["services"][0].update(laddrs=[]), "services[0].laddrs", "at least one laddr"),
    (lambda d: d["node"].update(api="nowhere"), "node.api", "host:port"),
    (lambda d: d.update(limits={"lport_min": 9000, "lport_max": 8000}), "limits.lport_min", "above lport_max"),
    (lambda d: d.update(timeouts={"tcp_established": "long"}), "timeouts.tcp_established", "must be float"),
    (lambda d: d["services"].append(dict(d["services"][0])), "services[1]", "duplicate service"),
    (lambda d: d.pop("services"), "services", "required"),
])
def test_each_bad_field_is_named(mutate, where, what):
    msg = bad(mutate)
    assert msg.startswith(f"a.toml: {where}: "), msg
    assert what in msg


def test_syntax_error_and_missing_file(tmp_path):
    f = tmp_path / "n.toml"
    f.write_text("[node\nname='a'")
    with pytest.raises(ConfigError, match=r"n.toml: \(syntax\)"):
        load(f)
    with pytest.raises(ConfigError, match=r"nope.toml: \(file\)"):
        load(tmp_path / "nope.toml")


def test_node_refuses_to_start_on_a_bad_file(tmp_path, capsys):
    f = tmp_path / "n.toml"
    f.write_text('[node]\nname = "a"\n[[services]]\nproto = "tcp"\nvip = "198.18.0.100"\nport = 0\n')
    assert main(["node", "--config", str(f)]) == 2
    err = capsys.readouterr().err
    assert "n.toml: services[0].port: must be >= 1" in err


# -- one schema ---------------------------------------------------------------------------

import asyncio
import copy
import json
import logging
import os
import re
import socket
import tomllib
from pathlib import Path

import aiohttp

from director import sched
from director.config import check_reloadable, restart_needed
from lab import topology
from schema import docs as schema_docs
from schema.core import dump_toml
from schema.keys import INTERFACES, LIMITS, NODE, SECTIONS, SYNC, TIMEOUTS, VRRP, WEIGHT

REPO = Path(__file__).resolve().parents[2]
PAIR = {"interfaces": {"front": "front", "back": "back"},
        "vrrp": {"vrid": 51, "primary_address": "198.18.0.11"},
        "sync": {"key": "tandem-lab-sync-key-not-secret", "interface": "198.18.2.11"}}


def with_pair(**sections):
    doc = copy.deepcopy(GOOD)
    doc.update(copy.deepcopy(PAIR))
    for name, table in sections.items():
        doc[name] = {**doc.get(name, {}), **table}
    return doc


def test_schema_package_imports_no_runtime_code():
    """The schema sits below every runtime package: importing it loads none of them."""
    import subprocess
    import sys
    code = ("import sys, schema, schema.docs; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'director', 'syncd', 'proto', 'lab', 'bench', 'ha', 'tandem'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_config_and_health_import_each_other_no_more():
    """director.health used to import the private reader from director.config, which
    imports director.health: now neither health nor syncd's config imports director.config."""
    files = list((REPO / "director/health").rglob("*.py")) + [REPO / "syncd/config.py"]
    for path in files:
        text = path.read_text().replace("if TYPE_CHECKING:\n    from director.config", "")
        assert "from director.config import" not in text, path
        assert "_Reader" not in text, path


def test_defaults_come_from_the_schema():
    cfg = parse(with_pair(), "a.toml")
    assert cfg.timeouts == TIMEOUTS.defaults()
    assert (cfg.max_conns, cfg.lport_min, cfg.lport_max) == tuple(LIMITS.defaults().values())
    assert (cfg.ha.garp_count, cfg.ha.garp_interval) == (INTERFACES.default("garp_count"),
                                                         INTERFACES.default("garp_interval"))
    assert cfg.ha.startup_sync_wait == VRRP.default("startup_sync_wait")
    assert cfg.ha.sync.max_payload == SYNC.default("max_payload")
    assert cfg.tick == NODE.default("tick")


def test_the_docs_tables_are_the_schemas():
    """docs/configuration.md's reference is generated from the schema (scripts/config_docs.py),
    every plug-in included: the health-check kinds' keys were missing (the generator imported
    director.health, which loads no kind), and this test passed only when no earlier test had
    parsed a health check."""
    from director.health import load_all_kinds
    load_all_kinds()
    sched.load_all()
    text = (REPO / "docs/configuration.md").read_text()
    assert schema_docs.generated_part(text) == schema_docs.render(), \
        "docs/configuration.md is stale: run scripts/config_docs.py"
    for section in SECTIONS.values():
        for key in section:
            assert f"| `{key.name}` |" in text, (section.path, key.name)


def _ansible_defaults() -> dict:
    out = {}
    for line in (REPO / "ansible/roles/tandem/defaults/main.yml").read_text().splitlines():
        m = re.match(r"^(tandem_\w+): (.*)$", line)
        if m:
            out[m.group(1)] = m.group(2).strip().strip('"')
    return out


def test_the_ansible_role_defaults_are_the_schemas():
    """Every node-config default the role states equals the schema's."""
    d = _ansible_defaults()
    stated = {
        "tandem_api": NODE.default("api"), "tandem_queue": NODE.default("queue"),
        "tandem_garp_count": INTERFACES.default("garp_count"),
        "tandem_garp_interval": INTERFACES.default("garp_interval"),
        "tandem_vrrp_priority": VRRP.default("priority"),
        "tandem_vrrp_advert_interval": VRRP.default("advert_interval"),
        "tandem_sync_mode": SYNC.default("mode"),
    }
    for var, want in stated.items():
        assert var in d, var
        assert type(want)(d[var]) == want, (var, d[var], want)
    # a key the role does not state is left to the node (not written, or null)
    assert d["tandem_timeouts"] == "{}" and d["tandem_limits"] == "{}"


def test_the_lab_writes_its_configs_with_the_one_toml_writer():
    cfg = topology.node_config("a", ha=True)
    assert topology.dump_toml is dump_toml
    back = tomllib.loads(dump_toml(cfg))
    assert back == cfg
    assert parse(back, "a.toml").timeouts == TIMEOUTS.defaults()
    for path in (REPO / "lab").glob("*.py"):          # no second writer, no restated default
        src = path.read_text()
        assert "def _toml" not in src and '"tcp_established": 900' not in src, path


def test_toml_writer_escapes_and_round_trips():
    doc = {"laddrs": ["198.18.2.1"], "node": {"name": 'a"b\\c\n\x01', "tick": 0.25, "x": None},
           "services": [{"proto": "tcp", "health": {"kind": "tcp"},
                         "real_servers": [{"addr": "198.18.2.21"}, {"addr": "198.18.2.22"}]}]}
    back = tomllib.loads(dump_toml(doc))
    assert back["node"] == {"name": 'a"b\\c\n\x01', "tick": 0.25}
    assert back["services"][0]["real_servers"][1] == {"addr": "198.18.2.22"}
    assert back["laddrs"] == ["198.18.2.1"] and back["services"][0]["health"] == {"kind": "tcp"}


def test_one_weight_range_everywhere():
    """The weight range is the schema's WEIGHT: the config reader, the control path, the API's
    error and every weight in the OpenAPI document use it; no file states it again."""
    from director import openapi
    from director.control import Control
    from director.engine import Engine

    def weights(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "weight" and isinstance(v, dict) and "maximum" in v:
                    yield v
                yield from weights(v)
        elif isinstance(node, list):
            for v in node:
                yield from weights(v)
    found = list(weights(openapi.spec()))
    assert len(found) >= 2
    assert all((w["minimum"], w["maximum"]) == (WEIGHT.lo, WEIGHT.hi) for w in found)
    msg = bad(lambda d: d["services"][0]["real_servers"][0].update(weight=WEIGHT.hi + 1))
    assert f"<= {WEIGHT.hi}" in msg
    control = Control(Engine(parse(GOOD, "a.toml")))
    with pytest.raises(ValueError, match=f"<= {WEIGHT.hi}"):
        control.set_weight("tcp/198.18.0.100:80", "198.18.2.21", 8080, WEIGHT.hi + 1)
    for path in ("director/api.py", "director/control.py", "director/config.py"):
        assert "65535" not in (REPO / path).read_text(), path


# -- schedulers by name, with options --------------------------------------------------------

def test_schedulers_load_by_name_with_no_list_to_keep():
    src = (REPO / "director/sched/__init__.py").read_text()
    assert "_MODULES" not in src
    on_disk = sorted(p.stem for p in (REPO / "director/sched").glob("*.py") if not p.stem.startswith("_"))
    assert sched.names() == on_disk
    assert sched.load("mh").name == "mh"
    with pytest.raises(LookupError):
        sched.load("../engine")


@pytest.mark.parametrize("name, options, attr, value", [
    ("mh", {"table_size": 251}, "size", 251),
    ("maglev", {"table_size": 251}, "size", 251),
    ("sh", {"tab_bits": 10}, "size", 1024),
    ("dh", {"tab_bits": 4}, "size", 16),
    ("lblc", {"tab_bits": 6, "expiration": 60}, None, None),
])
def test_scheduler_options_are_set_per_service(name, options, attr, value):
    doc = copy.deepcopy(GOOD)
    doc["services"][0].update(scheduler=name, scheduler_options=options)
    cfg = parse(doc, "a.toml")
    assert dict(cfg.services[0].scheduler_options) == options
    from director.service import Service
    s = sched.create(name, **dict(cfg.services[0].scheduler_options))
    if attr:
        assert getattr(s, attr) == value
    else:
        assert s.table.size == 64 and s.table.expiration == 60.0


@pytest.mark.parametrize("scheduler, options, problem", [
    ("mh", {"table_size": 4096}, "table_size"),
    ("sh", {"tab_bits": 30}, "<= 20"),
    ("wlc", {"tab_bits": 8}, "unknown key"),
    ("sh", {"tab_bits": "8"}, "must be int"),
])
def test_bad_scheduler_options_name_the_field(scheduler, options, problem):
    msg = bad(lambda d: d["services"][0].update(scheduler=scheduler, scheduler_options=options))
    assert msg.startswith("a.toml: services[0].scheduler_options"), msg
    assert problem in msg


def test_the_engine_builds_the_scheduler_with_the_services_options():
    from director.engine import Engine
    doc = copy.deepcopy(GOOD)
    doc["services"][0].update(scheduler="mh", scheduler_options={"table_size": 251})
    eng = Engine(parse(doc, "a.toml"))
    assert next(iter(eng.services.values())).scheduler.size == 251


# -- hardening (issue 12, items 9-14) --------------------------------------------------------

def test_a_hex_key_that_is_not_hex_is_a_config_error():
    """Item 9: `hex:zz...` raised ValueError from bytes.fromhex (a traceback in check-config,
    500 from /reload).  Like keepalived's config reader, a bad value is reported with
    where it is, and the node keeps running on its old config."""
    doc = with_pair(sync={"key": "hex:" + "zz" * 16})
    with pytest.raises(ConfigError) as e:
        parse(doc, "a.toml")
    assert e.value.source == "a.toml" and e.value.field == "sync.key"
    assert "hex digits" in e.value.problem and "zz" not in str(e.value)


def test_check_config_prints_the_error_without_a_traceback(tmp_path, capsys):
    f = tmp_path / "n.toml"
    f.write_text(dump_toml(with_pair(sync={"key": "hex:" + "zz" * 16})))
    assert main(["check-config", str(f)]) == 2
    err = capsys.readouterr().err
    assert "n.toml: sync.key:" in err and "Traceback" not in err


def test_a_file_that_is_not_utf8_is_a_config_error(tmp_path):
    f = tmp_path / "n.toml"
    f.write_bytes(b'[node]\nname = "\xff"\n')
    with pytest.raises(ConfigError, match=r"n.toml: \(file\): not UTF-8"):
        load(f)


async def _serve(state):
    from aiohttp import web
    from director.api import make_app
    from director.engine import Engine
    from tests.helpers import make_config
    runner = web.AppRunner(make_app(Engine(make_config()), state), access_log=None)
    await runner.setup()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


async def test_reload_of_a_bad_hex_key_answers_400_naming_the_field(tmp_path):
    """Item 9 through the API: /reload reads the file with director.config.load."""
    from director.status import NodeParts
    f = tmp_path / "n.toml"
    f.write_text(dump_toml(with_pair(sync={"key": "hex:" + "zz" * 16})))

    async def reload():
        load(f)
        return {"changed": True}
    state = NodeParts("t", "master", api_token="tok-" + "x" * 20, reload=reload)
    runner, url = await _serve(state)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{url}/reload",
                                 headers={"Authorization": f"Bearer {state.api_token}"}) as r:
                body = await r.json()
                assert r.status == 400, body
                assert "sync.key" in body["error"] and body["changed"] is False
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("section, key, value", [
    ("sync", "key", 98765432109876543210987),
    ("sync", "key", ["s3cr3t-value-0123456789"]),
    ("node", "api_token", 98765432109876543210987),
    ("node", "api_token", True),
])
def test_errors_never_echo_a_secret(section, key, value):
    """Item 10: the error names the field and the expected type, never the value (it would
    land in Ansible's output and in logs)."""
    doc = with_pair(**{section: {key: value}})
    with pytest.raises(ConfigError) as e:
        parse(doc, "a.toml")
    msg = str(e.value)
    assert msg.startswith(f"a.toml: {section}.{key}: must be str"), msg
    assert "98765" not in msg and "s3cr3t" not in msg and "True" not in msg


def test_a_short_or_weak_secret_is_not_echoed_either():
    for key in ("tooshort", "a" * 16):
        msg = str(pytest.raises(ConfigError, parse, with_pair(sync={"key": key}), "a.toml").value)
        assert key not in msg and "sync.key" in msg


@pytest.mark.parametrize("key", ["a" * 16, "ab" * 12, "hex:" + "00" * 32, "hex:" + "0102" * 16,
                                 "passwordpassword"])
def test_keys_with_too_little_entropy_are_refused(key):
    """Item 11: 16 x "a" passed; a key this guessable is refused."""
    with pytest.raises(ConfigError, match=r"a.toml: sync.key: has too little entropy"):
        parse(with_pair(sync={"key": key}), "a.toml")


@pytest.mark.parametrize("key", ["tandem-lab-sync-key-not-secret", "correct horse battery staple",
                                 "hex:" + os.urandom(16).hex(), "hex:" + os.urandom(32).hex(),
                                 os.urandom(32).hex()])
def test_good_keys_pass(key):
    assert len(parse(with_pair(sync={"key": key}), "a.toml").ha.sync.key) >= 16


def test_the_example_inventory_has_no_public_fallback_key():
    """Item 11: with the vault variable missing the run must fail, not deploy a known key."""
    text = (REPO / "ansible/inventory/group_vars/directors.yml").read_text()
    line = next(ln for ln in text.splitlines() if ln.startswith("tandem_sync_key:"))
    assert line.strip() == 'tandem_sync_key: "{{ vault_tandem_sync_key }}"'
    assert topology.SYNC_KEY not in text
    assert _ansible_defaults()["tandem_sync_key"] == ""


def test_a_config_readable_by_others_is_warned_about(tmp_path, caplog):
    f = tmp_path / "n.toml"
    f.write_text(dump_toml(with_pair()))
    f.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="tandem.config"):
        load(f)
    assert any("readable by anyone" in r.getMessage() and "sync.key" in r.getMessage()
               for r in caplog.records)
    caplog.clear()
    f.chmod(0o600)
    with caplog.at_level(logging.WARNING, logger="tandem.config"):
        load(f)
    assert not caplog.records


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_a_root_owned_config_readable_by_the_nodes_own_group_is_not_warned_about(tmp_path, caplog):
    """The Ansible role installs the file root:<node's group> 0640 for a node that runs as its
    own user: that group is the node's, so only 'other' access is an exposure."""
    f = tmp_path / "n.toml"
    f.write_text(dump_toml(with_pair()))
    os.chown(f, 12345, os.getegid())           # owned by someone else, group ours
    f.chmod(0o640)
    with caplog.at_level(logging.WARNING, logger="tandem.config"):
        load(f)
    assert not caplog.records
    os.chown(f, 12345, os.getegid() + 1)       # a group that is not ours
    with caplog.at_level(logging.WARNING, logger="tandem.config"):
        load(f)
    assert any("readable by its group" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("sync, field", [
    ({"interface": None}, "sync.interface"),
    ({"interface": "0.0.0.0"}, "sync.interface"),
    ({"mode": "unicast", "peers": ["198.18.2.12:8848"], "bind": "0.0.0.0"}, "sync.bind"),
    ({"mode": "unicast"}, "sync.peers"),
])
def test_sync_never_listens_on_every_interface_by_default(sync, field):
    """Item 12: a multicast sync with no interface sent (and joined) wherever the route
    pointed, and a unicast one bound 0.0.0.0, so connection data could leave on the client
    side.  As IPVS's sync daemon is started on a named interface (--mcast-interface), the
    interface must be named."""
    doc = with_pair()
    for k, v in sync.items():
        if v is None:
            doc["sync"].pop(k)
        else:
            doc["sync"][k] = v
    with pytest.raises(ConfigError) as e:
        parse(doc, "a.toml")
    assert e.value.field == field, str(e.value)


@pytest.mark.parametrize("change, sections", [
    ({"sync": {"threshold": 5}}, ["sync"]),
    ({"vrrp": {"priority": 200}}, ["vrrp"]),
    ({"interfaces": {"garp_count": 5}, "sync": {"port": 8849}}, ["interfaces", "sync"]),
    ({"timeouts": {"udp": 30}}, []),
])
def test_a_reload_that_changes_sync_vrrp_or_interfaces_is_refused(change, sections):
    """Item 13: such a reload answered changed: true and applied none of it."""
    old = parse(with_pair(), "a.toml")
    new = parse(with_pair(**change), "a.toml")
    assert restart_needed(old, new) == sections
    if sections:
        with pytest.raises(ConfigError) as e:
            check_reloadable(old, new)
        assert e.value.field == ", ".join(f"[{s}]" for s in sections)
        assert "restart" in e.value.problem
    else:
        check_reloadable(old, new)


def test_a_reload_that_adds_a_vip_is_not_refused_for_vrrp():
    old = parse(with_pair(), "a.toml")
    doc = with_pair()
    doc["services"].append({**copy.deepcopy(doc["services"][0]), "vip": "198.18.0.101"})
    assert restart_needed(old, parse(doc, "a.toml")) == []


@pytest.mark.parametrize("change, rc, says", [
    ({"interfaces": {"garp_count": 5}}, 3, "only a restart applies what changed: [interfaces]"),
    ({"node": {"api": "127.0.0.1:9199"}}, 3, "only a restart applies what changed: node.api"),
    ({"timeouts": {"tcp_fin_wait": 100}}, 0, "a reload applies it"),
    ({}, 0, "a reload applies it"),
])
def test_check_config_against_the_running_file_says_reload_or_restart(tmp_path, capsys, change, rc, says):
    """A deployment tool (the Ansible role) asks before it applies a new file: a reload of a
    restart-only change is refused by the node and would leave the old config running."""
    old, new = tmp_path / "old.toml", tmp_path / "new.toml"
    old.write_text(dump_toml(with_pair()))
    new.write_text(dump_toml(with_pair(**change)))
    assert main(["check-config", str(new), "--against", str(old)]) == rc
    out = capsys.readouterr().out
    assert out.startswith(f"{new}: ok (") and out.rstrip().endswith(says), out


def test_check_config_against_a_bad_old_file_says_restart_and_a_bad_new_one_fails(tmp_path, capsys):
    old, new = tmp_path / "old.toml", tmp_path / "new.toml"
    old.write_text(dump_toml(with_pair(sync={"key": "hex:" + "zz" * 16})))
    new.write_text(dump_toml(with_pair()))
    assert main(["check-config", str(new), "--against", str(old)]) == 3
    out = capsys.readouterr().out
    assert "the old config is bad: sync.key:" in out and "zz" not in out
    assert main(["check-config", str(old), "--against", str(new)]) == 2


def test_node_reload_checks_for_restart_sections():
    src = (REPO / "director/node.py").read_text() if (REPO / "director/node.py").exists() \
        else (REPO / "tandem/node.py").read_text()
    assert "check_reloadable(old, new)" in src


async def test_deeply_nested_json_to_the_weight_endpoint_is_a_400():
    """Item 14: json.loads raised RecursionError (500); now a 400 with a reason."""
    from director.control import Control
    from director.engine import Engine
    from director.status import NodeParts
    from tests.helpers import make_config
    state = NodeParts("t", "master", api_token="tok-" + "x" * 20,
                      control=Control(Engine(make_config())))
    runner, url = await _serve(state)
    try:
        body = "[" * 200_000 + "]" * 200_000
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{url}/services/tcp%2F198.18.0.100:80/real_servers/198.18.2.21:8080/weight",
                                 data=body, headers={"Authorization": f"Bearer {state.api_token}",
                                                     "Content-Type": "application/json"}) as r:
                text = await r.text()
                assert r.status == 400, (r.status, text[:200])
                assert "nested too deeply" in text
    finally:
        await runner.cleanup()


def test_every_sync_knob_is_declared_in_the_schema():
    """A field added to SyncConfig must be declared in schema/keys.py [sync] (type, default,
    unit, range, doc), or the config file cannot set it and the docs do not show it."""
    from syncd.config import SyncConfig
    fields = set(SyncConfig.__dataclass_fields__)
    assert fields <= set(SYNC.keys), sorted(fields - set(SYNC.keys))
    for name in fields - {"key", "peers", "interface", "bind"}:
        assert getattr(SyncConfig(), name) == SYNC.default(name), name


def _unicast(**sync):
    doc = with_pair(sync={"mode": "unicast", "peers": ["198.18.2.12:8848"], **sync})
    doc["sync"].pop("interface", None) if "interface" not in sync else None
    return parse(doc, "a.toml")


def test_a_unicast_sync_binds_the_back_interfaces_address_by_default():
    """Item 12: the unicast socket bound 0.0.0.0 when `bind` was not given."""
    from syncd.config import SyncConfig, with_local_address
    cfg = _unicast()
    assert cfg.ha.sync.bind == "" and SyncConfig().bind == ""       # not the wildcard
    seen = []

    def addresses_of(ifname):
        seen.append(ifname)
        return ["fe80::1", "198.18.2.11", "198.18.2.100"]
    got = with_local_address(cfg.ha.sync, cfg.ha.back_if, addresses_of)
    assert seen == ["back"] and got.bind == "198.18.2.11"
    assert with_local_address(_unicast(bind="198.18.2.11").ha.sync, "back", None).bind == "198.18.2.11"
    with pytest.raises(ValueError, match="has no IPv4 address"):
        with_local_address(cfg.ha.sync, "back", lambda _: ["2001:2::1"])


def test_the_sync_link_opens_on_the_back_address():
    from director.engine import Engine
    from tandem.ha import SyncLink
    cfg = _unicast()
    link = SyncLink(cfg, Engine(cfg, now=0.0), addresses_of=lambda _: ["198.18.2.11"])
    assert link.transport.cfg.bind == "198.18.2.11"


# -- through the node (tandem.node.Node with its kernel edges faked) -------------------------

async def _running_node(tmp_path, doc):
    from tests.unit.test_node import Fakes, node
    f = Fakes()
    path = tmp_path / "a.toml"
    path.write_text(dump_toml(doc))
    path.chmod(0o600)
    n = node(f, doc, path=str(path))
    await n.start()
    return n, path


def _node_doc():
    from tests.unit.test_node import DOC
    return copy.deepcopy(DOC)


async def test_sighup_with_a_bad_hex_key_logs_the_reason_and_changes_nothing(tmp_path, caplog):
    """Item 9: SIGHUP logged nothing useful (a ValueError in a task nobody awaited)."""
    doc = _node_doc()
    n, path = await _running_node(tmp_path, doc)
    try:
        before = n.cfg
        doc["sync"]["key"] = "hex:" + "zz" * 16
        doc["services"][0]["real_servers"][0]["weight"] = 7
        path.write_text(dump_toml(doc))
        with caplog.at_level(logging.ERROR, logger="tandem.node"):
            n._on_sighup()
            for _ in range(200):
                if caplog.records:
                    break
                await asyncio.sleep(0.01)
        msgs = [r.getMessage() for r in caplog.records]
        assert any("reload refused" in m and f"{path}: sync.key:" in m for m in msgs), msgs
        assert not any(r.exc_info for r in caplog.records)
        assert n.cfg is before
    finally:
        await n.stop()


@pytest.mark.parametrize("section, change", [
    ("sync", {"threshold": 5}), ("vrrp", {"priority": 200}), ("interfaces", {"garp_count": 1}),
])
async def test_node_reload_refuses_a_change_only_a_restart_applies(tmp_path, section, change):
    """Item 13: /reload answered changed: true and applied none of [sync], [vrrp],
    [interfaces]; now the reload is refused, naming them, and nothing else changes either."""
    doc = _node_doc()
    n, path = await _running_node(tmp_path, doc)
    try:
        before = n.cfg
        doc[section].update(change)
        doc["services"][0]["real_servers"][0]["weight"] = 7       # would be applied alone
        path.write_text(dump_toml(doc))
        with pytest.raises(ConfigError) as e:
            await n.reload()
        assert e.value.field == f"[{section}]" and "restart" in e.value.problem
        assert n.cfg is before
        svc = next(iter(n.engine.services.values()))
        assert svc.dests[0].weight == 1
        # the same file without the restart-only change reloads
        doc[section] = _node_doc()[section]
        path.write_text(dump_toml(doc))
        assert (await n.reload())["changed"] is True and svc.dests[0].weight == 7
    finally:
        await n.stop()


def test_config_imports_point_one_way():
    """syncd's config reads the schema and proto only; no core package imports director
    (the config reader's [sync]/[vrrp] parsing points from director to them, never back)."""
    import ast
    def imported(path):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                yield node.module.split(".")[0]
            elif isinstance(node, ast.Import):
                yield from (a.name.split(".")[0] for a in node.names)
    runtime = {"director", "syncd", "ha", "tandem", "lab", "bench", "proto", "schema"}
    assert set(imported(REPO / "syncd/config.py")) & runtime == {"proto", "schema"}
    for pkg in ("syncd", "ha", "proto", "schema"):
        for path in (REPO / pkg).rglob("*.py"):
            assert "director" not in set(imported(path)), path
