"""Wiring: build an engine, its store, venue, feeds and alert channels from a config.

Used by the headless command, `record`, and the UI (which hosts the same runtime on a worker).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.alerts import AlertBus, JsonlChannel, PrintChannel
from engine.clock import Clock, RealClock, ScaledClock
from engine.commands import Command
from engine.config import Config, ConfigError
from engine.feeds.sim_feed import STATE_KEY, SimFeed
from engine.models import Mode, Quote
from engine.sim import SimMarket
from engine.store import JOURNAL_FILENAME, Store
from engine.supervisor import Engine
from engine.venues.base import OrderRequest, OrderResult
from engine.venues.kalshi.auth import KalshiKeyError, KalshiSigner
from engine.venues.kalshi.venue import KalshiVenue
from engine.venues.paper import PaperVenue

RESUME_SIM_WITHIN_SECONDS = 2 * 3600.0  # a longer gap starts a fresh simulated session


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
    # A missing or unusable Kalshi key stops start-up before anything is created or written.
    signer = _kalshi_signer(config) if config.engine.venue == "kalshi" else None
    data = config.data_path()
    data.mkdir(parents=True, exist_ok=True)
    store = Store(db_path or data / JOURNAL_FILENAME)
    await store.open()
    try:
        # A live venue runs on real time whatever [sim] speed says.
        clock = clock or (RealClock() if config.engine.venue == "kalshi" else sim_clock(config))
        bus = AlertBus(config.alerts.cooldown_seconds, config.engine.snapshot_alerts)
        closers: list[Callable[[], object]] = []
        if config.alerts.log_file:
            log_path = Path(config.alerts.log_file)
            jl = JsonlChannel(log_path if log_path.is_absolute() else data / log_path)
            bus.channels.append(jl)
            closers.append(jl.close)
        if print_alerts:
            bus.channels.append(PrintChannel())
        if signer is not None:
            try:
                return await _build_kalshi(
                    config, config_path, clock, store, bus, closers, recorders or [], signer
                )
            except BaseException:
                await _run_closers(closers)
                raise

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


async def _build_kalshi(
    config: Config,
    config_path: Path | None,
    clock: Clock,
    store: Store,
    bus: AlertBus,
    closers: list[Callable[[], object]],
    recorders: list[Callable[[Any], None]],
    signer: KalshiSigner,
) -> Runtime:
    """Kalshi: the account as the venue, its ladder from REST (optionally the stream), spot from
    Coinbase/Kraken. No paper broker, no simulated market, no demo trades. Every client made
    here is appended to `closers` at once, so a failure later in start-up still closes it."""
    from engine.feeds.coinbase import CoinbaseSpot
    from engine.feeds.deribit import DeribitDvol
    from engine.feeds.kalshi_feed import KalshiMarketFeed
    from engine.feeds.kraken import KrakenSpot
    from engine.feeds.spot_feed import SpotFeed
    from engine.feeds.spot_selector import PrimaryFallback
    from engine.feeds.spot_sources import SourceUnavailable, SpotSource
    from engine.venues.kalshi import KalshiClient
    from engine.venues.kalshi.stream import WS_URLS, KalshiStream

    kc = config.venues.kalshi
    client = KalshiClient.from_config(kc, signer=signer)
    closers.append(client.aclose)
    engine_ref: list[Engine] = []
    venue = _LiveOnly(client, lambda: engine_ref[0].mode if engine_ref else None)
    stream = None
    if kc.stream:
        stream = KalshiStream(signer, url=WS_URLS[kc.environment], clock=clock)
        closers.append(stream.aclose)
    market_feed = KalshiMarketFeed(
        client,
        clock,
        series_ticker=kc.series,
        poll_seconds=kc.poll_seconds,
        refresh_seconds=kc.quote_refresh_seconds,
        stream=stream,
    )

    sc = config.spot

    def source(name: str) -> SpotSource:
        if name == "coinbase":
            made: Any = CoinbaseSpot(
                clock, base_url=sc.coinbase_url, timeout_seconds=sc.timeout_seconds
            )
        else:
            made = KrakenSpot(clock, base_url=sc.kraken_url, timeout_seconds=sc.timeout_seconds)
        closers.append(made.aclose)
        return made

    primary = source(sc.primary)
    fallback = _NoSpot(SourceUnavailable) if sc.fallback == "none" else source(sc.fallback)
    selector = PrimaryFallback(primary, fallback, clock, stale_after_seconds=sc.stale_after_seconds)
    dvol = None
    if sc.dvol:
        dvol = DeribitDvol(clock, base_url=sc.deribit_url, timeout_seconds=sc.timeout_seconds)
        closers.append(dvol.aclose)
    spot_feed = SpotFeed(selector, clock, poll_seconds=sc.poll_seconds, dvol=dvol)

    engine = Engine(config, clock, store, venue, alerts=bus, config_path=config_path)
    engine_ref.append(engine)
    engine.recorders.extend(recorders)
    # The ladder first, so positions found at start are adopted onto known contracts with quotes
    # (an unreachable Kalshi is logged here and retried by the feed; a refused key stops start-up).
    await market_feed.poll_once(engine)
    await engine.start()
    return Runtime(engine, store, [market_feed, spot_feed], clock, closers)


class _LiveOnly(KalshiVenue):
    """`KalshiVenue` that sends orders only while the engine's mode is live.

    The engine itself does not stop dry_run orders (its other venues are paper brokers);
    `parse_config` refuses dry_run with venue "kalshi", and this covers a mode changed at run
    time (a reload that also changed [engine], which needs a restart, could still apply it).
    """

    def __init__(self, client: Any, mode: Callable[[], Mode | None]) -> None:
        super().__init__(client)
        self._mode = mode

    async def submit(self, req: OrderRequest) -> OrderResult:
        mode = self._mode()
        if mode is not Mode.LIVE:
            return OrderResult(
                req.client_order_id,
                "rejected",
                0.0,
                None,
                0.0,
                reason=f"not sent to kalshi: mode is {mode.value if mode else 'unknown'}, not live",
            )
        return await super().submit(req)


class _NoSpot:
    """The fallback of `[spot] fallback = "none"`: never usable, so only the primary is used."""

    name = "none"

    def __init__(self, error: type[Exception]) -> None:
        self._error = error

    async def latest(self) -> Any:
        raise self._error(self.name, "no fallback configured")

    async def backfill(self, minutes: int = 30) -> Any:
        raise self._error(self.name, "no fallback configured")

    async def aclose(self) -> None:
        return None


async def run_headless(config: Config, config_path: Path | None) -> int:
    """The engine without a screen, until SIGINT/SIGTERM; SIGHUP reloads the config."""
    try:
        rt = await build_runtime(config, config_path, print_alerts=config.alerts.print_headless)
    except ConfigError as e:
        print("\n".join(e.lines), file=sys.stderr)
        print("trade-supervisor: not started; fix the config", file=sys.stderr)
        return 2  # engine.cli.EXIT_CONFIG
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
