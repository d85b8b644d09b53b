"""`node.mode = "cluster"` and `[cluster]` (director/config_cluster.py): checked in full,
each problem named by file and field; a valid cluster file is read (the node runs it,
tandem/cluster.py)."""
from __future__ import annotations

import tomllib

import pytest

from director.config import ConfigError, parse
from director.config_cluster import ClusterConfig, parse_cluster
from schema import keys as K
from schema.core import Reader

SERVICE = """
[[services]]
proto = "tcp"
vip = "198.19.41.100"
port = 80
scheduler = "{sched}"
laddrs = ["198.19.42.11"]
  [[services.real_servers]]
  addr = "198.19.44.21"
  port = 8080
"""
NODE = """
[node]
name = "a"
mode = "{mode}"
"""


def doc(mode="cluster", sched="maglev", extra=""):
    return tomllib.loads(NODE.format(mode=mode) + extra + SERVICE.format(sched=sched))


def problem(d) -> str:
    with pytest.raises(ConfigError) as exc:
        parse(d, "c.toml")
    return str(exc.value)


def test_pair_is_the_default_and_unchanged():
    cfg = parse(tomllib.loads('[node]\nname = "a"\n' + SERVICE.format(sched="wlc")), "c.toml")
    assert cfg.mode == "pair" == K.NODE.default("mode")


def test_a_valid_cluster_file_is_read():
    cfg = parse(doc(extra='[cluster]\ndrain_timeout = 60.0\n'), "c.toml")
    assert cfg.mode == "cluster" and cfg.cluster.drain_timeout == 60.0
    assert cfg.cluster.members == {}


MEMBERS = '[cluster]\nmembers = {{ a = {a}, b = ["198.19.42.12"] }}\n'


def test_members_name_every_director_and_its_pool():
    cfg = parse(doc(extra=MEMBERS.format(a='["198.19.42.11"]')), "c.toml")
    assert cfg.cluster.members == {"a": ("198.19.42.11",), "b": ("198.19.42.12",)}


@pytest.mark.parametrize("a, field, words", [
    ('["198.19.42.99"]', "cluster.members.a", "must be this director's laddrs"),
    ('["198.19.42.12"]', "cluster.members.b[0]", "belongs to one director"),
    ('["x"]', "cluster.members.a[0]", "is not an IP address"),
    ("[]", "cluster.members.a", "non-empty list"),
])
def test_members_are_checked(a, field, words):
    msg = problem(doc(extra=MEMBERS.format(a=a)))
    assert msg.startswith(f"c.toml: {field}") and words in msg


KERNEL_SERVICE = """
[[services]]
proto = "tcp"
vip = "198.19.41.101"
port = 80
scheduler = "maglev"
forwarding = "kernel"
laddrs = ["198.19.43.11"]
  [[services.real_servers]]
  addr = "198.19.44.21"
  port = 8080
"""
BY_MODE = ('[cluster]\nmembers = {{ a = {a}, b = {{ engine = ["198.19.42.12"], '
           'kernel = ["198.19.43.12"] }} }}\n')


def test_with_kernel_mode_services_every_pool_is_given_by_mode():
    """A peer's kernel-mode laddrs must stay tracked by conntrack (never queued untracked),
    so once the cluster forwards in kernel mode each pool names its modes."""
    good = '{ engine = ["198.19.42.11"], kernel = ["198.19.43.11"] }'
    cfg = parse(doc(extra=BY_MODE.format(a=good)) | {"services": doc()["services"] + tomllib.loads(
        KERNEL_SERVICE)["services"]}, "c.toml")
    assert cfg.cluster.members == {"a": ("198.19.42.11", "198.19.43.11"),
                                   "b": ("198.19.42.12", "198.19.43.12")}
    assert cfg.cluster.kernel_laddrs == {"198.19.43.11", "198.19.43.12"}
    for a, field, words in [
            ('["198.19.42.11", "198.19.43.11"]', "cluster.members.a", "by forwarding mode"),
            ('{ engine = ["198.19.42.11", "198.19.43.11"] }', "cluster.members.a.kernel",
             "kernel-mode services (198.19.43.11)"),
            ('{ engine = ["198.19.42.11"], kernel = ["198.19.43.11"], ipvs = ["198.19.42.9"] }',
             "cluster.members.a", "by forwarding mode"),
            ('{ engine = ["198.19.42.11"], kernel = ["198.19.42.12"] }',
             "cluster.members.b.engine[0]", "a laddr of director 'a' (kernel)")]:
        d = doc(extra=BY_MODE.format(a=a))
        d["services"] += tomllib.loads(KERNEL_SERVICE)["services"]
        msg = problem(d)
        assert msg.startswith(f"c.toml: {field}") and words in msg, (a, msg)


def test_members_must_name_this_director():
    msg = problem(doc(extra='[cluster]\nmembers = { b = ["198.19.42.12"] }\n'))
    assert msg.startswith("c.toml: cluster.members: does not name this director")


@pytest.mark.parametrize("sched", ["mh", "wlc", "sh", "rr"])
def test_cluster_mode_needs_maglev_on_every_service(sched):
    msg = problem(doc(sched=sched))
    assert msg.startswith("c.toml: services[0].scheduler: must be maglev in cluster mode")


def test_cluster_mode_has_no_election():
    extra = ('[interfaces]\nfront = "front"\nback = "back"\n'
             '[vrrp]\nvrid = 51\npriority = 100\nprimary_address = "198.19.40.11"\n')
    assert problem(doc(extra=extra)).startswith("c.toml: vrrp: has no place")


def test_cluster_section_needs_the_mode():
    msg = problem(doc(mode="pair", sched="wlc", extra='[cluster]\ndrain_timeout = 60.0\n'))
    assert msg.startswith("c.toml: cluster: is only read with")


@pytest.mark.parametrize("extra, field", [
    ("drain_timeout = 0.5", "cluster.drain_timeout"),
    ('bird_sock = "/x"', "cluster.bird_sock"),
    ("bird_socket = 3", "cluster.bird_socket"),
])
def test_cluster_keys_are_checked(extra, field):
    assert problem(doc(extra=f"[cluster]\n{extra}\n")).startswith(f"c.toml: {field}")


def test_cluster_section_defaults_come_from_the_schema():
    top = Reader("c.toml", "", {"cluster": {}}, K.TOP)
    got = parse_cluster("c.toml", "cluster", top, [], has_vrrp=False)
    assert got == ClusterConfig()
    assert (got.bird_socket, got.announce_include, got.drain_timeout) == tuple(
        K.CLUSTER.default(k) for k in ("bird_socket", "announce_include", "drain_timeout"))
    top = Reader("c.toml", "", {"cluster": {"drain_timeout": 42.0}}, K.TOP)
    assert parse_cluster("c.toml", "cluster", top, [], has_vrrp=False).drain_timeout == 42.0
