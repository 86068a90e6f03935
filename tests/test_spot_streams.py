"""Spot over the venues' websocket tickers (`[spot] stream = true`), against loopback servers.

A real engine on a clock the test moves (`ParkedClock`: the feed waits for pushes, or for the
test to move time); Coinbase and Kraken speak their real websocket protocols
(`tests/spot_servers.py`), their REST stand-ins serve the backfill. Nothing waits on the wall
clock: the test waits for the spot update to reach the engine (a recorder), or for a stream to
take a tick (its listeners), each with a deadline; backoff waits are recorded, not slept.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from engine.feeds.coinbase import CoinbaseSpot
from engine.feeds.kraken import KrakenSpot
from engine.feeds.spot_feed import SpotFeed
from engine.feeds.spot_selector import PrimaryFallback
from engine.feeds.spot_sources import SpotTick
from engine.feeds.spot_streams import CoinbaseStream, KrakenStream, SpotStream
from engine.models import SpotEvent
from engine.snapshot import MarketView
from tests.engine_harness import T0, Harness
from tests.loopback import RecordedSleeps
from tests.spot_servers import (
    CoinbaseServer,
    CoinbaseWsServer,
    KrakenServer,
    KrakenWsServer,
    ParkedClock,
)

DEADLINE = 5.0


@dataclass
class Rig:
    h: Harness
    clock: ParkedClock
    cb_rest: CoinbaseServer
    kr_rest: KrakenServer
    cb_ws: CoinbaseWsServer
    kr_ws: KrakenWsServer
    cb: CoinbaseStream
    kr: KrakenStream
    feed: SpotFeed
    sleeps: RecordedSleeps
    spots: asyncio.Queue[SpotEvent] = field(default_factory=asyncio.Queue)
    pushed: dict[str, asyncio.Queue[SpotTick]] = field(default_factory=dict)

    @property
    def now(self) -> float:
        return self.clock.now()

    @property
    def market(self) -> MarketView:
        m = self.h.engine.snapshot().market
        assert m is not None
        return m

    def data_quality(self) -> list[str]:
        return [a.message for a in self.h.of_kind("data_quality")]

    async def next_spot(self) -> SpotEvent:
        """The next spot update the engine takes."""
        return await asyncio.wait_for(self.spots.get(), DEADLINE)

    async def taken(self, source: str) -> SpotTick:
        """The next tick `source`'s stream takes (whether or not it is the one in use)."""
        return await asyncio.wait_for(self.pushed[source].get(), DEADLINE)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    h = Harness(tmp_path)
    clock = h.clock = ParkedClock(T0)
    await h.open()
    await h.contract()
    await h.start()
    cb_rest = await CoinbaseServer().start()
    kr_rest = await KrakenServer().start()
    assert isinstance(cb_rest, CoinbaseServer) and isinstance(kr_rest, KrakenServer)
    # 30 one-minute bars for the backfill (REST); the last one is still forming at T0 + 30.
    cb_rest.candles = [
        [int(T0) - 60 * k, 96_990.0, 97_010.0, 97_000.0, 97_000.0 + k / 4, 1.0] for k in range(32)
    ]
    cb_ws = await CoinbaseWsServer().start()
    kr_ws = await KrakenWsServer().start()
    assert isinstance(cb_ws, CoinbaseWsServer) and isinstance(kr_ws, KrakenWsServer)
    sleeps = RecordedSleeps()
    opts: dict[str, Any] = {"sleep": sleeps, "rng": random.Random(5), "proxy": None}
    cb_client = CoinbaseSpot(clock, base_url=cb_rest.url, timeout_seconds=1.0)
    kr_client = KrakenSpot(clock, base_url=kr_rest.url, timeout_seconds=1.0)
    cb = CoinbaseStream(clock, cb_client, url=cb_ws.url, **opts)
    kr = KrakenStream(clock, kr_client, url=kr_ws.url, **opts)
    selector = PrimaryFallback(cb, kr, clock, stale_after_seconds=10.0)
    feed = SpotFeed(selector, clock, backfill_minutes=30, streams=[cb, kr])
    r = Rig(h, clock, cb_rest, kr_rest, cb_ws, kr_ws, cb, kr, feed, sleeps)
    h.engine.recorders.append(
        lambda ev: r.spots.put_nowait(ev) if isinstance(ev, SpotEvent) else None
    )
    for stream in (cb, kr):
        r.pushed[stream.name] = asyncio.Queue()
        stream.listeners.append(r.pushed[stream.name].put_nowait)
    clock.set(T0 + 30)
    task = asyncio.create_task(feed.run(h.engine))
    try:
        await cb_ws.next_subscribe()
        await kr_ws.next_subscribe()
        yield r
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for s in (cb, kr):
            await s.aclose()
        await cb_client.aclose()
        await kr_client.aclose()
        for srv in (cb_ws, kr_ws):
            await srv.close()
        await cb_rest.close()
        await kr_rest.close()
        await h.close()


async def test_pushed_ticks_reach_the_engine_and_rest_only_backfills(rig: Rig) -> None:
    r = rig
    # Both venues were subscribed the documented way.
    assert r.cb_ws.subscribes == [
        {"type": "subscribe", "product_ids": ["BTC-USD"], "channels": ["ticker", "heartbeat"]}
    ]
    [kraken_sub] = r.kr_ws.subscribes
    assert kraken_sub["method"] == "subscribe"
    assert kraken_sub["params"] == {"channel": "ticker", "symbol": ["BTC/USD"]}
    assert r.feed.backfilled == 30  # the history came from REST first

    await r.cb_ws.ticker(97_650.5, r.now - 1)
    ev = await r.next_spot()
    assert (ev.price, ev.ts) == (97_650.5, pytest.approx(r.now - 1))
    assert (r.market.spot, r.market.spot_source) == (97_650.5, "coinbase")

    # The fallback streams too, but while the primary is healthy its price is not used.
    await r.kr_ws.ticker(97_640.0, r.now)
    await r.taken("kraken")
    await r.cb_ws.heartbeat(r.now)
    r.clock.advance(1)
    await r.cb_ws.ticker(97_700.25, r.now)
    ev = await r.next_spot()
    assert ev.price == 97_700.25
    assert r.spots.empty()  # Kraken's tick never reached the engine
    assert r.market.spot_source == "coinbase"
    assert r.data_quality() == []
    # REST was asked for the candles only, never for a ticker.
    assert [p for p, _ in r.cb_rest.requests] == ["/products/BTC-USD/candles"]
    assert r.kr_rest.requests == []


async def test_a_silent_primary_stream_hands_over_to_the_fallback_with_one_alert(
    rig: Rig,
) -> None:
    r = rig
    await r.cb_ws.ticker(97_650.5, r.now)
    assert (await r.next_spot()).price == 97_650.5
    await r.kr_ws.ticker(97_640.0, r.now)
    await r.taken("kraken")

    r.cb_ws.silent = True  # connected, but nothing more comes
    r.clock.advance(6)
    await r.cb_ws.ticker(97_999.0, r.now)  # swallowed by the silent server
    await r.kr_ws.ticker(97_641.0, r.now)
    await r.taken("kraken")
    assert r.market.spot == 97_650.5 and r.data_quality() == []  # 6 s old: still fine

    r.clock.advance(6)  # Coinbase's last price is 12 s old (limit 10 s); Kraken's 6 s
    ev = await r.next_spot()
    assert ev.price == 97_641.0
    assert r.market.spot_source == "kraken"
    [alert] = r.h.of_kind("data_quality")
    assert alert.severity.value == "warning"
    assert "coinbase stale" in alert.message and "spot from kraken" in alert.message

    await r.kr_ws.ticker(97_645.0, r.now)  # the fallback keeps the engine fed
    assert (await r.next_spot()).price == 97_645.0
    assert len(r.data_quality()) == 1  # one episode, however many ticks

    r.cb_ws.silent = False  # Coinbase speaks again: back to the primary, the episode ends
    r.clock.advance(1)
    await r.cb_ws.ticker(97_660.0, r.now)
    assert (await r.next_spot()).price == 97_660.0
    assert r.market.spot_source == "coinbase"
    msgs = r.data_quality()
    assert len(msgs) == 2 and msgs[1].startswith("data recovered: source:coinbase")


async def test_malformed_messages_are_named_and_skipped(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    r = rig
    caplog.set_level(logging.WARNING, logger="engine.feeds.spot_streams")
    bad_price = r.cb_ws.ticker_message(97_650.5, r.now)
    bad_price["price"] = "abc"
    no_time = r.cb_ws.ticker_message(97_650.5, r.now)
    del no_time["time"]
    crossed = r.cb_ws.ticker_message(97_650.5, r.now, bid=97_700.0, ask=97_650.0)
    future = r.cb_ws.ticker_message(97_650.5, r.now + 60)
    for garbage in ("{not json", "[1, 2]", bad_price, no_time, crossed, future):
        await r.cb_ws.send_raw(garbage)
    await r.cb_ws.ticker(97_655.0, r.now)
    # The first price the engine takes is the good one; nothing malformed got through.
    assert (await r.next_spot()).price == 97_655.0
    assert r.cb.malformed == 6 and r.cb.connections == 1  # skipped, not a reason to reconnect

    spoiled = r.kr_ws.entry(97_640.0, r.now, 97_640.0, 97_640.1)
    spoiled["last"] = "NaN"
    await r.kr_ws.send_raw({"channel": "ticker", "type": "update", "data": [spoiled]})
    await r.kr_ws.send_raw({"channel": "ticker", "type": "update", "data": "BTC/USD"})
    await r.kr_ws.ticker(97_641.0, r.now)
    assert (await r.taken("kraken")).price == 97_641.0
    assert r.kr.malformed == 2 and r.kr.connections == 1

    logged = [rec.getMessage() for rec in caplog.records]
    assert any("coinbase" in m and "price = 'abc': not a number" in m for m in logged)
    assert any("coinbase" in m and "ticker.time" in m and "missing" in m for m in logged)
    assert any("crossed book" in m for m in logged)
    assert any("in the future" in m for m in logged)
    assert any("kraken" in m and "data[0].last = 'NaN': not finite" in m for m in logged)
    assert r.data_quality() == [] and r.market.spot == 97_655.0


@pytest.mark.parametrize("venue", ["coinbase", "kraken"])
async def test_an_abrupt_close_reconnects_resubscribes_and_ticks_flow_again(
    rig: Rig, venue: str
) -> None:
    r = rig
    server: CoinbaseWsServer | KrakenWsServer = r.cb_ws if venue == "coinbase" else r.kr_ws
    stream: SpotStream = r.cb if venue == "coinbase" else r.kr
    await r.cb_ws.ticker(97_650.5, r.now)
    assert (await r.next_spot()).price == 97_650.5
    await r.taken("coinbase")
    await server.next_connection()  # the first one, from the fixture

    server.abort()  # a TCP reset, no close frame
    await server.next_connection()
    resubscribed = await server.next_subscribe()
    assert resubscribed == server.subscribes[0]  # the same subscription, made again
    assert stream.connections == 2
    [delay] = r.sleeps.delays  # one jittered backoff wait before reconnecting
    assert 0.25 <= delay <= 0.5

    r.clock.advance(1)
    await server.ticker(97_700.0, r.now)
    assert (await r.taken(venue)).price == 97_700.0
    if venue == "coinbase":
        assert (await r.next_spot()).price == 97_700.0
    assert r.data_quality() == []  # a drop that reconnects at once is not an episode


async def test_a_fallback_that_speaks_first_at_start_is_not_an_alert(rig: Rig) -> None:
    """Streams open together; Kraken's first tick may come before Coinbase's. That is not the
    primary failing: the engine's first price is the primary's, with no data_quality alert."""
    r = rig
    await r.kr_ws.ticker(97_640.0, r.now)
    await r.taken("kraken")
    await r.cb_ws.ticker(97_650.5, r.now)
    assert (await r.next_spot()).price == 97_650.5
    assert r.market.spot_source == "coinbase"
    assert r.data_quality() == []
