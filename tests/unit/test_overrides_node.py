"""Overrides through a running node (tandem.node.Node, its real HTTP API, fake kernel edges):
kept across a restart by the state file, and beating the file on reload until cleared."""
from __future__ import annotations

import copy
import json
import logging

import aiohttp

from schema.core import dump_toml
from tandem.node import Node
from director.config import load
from tests.unit.test_node import DOC, Fakes, free_port

TOKEN = "node-override-test-token"
RS = "/services/tcp%2F198.18.0.100%3A80/real_servers/198.18.2.21:8080"


def config(tmp_path, weight: int = 1, api: str | None = None):
    doc = {k: v for k, v in copy.deepcopy(DOC).items() if k not in ("vrrp", "sync")}
    doc["node"] = {**doc["node"], "role": "backup", "api": api or f"127.0.0.1:{free_port()}",
                   "api_token": TOKEN, "state_dir": str(tmp_path / "state")}
    doc["services"][0]["real_servers"][0]["weight"] = weight
    path = tmp_path / "a.toml"
    path.write_text(dump_toml(doc))
    path.chmod(0o600)
    return path


async def call(node: Node, method: str, path: str, body=None):
    url = f"http://{node.cfg.api_host}:{node.cfg.api_port}{path}"
    async with aiohttp.ClientSession() as s:
        async with s.request(method, url, json=body,
                             headers={"Authorization": f"Bearer {TOKEN}"}) as r:
            return r.status, await r.json()


async def real(node: Node) -> dict:
    _, body = await call(node, "GET", "/services")
    return body["services"][0]["real_servers"][0]


async def test_a_drain_survives_a_restart_of_the_node(tmp_path):
    path = config(tmp_path)
    n = Node(load(path), path=str(path), edges=Fakes().edges())
    await n.start()
    try:
        status, body = await call(n, "POST", RS + "/drain")
        assert status == 200 and body["override"]["drain"] and body["override"]["by"] == "a"
    finally:
        await n.stop()              # waits for the state file's write
    saved = json.loads((tmp_path / "state" / "overrides.json").read_text())
    assert saved["overrides"][0][:3] == ["tcp/198.18.0.100:80", "198.18.2.21", 8080]
    again = Node(load(path), path=str(path), edges=Fakes().edges())
    await again.start()
    try:
        r = await real(again)
        assert r["weight"] == 0 and r["config_weight"] == 1
        assert r["override"] == body["override"]
    finally:
        await again.stop()


async def test_an_override_beats_a_reloaded_file_until_cleared(tmp_path, caplog):
    path = config(tmp_path)
    n = Node(load(path), path=str(path), edges=Fakes().edges())
    await n.start()
    try:
        assert (await call(n, "POST", RS + "/weight", {"weight": 3}))[0] == 200
        config(tmp_path, weight=2, api=f"{n.cfg.api_host}:{n.cfg.api_port}")  # the file says 2
        with caplog.at_level(logging.INFO, logger="tandem.node"):
            status, body = await call(n, "POST", "/reload")
        assert status == 200 and body["changed"], body
        r = await real(n)
        assert (r["weight"], r["config_weight"], r["override"]["weight"]) == (3, 2, 3)
        assert "reload: override weight 3 of 198.18.2.21:8080 in tcp/198.18.0.100:80 (by a) " \
               "beats the file's weight 2 until cleared" in caplog.text
        url = f"http://{n.cfg.api_host}:{n.cfg.api_port}{RS}/override"
        async with aiohttp.ClientSession() as s:
            async with s.delete(url) as r:              # no token: refused, nothing changes
                assert r.status == 401
        assert (await real(n))["override"]["weight"] == 3
        status, body = await call(n, "DELETE", RS + "/override")
        assert status == 200 and body == {"service": "tcp/198.18.0.100:80",
                                          "real": "198.18.2.21:8080", "weight": 2,
                                          "override": None, "cleared": True}
        assert (await real(n))["weight"] == 2
        status, body = await call(n, "DELETE", RS + "/override")
        assert status == 200 and body["cleared"] is False
        status, _ = await call(n, "DELETE", "/services/nope/real_servers/198.18.2.21:8080/override")
        assert status == 404
    finally:
        await n.stop()
