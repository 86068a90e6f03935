"""A Kalshi session end to end, against loopback servers only (Kalshi REST, Coinbase, Kraken).

`build_runtime` with `engine.venue = "kalshi"` wires the real `KalshiClient` / `KalshiVenue`,
`KalshiMarketFeed` and `SpotFeed`; the test drives the feeds' polls and the engine's tick on a
`ManualClock`. The account holds YES 10 of one KXBTCD market bought at 0.60: the engine adopts
it with its entry from the fill, the book drops, max_loss fires, exactly one IOC reduce-only
order reaches the server with the exit intent id as client order id, it fills, and the journal
shows the trade closed with exit_reason max_loss.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from engine.clock import ManualClock
from engine.config import Config, ConfigError, parse_config
from engine.feeds.kalshi_feed import KalshiMarketFeed
from engine.feeds.spot_feed import SpotFeed
from engine.models import Mode, TradeState
from engine.runtime import Runtime, build_runtime
from engine.venues.kalshi import KalshiVenue
from tests.kalshi_server import RunningServer, kalshi_server
from tests.spot_servers import CoinbaseServer, KrakenServer

KEY_ID = "session-test-key"
EVENT = "KXBTCD-26NOV2117"
HELD = f"{EVENT}-T97000"
CLOSE_17 = 1795280400.0  # 2026-11-21T17:00:00Z
START = CLOSE_17 - 1800.0  # 16:30 UTC


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class World:
    kalshi: RunningServer
    coinbase: CoinbaseServer
    kraken: KrakenServer
    key_path: Path
    data: Path
    clock: ManualClock

    def config(self, **auto_stop: Any) -> Config:
        return parse_config(
            {
                "engine": {"venue": "kalshi", "data_dir": str(self.data)},
                "auto_stop": {
                    "mode": "live",
                    "armed": True,
                    "criteria": {"max_loss_percent": 40},
                    **auto_stop,
                },
                "alerts": {"log_file": "", "cooldown_seconds": 0.0},
                "venues": {
                    "kalshi": {
                        "base_url": self.kalshi.base_url,
                        "api_key_id": KEY_ID,
                        "private_key_path": str(self.key_path),
                        "timeout_seconds": 2.0,
                        "read_requests_per_second": 1000.0,
                        "write_requests_per_second": 1000.0,
                        "rate_limit_burst": 100,
                        "max_attempts": 1,
                    }
                },
                "spot": {"coinbase_url": self.coinbase.url, "kraken_url": self.kraken.url},
            }
        )

    def spot_at(self, price: float) -> None:
        now = self.clock.now()
        p = f"{price:.2f}"
        self.coinbase.ticker = {
            "price": p,
            "bid": p,
            "ask": f"{price + 0.02:.2f}",
            "time": iso(now - 1),
            "size": "0.1",
        }
        k = f"{price:.1f}"
        self.kraken.ticker = {
            "a": [f"{price + 0.1:.1f}", "1", "1.0"],
            "b": [k, "1", "1.0"],
            "c": [k, "0.1"],
        }

    def book(self, bid: str, ask: str) -> None:
        """The held market's YES top of book (REST quote) and the resting YES bids behind it."""
        m = self.kalshi.state.markets[HELD]
        m["yes_bid_dollars"], m["yes_ask_dollars"] = f"{bid}00", f"{ask}00"
        m["no_bid_dollars"] = f"{1 - float(ask):.4f}"
        m["no_ask_dollars"] = f"{1 - float(bid):.4f}"
        self.kalshi.state.set_book(HELD, yes=[(bid, "50")])


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
    cb = await CoinbaseServer().start()
    kr = await KrakenServer().start()
    assert isinstance(cb, CoinbaseServer) and isinstance(kr, KrakenServer)
    async with kalshi_server(KEY_ID, rsa_key.public_key()) as srv:
        s = srv.state
        s.add_event(EVENT)
        for strike in (96500, 97000, 97500):
            s.add_market(
                f"{EVENT}-T{strike}",
                event_ticker=EVENT,
                close_time="2026-11-21T17:00:00Z",
                floor_strike=strike,
            )
        # The account: YES 10 of HELD, bought at 0.60 (its fill says so; the exposure agrees).
        s.set_position(HELD, "10.00", exposure="6.0000")
        s.add_fill(
            ticker=HELD,
            outcome_side="yes",
            book_side="bid",
            count_fp="10.00",
            yes_price_dollars="0.6000",
            no_price_dollars="0.4000",
        )
        w = World(srv, cb, kr, key_path, tmp_path / "data", ManualClock(START))
        w.book("0.58", "0.60")
        w.spot_at(97_100.0)
        try:
            yield w
        finally:
            await cb.close()
            await kr.close()


def feeds(rt: Runtime) -> tuple[KalshiMarketFeed, SpotFeed]:
    [market] = [f for f in rt.feeds if isinstance(f, KalshiMarketFeed)]
    [spot] = [f for f in rt.feeds if isinstance(f, SpotFeed)]
    return market, spot


async def step(w: World, rt: Runtime, seconds: float = 1.0) -> None:
    """One second of the session: the clock moves, both feeds poll, the engine ticks."""
    w.clock.advance(seconds)
    w.spot_at(97_100.0)
    market, spot = feeds(rt)
    await market.poll_once(rt.engine)
    await spot.step(rt.engine)
    await rt.engine.tick()


async def test_adopted_kalshi_position_is_closed_by_max_loss_with_one_ioc_order(
    world: World,
) -> None:
    w = world
    rt = await build_runtime(w.config(), None, clock=w.clock)
    try:
        assert isinstance(rt.engine.venue, KalshiVenue)
        assert rt.engine.contracts.keys() >= {HELD}  # the ladder was read before start
        [t] = rt.engine.trades.values()  # adopted from the account at start
        assert (t.contract_id, t.side, t.qty) == (HELD, "yes", 10.0)
        assert t.entry_price == pytest.approx(0.60)  # from the fill
        await step(w, rt)
        assert rt.engine.spot_source == "coinbase"
        assert w.kalshi.state.order_posts() == []  # -3 %: nothing fires

        w.book("0.30", "0.32")  # the book drops: -50 % at the bid
        await step(w, rt)

        [post] = w.kalshi.state.order_posts()
        body = post.body
        assert body["ticker"] == HELD and body["side"] == "ask"
        assert body["time_in_force"] == "immediate_or_cancel" and body["reduce_only"] is True
        [intent] = await rt.store.intents_for_trade(t.trade_id)
        assert body["client_order_id"] == intent["intent_id"]
        assert intent["status"] == "filled"
        closed = await rt.store.get_trade(t.trade_id)
        assert closed is not None and closed.state == TradeState.CLOSED
        assert closed.exit_reason == "max_loss"
        assert closed.exit_price == pytest.approx(0.30)
        assert w.kalshi.state.positions[HELD]["position_fp"] == "0.00"

        for _ in range(6):  # later ticks and position polls send nothing more
            await step(w, rt)
        assert len(w.kalshi.state.order_posts()) == 1
        assert t.trade_id not in rt.engine.trades  # closed trades leave the engine's book
        assert [x.state for x in await rt.store.all_trades()] == [TradeState.CLOSED]
    finally:
        await rt.close()


async def test_crash_between_journal_and_send_reconciles_and_sends_once(world: World) -> None:
    w = world
    rt = await build_runtime(w.config(), None, clock=w.clock)
    [t] = rt.engine.trades.values()

    async def crash(req: Any) -> Any:
        raise SystemExit("crash before the order reached the venue")

    rt.engine.venue.submit = crash  # type: ignore[method-assign]
    w.book("0.30", "0.32")
    with pytest.raises(SystemExit):
        await step(w, rt)
    await rt.close()  # the process "dies": nothing more is written
    assert w.kalshi.state.order_posts() == []
    [intent] = await _intents(w, t.trade_id)
    assert intent["status"] not in ("filled", "cancelled")

    rt2 = await build_runtime(w.config(), None, clock=w.clock)
    try:
        for _ in range(4):
            await step(w, rt2, seconds=2.0)
        [post] = w.kalshi.state.order_posts()
        assert post.body["client_order_id"] == intent["intent_id"]
        closed = await rt2.store.get_trade(t.trade_id)
        assert closed is not None and closed.state == TradeState.CLOSED
        assert closed.exit_reason == "max_loss"
        assert len(await rt2.store.intents_for_trade(t.trade_id)) == 1
    finally:
        await rt2.close()
    assert len(w.kalshi.state.order_posts()) == 1


async def test_no_order_reaches_kalshi_unless_the_mode_is_live(world: World) -> None:
    """dry_run is refused by the config with venue "kalshi"; a mode changed at run time (e.g. a
    reload) is still stopped at the venue: the exit is rejected there, nothing is sent."""
    w = world
    rt = await build_runtime(w.config(), None, clock=w.clock)
    try:
        assert isinstance(rt.engine.venue, KalshiVenue)
        rt.engine.mode = Mode.DRY_RUN
        w.book("0.30", "0.32")
        for _ in range(3):
            await step(w, rt, seconds=3.0)
        assert w.kalshi.state.order_posts() == []
        [t] = rt.engine.trades.values()
        assert t.state != TradeState.CLOSED
    finally:
        await rt.close()


async def _intents(w: World, trade_id: str) -> list[dict[str, Any]]:
    from engine.store import JOURNAL_FILENAME, Store

    store = Store(w.data / JOURNAL_FILENAME)
    await store.open()
    try:
        return await store.intents_for_trade(trade_id)
    finally:
        await store.close()


async def test_a_bad_key_file_is_a_clear_start_up_error(world: World) -> None:
    os.chmod(world.key_path, 0o644)
    with pytest.raises(ConfigError) as info:
        await build_runtime(world.config(), None, clock=world.clock)
    [line] = info.value.lines
    assert "venues.kalshi.private_key_path" in line and "chmod 600" in line
    world.key_path.write_text("not a key")
    os.chmod(world.key_path, 0o600)
    with pytest.raises(ConfigError, match="not an unencrypted PEM private key"):
        await build_runtime(world.config(), None, clock=world.clock)
    assert not world.data.exists()  # refused before the journal was created


def test_the_demo_example_config_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.config import load_config

    monkeypatch.setenv("KALSHI_API_KEY_ID", KEY_ID)
    monkeypatch.setenv("KALSHI_PRIVATE_KEY_PATH", "/nonexistent/key.pem")
    cfg = load_config(Path(__file__).resolve().parent.parent / "docs" / "kalshi-demo.toml")
    assert cfg.engine.venue == "kalshi" and cfg.venues.kalshi.environment == "demo"
    assert cfg.auto_stop.mode is Mode.ALERT_ONLY
    assert (cfg.spot.primary, cfg.spot.fallback) == ("coinbase", "kraken")
