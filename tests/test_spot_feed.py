"""The spot feed over loopback venues into a real engine on a manual clock: backfill seeds the
signals, polled ticks become spot updates, primary/fallback switches become one data_quality
episode each, and with no source at all the engine's own staleness alert takes over."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from engine.feeds.coinbase import CoinbaseSpot
from engine.feeds.deribit import DeribitDvol
from engine.feeds.kraken import KrakenSpot
from engine.feeds.spot_feed import SpotFeed, default_backfill_minutes
from engine.feeds.spot_selector import PrimaryFallback
from engine.snapshot import MarketView
from tests.engine_harness import T0, Harness
from tests.spot_servers import CoinbaseServer, DeribitServer, KrakenServer

TIMEOUT = 0.3
NOW = T0 + 30  # 30 s into a minute: the last complete bar opened at T0 − 60 and closed at T0
BARS = 62  # bar k opens at T0 − (BARS − 1 − k)·60 … the last (k = BARS − 1) is still forming


def bar_open(k: int) -> int:
    return int(T0) - (BARS - 1 - k) * 60


def close_of(k: int) -> float:
    return 97_000.0 + 10.0 * k


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def coinbase_ticker(price: float, ts: float) -> dict[str, Any]:
    p = f"{price:.2f}"
    return {"price": p, "bid": p, "ask": f"{price + 0.02:.2f}", "time": iso(ts), "size": "0.1"}


def kraken_ticker(price: float) -> dict[str, Any]:
    p = f"{price:.1f}"
    return {"a": [f"{price + 0.1:.1f}", "1", "1.0"], "b": [p, "1", "1.0"], "c": [p, "0.1"]}


@dataclass
class Rig:
    h: Harness
    coinbase: CoinbaseServer
    kraken: KrakenServer
    selector: PrimaryFallback
    feed: SpotFeed

    def at(self, dt: float) -> float:
        """Move the clock to NOW + dt; the venues' tickers follow (Kraken stamps on arrival)."""
        now = self.h.at(NOW - T0 + dt)
        self.coinbase.ticker = coinbase_ticker(self.cb_price, now - 1)
        return now

    cb_price: float = 97_650.5

    @property
    def market(self) -> MarketView:
        m = self.h.engine.snapshot().market
        assert m is not None
        return m

    def data_quality(self) -> list[str]:
        return [a.message for a in self.h.of_kind("data_quality")]


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    h = await Harness(tmp_path).open()
    await h.contract()
    await h.start()  # no spot yet: the feed brings it
    cb = await CoinbaseServer().start()
    kr = await KrakenServer().start()
    assert isinstance(cb, CoinbaseServer) and isinstance(kr, KrakenServer)
    cb.candles = [
        [bar_open(k), close_of(k) - 5, close_of(k) + 5, close_of(k), close_of(k), 1.0]
        for k in range(BARS)
    ]
    kr.ticker = kraken_ticker(97_640.0)
    kr.ohlc = [
        [bar_open(k), f"{c:.1f}", f"{c + 5:.1f}", f"{c - 5:.1f}", f"{c:.1f}", f"{c:.1f}", "1", 3]
        for k in range(BARS)
        for c in [close_of(k) + 1]
    ]
    primary = CoinbaseSpot(h.clock, base_url=cb.url, timeout_seconds=TIMEOUT)
    fallback = KrakenSpot(h.clock, base_url=kr.url, timeout_seconds=TIMEOUT)
    selector = PrimaryFallback(primary, fallback, h.clock)
    r = Rig(h, cb, kr, selector, SpotFeed(selector, h.clock))
    r.at(0)
    yield r
    await primary.aclose()
    await fallback.aclose()
    await cb.close()
    await kr.close()
    await h.close()


# --- backfill -------------------------------------------------------------------------------------


async def test_backfill_seeds_history_and_signals_at_once(rig: Rig) -> None:
    e = rig.h.engine
    assert default_backfill_minutes(e) == 60  # the longest default volatility window
    await rig.feed.start(e)
    assert rig.feed.backfilled == 60
    hist = e.spot_hist
    # Closes of bars 1..60, stamped at each bar's end (T0 − 59·60 … T0).
    assert hist.latest() == (T0, close_of(BARS - 2))
    assert hist.price_at(T0 - 59 * 60) == close_of(1)
    assert hist.price_at(T0 - 60 * 60) is None
    # Momentum at once: the 1-minute delta from the last two closes, by hand.
    want = 100.0 * (97_600.0 / 97_590.0 - 1.0)
    assert e.momentum_deltas[1] == pytest.approx(want)
    assert e.momentum_deltas[30] == pytest.approx(100.0 * (97_600.0 / 97_300.0 - 1.0))
    assert e.momentum_bps is not None
    m = rig.market
    assert m.spot == 97_600.0 and m.sigma is not None and m.vol_score is not None
    assert len(m.sparkline) >= 30
    assert rig.h.alerts == []  # seeding evaluates nothing and alerts nothing
    # The history came from the primary, asked for 60 one-minute candles.
    path, query = rig.coinbase.requests[-1]
    assert path == "/products/BTC-USD/candles" and query["granularity"] == "60"


async def test_seed_puts_older_closes_in_front_and_skips_those_in_between(rig: Rig) -> None:
    """A backfill that arrives after the first live prices (IB's comes in its own task) still
    seeds the history: closes older than it go in front; ones among the live samples are not
    slipped in; newer ones follow."""
    e = rig.h.engine
    await rig.h.spot(97_000.0, ts=T0 - 120)
    await rig.h.spot(97_005.0, ts=T0 - 60)
    seeded = [(T0 - 240, 96_980.0), (T0 - 180, 96_990.0), (T0 - 90, 1.0), (T0, 97_020.0)]
    assert e.seed_spot_history(seeded) == 3
    assert e.spot_hist.oldest() == (T0 - 240, 96_980.0)
    assert e.spot_hist.price_at(T0 - 170) == 96_990.0
    assert e.spot_hist.price_at(T0 - 90) == 97_000.0  # the live price, not the seeded 1.0
    assert e.spot_hist.latest() == (T0, 97_020.0)
    assert e.momentum_deltas[4] == pytest.approx(100.0 * (97_020.0 / 96_980.0 - 1.0))
    assert e.seed_spot_history([(T0, 5.0)]) == 0


async def test_backfill_failing_everywhere_starts_live(rig: Rig) -> None:
    rig.coinbase.fail("500")
    rig.kraken.fail("html")
    await rig.feed.start(rig.h.engine)  # raises nothing
    assert rig.feed.backfilled == 0
    assert rig.h.engine.spot_hist.latest() is None
    await rig.feed.step(rig.h.engine)
    assert rig.market.spot == 97_650.5
    assert rig.market.momentum_bps is None  # warming up, as without a backfill


async def test_backfill_from_the_fallback_when_the_primary_cannot(rig: Rig) -> None:
    rig.coinbase.fail("429")
    await rig.feed.start(rig.h.engine)
    assert rig.feed.backfilled == 60
    assert rig.h.engine.spot_hist.latest() == (T0, close_of(BARS - 2) + 1)


# --- live ticks and switches ----------------------------------------------------------------------


async def test_polled_ticks_become_spot_updates(rig: Rig) -> None:
    e = rig.h.engine
    await rig.feed.start(e)
    await rig.feed.step(e)
    m = rig.market
    assert (m.spot, m.spot_ts, m.spot_source) == (97_650.5, pytest.approx(NOW - 1), "coinbase")
    rig.cb_price = 97_700.25
    rig.at(1)
    await rig.feed.step(e)
    assert rig.market.spot == 97_700.25
    seen: list[object] = []
    e.recorders.append(seen.append)
    rig.h.at(NOW - T0 + 2)  # the venue repeats its last tick: not sent again
    await rig.feed.step(e)
    assert seen == []
    assert rig.data_quality() == []
    assert [q["pair"] for p, q in rig.kraken.requests if p == "/0/public/Ticker"] == []


async def test_primary_failing_switches_to_the_fallback_and_back(rig: Rig) -> None:
    e = rig.h.engine
    await rig.feed.start(e)
    await rig.feed.step(e)
    assert e.spot_source == "coinbase"

    rig.coinbase.fail("500", "500", "truncated")
    for dt in (1, 2, 3):
        rig.at(dt)
        await rig.feed.step(e)
        m = rig.market
        assert (m.spot, m.spot_source) == (97_640.0, "kraken")
    alerts = rig.h.of_kind("data_quality")
    assert len(alerts) == 1  # one episode, however many failed polls
    assert alerts[0].severity.value == "warning"
    assert "coinbase failing" in alerts[0].message and "spot from kraken" in alerts[0].message
    assert alerts[0].data["source"] == "source:coinbase"
    assert e._bad.keys() == {"source:coinbase"}  # the open episode

    rig.cb_price = 97_655.0
    rig.at(4)
    await rig.feed.step(e)
    m = rig.market
    assert (m.spot, m.spot_source) == (97_655.0, "coinbase")
    msgs = rig.data_quality()
    assert len(msgs) == 2
    assert msgs[1].startswith("data recovered: source:coinbase")
    assert e._bad == {}


async def test_a_quiet_primary_is_noticed_without_errors(rig: Rig) -> None:
    """The primary answers, but with the same old tick: stale after 10 s → the fallback."""
    e = rig.h.engine
    await rig.feed.start(e)
    await rig.feed.step(e)
    rig.h.at(NOW - T0 + 12)  # the coinbase ticker keeps its old time
    await rig.feed.step(e)
    assert rig.market.spot_source == "kraken"
    assert "coinbase stale" in rig.data_quality()[0]


async def test_both_down_leaves_it_to_the_engines_staleness_alert(rig: Rig) -> None:
    e = rig.h.engine
    await rig.feed.start(e)
    await rig.feed.step(e)
    rig.coinbase.fail(*["500"] * 40)
    rig.kraken.fail(*["venue_error"] * 40)
    rig.at(1)
    await rig.feed.step(e)
    assert rig.market.spot_source is None
    assert rig.market.spot == 97_650.5  # nothing new arrived; nothing invented
    msgs = rig.data_quality()
    assert len(msgs) == 2 and all("no spot source usable" in m for m in msgs)
    assert {a.data["source"] for a in rig.h.of_kind("data_quality")} == {
        "source:coinbase",
        "source:kraken",
    }
    # The feed adds no staleness alert of its own: the engine's tick raises it.
    for dt in range(2, 14):
        rig.at(dt)
        await rig.feed.step(e)
    assert len(rig.data_quality()) == 2
    await rig.h.tick()
    spot_alerts = [a for a in rig.h.of_kind("data_quality") if a.data["source"] == "spot"]
    assert len(spot_alerts) == 1 and "old (limit 10s)" in spot_alerts[0].message


async def test_run_backfills_then_polls(rig: Rig) -> None:
    e = rig.h.engine
    task = asyncio.create_task(rig.feed.run(e))
    try:
        for _ in range(10_000):  # ManualClock.sleep only yields: poll until the first tick lands
            if e.spot_hist.latest() is not None and e.spot_hist.latest()[0] > T0:  # type: ignore[index]
                break
            await asyncio.sleep(0)
        assert rig.feed.backfilled == 60
        assert rig.market.spot == 97_650.5
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_sim_names_its_source_and_dvol_is_exposed(rig: Rig) -> None:
    e = rig.h.engine
    assert rig.market.spot_source == "sim"  # the harness's venue is the sim; no spot feed yet
    server = await DeribitServer().start()
    assert isinstance(server, DeribitServer)
    server.rows = [[int(T0) * 1000, 55.0, 56.0, 54.0, 55.5]]
    dvol = DeribitDvol(rig.h.clock, base_url=server.url, timeout_seconds=TIMEOUT)
    try:
        feed = SpotFeed(rig.selector, rig.h.clock, dvol=dvol)
        await feed.step(e)
        assert e.implied_vol == pytest.approx(0.555)
        assert e.spot_source == "coinbase"
        server.rows = [[int(T0) * 1000 + 1000, 60.0, 60.0, 60.0, 60.0]]
        rig.at(1)
        await feed.step(e)
        assert e.implied_vol == pytest.approx(0.555)  # read once a minute only
    finally:
        await dvol.aclose()
        await server.close()
