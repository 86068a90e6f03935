"""A Kalshi session with `[venues.kalshi] stream = true` (and `[spot] stream = true`), the
websocket addresses in the config, and a refused key at start-up.

`build_runtime` (engine.venue = "kalshi") against loopback servers only: Kalshi REST
(`tests/kalshi_server.py`) and Kalshi's market-data websocket (`tests/kalshi_ws_server.py`,
reached through `[venues.kalshi] ws_url`). The market feed runs as a task on a `ParkedClock`
(REST polls only when the test moves time, which it does not); the stream's quotes reach the
engine on their own. The test waits for each quote the engine takes (a recorder), with a deadline.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from engine.config import Config, ConfigError, parse_config
from engine.feeds.kalshi_feed import KalshiMarketFeed
from engine.feeds.spot_feed import SpotFeed
from engine.models import QuoteEvent, SpotEvent
from engine.runtime import Runtime, build_runtime
from tests.kalshi_server import RunningServer, kalshi_server
from tests.kalshi_ws_server import RunningWsServer, kalshi_ws_server
from tests.spot_servers import CoinbaseServer, CoinbaseWsServer, KrakenWsServer, ParkedClock

KEY_ID = "stream-session-key"
EVENT = "KXBTCD-26NOV2117"
HELD = f"{EVENT}-T97000"
START = 1795280400.0 - 1800.0  # 16:30 UTC, half an hour before the event closes
DEADLINE = 5.0
UNUSED = "http://127.0.0.1:9"  # the spot feed is not run here


@dataclass
class World:
    rest: RunningServer
    ws: RunningWsServer
    key_path: Path
    data: Path
    clock: ParkedClock
    quotes: asyncio.Queue[QuoteEvent] = field(default_factory=asyncio.Queue)

    def config(self, **kalshi: Any) -> Config:
        return parse_config(
            {
                "engine": {"venue": "kalshi", "data_dir": str(self.data), "mark": "bid"},
                "auto_stop": {"mode": "live", "armed": False},
                "alerts": {"log_file": "", "cooldown_seconds": 0.0},
                "venues": {
                    "kalshi": {
                        "base_url": self.rest.base_url,
                        "ws_url": self.ws.url,
                        "stream": True,
                        "api_key_id": KEY_ID,
                        "private_key_path": str(self.key_path),
                        "timeout_seconds": 2.0,
                        "read_requests_per_second": 1000.0,
                        "write_requests_per_second": 1000.0,
                        "rate_limit_burst": 100,
                        "max_attempts": 1,
                        **kalshi,
                    }
                },
                "spot": {"coinbase_url": UNUSED, "kraken_url": UNUSED},
            }
        )

    async def next_quote(self) -> QuoteEvent:
        """The next quote of the held market that the engine takes."""
        while True:
            ev = await asyncio.wait_for(self.quotes.get(), DEADLINE)
            if ev.quote.id == HELD:
                return ev


@pytest.fixture
async def world(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> AsyncIterator[World]:
    key_path = tmp_path / "kalshi.pem"
    key_path.write_bytes(
        rsa_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    os.chmod(key_path, 0o600)
    async with (
        kalshi_server(KEY_ID, rsa_key.public_key()) as rest,
        kalshi_ws_server(KEY_ID, rsa_key.public_key()) as ws,
    ):
        s = rest.state
        s.add_event(EVENT)
        for strike in (96500, 97000, 97500):
            s.add_market(
                f"{EVENT}-T{strike}",
                event_ticker=EVENT,
                close_time="2026-11-21T17:00:00Z",
                floor_strike=strike,
            )
        # REST quotes the held market at 0.58 / 0.60; the account holds YES 10 bought at 0.60.
        m = s.markets[HELD]
        m["yes_bid_dollars"], m["yes_ask_dollars"] = "0.5800", "0.6000"
        m["no_bid_dollars"], m["no_ask_dollars"] = "0.4000", "0.4200"
        s.set_position(HELD, "10.00", exposure="6.0000")
        s.add_fill(
            ticker=HELD,
            outcome_side="yes",
            book_side="bid",
            count_fp="10.00",
            yes_price_dollars="0.6000",
            no_price_dollars="0.4000",
        )
        # The websocket's book: YES bids 0.45, NO bids 0.50 (a YES ask of 0.50).
        ws.state.set_book(HELD, yes={"0.45": "10"}, no={"0.50": "5"})
        yield World(rest, ws, key_path, tmp_path / "data", ParkedClock(START))


def market_feed(rt: Runtime) -> KalshiMarketFeed:
    [feed] = [f for f in rt.feeds if isinstance(f, KalshiMarketFeed)]
    return feed


def held_mark(rt: Runtime) -> float | None:
    [row] = [r for r in rt.engine.snapshot().trades if r.contract_id == HELD]
    return row.mark


async def test_streamed_quotes_move_the_mark_and_a_seq_gap_resubscribes(world: World) -> None:
    w = world
    rt = await build_runtime(w.config(), None, clock=w.clock)
    rt.engine.recorders.append(
        lambda ev: w.quotes.put_nowait(ev) if isinstance(ev, QuoteEvent) else None
    )
    task = asyncio.create_task(market_feed(rt).run(rt.engine))
    try:
        assert held_mark(rt) == pytest.approx(0.58)  # from REST, at start
        conn = await w.ws.state.next_connection()  # the configured ws_url, signed
        subscribe = await w.ws.state.next_command()
        assert subscribe["cmd"] == "subscribe" and HELD in subscribe["params"]["market_tickers"]

        # The snapshot sent on subscribing reaches the engine: the mark is the stream's bid.
        ev = await w.next_quote()
        assert (ev.quote.bid, ev.quote.ask) == (pytest.approx(0.45), pytest.approx(0.50))
        assert held_mark(rt) == pytest.approx(0.45)
        await conn.delta(HELD, "yes", "0.47", "4")  # a better bid joins the book
        ev = await w.next_quote()
        assert ev.quote.bid == pytest.approx(0.47)
        assert held_mark(rt) == pytest.approx(0.47)

        # One delta is lost (seq skipped); the next one shows the gap and is not applied.
        conn.lose_delta(HELD, "yes", "0.47", "-4")
        await conn.delta(HELD, "yes", "0.48", "2")
        cmds = [await w.ws.state.next_command() for _ in range(2)]
        assert [c["cmd"] for c in cmds] == ["unsubscribe", "subscribe"]
        assert cmds[1]["params"]["channels"] == ["orderbook_delta"]
        # The fresh snapshot has the true book (0.47 gone, 0.48 in): quotes flow again.
        ev = await w.next_quote()
        assert ev.quote.bid == pytest.approx(0.48)
        assert held_mark(rt) == pytest.approx(0.48)
        await conn.delta(HELD, "yes", "0.49", "1")
        ev = await w.next_quote()
        assert ev.quote.bid == pytest.approx(0.49)
        assert held_mark(rt) == pytest.approx(0.49)
        assert w.rest.state.order_posts() == []
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await rt.close()


async def test_a_refused_key_id_is_a_clear_start_up_error(world: World) -> None:
    """A key id Kalshi does not know (HTTP 401) stops start-up naming the key to fix, instead
    of an engine that runs with the venue "unreachable"."""
    with pytest.raises(ConfigError) as info:
        await build_runtime(world.config(api_key_id="not-a-registered-key"), None)
    [line] = info.value.lines
    assert line.startswith("venues.kalshi.api_key_id: ")
    assert "HTTP 401" in line and "[venues.kalshi] api_key_id" in line
    assert "KALSHI_API_KEY_ID" in line
    assert "not-a-registered-key" not in line  # a secret is never echoed
    assert not world.data.exists()  # refused before the journal was created
    assert [r.path for r in world.rest.state.requests] == ["/portfolio/positions"]


async def test_spot_stream_true_feeds_the_engine_from_the_websocket_tickers(
    world: World,
) -> None:
    """`[spot] stream = true` through `build_runtime`: the history from REST, then the prices
    pushed by Coinbase's websocket ticker (Kraken's streams as the fallback)."""
    w = world
    cb_rest = await CoinbaseServer().start()
    cb_ws = await CoinbaseWsServer().start()
    kr_ws = await KrakenWsServer().start()
    assert isinstance(cb_rest, CoinbaseServer)
    assert isinstance(cb_ws, CoinbaseWsServer) and isinstance(kr_ws, KrakenWsServer)
    bar = int(START) - 60
    cb_rest.candles = [
        [bar - 60 * k, 97_000.0, 97_020.0, 97_010.0, 97_010.0, 1.0] for k in range(40)
    ]
    cfg = w.config()
    cfg.spot.stream = True
    cfg.spot.coinbase_url = cb_rest.url
    cfg.spot.coinbase_ws_url = cb_ws.url
    cfg.spot.kraken_ws_url = kr_ws.url
    rt = await build_runtime(cfg, None, clock=w.clock)
    [spot] = [f for f in rt.feeds if isinstance(f, SpotFeed)]
    spots: asyncio.Queue[SpotEvent] = asyncio.Queue()
    rt.engine.recorders.append(
        lambda ev: spots.put_nowait(ev) if isinstance(ev, SpotEvent) else None
    )
    task = asyncio.create_task(spot.run(rt.engine))
    try:
        await cb_ws.next_subscribe()
        await kr_ws.next_subscribe()
        assert spot.backfilled == 40  # every bar REST had, seeded before the streams started
        w.clock.advance(2)
        await cb_ws.ticker(97_650.5, START + 1)
        ev = await asyncio.wait_for(spots.get(), DEADLINE)
        assert ev.price == 97_650.5
        market = rt.engine.snapshot().market
        assert market is not None and (market.spot, market.spot_source) == (97_650.5, "coinbase")
        assert [p for p, _ in cb_rest.requests] == ["/products/BTC-USD/candles"]
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await rt.close()
        for srv in (cb_ws, kr_ws):
            await srv.close()
        await cb_rest.close()


@pytest.mark.parametrize(
    ("table", "key", "value"),
    [
        ("venues.kalshi", "ws_url", "https://exchange.invalid/trade-api/ws/v2"),
        ("venues.kalshi", "ws_url", "exchange.invalid"),
        ("spot", "coinbase_ws_url", "http://feed.exchange.invalid"),
        ("spot", "kraken_ws_url", "ws.exchange.invalid/v2"),
    ],
)
def test_a_websocket_address_must_be_ws_or_wss(table: str, key: str, value: str) -> None:
    section, *sub = table.split(".")
    data: dict[str, Any] = {key: value}
    for name in reversed(sub):
        data = {name: data}
    with pytest.raises(ConfigError) as info:
        parse_config({section: data})
    [line] = info.value.lines
    assert f"{table}.{key}: expected a websocket address" in line and value in line


def test_websocket_addresses_default_to_the_venues() -> None:
    cfg = parse_config({"venues": {"kalshi": {"ws_url": "wss://proxy.example/trade-api/ws/v2"}}})
    assert cfg.venues.kalshi.ws_url == "wss://proxy.example/trade-api/ws/v2"
    default = parse_config({})
    assert default.venues.kalshi.ws_url is None  # follows `environment`
    assert default.spot.stream is False
    assert default.spot.coinbase_ws_url == "wss://ws-feed.exchange.coinbase.com"
    assert default.spot.kraken_ws_url == "wss://ws.kraken.com/v2"
