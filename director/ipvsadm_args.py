"""The arguments of `tandem ipvsadm` checked as argparse types, so a bad one is named
(`argument -t/--tcp-service: ...`, exit 2) before the node's API is asked anything:
ipvsadm itself refuses a malformed service address before it talks to the kernel."""
from __future__ import annotations

import argparse
import ipaddress
import urllib.parse


def vip_port(text: str) -> tuple[str, int]:
    """-t/-u VIP:PORT ([v6]:port), as ipvsadm takes it; the argument is blamed otherwise."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"must be VIP:PORT ([v6]:port for IPv6) with a port "
                                         f"1..65535, got {text!r}")
    try:
        return str(ipaddress.ip_address(host.strip("[]"))), int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{host!r} is not an IP address (in {text!r})") from None


def api_url(text: str) -> str:
    """--api URL: http(s)://host[:port] of a node's API."""
    u = urllib.parse.urlsplit(text)
    try:
        port_ok = u.port is None or u.port > 0
    except ValueError:
        port_ok = False
    if u.scheme not in ("http", "https") or not u.hostname or not port_ok:
        raise argparse.ArgumentTypeError(f"must be http://HOST:PORT (the node's `api`), got {text!r}")
    return text


def seconds(text: str) -> float:
    """A positive, finite number of seconds."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text!r}")
    return value
