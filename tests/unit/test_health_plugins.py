"""Health checks as plug-ins: one module per kind, the rise/fall machine apart; a reload keeps
the state of an unchanged check; each transition is logged once."""
from __future__ import annotations

import asyncio
import copy
import logging
import time
from pathlib import Path

import pytest

from director.config import ConfigError, parse
from director.control import Control
from director.engine import Engine
from director.health import (HealthChecker, kind_names, load_all_kinds, load_kind, parse_health,
                             targets_for_service)
from schema.keys import HEALTH, plugins

REPO = Path(__file__).resolve().parents[2]
DOC = {"node": {"name": "a"},
       "services": [{"proto": "tcp", "vip": "198.18.0.100", "port": 80, "laddrs": ["198.18.2.100"],
                     "health": {"kind": "tcp", "interval": 0.01, "timeout": 0.01, "rise": 3,
                                "fall": 1},
                     "real_servers": [{"addr": "198.18.2.21", "port": 8080},
                                      {"addr": "198.18.2.22", "port": 8080}]}]}


def test_each_kind_is_a_module_that_registers_its_keys():
    on_disk = sorted(p.stem for p in (REPO / "director/health/kinds").glob("*.py")
                     if not p.stem.startswith("_"))
    assert sorted(kind_names()) == on_disk == ["command", "http", "tcp", "udp"]
    load_all_kinds()
    sections = plugins("health")
    assert set(sections) == set(on_disk)
    assert [k.name for k in sections["http"]] == ["path", "expect_status", "host"]
    assert [k.name for k in sections["udp"]] == ["payload", "expect"]
    assert not set(HEALTH.keys) & {k.name for s in sections.values() for k in s}
    assert load_kind("tcp").name == "tcp"
    with pytest.raises(LookupError):
        load_kind("../config")


def test_the_rise_fall_machine_and_the_runner_live_apart_from_the_kinds():
    runner = (REPO / "director/health/runner.py").read_text()
    for kind in ("probe_tcp", "probe_http", "probe_udp", "probe_command", 'kind == "'):
        assert kind not in runner
    state = (REPO / "director/health/state.py").read_text()
    assert "asyncio" not in state and "import socket" not in state


def test_a_kinds_key_on_another_kind_is_named_as_such():
    with pytest.raises(ConfigError) as e:
        parse_health({"kind": "tcp", "expect": "PONG"}, "a.toml", "services[0].health")
    assert e.value.field == "services[0].health.expect"
    assert 'only applies to kind = "udp"' in e.value.problem


def _node_parts(doc):
    cfg = parse(doc, "a.toml")
    engine = Engine(cfg)
    control = Control(engine)
    control.apply_all()
    return engine, control


def _targets(engine):
    return [t for svc in engine.services.values() if svc.cfg.health
            for t in targets_for_service(svc.cfg, svc.cfg.health)]


async def _until(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_each_transition_is_logged_once(caplog):
    """keepalived logs one "Removing service ..." line per transition; the runner and the
    control path both logged it."""
    engine, control = _node_parts(DOC)
    down = {"198.18.2.22"}

    async def probe(t):
        return t.addr not in down, "scripted"

    checker = HealthChecker(_targets(engine), control.health_changed, probe=probe)
    with caplog.at_level(logging.INFO):
        async with checker:
            await _until(lambda: checker.is_up("tcp/198.18.0.100:80", "198.18.2.22", 8080) is False)
            await asyncio.sleep(0.05)
    lines = [r.getMessage() for r in caplog.records if "Removing service" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "198.18.2.22" in lines[0] and "scripted" in lines[0]


async def test_a_reload_keeps_the_rise_fall_state_of_an_unchanged_check(caplog):
    """A reload that leaves a service's check as it was (here: only a weight changes) keeps
    each server's verdict and streaks: a down server stays down, with no new transition
    and no second log line, as keepalived keeps a checker whose config did not change."""
    engine, control = _node_parts(DOC)
    results = {"198.18.2.21": True, "198.18.2.22": False}

    async def probe(t):
        return results[t.addr], "scripted"

    checker = HealthChecker(_targets(engine), control.health_changed, probe=probe)
    with caplog.at_level(logging.INFO):
        async with checker:
            key = ("tcp/198.18.0.100:80", "198.18.2.22", 8080)
            await _until(lambda: checker.is_up(*key) is False)
            results["198.18.2.22"] = True           # rising: needs 3 in a row
            await _until(lambda: checker._tracked[key].state.ok_streak >= 1)
            doc = copy.deepcopy(DOC)
            doc["services"][0]["real_servers"][0]["weight"] = 5
            new = parse(doc, "a.toml")
            engine.reconfigure(new, 0.0)
            control.apply_all()
            before = checker._tracked[key].state
            await checker.set_targets(_targets(engine))
            assert checker._tracked[key].state is before      # the same machine, streak kept
            assert checker.is_up(*key) is False
            dest = next(d for d in next(iter(engine.services.values())).dests
                        if d.addr_str == "198.18.2.22")
            assert dest.weight == 0                         # still down in the data plane
            await _until(lambda: checker.is_up(*key) is True)
    removed = [r for r in caplog.records if "Removing service" in r.getMessage()]
    added = [r for r in caplog.records if "Adding service" in r.getMessage()]
    assert len(removed) == 1 and len(added) == 1
