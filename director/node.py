"""`tandem node`: one director node — engine, NFQUEUE, rules, timers, API."""
from __future__ import annotations

import asyncio
import logging
import signal
import time

from aiohttp import web

from director import rules
from director.api import NodeState, make_app
from director.config import NodeConfig
from director.engine import Engine
from director.nfqueue import QueueAdapter, kernel_queue_stats

log = logging.getLogger("tandem.node")


async def run(cfg: NodeConfig, clock=time.monotonic) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    engine = Engine(cfg, now=clock())
    state = NodeState(cfg.name, cfg.role, clock())
    state.queue_stats = lambda: kernel_queue_stats(cfg.queue)
    adapter = QueueAdapter(engine.handle, cfg.queue, clock)
    runner = web.AppRunner(make_app(engine, state), access_log=None)
    await runner.setup()
    try:
        # Listen first, then steer traffic to the queue: never a window where
        # rules exist and nobody reads (the kernel would drop meanwhile).
        adapter.start(loop)
        rules.install(cfg.vips + cfg.laddrs, cfg.queue)
        await web.TCPSite(runner, cfg.api_host, cfg.api_port).start()
        log.info("node %s: up as %s, queue %d, %d services, api http://%s:%d",
                 cfg.name, cfg.role, cfg.queue, len(cfg.services), cfg.api_host, cfg.api_port)
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), cfg.tick)
            except asyncio.TimeoutError:
                pass
            engine.expire(clock())
    finally:
        rules.remove()
        adapter.stop()
        await runner.cleanup()
        log.info("node %s: stopped (%d connections dropped with it)", cfg.name, engine.table.count)
