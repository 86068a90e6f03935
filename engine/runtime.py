"""Wiring: build an engine, its store, venue, feeds and alert channels from a config.

Used by the headless command, `record`, and the UI (which hosts the same runtime on a worker).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import logging
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine import private_files
from engine.alert_channels import attach_channels
from engine.alerts import AlertBus
from engine.clock import Clock, RealClock, ScaledClock
from engine.commands import Command
from engine.config import Config, ConfigError
from engine.feeds.sim_feed import STATE_KEY, SimFeed
from engine.models import AlertKind, Quote, SettleEvent, Severity
from engine.sim import SimMarket
from engine.store import JOURNAL_FILENAME, Store
from engine.supervisor import Engine
from engine.tape import TAPES_DIRNAME, Tape
from engine.venues.kalshi.auth import KalshiKeyError, KalshiSigner
from engine.venues.paper import PaperVenue

# The simulated market resumes through a gap of up to a week (about 0.15 s of start-up per day
# away), so the events that closed meanwhile settle the trades on them; a longer gap starts a
# fresh simulated session, and trades left on the old events are reported.
RESUME_SIM_WITHIN_SECONDS = 7 * 86400.0

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    engine: Engine
    store: Store
    feeds: list[Any]
    clock: Clock
    closers: list[Callable[[], object]] = field(default_factory=list)
    """Called in order at close; one that returns an awaitable (an async `aclose`) is awaited."""

    async def close(self) -> None:
        try:
            await self.engine.flush()
        finally:
            # Always close: an open aiosqlite connection's thread keeps the process alive.
            await self.store.close()
            await _run_closers(self.closers)


async def _report_stranded(engine: Engine, market: SimMarket, resumed: bool) -> None:
    """Trades on events the simulated market does not list can never be quoted or settled (their
    event closed while a fresh session started, or the contract was never the sim's): say so
    once, with the way out."""
    listed = {c.id for c in market.contracts()}
    stranded = sorted(
        t.trade_id
        for t in engine.trades.values()
        if t.venue == engine.venue.name and t.contract_id not in listed
    )
    if not stranded:
        return
    why = (
        "the simulated market does not list their contracts"
        if resumed
        else "their contracts belong to an earlier simulated session (its saved state is missing "
        f"or more than {RESUME_SIM_WITHIN_SECONDS / 86400:g} days old)"
    )
    await engine.alerts.raise_(
        engine.clock.now(),
        AlertKind.DATA_QUALITY,
        Severity.WARNING,
        f"{len(stranded)} trade(s) can never settle "
        f"({', '.join(stranded[:5])}{', …' if len(stranded) > 5 else ''}): close them with "
        f"`trade-supervisor trades close ID --price P`; {why}",
    )


async def _run_closers(closers: list[Callable[[], object]]) -> None:
    """Run every closer even if one fails; the first failure is raised at the end."""
    error: BaseException | None = None
    for c in closers:
        try:
            result = c()
            if inspect.isawaitable(result):
                await result
        except Exception as e:
            error = error or e
    if error is not None:
        raise error


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
    closers: list[Callable[[], object]] = []
    # A missing or unusable Kalshi key, or one Kalshi refuses, stops start-up before anything
    # is written.
    signer = _kalshi_signer(config) if config.engine.venue == "kalshi" else None
    kalshi_client = None
    if signer is not None:
        from engine.kalshi_runtime import open_kalshi_client

        kalshi_client = await open_kalshi_client(config, signer)
        closers.append(kalshi_client.aclose)
    try:
        data = config.data_path()
        problem = config.data_dir_problem()
        if problem is not None:
            raise ConfigError([problem])
        private_files.make_dir(data)
        for p in private_files.tighten_all(data):
            log.warning("%s was readable by other users: made private (0600)", p)
        store = Store(db_path or data / JOURNAL_FILENAME)
        await store.open()
    except BaseException:
        await _run_closers(closers)
        raise
    try:
        # A live venue runs on real time whatever [sim] speed says.
        live = config.engine.venue in ("kalshi", "ibkr")
        clock = clock or (RealClock() if live else sim_clock(config))
        bus = AlertBus(config.alerts.cooldown_seconds, config.engine.snapshot_alerts)
        # The log, stdout, desktop and webhook channels; the venues below share this bus.
        attach_channels(
            bus,
            config.alerts,
            data,
            closers,
            print_alerts=print_alerts,
            now=clock.now,
            retry_after_max_seconds=config.engine.retry_after_max_seconds,
        )
        # The tape (engine/tape.py): what this engine sees, for `replay`; never on `replay` itself.
        tape = _open_tape(config, data, clock, closers)
        if tape is not None:
            recorders = [*(recorders or []), tape.record]
        if config.engine.venue == "ibkr":
            from engine.ibkr_runtime import build_ibkr

            return _taped(
                await build_ibkr(config, config_path, clock, store, bus, closers, recorders or []),
                tape,
            )
        if signer is not None and kalshi_client is not None:
            from engine.kalshi_runtime import build_kalshi

            return _taped(
                await build_kalshi(
                    config,
                    config_path,
                    clock,
                    store,
                    bus,
                    closers,
                    recorders or [],
                    signer,
                    kalshi_client,
                ),
                tape,
            )

        quotes: dict[str, Quote] = {}
        venue = PaperVenue(
            config.paper, quotes.get, state_path=data / "paper_venue.json", name=config.engine.venue
        )
        closers.append(venue.close)
        engine = Engine(config, clock, store, venue, alerts=bus, config_path=config_path)
        engine.quotes = quotes  # the paper venue fills against the engine's own quote book
        engine.recorders.extend(recorders or [])
        if tape is not None:
            tape.attach(engine)  # before start: the demo trades' exits are taped too

        saved = await store.get_state(STATE_KEY)
        now = clock.now()
        resumed = (
            isinstance(saved, dict)
            and 0 <= now - float(saved.get("ts", -1e18)) <= RESUME_SIM_WITHIN_SECONDS
        )
        market = SimMarket(config.sim, now, state=saved if resumed else None)
        # Settlements of events that closed while the app was stopped wait until `start` has
        # loaded the journal's trades; they are stamped now, when the engine learns of them.
        settlements: list[SettleEvent] = []
        for ev in market.advance_to(now):
            if isinstance(ev, SettleEvent):
                settlements.append(dataclasses.replace(ev, ts=now))
            else:
                await engine.handle(ev)
        demo = (
            # Stamped with the market's own time, so a recording stays in time order.
            (lambda _ts: market.demo_trades(market.now, config.sim.demo_trades))
            if config.sim.demo_trades
            else None
        )
        # The journaled spot history and the market's path while the app was stopped seed the
        # signals (a fresh session's path is new: the old history is older than it can use).
        await engine.start(demo=demo, spot_backfill=list(market.gap_closes) if resumed else ())
        for ev in settlements:
            await engine.handle(ev)
        await _report_stranded(engine, market, resumed)
        return _taped(Runtime(engine, store, [SimFeed(market, clock)], clock, closers), tape)
    except BaseException:
        try:
            await _run_closers(closers)  # every client made so far (e.g. Kalshi's)
        finally:
            await store.close()
        raise


def _open_tape(
    config: Config, data: Path, clock: Clock, closers: list[Callable[[], object]]
) -> Tape | None:
    """The venue's tape under data_dir/tapes/ when `[tape] enabled`; closed (drained) by the
    runtime's closers, on its writer thread's time, not the event loop's."""
    if not config.tape.enabled:
        return None
    tape = Tape(data / TAPES_DIRNAME, config.engine.venue, clock, config.tape)
    tape.start()
    closers.append(lambda: asyncio.to_thread(tape.close))
    return tape


def _taped(rt: Runtime, tape: Tape | None) -> Runtime:
    """Attach the tape to the engine built (its exits, fills, closes; its heartbeat)."""
    if tape is not None:
        tape.attach(rt.engine)
    return rt


def _kalshi_signer(config: Config) -> KalshiSigner:
    """The request signer from `[venues.kalshi]`; a `ConfigError` naming the key and the fix."""
    kc = config.venues.kalshi
    if kc.api_key_id is None or kc.private_key_path is None:  # parse_config refuses this too
        raise ConfigError(
            [
                'engine.venue = "kalshi" needs venues.kalshi.api_key_id and '
                "venues.kalshi.private_key_path (or KALSHI_API_KEY_ID and KALSHI_PRIVATE_KEY_PATH)"
            ]
        )
    try:
        return KalshiSigner.from_file(
            kc.api_key_id.get_secret_value(), kc.private_key_path.get_secret_value()
        )
    except KalshiKeyError as e:
        # The message names the path (never the key) and the fix.
        raise ConfigError([f"venues.kalshi.private_key_path: {e}"]) from None


def _stdout_closed_at_start() -> None:
    """Stdout is closed before the engine's first line: send it to /dev/null (the stdout alerts
    then go nowhere, said once here) instead of failing at every write."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    with contextlib.suppress(OSError, ValueError):
        print(
            "trade-supervisor: stdout is closed: no alerts are printed; they still go to the "
            "alert log and the other channels",
            file=sys.stderr,
            flush=True,
        )


async def run_headless(config: Config, config_path: Path | None) -> int:
    """The engine without a screen, until SIGINT/SIGTERM; SIGHUP reloads the config."""
    try:
        rt = await build_runtime(config, config_path, print_alerts=config.alerts.print_headless)
    except ConfigError as e:
        print("\n".join(e.lines), file=sys.stderr)
        print("trade-supervisor: not started; fix the config", file=sys.stderr)
        return 2  # engine.cli.EXIT_CONFIG
    eng = rt.engine
    # The control socket (engine/control.py): the screens and the command line attach here.
    from engine.control import ControlServer

    server = ControlServer(eng, config)
    try:
        await server.start()
    except OSError as e:
        await rt.close()
        print(
            f"trade-supervisor: cannot open the control socket {server.path}: {e}; "
            "not started (fix the directory's permissions or set [engine] data_dir)",
            file=sys.stderr,
        )
        return 1  # engine.cli.EXIT_FAIL
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError):
        loop.add_signal_handler(signal.SIGINT, eng.stop)
        loop.add_signal_handler(signal.SIGTERM, eng.stop)
        loop.add_signal_handler(
            signal.SIGHUP, lambda: asyncio.ensure_future(eng.command(Command("reload")))
        )
    try:
        try:
            print(
                f"trade-supervisor: venue {eng.venue.name}, mode {eng.mode.value}, "
                f"{'ARMED' if eng.armed else 'disarmed'}{', PAUSED' if eng.paused_all else ''}; "
                f"{len(eng.trades)} open trades; journal {rt.store.path}; control socket "
                f"{server.path}. Ctrl-C stops.",
                flush=True,
            )
        except (OSError, ValueError):  # stdout already closed: the engine runs all the same
            _stdout_closed_at_start()
        await eng.run(rt.feeds)
    finally:
        try:
            await server.close()
        finally:
            await rt.close()
    return 0
