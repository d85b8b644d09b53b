"""Run small pieces of Python inside a named network namespace without a subprocess.

``in_netns(ns, fn)`` runs fn in a fresh thread that first calls setns(2) on the namespace: the
network namespace is a per-thread attribute, so only that thread moves, and the thread ends
afterwards (it is never reused).  Sockets created and /proc/sys/net files opened in that thread
belong to the namespace.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any, Callable

from pyroute2 import netns as _netns

from .plan import API_TOKEN as LAB_API_TOKEN  # http_get sends it (see lab.plan)


def list_netns() -> list[str]:
    try:
        return sorted(_netns.listnetns())
    except OSError:
        return []


def in_netns(ns: str, fn: Callable[..., Any], *args: Any, timeout: float = 30.0, **kw: Any) -> Any:
    box: dict[str, Any] = {}

    def runner() -> None:
        try:
            _netns.setns(ns, flags=0)  # flags=0: never create the namespace
            box["result"] = fn(*args, **kw)
        except BaseException as exc:  # handed to the caller
            box["error"] = exc

    t = threading.Thread(target=runner, name=f"netns-{ns}", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise TimeoutError(f"operation in netns {ns} did not finish within {timeout}s")
    if "error" in box:
        raise box["error"]
    return box.get("result")


def _write_sysctls(values: dict[str, str | int], optional: bool) -> dict[str, str]:
    done = {}
    for key, value in values.items():
        path = "/proc/sys/" + key.replace(".", "/")
        try:
            with open(path, "w") as fh:
                fh.write(str(value))
            done[key] = str(value)
        except FileNotFoundError:
            if not optional:
                raise
    return done


def set_sysctls(ns: str, values: dict[str, str | int], optional: bool = False) -> dict[str, str]:
    """Write sysctls (dotted names, e.g. ``net.ipv4.ip_forward``) inside ns, in order.
    Interface names must not contain dots.  optional=True skips those that do not exist."""
    return in_netns(ns, _write_sysctls, values, optional)


def _read_sysctls(keys: list[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for key in keys:
        try:
            with open("/proc/sys/" + key.replace(".", "/")) as fh:
                out[key] = fh.read().strip()
        except OSError:
            out[key] = None
    return out


def get_sysctls(ns: str, keys: list[str]) -> dict[str, str | None]:
    return in_netns(ns, _read_sysctls, list(keys))


def _tcp_whoami(host: str, port: int, timeout: float) -> str:
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(b"WHOAMI\n")
        buf = b""
        end = time.monotonic() + timeout
        while not buf.endswith(b"\n") and time.monotonic() < end:
            chunk = s.recv(4096)
            if not chunk:
                break
            buf += chunk
        return buf.decode(errors="replace").strip()


def tcp_whoami(ns: str, host: str, port: int, timeout: float = 1.0) -> str:
    """One TCP WHOAMI exchange from inside ns; returns the reply line (stripped)."""
    return in_netns(ns, _tcp_whoami, host, port, timeout, timeout=timeout * 3 + 1)


def _http_get(host: str, port: int, path: str, timeout: float,
              method: str = "GET") -> tuple[int, bytes]:
    import http.client

    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, headers={"Connection": "close",
                                            "Authorization": f"Bearer {LAB_API_TOKEN}"})
        resp = conn.getresponse()
        return resp.status, resp.read(1 << 20)
    finally:
        conn.close()


def http_get(ns: str, host: str, port: int, path: str, timeout: float = 1.0) -> tuple[int, bytes]:
    """HTTP GET from inside ns (status, body)."""
    return in_netns(ns, _http_get, host, port, path, timeout, timeout=timeout * 3 + 1)


def http_call(ns: str, host: str, port: int, path: str, method: str,
              timeout: float = 5.0) -> tuple[int, bytes]:
    """An HTTP request with the lab's token from inside ns (status, body)."""
    return in_netns(ns, _http_get, host, port, path, timeout, method, timeout=timeout * 3 + 1)


def outside_event_loop(fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    """Call fn; from inside a running event loop (an async test), in a helper thread, because
    pyroute2's synchronous IPRoute runs an event loop of its own."""
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return fn(*args, **kw)
    box: dict[str, Any] = {}

    def runner() -> None:
        try:
            box["r"] = fn(*args, **kw)
        except BaseException as exc:  # handed to the caller
            box["e"] = exc

    t = threading.Thread(target=runner, name="lab-worker")
    t.start()
    t.join()
    if "e" in box:
        raise box["e"]
    return box["r"]
