"""The node's part in the pair: sync wiring, election, takeover and hooks.

What happens on a role change, in order (docs/failover-pitfalls.md, 2 and 5):
  becoming master: the engine already holds the peer's connections (sync runs
  all the time, in both directions, and a starting node waited for its bulk
  resync), and the NFQUEUE rules are installed at start; so only now are the
  VIPs and laddrs added, then gratuitous ARPs go out on both segments.
  leaving master: the addresses go first, so the local stack never owns a VIP
  the engine is no longer serving.
Each change is one log line, and the notify hook runs after it; the VRRP
runner serialises the callbacks, so hooks never overlap.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from director.config import HAConfig, NodeConfig
from director.engine import Engine
from ha.takeover import Takeover, TakeoverConfig
from ha.vrrp import PREEMPTING

log = logging.getLogger("tandem.ha")


class SyncLink:
    """Connection sync to and from the peer, wired to the engine."""

    def __init__(self, cfg: NodeConfig, engine: Engine) -> None:
        from syncd.policy import SyncPolicy, make_hook
        from syncd.receiver import SyncReceiver, engine_apply, engine_apply_bulk
        from syncd.sender import SyncSender, engine_source
        from syncd.transport import SyncTransport
        scfg = cfg.ha.sync
        snapshot, to_entry = engine_source(engine)
        self.sender = SyncSender(scfg, cfg.name, snapshot=snapshot, to_entry=to_entry)
        self.receiver = SyncReceiver(scfg, cfg.name, None, engine_apply(engine),
                                     apply_bulk=engine_apply_bulk(engine))
        self.transport = SyncTransport(scfg, self.sender, self.receiver)
        engine.sync_hook = make_hook(SyncPolicy.from_config(scfg), engine, self.transport.queue)
        self.started = 0.0

    async def start(self) -> None:
        self.started = time.monotonic()
        await self.transport.start()

    async def initial_resync(self, wait: float) -> bool:
        """Wait (bounded) until a bulk resync from the peer has completed."""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.receiver.stats.get("bulk_ends", 0) > 0:
                return True
            await asyncio.sleep(0.01)
        return False

    def close(self) -> None:
        self.transport.close()

    def describe(self) -> dict:
        return {"sender": dict(self.sender.stats), "receiver": dict(self.receiver.stats),
                "transport": dict(self.transport.stats), "lag_ms": self.receiver.lag(),
                "missing": self.receiver.missing(), "applied": dict(self.receiver.results)}


async def run_hook(argv: tuple[str, ...], state: str, node: str, timeout: float = 10.0) -> None:
    try:
        proc = await asyncio.create_subprocess_exec(*argv, state, node)
        try:
            rc = await asyncio.wait_for(proc.wait(), timeout)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            log.warning("notify %s hook %s timed out after %.0f s (killed)", state, argv[0], timeout)
            return
        if rc:
            log.warning("notify %s hook %s exited %d", state, argv[0], rc)
    except OSError as exc:
        log.warning("notify %s hook %s failed: %s", state, argv[0], exc)


class Role:
    """Turns election results into address ownership."""

    def __init__(self, cfg: NodeConfig, ha: HAConfig, set_role: Callable[[str], None]) -> None:
        self.cfg, self.ha = cfg, ha
        self.set_role = set_role
        self.takeover = None
        if ha.front_if and ha.back_if:
            self.takeover = Takeover(TakeoverConfig(ha.front_if, ha.back_if, tuple(cfg.vips),
                                                    tuple(cfg.laddrs), ha.garp_count, ha.garp_interval))
        self.changes: list[dict] = []

    async def on_state_change(self, old, new, reason: str) -> None:
        new_s = getattr(new, "value", str(new)).lower()
        old_s = getattr(old, "value", str(old)).lower()
        decided = time.time()
        if self.takeover is not None:
            if new_s == "master":
                if reason.startswith(PREEMPTING):
                    # a live lower-priority master holds the addresses: our advert has
                    # gone out and it stops at once, but removing its addresses takes
                    # it a moment; never own them together
                    await asyncio.sleep(self.ha.preempt_yield)
                await self.takeover.acquire()
            elif old_s == "master" or self.takeover.held:
                await self.takeover.release()
        self.set_role(new_s)
        # `at`: when the addresses actually changed hands (what a drill compares)
        self.changes.append({"at": time.time(), "decided": decided, "from": old_s, "to": new_s,
                             "reason": reason})
        if new_s == "master" and self.takeover is not None:
            await self.takeover.announce()
        del self.changes[:-50]
        argv = self.ha.notify.get(new_s)
        if argv:
            await run_hook(argv, new_s, self.cfg.name)

    async def reannounce(self, reason: str) -> None:
        """Still master, but a peer claimed it meanwhile: move the neighbours back to us."""
        if self.takeover is not None and self.takeover.held:
            await self.takeover.announce()

    async def fixed(self, role: str) -> None:
        """No election configured: take the configured role once."""
        await self.on_state_change("init", role, "fixed role from config")

    async def release(self) -> None:
        """Drop the addresses (idempotent: also those a previous process left)."""
        if self.takeover is not None:
            await self.takeover.release()


class LinkWatch:
    """Fault when a tracked interface is down: the runner is told, the peer takes over."""

    def __init__(self, ifnames: list[str], on_change: Callable[[bool], None]) -> None:
        self.ifnames = [i for i in ifnames if i]
        self.on_change = on_change
        self.fault = False

    async def check(self) -> None:
        from ha.takeover import links_down
        down = await asyncio.to_thread(links_down, self.ifnames)
        fault = bool(down)
        if fault != self.fault:
            self.fault = fault
            log.warning("tracked interface%s %s", "s down:" if fault else "s up again:",
                        ", ".join(down) or ", ".join(self.ifnames))
            self.on_change(fault)
