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
