"""director.client_address_kinds: the one table the engine and the sync applier take a
connection's client-address state from.  Every (mode, protocol) the config accepts for an
engine-forwarded service must have a registered kind, or such a service would silently
send its real servers no client address at all."""
from __future__ import annotations

import pytest

from director.client_address_kinds import KINDS
from director.config import ConfigError, parse
from proto.consts import TCP, UDP
from schema.keys import SERVICE


def _accepted(mode: str, proto: str) -> bool:
    try:
        parse({"node": {"name": "t"}, "services": [{
            "proto": proto, "vip": "198.18.0.100", "port": 81, "scheduler": "rr",
            "laddrs": ["198.18.2.100"], "client_address": mode,
            "real_servers": [{"addr": "198.18.2.21", "port": 8081}]}]}, "test.toml")
    except ConfigError:
        return False
    return True


MODES = SERVICE["client_address"].choices


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("proto, number", [("tcp", TCP), ("udp", UDP)])
def test_every_mode_the_config_accepts_has_a_kind_and_no_other(mode, proto, number):
    assert _accepted(mode, proto) == ((mode, number) in KINDS or mode == "none"), (mode, proto)
