"""Wiring of `engine.venue = "ibkr"`: TWS / IB Gateway as the venue and the market feed.

`engine.runtime.build_runtime` imports this module only when the venue is IBKR, so the other
venues never load ib_async or the market calendar (pandas).

Start-up: the connection's task starts first and is given `connect_timeout_seconds` to connect
and load the account; then one feed step announces the held contracts (combos and their legs)
and subscribes their market data, so the engine's start adopts the positions onto known
contracts. A gateway that is not there is not a start-up error: the engine starts, the market
pane and header say GATEWAY_UNREACHABLE, and the connection keeps trying with backoff.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.alerts import AlertBus
from engine.clock import Clock
from engine.config import Config
from engine.models import AlertKind, Mode, Severity
from engine.runtime import Runtime
from engine.store import Store
from engine.supervisor import Engine
from engine.venues.base import LiveOnly
from engine.venues.ibkr.connection import IbConnection
from engine.venues.ibkr.feed import IbkrMarketFeed
from engine.venues.ibkr.venue import IbkrVenue

log = logging.getLogger(__name__)


async def build_ibkr(
    config: Config,
    config_path: Path | None,
    clock: Clock,
    store: Store,
    bus: AlertBus,
    closers: list[Callable[[], object]],
    recorders: list[Callable[[Any], None]],
) -> Runtime:
    """IBKR: the account's stocks, options and spreads; prices and greeks from the gateway."""
    from engine.market_hours import MarketHours

    ib_cfg = config.venues.ibkr
    hours = MarketHours(ib_cfg.exchange_calendar)
    conn = IbConnection(ib_cfg, clock)
    running = asyncio.create_task(conn.run(), name="ibkr-connection")

    async def stop_connection() -> None:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        conn.close()

    closers.append(stop_connection)
    engine_ref: list[Engine] = []
    venue = _LiveOnly(
        lambda: engine_ref[0].mode if engine_ref else None,
        conn.current_ib,
        ib_cfg,
        config.data_path(),
        close_of=hours.close_of,
        is_ready=conn.is_ready,
        now=clock.now,
        hours=hours,  # no exit goes out while the contract's market is closed
    )
    feed = IbkrMarketFeed(
        conn,
        clock,
        ib_cfg,
        held=venue.held_contracts,
        close_of=hours.close_of,
        held_ib=venue.held_ib_contracts,
    )
    engine = Engine(config, clock, store, venue, alerts=bus, config_path=config_path)
    engine_ref.append(engine)
    conn.add_listener(venue)  # a new API session may no longer be read-only

    def read_only_alert(text: str) -> None:  # once per read-only episode (the venue says when)
        task = asyncio.ensure_future(
            bus.raise_(
                clock.now(),
                AlertKind.EXECUTION_FAILURE,
                Severity.CRITICAL,
                text,
                None,
                None,
                "ibkr:read_only",
            )
        )
        engine_tasks.add(task)
        task.add_done_callback(engine_tasks.discard)

    def foreign_alert(subject: str, severity: str, text: str) -> None:  # once per subject
        sev = Severity.CRITICAL if severity == "critical" else Severity.WARNING
        task = asyncio.ensure_future(
            bus.raise_(clock.now(), AlertKind.EXECUTION_FAILURE, sev, text, None, None, subject)
        )
        engine_tasks.add(task)
        task.add_done_callback(engine_tasks.discard)

    engine_tasks: set[asyncio.Task[Any]] = set()
    venue.on_alert = read_only_alert
    venue.on_notice = foreign_alert
    engine.market_hours = hours
    engine.symbol = ib_cfg.underlying
    engine.spot_source = "ibkr"  # the underlying's price comes from the gateway (market pane)
    if ib_cfg.market_data_type in ("delayed", "delayed_frozen"):  # allowed (parse_config)
        engine.data_note = "delayed data"
    engine.recorders.extend(recorders)
    if await conn.wait_connected(timeout=ib_cfg.connect_timeout_seconds):
        try:
            await feed.step(engine)  # the held contracts first: positions are adopted onto them
        except Exception:  # never a start-up failure: the feed's task tries again at once
            log.exception("IB: the first market data step failed; the feed goes on trying")
    else:
        log.warning("IB: %s not connected at start; the engine starts and keeps trying", conn.where)
    await engine.start()
    return Runtime(engine, store, [_ConnectionTask(running), feed], clock, closers)


class _ConnectionTask:
    """The connection's task, already running, as one of the engine's feeds: `Engine.run`
    stops it with the others."""

    name = "ibkr-connection"

    def __init__(self, task: asyncio.Task[None]) -> None:
        self._task = task

    async def run(self, engine: Engine) -> None:
        await self._task


class _LiveOnly(LiveOnly, IbkrVenue):
    """`IbkrVenue` that sends orders only while the engine's mode is live (as for Kalshi: the
    engine does not check the mode itself; dry_run is refused by the config with this venue)."""

    label = "IB"

    def __init__(self, mode: Callable[[], Mode | None], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.engine_mode = mode
