"""Real servers that read PROXY headers, for the lab: Debian's nginx and HAProxy.

Each real server namespace gets one nginx (HTTP, `listen NGINX_PORT proxy_protocol`, its
access log one line per request: `$proxy_protocol_addr:$proxy_protocol_port`) and one
HAProxy (`bind :HAPROXY_PORT accept-proxy`, TCP mode, forwarding to the namespace's echo
server, its log one line per connection: `%ci:%cp`, the client the header names).  Both
take version 1 and 2 headers.  `services()` gives the node services that reach them,
on VIP ports of their own, a v2 and a v1 service per server.  With `ipv6` (a dual-stack
lab) both also listen on IPv6 and the same ports of VIP6 reach them through the IPv6
laddrs.

Configs, logs and pid files live in a directory the caller gives (the lab's state dir).
Each server is started in the foreground by PID (`ip netns exec` execs it, so the PID is
the server's master process) and stopped by that PID.
"""
from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from .plan import LADDRS, REAL_SERVERS, RS_PORT, VIP, ns_name
from .plan6 import LADDRS6, REAL_SERVER6, VIP6

NGINX_PORT = 8090
HAPROXY_PORT = 8091
#: VIP port -> (server, PROXY mode)
VIP_PORTS = {83: ("nginx", "proxy-v2"), 84: ("nginx", "proxy-v1"),
             85: ("haproxy", "proxy-v2"), 86: ("haproxy", "proxy-v1")}
_RS_PORT = {"nginx": NGINX_PORT, "haproxy": HAPROXY_PORT}


def services(scheduler: str = "rr", ipv6: bool = False) -> list[dict[str, Any]]:
    """The node services for VIP_PORTS (TCP, engine forwarding, every real server); with
    `ipv6` the same on VIP6 too."""
    families = [(VIP, LADDRS, [r["addr"] for r in REAL_SERVERS])]
    if ipv6:
        families.append((VIP6, LADDRS6, [REAL_SERVER6[r["name"]] for r in REAL_SERVERS]))
    return [{"proto": "tcp", "vip": vip, "port": port, "scheduler": scheduler,
             "laddrs": list(laddrs), "client_address": mode,
             "real_servers": [{"addr": a, "port": _RS_PORT[server]} for a in reals]}
            for vip, laddrs, reals in families for port, (server, mode) in VIP_PORTS.items()]


def _nginx_conf(d: Path, ipv6: bool = False) -> str:
    listen6 = f"\n        listen [::]:{NGINX_PORT} proxy_protocol;" if ipv6 else ""
    return f"""daemon off;
master_process on;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log;
events {{ worker_connections 1024; }}
http {{
    log_format client '$proxy_protocol_addr:$proxy_protocol_port';
    access_log {d}/nginx-access.log client;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen {NGINX_PORT} proxy_protocol;{listen6}
        location / {{ return 200 "ok\\n"; }}
    }}
}}
"""


def _haproxy_conf(d: Path, ipv6: bool = False) -> str:
    bind6 = f"\n    bind [::]:{HAPROXY_PORT} v6only accept-proxy" if ipv6 else ""
    return f"""global
    log stdout format raw local0
    pidfile {d}/haproxy.pid
defaults
    mode tcp
    log global
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend proxied
    bind :{HAPROXY_PORT} accept-proxy{bind6}
    log-format "%ci:%cp"
    default_backend echo
backend echo
    server echo 127.0.0.1:{RS_PORT}
"""


def start(prefix: str, root: Path, wait: float = 10.0, ipv6: bool = False) -> list[dict[str, Any]]:
    """nginx and HAProxy in each real server's namespace (listening on IPv6 too with
    `ipv6`); returns their records (name, pid, dir).  Each server's files are in
    root/<rs>-<server>/."""
    procs: list[dict[str, Any]] = []
    try:
        for r in REAL_SERVERS:
            ns = ns_name(prefix, r["name"])
            for server, conf, argv in (
                    ("nginx", _nginx_conf, lambda d: ["nginx", "-p", str(d), "-c", str(d / "nginx.conf")]),
                    ("haproxy", _haproxy_conf, lambda d: ["haproxy", "-db", "-f", str(d / "haproxy.cfg")])):
                d = root / f"{r['name']}-{server}"
                d.mkdir(parents=True, exist_ok=True)
                (d / ("nginx.conf" if server == "nginx" else "haproxy.cfg")).write_text(conf(d, ipv6))
                log = open(d / "stdout.log", "ab")
                try:
                    p = subprocess.Popen(["ip", "netns", "exec", ns, *argv(d)], stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
                finally:
                    log.close()
                procs.append({"name": f"{server}-{r['name']}", "server": server, "rs": r["name"],
                              "pid": p.pid, "dir": str(d), "popen": p})
        _wait_listening(prefix, procs, wait)
    except BaseException:
        stop(procs)
        raise
    return procs


def _wait_listening(prefix: str, procs: list[dict[str, Any]], wait: float) -> None:
    end = time.monotonic() + wait
    for rec in procs:
        port = _RS_PORT[rec["server"]]
        ns = ns_name(prefix, rec["rs"])
        while True:
            if rec["popen"].poll() is not None:
                raise RuntimeError(f"{rec['name']} exited: " + log_text(rec, "stdout.log")[-2000:])
            ss = subprocess.run(["ip", "netns", "exec", ns, "ss", "-Htln", f"sport = :{port}"],
                                capture_output=True, text=True).stdout
            if ss.strip():
                break
            if time.monotonic() > end:
                raise TimeoutError(f"{rec['name']} not listening on {port} after {wait} s")
            time.sleep(0.05)


def stop(procs: list[dict[str, Any]], wait: float = 5.0) -> None:
    """Stop each server by its PID (SIGTERM, then SIGKILL if it outlives `wait`)."""
    for rec in procs:
        if rec["popen"].poll() is None:
            os.kill(rec["pid"], signal.SIGTERM)
    for rec in procs:
        try:
            rec["popen"].wait(wait)
        except subprocess.TimeoutExpired:
            os.kill(rec["pid"], signal.SIGKILL)
            rec["popen"].wait(wait)


def log_text(rec: dict[str, Any], name: str) -> str:
    path = Path(rec["dir"]) / name
    return path.read_text(errors="replace") if path.exists() else ""


def _is_client(line: str) -> bool:
    """A log line that is `addr:port` (IPv4 or IPv6: the address is what comes before the
    last colon), not a server's start-up or warning line."""
    addr, _, port = line.rpartition(":")
    try:
        ipaddress.ip_address(addr)
    except ValueError:
        return False
    return port.isdigit()


def clients_logged(procs: list[dict[str, Any]], server: str) -> list[str]:
    """Every `addr:port` the servers of this kind logged (nginx's access log, HAProxy's
    connection log on its stdout), in file order."""
    name = "nginx-access.log" if server == "nginx" else "stdout.log"
    out = []
    for rec in procs:
        if rec["server"] == server:
            out += [ln.strip() for ln in log_text(rec, name).splitlines()
                    if ln.strip() and _is_client(ln.strip())]
    return out
