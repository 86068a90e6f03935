"""Wiring of `engine.venue = "kalshi"`: the account as the venue, its market feed, the spot feed.

`engine.runtime.build_runtime` imports this module only when the venue is Kalshi, so the sim and
paper venues never load the Kalshi client, its websocket or the spot sources.

Start-up order: `open_kalshi_client` makes one signed request before the journal is opened, so a
key Kalshi refuses (HTTP 401/403: a wrong key id, a key not registered with this environment, a
key file that does not belong to the key id, a wrong clock) stops start-up with a `ConfigError`
naming `[venues.kalshi] api_key_id` and the fix, instead of an engine that runs with the venue
shown as unreachable. Kalshi not answering at all is not an error here: it is logged and the
feeds retry, as before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.alerts import AlertBus
from engine.clock import Clock
from engine.config import Config, ConfigError
from engine.models import Mode
from engine.runtime import Runtime
from engine.store import Store
from engine.supervisor import Engine
from engine.venues.base import LiveOnly
from engine.venues.kalshi import KalshiClient
from engine.venues.kalshi.auth import KalshiSigner
from engine.venues.kalshi.errors import KalshiAuthError, KalshiError
from engine.venues.kalshi.venue import KalshiVenue

log = logging.getLogger(__name__)

KEY_CHECK_PATH = "/portfolio/positions"
"""The signed request made at start-up to check the key (one page of one position)."""


async def open_kalshi_client(config: Config, signer: KalshiSigner) -> KalshiClient:
    """The REST client of `[venues.kalshi]`, its key checked with one signed request.

    Raises `ConfigError` when Kalshi refuses the key (the client is closed then). Any other
    failure (Kalshi unreachable, 5xx) is logged and start-up goes on: the feeds retry.
    """
    kc = config.venues.kalshi
    client = KalshiClient.from_config(
        kc, signer=signer, retry_after_max_seconds=config.engine.retry_after_max_seconds
    )
    try:
        await client.request(
            "GET",
            KEY_CHECK_PATH,
            params={"limit": 1, "settlement_status": "unsettled"},
            auth=True,
        )
    except KalshiAuthError as e:
        await client.aclose()
        raise ConfigError([_refused_key_message(config, e)]) from None
    except KalshiError as e:
        log.warning("Kalshi: could not check the API key at start-up (%s); going on", e)
    except BaseException:
        await client.aclose()
        raise
    return client


def _refused_key_message(config: Config, e: KalshiAuthError) -> str:
    """Names the key id's config key and env var, and the fix; never the key id itself."""
    kc = config.venues.kalshi
    where = kc.base_url or f"Kalshi's {kc.environment} exchange"
    said = f": {e.message}" if e.message else ""
    status = f"HTTP {e.status}" if e.status is not None else "refused"
    return (
        f"venues.kalshi.api_key_id: {where} refused the API key ({status}{said}). The key id "
        "is not one Kalshi knows for this environment, or the private key file is not the one "
        "made with it. Fix: set [venues.kalshi] api_key_id (or KALSHI_API_KEY_ID) to the key id "
        "shown next to the key in your Kalshi account settings (demo and prod keys are "
        "separate: check venues.kalshi.environment), and private_key_path (or "
        "KALSHI_PRIVATE_KEY_PATH) to the key file downloaded with it; also check that this "
        "computer's clock is right"
    )


async def build_kalshi(
    config: Config,
    config_path: Path | None,
    clock: Clock,
    store: Store,
    bus: AlertBus,
    closers: list[Callable[[], object]],
    recorders: list[Callable[[Any], None]],
    signer: KalshiSigner,
    client: KalshiClient,
) -> Runtime:
    """Kalshi: the account as the venue, its ladder from REST (optionally the stream), spot from
    Coinbase/Kraken (polled, or their websocket tickers). No paper broker, no simulated market,
    no demo trades. Every client made here is appended to `closers` at once, so a failure later
    in start-up still closes it (`client`'s closer is already there)."""
    from engine.feeds.coinbase import CoinbaseSpot
    from engine.feeds.deribit import DeribitDvol
    from engine.feeds.kalshi_feed import KalshiMarketFeed
    from engine.feeds.kraken import KrakenSpot
    from engine.feeds.spot_feed import SpotFeed
    from engine.feeds.spot_selector import PrimaryFallback
    from engine.feeds.spot_sources import SourceUnavailable, SpotSource
    from engine.feeds.spot_streams import CoinbaseStream, KrakenStream, SpotStream
    from engine.venues.kalshi.stream import WS_URLS, KalshiStream

    kc = config.venues.kalshi
    backoff_max = config.engine.backoff_max_seconds
    client.use_clock(clock.now)  # Retry-After's HTTP dates against the engine's clock
    engine_ref: list[Engine] = []
    venue = _LiveOnly(client, lambda: engine_ref[0].mode if engine_ref else None)
    stream = None
    if kc.stream:
        stream = KalshiStream(
            signer,
            url=kc.ws_url or WS_URLS[kc.environment],
            clock=clock,
            backoff_max=backoff_max,
            retry_after_max=config.engine.retry_after_max_seconds,
        )
        closers.append(stream.aclose)
    market_feed = KalshiMarketFeed(
        client,
        clock,
        series_ticker=kc.series,
        poll_seconds=kc.poll_seconds,
        refresh_seconds=kc.quote_refresh_seconds,
        max_backoff_seconds=backoff_max,
        stream=stream,
    )

    sc = config.spot
    streams: list[SpotStream] = []

    retry_after_max = config.engine.retry_after_max_seconds

    def source(name: str) -> SpotSource:
        if name == "coinbase":
            rest: Any = CoinbaseSpot(
                clock, base_url=sc.coinbase_url, timeout_seconds=sc.timeout_seconds
            )
        else:
            rest = KrakenSpot(clock, base_url=sc.kraken_url, timeout_seconds=sc.timeout_seconds)
        rest.retry_gate.max_seconds = retry_after_max
        closers.append(rest.aclose)
        if not sc.stream:
            return rest  # type: ignore[no-any-return]
        # The stream delivers the ticks; its REST client only backfills the history.
        made: SpotStream
        ws: dict[str, Any] = {"backoff_max": backoff_max, "retry_after_max": retry_after_max}
        if name == "coinbase":
            made = CoinbaseStream(clock, rest, url=sc.coinbase_ws_url, **ws)
        else:
            made = KrakenStream(clock, rest, url=sc.kraken_ws_url, **ws)
        closers.append(made.aclose)
        streams.append(made)
        return made

    primary = source(sc.primary)
    fallback = _NoSpot(SourceUnavailable) if sc.fallback == "none" else source(sc.fallback)
    selector = PrimaryFallback(primary, fallback, clock, stale_after_seconds=sc.stale_after_seconds)
    dvol = None
    if sc.dvol:
        dvol = DeribitDvol(clock, base_url=sc.deribit_url, timeout_seconds=sc.timeout_seconds)
        dvol.retry_gate.max_seconds = retry_after_max
        closers.append(dvol.aclose)
    spot_feed = SpotFeed(selector, clock, poll_seconds=sc.poll_seconds, dvol=dvol, streams=streams)

    engine = Engine(config, clock, store, venue, alerts=bus, config_path=config_path)
    engine_ref.append(engine)
    engine.recorders.extend(recorders)
    # The ladder first, so positions found at start are adopted onto known contracts with quotes
    # (an unreachable Kalshi is logged here and retried by the feed; a refused key stopped
    # start-up in open_kalshi_client).
    await market_feed.poll_once(engine)
    await engine.start()
    return Runtime(engine, store, [market_feed, spot_feed], clock, closers)


class _LiveOnly(LiveOnly, KalshiVenue):
    """`KalshiVenue` that sends orders only while the engine's mode is live."""

    label = "kalshi"

    def __init__(self, client: Any, mode: Callable[[], Mode | None]) -> None:
        super().__init__(client)
        self.engine_mode = mode


class _NoSpot:
    """The fallback of `[spot] fallback = "none"`: never usable, so only the primary is used.

    `disabled`: the selector never asks it and never reports it failing (no "none failing"
    alert, no failing source): a fallback switched off on purpose is not a fault."""

    name = "none"
    disabled = True

    def __init__(self, error: type[Exception]) -> None:
        self._error = error

    async def latest(self) -> Any:
        raise self._error(self.name, "no fallback configured")

    async def backfill(self, minutes: int = 30) -> Any:
        raise self._error(self.name, "no fallback configured")

    async def aclose(self) -> None:
        return None
