"""Wiring: build an engine, its store, venue, feeds and alert channels from a config.

Used by the headless command, `record`, and the UI (which hosts the same runtime on a worker).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.alerts import AlertBus, JsonlChannel, PrintChannel
from engine.clock import Clock, RealClock, ScaledClock
from engine.commands import Command
from engine.config import Config
from engine.feeds.sim_feed import STATE_KEY, SimFeed
from engine.models import Quote
from engine.sim import SimMarket
from engine.store import JOURNAL_FILENAME, Store
from engine.supervisor import Engine
from engine.venues.paper import PaperVenue

RESUME_SIM_WITHIN_SECONDS = 2 * 3600.0  # a longer gap starts a fresh simulated session


@dataclass
class Runtime:
    engine: Engine
    store: Store
    feeds: list[Any]
    clock: Clock
    closers: list[Callable[[], None]] = field(default_factory=list)

    async def close(self) -> None:
        try:
            await self.engine.flush()
        finally:
            # Always close: an open aiosqlite connection's thread keeps the process alive.
            await self.store.close()
            for c in self.closers:
                c()


def sim_clock(config: Config) -> Clock:
    return RealClock() if config.sim.speed == 1.0 else ScaledClock(config.sim.speed)


async def build_runtime(
    config: Config,
    config_path: Path | None,
    *,
    clock: Clock | None = None,
    print_alerts: bool = False,
    db_path: Path | None = None,
    recorders: list[Callable[[Any], None]] | None = None,
) -> Runtime:
    """Open the journal, create the venue and feeds, prime the market and start the engine."""
    data = config.data_path()
    data.mkdir(parents=True, exist_ok=True)
    store = Store(db_path or data / JOURNAL_FILENAME)
    await store.open()
    try:
        clock = clock or sim_clock(config)
        bus = AlertBus(config.alerts.cooldown_seconds, config.engine.snapshot_alerts)
        closers: list[Callable[[], None]] = []
        if config.alerts.log_file:
            log_path = Path(config.alerts.log_file)
            jl = JsonlChannel(log_path if log_path.is_absolute() else data / log_path)
            bus.channels.append(jl)
            closers.append(jl.close)
        if print_alerts:
            bus.channels.append(PrintChannel())

        quotes: dict[str, Quote] = {}
        venue = PaperVenue(
            config.paper, quotes.get, state_path=data / "paper_venue.json", name=config.engine.venue
        )
        closers.append(venue.close)
        engine = Engine(config, clock, store, venue, alerts=bus, config_path=config_path)
        engine.quotes = quotes  # the paper venue fills against the engine's own quote book
        engine.recorders.extend(recorders or [])

        saved = await store.get_state(STATE_KEY)
        now = clock.now()
        if (
            isinstance(saved, dict)
            and 0 <= now - float(saved.get("ts", -1e18)) <= RESUME_SIM_WITHIN_SECONDS
        ):
            market = SimMarket(config.sim, now, state=saved)
        else:
            market = SimMarket(config.sim, now)
        for ev in market.advance_to(now):
            await engine.handle(ev)
        demo = (
            # Stamped with the market's own time, so a recording stays in time order.
            (lambda _ts: market.demo_trades(market.now, config.sim.demo_trades))
            if config.sim.demo_trades
            else None
        )
        await engine.start(demo=demo)
        return Runtime(engine, store, [SimFeed(market, clock)], clock, closers)
    except BaseException:
        await store.close()
        raise


async def run_headless(config: Config, config_path: Path | None) -> int:
    """The engine without a screen, until SIGINT/SIGTERM; SIGHUP reloads the config."""
    rt = await build_runtime(config, config_path, print_alerts=config.alerts.print_headless)
    eng = rt.engine
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError):
        loop.add_signal_handler(signal.SIGINT, eng.stop)
        loop.add_signal_handler(signal.SIGTERM, eng.stop)
        loop.add_signal_handler(
            signal.SIGHUP, lambda: asyncio.ensure_future(eng.command(Command("reload")))
        )
    print(
        f"trade-supervisor: venue {eng.venue.name}, mode {eng.mode.value}, "
        f"{'ARMED' if eng.armed else 'disarmed'}{', PAUSED' if eng.paused_all else ''}; "
        f"{len(eng.trades)} open trades; journal {rt.store.path}. Ctrl-C stops.",
        flush=True,
    )
    try:
        await eng.run(rt.feeds)
    finally:
        await rt.close()
    return 0
