"""`tandem node`: one director node — engine, NFQUEUE, rules, timers, sync, election, API."""
from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time

from aiohttp import web

from director import rules
from director.api import make_app
from director.config import ConfigError, NodeConfig, load
from director.control import Control
from director.engine import Engine
from director.health import HealthChecker
from tandem.ha import LinkWatch, Role, SyncLink
from director.nfqueue import QueueAdapter, kernel_queue_stats
from director.status import NodeParts

log = logging.getLogger("tandem.node")
LINK_CHECK_INTERVAL = 0.2
#: freeze the collector's view of long-lived objects every this many new entries
GC_FREEZE_EVERY = 50_000


class GcFreezer:
    """Keeps the cyclic garbage collector off the connection table.

    A million connections are ~3 million tracked objects; a full collection of
    them takes ~0.9 s, during which no packet is read and no VRRP advert is
    sent, so the backup takes over from a healthy master.  Connections form no
    reference cycles (refcounting frees them), so once the young generations
    are collected the survivors are moved to the permanent generation
    (gc.freeze), where collections no longer scan them.  The price: cyclic
    garbage that reached the oldest generation by then is never collected;
    the young collection just before each freeze keeps that small.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.at = 0

    def maybe_freeze(self, force: bool = False) -> None:
        made = self.engine.stats["conns_new"] + self.engine.sync_stats["created"]
        if force or made - self.at >= GC_FREEZE_EVERY:
            self.at = made
            gc.collect(1)
            gc.freeze()


def health_targets(engine: Engine) -> list:
    from director.health import targets_for_service
    return [t for svc in engine.services.values() if svc.cfg.health
            for t in targets_for_service(svc.cfg, svc.cfg.health)]


async def run(cfg: NodeConfig, clock=time.monotonic, path: str | None = None) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    ha = cfg.ha
    engine = Engine(cfg, now=clock())
    adapter = QueueAdapter(engine.handle, cfg.queue, clock)
    sync = SyncLink(cfg, engine) if ha and ha.sync else None
    role = Role(cfg, ha, lambda r: state.set_role(r)) if ha else None
    runner = None
    watch = None
    control = Control(engine)
    control.apply_all()
    checker = HealthChecker(health_targets(engine), control.health_changed)
    current = {"cfg": cfg}

    async def reload() -> dict:
        """Re-read the file; apply it only if all of it is valid."""
        if path is None:
            raise ConfigError("<none>", "(file)", "the node was not started from a file")
        new = load(path)
        old = current["cfg"]
        summary = engine.reconfigure(new, clock())
        control.apply_all()
        await checker.set_targets(health_targets(engine))
        if set(new.vips + new.laddrs) != set(old.vips + old.laddrs):
            rules.install(new.vips + new.laddrs, new.queue)
        state.api_token = new.api_token
        current["cfg"] = new
        log.info("node %s: reloaded %s (%s)", cfg.name, path,
                 ", ".join(f"{k} {v}" for k, v in summary.items()))
        return {"changed": True, **summary}

    def on_sighup() -> None:
        async def go():
            try:
                await reload()
            except ConfigError as exc:
                log.error("node %s: reload refused, nothing changed: %s", cfg.name, exc)
        loop.create_task(go())

    state = NodeParts(cfg.name, "init" if ha and ha.vrrp else cfg.role, started=clock(), clock=clock,
                      queue_stats=lambda: kernel_queue_stats(cfg.queue), control=control, sync=sync,
                      role_changes=role.changes if role else [], api_token=cfg.api_token,
                      reload=reload)
    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    app = make_app(engine, state, clock)
    runner_http = web.AppRunner(app, access_log=None)
    await runner_http.setup()
    try:
        # Listen first, then steer traffic to the queue: never a window where
        # rules exist and nobody reads (the kernel would drop meanwhile).
        if role is not None and ha.vrrp:
            await role.release()      # a VIP or laddr left by a killed predecessor is not ours yet
        adapter.start(loop)
        rules.install(cfg.vips + cfg.laddrs, cfg.queue)
        await web.TCPSite(runner_http, cfg.api_host, cfg.api_port).start()
        await checker.start()
        if sync:
            await sync.start()
        log.info("node %s: up, queue %d, %d services, api http://%s:%d%s", cfg.name, cfg.queue,
                 len(cfg.services), cfg.api_host, cfg.api_port, ", syncing" if sync else "")
        if ha and ha.vrrp:
            from ha.vrrp_io import VrrpRunner
            if sync:
                got = await sync.initial_resync(ha.startup_sync_wait)
                log.info("node %s: initial resync %s (%d connections held)", cfg.name,
                         "complete" if got else f"not answered within {ha.startup_sync_wait:.1f} s",
                         engine.table.count)
            runner = VrrpRunner(ha.vrrp, ha.front_if, role.on_state_change,
                                on_reannounce=role.reannounce)
            state.attach_election(runner, ha.vrrp.priority)
            await runner.start()
            watch = LinkWatch([ha.front_if, ha.back_if], runner.set_fault)
        elif role:
            await role.fixed(cfg.role)
        freezer = GcFreezer(engine)
        freezer.maybe_freeze(force=True)       # after the initial resync's bulk
        next_link_check = clock()
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), cfg.tick)
            except asyncio.TimeoutError:
                pass
            now = clock()
            engine.expire(now)
            freezer.maybe_freeze()
            if watch is not None and now >= next_link_check:
                next_link_check = now + LINK_CHECK_INTERVAL
                try:
                    await watch.check()
                except OSError as exc:
                    log.warning("link check failed: %s", exc)
    finally:
        await checker.stop()
        if runner is not None:
            await runner.stop(graceful=True)      # priority 0: the peer takes over after its skew
        if role is not None:
            await role.release()
        if sync is not None:
            sync.close()
        rules.remove()
        adapter.stop()
        await runner_http.cleanup()
        log.info("node %s: stopped (%d connections dropped with it)", cfg.name, engine.table.count)
