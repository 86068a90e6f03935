"""`IbkrMarketFeed` (engine/venues/ibkr/feed.py) over a real `IbConnection` and the REAL ib_async
client against the loopback TWS gateway (tests/tws_gateway.py) on 127.0.0.1.

The engine is a recording stand-in. The feed's clock only moves when a test advances it (its
refresh waits block until then), the connection's reconnect waits are recorded, and every wait
in a test is on an event with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from engine.clock import ManualClock
from engine.config import IbkrConfig
from engine.models import Contract, ContractEvent, Leg, MarketEvent, Quote, QuoteEvent, SpotEvent
from engine.venues.ibkr.connection import IbConnection
from engine.venues.ibkr.feed import IbkrMarketFeed
from engine.venues.ibkr.ids import default_close_of
from tests.ib_client_guard import decoded_cleanly as decoded_cleanly  # autouse
from tests.tws_gateway import (
    BID,
    Gateway,
    GwContract,
    option_contract,
    stock_contract,
    tws_gateway,
)

ACCOUNT = "DU1234567"
DEADLINE = 3.0
START = datetime(2026, 1, 12, 15, 0, tzinfo=UTC).timestamp()  # a Monday; 20260109 has expired
IN_REQ_MKT_DATA, IN_CANCEL_MKT_DATA, IN_REQ_MARKET_DATA_TYPE = 1, 2, 59

AAPL = stock_contract(265598, "AAPL")
CALL = option_contract(700001, "AAPL", "20260116", 150.0, "C")
PUT = option_contract(700002, "AAPL", "20260116", 140.0, "P")
SPY = stock_contract(756733, "SPY", primary_exchange="ARCA")
VIX = GwContract(13455763, "VIX", "IND", exchange="CBOE", currency="USD", local_symbol="VIX")
SPY_STRIKES = [140.0 + 5 * i for i in range(7)]  # 140 … 170
SPY_EXPIRIES = ["20260109", "20260116", "20260220"]


def spy_option_con_id(expiry: str, strike: float, right: str) -> int:
    return 900_000 + SPY_EXPIRIES.index(expiry) * 1000 + int(strike) * 2 + (right == "P")


def engine_option(c: GwContract) -> Contract:
    kind = "option_call" if c.right == "C" else "option_put"
    return Contract(
        f"{c.symbol} {c.expiry} {c.strike:g}{c.right}",
        c.symbol,
        kind,  # type: ignore[arg-type]
        c.strike,
        default_close_of(c.expiry),
        multiplier=100.0,
        event_id=f"{c.symbol} {c.expiry}",
    )


STOCK = Contract("AAPL", "AAPL", "stock", None, float("inf"))
HELD_CALL = engine_option(CALL)
HELD_PUT = engine_option(PUT)
CONDOR = Contract(
    "AAPL ic-1",
    "AAPL",
    "combo",
    None,
    default_close_of("20260116"),
    multiplier=100.0,
    legs=(Leg(HELD_PUT.id, 1), Leg(HELD_CALL.id, -1)),
)


class StepClock(ManualClock):
    """A manual clock whose `sleep` waits until the test has advanced it far enough."""

    def __init__(self, start: float) -> None:
        super().__init__(start)
        self._moved = asyncio.Event()

    def advance(self, seconds: float) -> None:
        super().advance(seconds)
        self._moved.set()

    async def sleep(self, seconds: float) -> None:
        until = self.now() + seconds
        while self.now() < until:
            self._moved.clear()
            await self._moved.wait()


class Recorder:
    """The engine stand-in: what a feed calls, recorded."""

    def __init__(self) -> None:
        self.events: list[MarketEvent] = []
        self.problems: list[tuple[str, str]] = []
        self.oks: list[str] = []
        self.vix: list[tuple[float, float]] = []
        self.data_note = ""  # as Engine.data_note
        self.holds: dict[str, str] = {}  # contract id -> why its quotes are held (data guard)
        self.hold_log: list[tuple[str, tuple[str, ...]]] = []  # ("hold"/"release", ids)
        self._changed = asyncio.Event()

    async def handle_safely(self, event: MarketEvent) -> None:
        self.events.append(event)
        self._changed.set()

    async def source_problem(self, source: str, text: str) -> None:
        self.problems.append((source, text))
        self._changed.set()

    async def source_ok(self, source: str) -> None:
        self.oks.append(source)
        self._changed.set()

    def vix_update(self, value: float, ts: float) -> None:
        self.vix.append((value, ts))
        self._changed.set()

    def hold_quotes(self, ids: list[str], reason: str) -> None:
        self.holds.update(dict.fromkeys(ids, reason))
        self.hold_log.append(("hold", tuple(ids)))
        self._changed.set()

    def release_quotes(self, ids: list[str]) -> None:
        for cid in ids:
            self.holds.pop(cid, None)
        self.hold_log.append(("release", tuple(ids)))
        self._changed.set()

    def notify(self) -> None:
        self._changed.set()

    async def until(self, predicate: Callable[[], Any], timeout: float = DEADLINE) -> Any:
        async def loop() -> Any:
            while not (value := predicate()):
                self._changed.clear()
                await self._changed.wait()
            return value

        return await asyncio.wait_for(loop(), timeout)

    # reading

    def quotes(self, cid: str) -> list[Quote]:
        return [e.quote for e in self.events if isinstance(e, QuoteEvent) and e.quote.id == cid]

    def quote(self, cid: str) -> Quote | None:
        qs = self.quotes(cid)
        return qs[-1] if qs else None

    def contracts(self) -> dict[str, Contract]:
        return {e.contract.id: e.contract for e in self.events if isinstance(e, ContractEvent)}

    def spots(self) -> list[SpotEvent]:
        return [e for e in self.events if isinstance(e, SpotEvent)]


class Sleeps:
    def __init__(self, recorder: Recorder) -> None:
        self.delays: list[float] = []
        self.recorder = recorder

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        self.recorder.notify()
        await asyncio.sleep(0)


class Harness:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.clock = StepClock(START)
        self.engine = Recorder()
        self.sleeps = Sleeps(self.engine)
        self.holding: list[Contract] = []
        self.conn: IbConnection | None = None
        self.feed: IbkrMarketFeed | None = None
        self.tasks: list[asyncio.Task[None]] = []

    def start(self, **kw: Any) -> IbkrMarketFeed:
        config = IbkrConfig(
            **{
                "host": self.gw.host,
                "port": self.gw.port,
                "client_id": 21,
                "connect_timeout_seconds": 2.0,
                "underlying": "SPY",
                "strikes": 4,
                **kw,
            }
        )
        self.conn = IbConnection(config, self.clock, sleep=self.sleeps, rng=random.Random(3))
        self.feed = IbkrMarketFeed(self.conn, self.clock, config, lambda: list(self.holding))
        # the feed first, so that it listens before the connection comes up
        self.tasks.append(asyncio.create_task(self.feed.run(self.engine)))
        self.tasks.append(asyncio.create_task(self.conn.run()))
        return self.feed

    async def until(self, predicate: Callable[[], Any], timeout: float = DEADLINE) -> Any:
        return await self.engine.until(predicate, timeout)

    async def settle(self) -> None:
        """Until the feed has handled everything the gateway sent so far (one round trip)."""
        assert self.conn is not None
        await asyncio.wait_for(self.conn.ib.reqCurrentTimeAsync(), DEADLINE)
        for _ in range(5):  # the feed's step runs after the client's event
            await asyncio.sleep(0)

    async def close(self) -> None:
        for task in reversed(self.tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@pytest.fixture
async def gw() -> AsyncIterator[Gateway]:
    async with tws_gateway(accounts=[ACCOUNT]) as gateway:
        st = gateway.state
        for c in (AAPL, CALL, PUT, SPY, VIX):
            st.add_contract_details(c)
        st.add_option_chain(SPY.con_id, "SPY", SPY_EXPIRIES, SPY_STRIKES)
        st.add_option_chain(SPY.con_id, "SPY", SPY_EXPIRIES, SPY_STRIKES, exchange="CBOE")
        for expiry in SPY_EXPIRIES:
            for k in SPY_STRIKES:
                for right in "CP":
                    st.add_contract_details(
                        option_contract(
                            spy_option_con_id(expiry, k, right), "SPY", expiry, k, right
                        )
                    )
        yield gateway


@pytest.fixture
async def h(gw: Gateway) -> AsyncIterator[Harness]:
    harness = Harness(gw)
    yield harness
    await harness.close()


def live(gw: Gateway, con_id: int) -> bool:
    return gw._subscription(con_id) is not None


def subscribed(gw: Gateway) -> set[int]:
    return {
        r.contract.con_id
        for r in gw.state.mkt_data
        if not r.cancelled and not r.conn.writer.is_closing()
    }


# ---- held contracts -----------------------------------------------------------------------------


async def test_held_option_and_stock_quotes_with_greeks(h: Harness, gw: Gateway) -> None:
    h.holding[:] = [HELD_CALL, STOCK]
    h.start(vix=False)
    await gw.wait_for_mkt_data(CALL.con_id)
    await gw.wait_for_mkt_data(AAPL.con_id)
    assert {HELD_CALL.id, "AAPL"} <= set(h.engine.contracts())
    assert h.engine.contracts()[HELD_CALL.id] is HELD_CALL  # the venue's contract, as given

    gw.quote(CALL.con_id, bid=1.35, ask=1.45, last=1.40, bid_size=12, ask_size=7)
    gw.option_computation(
        CALL.con_id, implied_vol=0.31, delta=0.42, opt_price=1.41, und_price=148.2
    )
    gw.quote(AAPL.con_id, bid=184.9, ask=185.1, last=185.0, bid_size=300, ask_size=200)
    q = await h.until(lambda: (q := h.engine.quote(HELD_CALL.id)) and q.delta is not None and q)
    assert (q.bid, q.ask, q.last, q.bid_size, q.ask_size) == (1.35, 1.45, 1.40, 12, 7)
    assert (q.iv, q.delta, q.und_price) == (0.31, 0.42, 148.2)
    assert q.ts == h.clock.now()
    s = await h.until(lambda: (s := h.engine.quote("AAPL")) and s.last == 185.0 and s)
    assert (s.bid, s.ask, s.bid_size, s.ask_size) == (184.9, 185.1, 300, 200)
    assert (s.iv, s.delta, s.und_price) == (None, None, None)

    # IB's "no bid": price -1 with size 0 → no quote on that side, never a number
    gw.tick_price(CALL.con_id, BID, -1.0, 0)
    q = await h.until(lambda: (q := h.engine.quote(HELD_CALL.id)) and q.bid is None and q)
    assert (q.bid, q.bid_size, q.ask) == (None, 0.0, 1.45)
    assert h.engine.problems == []


async def test_a_quiet_ticker_is_never_stamped_fresh_again(h: Harness, gw: Gateway) -> None:
    """The quote's time is when IB's last price/size tick of it arrived: a quiet (or silently
    dead) line ages and the engine's staleness check sees it; IB repeating a price is a
    confirmation; model greeks alone (computed from the underlying) confirm nothing."""
    h.holding[:] = [HELD_CALL]
    feed = h.start(vix=False)
    await gw.wait_for_mkt_data(CALL.con_id)
    gw.quote(CALL.con_id, bid=1.35, ask=1.45)
    q = await h.until(lambda: (q := h.engine.quote(HELD_CALL.id)) and q.ask == 1.45 and q)
    t0 = h.clock.now()
    assert q.ts == t0
    n = len(h.engine.quotes(HELD_CALL.id))
    for _ in range(3):  # 30 s of silence from IB
        h.clock.advance(10 * feed.poll_seconds)
        await h.settle()
    assert all(q.ts == t0 for q in h.engine.quotes(HELD_CALL.id))
    assert len(h.engine.quotes(HELD_CALL.id)) == n  # nothing new: nothing handed over

    gw.option_computation(CALL.con_id, implied_vol=0.30, delta=0.41, und_price=148.0)
    q = await h.until(lambda: (q := h.engine.quote(HELD_CALL.id)) and q.delta == 0.41 and q)
    assert q.ts == t0  # new greeks, the same (old) prices: still 30 s old

    gw.quote(CALL.con_id, bid=1.35)  # IB repeats the bid: a confirmation
    q = await h.until(lambda: (q := h.engine.quote(HELD_CALL.id)) and q.ts > t0 and q)
    assert (q.bid, q.ask, q.ts) == (1.35, 1.45, h.clock.now())


async def test_combo_subscribes_its_legs_not_the_combo(h: Harness, gw: Gateway) -> None:
    h.holding[:] = [CONDOR]
    h.start(vix=False)
    await gw.wait_for_mkt_data(CALL.con_id)
    await gw.wait_for_mkt_data(PUT.con_id)
    assert not any(r.contract.sec_type == "BAG" for r in gw.state.mkt_data)
    contracts = h.engine.contracts()
    assert contracts[CONDOR.id] is CONDOR
    put = contracts[HELD_PUT.id]  # each leg announced as its own contract
    assert (put.type, put.strike, put.multiplier, put.underlying) == (
        "option_put",
        140.0,
        100,
        "AAPL",
    )
    assert put.close_ts == default_close_of("20260116")
    gw.quote(PUT.con_id, bid=2.10, ask=2.20)
    gw.quote(CALL.con_id, bid=1.35, ask=1.45)
    await h.until(lambda: h.engine.quote(HELD_PUT.id) and h.engine.quote(HELD_CALL.id))
    assert h.engine.quote(CONDOR.id) is None  # the engine derives it from the legs


# ---- the underlying, VIX and the strike table ------------------------------------------------


async def test_spot_vix_and_the_nearest_expiry_around_the_money(h: Harness, gw: Gateway) -> None:
    h.holding[:] = [HELD_CALL]
    feed = h.start()
    await gw.wait_for_mkt_data(SPY.con_id)
    await gw.wait_for_mkt_data(VIX.con_id)
    gw.quote(SPY.con_id, bid=152.2, ask=152.4, last=152.3)
    gw.quote(VIX.con_id, last=17.25)
    spot = await h.until(lambda: h.engine.spots())
    assert (spot[-1].symbol, spot[-1].price, spot[-1].ts) == ("SPY", 152.3, h.clock.now())
    await h.until(lambda: h.engine.vix)
    assert h.engine.vix[-1] == (17.25, h.clock.now())

    # 20260109 has closed: the table is 20260116's four strikes nearest 152.3, calls and puts
    expected = {f"SPY 20260116 {k:g}{r}" for k in (145, 150, 155, 160) for r in "CP"}
    await h.until(lambda: expected <= set(h.engine.contracts()))
    assert feed.chain_expiry == "20260116"
    assert feed.chain_strikes == [145.0, 150.0, 155.0, 160.0]
    chain = {cid: c for cid, c in h.engine.contracts().items() if cid.startswith("SPY ")}
    assert set(chain) == expected
    c = chain["SPY 20260116 155P"]
    assert (c.type, c.strike, c.multiplier) == ("option_put", 155.0, 100.0)
    want = {spy_option_con_id("20260116", k, r) for k in (145, 150, 155, 160) for r in "CP"}
    await gw.wait_until(lambda: want <= subscribed(gw))
    assert subscribed(gw) == want | {CALL.con_id, SPY.con_id, VIX.con_id}
    # the underlying is quoted too (a stock), the chain options with their greeks
    con = spy_option_con_id("20260116", 150, "C")
    gw.quote(con, bid=3.1, ask=3.3)
    gw.option_computation(con, implied_vol=0.18, delta=0.55, und_price=152.3)
    q = await h.until(lambda: (q := h.engine.quote("SPY 20260116 150C")) and q.iv and q)
    assert (q.bid, q.ask, q.iv, q.delta, q.und_price) == (3.1, 3.3, 0.18, 0.55, 152.3)
    assert h.engine.quote("SPY") is not None

    # 20260116 closes: the table rolls to 20260220, the old expiry's lines are given back
    h.clock.advance(default_close_of("20260116") + 1 - h.clock.now())
    await h.until(lambda: feed.chain_expiry == "20260220")
    rolled = {spy_option_con_id("20260220", k, r) for k in (145, 150, 155, 160) for r in "CP"}
    await gw.wait_until(lambda: subscribed(gw) == rolled | {CALL.con_id, SPY.con_id, VIX.con_id})


async def test_table_centred_again_when_the_price_moves(h: Harness, gw: Gateway) -> None:
    feed = h.start(vix=False)
    await gw.wait_for_mkt_data(SPY.con_id)
    gw.quote(SPY.con_id, last=152.3)
    old = spy_option_con_id("20260116", 145, "C")
    await gw.wait_for_mkt_data(old)
    gw.quote(SPY.con_id, last=167.0)
    await h.until(lambda: feed.chain_strikes == [155.0, 160.0, 165.0, 170.0])
    await gw.wait_until(lambda: not live(gw, old))
    want = {spy_option_con_id("20260116", k, r) for k in (155, 160, 165, 170) for r in "CP"}
    await gw.wait_until(lambda: subscribed(gw) == want | {SPY.con_id})


async def test_lines_limit_trims_the_strike_table_first(
    h: Harness, gw: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="engine.feeds.ibkr")
    h.holding[:] = [HELD_CALL, STOCK]
    feed = h.start(max_market_data_lines=6)  # 2 held + SPY + VIX: 2 lines left for the table
    await gw.wait_for_mkt_data(SPY.con_id)
    gw.quote(SPY.con_id, last=152.3)
    await h.until(lambda: feed.chain_strikes)
    nearest = {spy_option_con_id("20260116", 150, r) for r in "CP"}
    await gw.wait_until(lambda: nearest <= subscribed(gw))
    await h.settle()
    assert subscribed(gw) == nearest | {CALL.con_id, AAPL.con_id, SPY.con_id, VIX.con_id}
    assert h.conn is not None and len(h.conn.lines) == 6
    assert feed.trimmed == 6
    [line] = [r for r in caplog.records if "no market data line" in r.getMessage()]
    assert "strike table is trimmed" in line.getMessage()
    assert line.levelno == logging.INFO
    assert h.engine.problems == []


# ---- delayed data ---------------------------------------------------------------------------


async def test_delayed_market_data(h: Harness, gw: Gateway) -> None:
    gw.state.no_market_data.update({CALL.con_id, AAPL.con_id})
    h.holding[:] = [HELD_CALL, STOCK]
    h.start(vix=False, market_data_type="delayed", allow_delayed_data=True)
    req = await gw.wait_for_mkt_data(CALL.con_id)
    assert req.delayed  # 10167: delayed data instead of a refusal
    [mdt] = [r for r in gw.state.requests(IN_REQ_MARKET_DATA_TYPE) if r.client_id == 21]
    assert mdt.fields[2] == "3"
    gw.quote(CALL.con_id, bid=1.30, ask=1.50, last=1.42)  # sent as ticks 66/67/68
    gw.option_computation(CALL.con_id, implied_vol=0.29, delta=0.40, und_price=147.0)  # 83
    q = await h.until(lambda: (q := h.engine.quote(HELD_CALL.id)) and q.iv and q.last and q)
    assert (q.bid, q.ask, q.last, q.iv, q.delta, q.und_price) == (
        1.30,
        1.50,
        1.42,
        0.29,
        0.40,
        147.0,
    )
    ticker = h.conn.ib.ticker(h.feed._qualified[HELD_CALL.id]) if h.conn and h.feed else None
    assert ticker is not None and ticker.marketDataType == 3
    assert h.engine.problems == []
    assert h.engine.data_note == "delayed data"  # allowed: the badge and exit alerts say so
    assert h.engine.holds == {}


async def test_delayed_market_data_not_allowed_is_held_never_used(h: Harness, gw: Gateway) -> None:
    """Delayed data IB sends without `allow_delayed_data` (here: asked for in the config, as a
    session in alert_only mode may; live mode refuses it at start) is held, never acted on."""
    gw.state.no_market_data.add(CALL.con_id)
    h.holding[:] = [HELD_CALL, STOCK]
    h.start(vix=False, market_data_type="delayed")
    await gw.wait_for_mkt_data(CALL.con_id)
    gw.quote(CALL.con_id, bid=1.30, ask=1.50)
    gw.quote(AAPL.con_id, bid=184.9, ask=185.1)  # live data for the stock
    await h.until(lambda: h.engine.quote("AAPL"))
    held = await h.until(lambda: h.engine.holds)
    assert set(held) == {HELD_CALL.id}
    assert "allow_delayed_data" in held[HELD_CALL.id]
    [(source, text)] = h.engine.problems
    assert source == "ibkr-delayed" and HELD_CALL.id in text and "allow_delayed_data" in text
    assert h.engine.quotes(HELD_CALL.id) == []
    assert h.engine.data_note == ""


async def test_frozen_prices_are_shown_but_held_until_live_data_comes(
    h: Harness, gw: Gateway
) -> None:
    """With "frozen" data IB re-sends the last prices before the close (market data type 2):
    the screen may show them, nothing acts on them; once IB switches the line to live (the
    open) and a live tick comes, the contract is released."""
    h.holding[:] = [HELD_CALL]
    h.start(vix=False, market_data_type="frozen")
    await gw.wait_for_mkt_data(CALL.con_id)
    gw.quote(CALL.con_id, bid=1.35, ask=1.45)
    await h.until(lambda: h.engine.quote(HELD_CALL.id))
    held = await h.until(lambda: h.engine.holds)
    assert "frozen prices" in held[HELD_CALL.id]
    gw.set_market_data_type(CALL.con_id, 1)  # the open: live data from now on
    await h.settle()
    assert HELD_CALL.id in h.engine.holds  # no live tick yet
    gw.quote(CALL.con_id, bid=1.36, ask=1.46)
    await h.until(lambda: HELD_CALL.id not in h.engine.holds)
    q = h.engine.quote(HELD_CALL.id)
    assert q is not None and (q.bid, q.ts) == (1.36, h.clock.now())


# ---- the connection ----------------------------------------------------------------------------


async def test_one_gateway_unreachable_per_disconnect_and_one_recovery(
    h: Harness, gw: Gateway
) -> None:
    h.holding[:] = [HELD_CALL]
    h.start(vix=False)
    first = await gw.wait_for_mkt_data(CALL.con_id)
    gw.quote(CALL.con_id, bid=1.35, ask=1.45)
    await h.until(lambda: h.engine.quote(HELD_CALL.id))

    await gw.stop_listening(drop_connections=True)
    await h.until(lambda: h.engine.problems)
    await h.until(lambda: len(h.sleeps.delays) >= 3)  # several refused attempts: one alert
    assert h.engine.problems == [
        ("ibkr", h.engine.problems[0][1]),
    ]
    assert h.engine.problems[0][1].startswith("GATEWAY_UNREACHABLE: ")
    assert h.engine.oks == []
    n = len(h.engine.quotes(HELD_CALL.id))
    h.clock.advance(30)  # no refresh while down: the engine's staleness check sees it
    await asyncio.sleep(0)
    assert len(h.engine.quotes(HELD_CALL.id)) == n

    await gw.start_listening()
    await h.until(lambda: h.engine.oks == ["ibkr"])
    again = await gw.wait_for_mkt_data(CALL.con_id)  # everything subscribed again
    assert again.conn is not first.conn
    gw.quote(CALL.con_id, bid=1.20, ask=1.30)
    await h.until(lambda: (q := h.engine.quote(HELD_CALL.id)) and q.bid == 1.20)
    assert len(h.engine.problems) == 1

    # a second episode is a second alert
    await gw.drop_connections()
    await h.until(lambda: len(h.engine.problems) == 2)
    await h.until(lambda: h.engine.oks == ["ibkr", "ibkr"])


async def test_1101_resubscribes_1100_holds_1102_asks_again_for_fresh_data(
    h: Harness, gw: Gateway
) -> None:
    h.holding[:] = [HELD_CALL]
    feed = h.start(vix=False)
    await gw.wait_for_mkt_data(CALL.con_id)
    gw.quote(CALL.con_id, bid=1.35, ask=1.45)
    await h.until(lambda: h.engine.quote(HELD_CALL.id))
    requests = len(gw.state.requests(IN_REQ_MKT_DATA))
    assert h.conn is not None and len(h.conn.lines) == 2  # the call and SPY
    del gw.state.quotes[CALL.con_id]  # the new subscription starts without data

    gw.send_error(1101, "Connectivity between IB and TWS has been restored- data lost.")
    await gw.wait_until(lambda: len(gw.state.requests(IN_REQ_MKT_DATA)) == requests + 2)
    n = len(h.engine.quotes(HELD_CALL.id))
    h.clock.advance(10 * feed.poll_seconds)
    await h.settle()
    assert len(h.engine.quotes(HELD_CALL.id)) == n  # the old values are not re-stamped
    gw.quote(CALL.con_id, bid=1.36)
    await h.until(lambda: (q := h.engine.quote(HELD_CALL.id)) and q.bid == 1.36)

    # 1100: every quote held at once; 1102 (data kept): the lines are asked again (a fresh
    # snapshot), and the pre-outage values are never handed over as new
    gw.send_error(1100, "Connectivity between IB and Trader Workstation has been lost.")
    await h.until(lambda: h.engine.problems)
    await h.until(lambda: HELD_CALL.id in h.engine.holds)
    assert "1100" in h.engine.holds[HELD_CALL.id]
    before = h.engine.quote(HELD_CALL.id)
    n = len(h.engine.quotes(HELD_CALL.id))
    del gw.state.quotes[CALL.con_id]  # nothing new on the line meanwhile
    gw.send_error(1102, "Connectivity between IB and TWS has been restored- data maintained.")
    await h.until(lambda: h.engine.oks)
    await gw.wait_until(lambda: len(gw.state.requests(IN_REQ_MKT_DATA)) == requests + 4)
    h.clock.advance(30.0)
    await h.settle()
    assert HELD_CALL.id in h.engine.holds  # no fresh tick yet: still held
    assert len(h.engine.quotes(HELD_CALL.id)) == n  # the old values are not re-stamped
    assert before is not None and h.engine.quote(HELD_CALL.id) == before
    gw.quote(CALL.con_id, bid=1.37, ask=1.47)
    q = await h.until(lambda: (q := h.engine.quote(HELD_CALL.id)) and q.bid == 1.37 and q)
    assert q.ts == h.clock.now()
    await h.until(lambda: HELD_CALL.id not in h.engine.holds)
    assert [p[1].split(":")[0] for p in h.engine.problems] == ["GATEWAY_UNREACHABLE"]


# ---- IB's data farms ---------------------------------------------------------------------------


async def test_2103_holds_every_quote_at_once_and_2104_waits_for_a_fresh_snapshot(
    h: Harness, gw: Gateway
) -> None:
    h.holding[:] = [HELD_CALL]
    h.start(vix=False)
    await gw.wait_for_mkt_data(CALL.con_id)
    gw.quote(CALL.con_id, bid=1.35, ask=1.45)
    gw.quote(SPY.con_id, bid=152.2, ask=152.4, last=152.3)
    await h.until(lambda: h.engine.quote(HELD_CALL.id) and h.engine.spots())
    requests = len(gw.state.requests(IN_REQ_MKT_DATA))
    assert h.conn is not None
    lines = len(h.conn.lines)  # the call, SPY and the strike table

    gw.farm_notice(2103, "usfarm")
    held = await h.until(lambda: h.engine.holds)
    assert {HELD_CALL.id, "SPY"} <= set(held)
    assert "2103" in held[HELD_CALL.id] and "usfarm" in held[HELD_CALL.id]
    [(source, text)] = h.engine.problems
    assert source == "ibkr-data" and "2103" in text
    n, spots = len(h.engine.quotes(HELD_CALL.id)), len(h.engine.spots())
    gw.quote(CALL.con_id, bid=1.20, ask=1.30)  # whatever trickles in meanwhile is not used
    await h.settle()
    assert len(h.engine.quotes(HELD_CALL.id)) == n and len(h.engine.spots()) == spots

    gw.farm_notice(2104, "usfarm")
    await gw.wait_until(lambda: len(gw.state.requests(IN_REQ_MKT_DATA)) == requests + lines)
    await h.until(lambda: HELD_CALL.id not in h.engine.holds)  # the snapshot's ticks
    q = h.engine.quote(HELD_CALL.id)
    assert q is not None and (q.bid, q.ask, q.ts) == (1.20, 1.30, h.clock.now())
    await h.until(lambda: "SPY" not in h.engine.holds)
    # the strike table's options have sent nothing since: still held
    assert h.engine.holds and all(cid.startswith("SPY 2026") for cid in h.engine.holds)
    assert h.engine.oks == ["ibkr-data"]


async def test_2105_and_2157_are_alerted_and_do_not_stop_live_quotes(
    h: Harness, gw: Gateway
) -> None:
    """HMDS (historical data) and sec-def farms carry no live quotes: each outage is one alert
    saying what it stops, and one recovery; the quotes go on."""
    h.holding[:] = [HELD_CALL]
    h.start(vix=False)
    await gw.wait_for_mkt_data(CALL.con_id)
    gw.farm_notice(2105, "ushmds")
    gw.farm_notice(2157, "secdefnj")
    gw.quote(CALL.con_id, bid=1.35, ask=1.45)
    await h.until(lambda: h.engine.quote(HELD_CALL.id))
    problems = dict(await h.until(lambda: len(h.engine.problems) == 2 and h.engine.problems))
    assert "historical data" in problems["ibkr-data:ushmds"]
    assert "new contracts cannot be looked up" in problems["ibkr-data:secdefnj"]
    assert h.engine.holds == {}
    gw.farm_notice(2105, "ushmds")  # said again: no alert
    gw.farm_notice(2106, "ushmds")
    await h.until(lambda: h.engine.oks == ["ibkr-data:ushmds"])
    assert len(h.engine.problems) == 2


# ---- one contract never stops the others --------------------------------------------------------

LEAPS_EXPIRY = "20281215"  # past the calendar below (and exchange_calendars' own ~1 year)
LEAPS = option_contract(700101, "AAPL", LEAPS_EXPIRY, 200.0, "C")


async def test_a_leaps_beyond_the_calendar_is_quoted_with_the_rest(
    h: Harness, gw: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    """A LEAPS leg (and a LEAPS expiry in the underlying's chain) used to make every step fail:
    no quote at all. Its close is the expiry date's regular close, 16:00 New York time."""
    from engine.market_hours import MarketHours

    caplog.set_level(logging.INFO, logger="engine.market_hours")
    gw.state.add_contract_details(LEAPS)
    gw.state.option_chains[0].expirations.append(LEAPS_EXPIRY)
    hours = MarketHours("XNYS", start="2025-06-02", end="2027-06-30")
    leaps = engine_option(LEAPS)
    diagonal = Contract(
        "AAPL d-1",
        "AAPL",
        "combo",
        None,
        default_close_of("20260116"),
        multiplier=100.0,
        legs=(Leg(leaps.id, 1), Leg(HELD_CALL.id, -1)),
    )
    h.holding[:] = [diagonal, HELD_PUT]
    h.start(vix=False)
    assert h.feed is not None
    h.feed.close_of = hours.close_of
    await gw.wait_for_mkt_data(LEAPS.con_id)
    gw.quote(LEAPS.con_id, bid=30.0, ask=30.5)
    gw.quote(PUT.con_id, bid=2.10, ask=2.20)
    gw.quote(SPY.con_id, last=152.3)
    await h.until(lambda: h.engine.quote(leaps.id) and h.engine.quote(HELD_PUT.id))
    c = h.engine.contracts()[leaps.id]
    assert c.close_ts == datetime(2028, 12, 15, 21, 0, tzinfo=UTC).timestamp()  # 16:00 EST
    await h.until(lambda: h.feed is not None and h.feed.chain_expiry == "20260116")
    assert h.engine.problems == []
    notes = [r.getMessage() for r in caplog.records if LEAPS_EXPIRY in r.getMessage()]
    assert len(notes) == 1 and "16:00 America/New_York" in notes[0]


async def test_a_contract_that_cannot_be_handled_is_alerted_the_others_go_on(
    h: Harness, gw: Gateway
) -> None:
    def close_of(expiry: str) -> float:
        if expiry == LEAPS_EXPIRY:
            raise ValueError(f"XNYS has no session on {expiry} (no close to expire at)")
        return default_close_of(expiry)

    gw.state.add_contract_details(LEAPS)
    leaps_id = engine_option(LEAPS).id
    diagonal = Contract(
        "AAPL d-1",
        "AAPL",
        "combo",
        None,
        default_close_of("20260116"),
        multiplier=100.0,
        legs=(Leg(leaps_id, 1), Leg(HELD_CALL.id, -1)),
    )
    h.holding[:] = [diagonal, HELD_PUT]
    h.start(vix=False)
    assert h.feed is not None
    h.feed.close_of = close_of
    await gw.wait_for_mkt_data(PUT.con_id)
    gw.quote(PUT.con_id, bid=2.10, ask=2.20)
    await h.until(lambda: h.engine.quote(HELD_PUT.id))
    [(source, text)] = await h.until(lambda: h.engine.problems)
    assert source == f"ibkr:{leaps_id}"
    assert leaps_id in text and "no session on 20281215" in text
    h.clock.advance(5.0)
    await h.settle()
    assert len(h.engine.problems) == 1  # once, not every step


# ---- the held set changes ------------------------------------------------------------------------


async def test_lines_released_when_a_position_goes_away(h: Harness, gw: Gateway) -> None:
    h.holding[:] = [HELD_CALL, STOCK]
    feed = h.start(vix=False)
    await gw.wait_for_mkt_data(CALL.con_id)
    await gw.wait_for_mkt_data(AAPL.con_id)

    h.holding[:] = [HELD_CALL, HELD_PUT]  # the stock was sold, a put bought
    h.clock.advance(feed.poll_seconds)  # the feed looks at the held set at least every poll
    await gw.wait_for_mkt_data(PUT.con_id)
    await gw.wait_until(lambda: not live(gw, AAPL.con_id))
    assert len(gw.state.requests(IN_CANCEL_MKT_DATA)) == 1
    assert live(gw, CALL.con_id)
    assert HELD_PUT.id in h.engine.contracts()
    assert set(feed.subscribed.values()) == {HELD_CALL.id, HELD_PUT.id, "SPY"}
    assert h.conn is not None
    assert AAPL.con_id not in {c.conId for c in h.conn.lines.contracts()}


class SeedingRecorder(Recorder):
    """An engine stand-in that also takes a spot-history backfill (as `Engine` does)."""

    def __init__(self) -> None:
        super().__init__()
        self.seeded: list[list[tuple[float, float]]] = []

    def seed_spot_history(self, closes: list[tuple[float, float]]) -> int:
        self.seeded.append(list(closes))
        self._changed.set()
        return len(closes)


IN_REQ_HISTORICAL_DATA = 20


async def test_the_underlying_is_backfilled_with_thirty_minute_closes(
    h: Harness, gw: Gateway
) -> None:
    """At start the feed asks IB for the underlying's last 30 one-minute bars, so momentum and
    volatility are ready at once (as the BTC feeds' backfill): each bar's close at its end."""
    h.engine = SeedingRecorder()
    gw.state.now = h.clock.now
    t0 = int(START) - 30 * 60
    gw.state.minute_bars[SPY.con_id] = [
        (t0 - 60, 150.0, 150.0, 150.0, 150.0),  # older than asked: not sent
        *((t0 + 60 * k, 151.0, 152.0, 150.5, 151.0 + k / 10) for k in range(30)),
    ]
    feed = h.start(vix=False)
    [closes] = await h.until(lambda: h.engine.seeded)
    assert closes == [(t0 + 60.0 * (k + 1), 151.0 + k / 10) for k in range(30)]
    assert feed.backfilled == 30
    [req] = gw.state.requests(IN_REQ_HISTORICAL_DATA)
    fields = req.fields
    assert _int_field(fields[2]) == SPY.con_id
    # endDateTime "" (now), bar size, duration, useRTH 0, TRADES, formatDate 2 (Unix seconds)
    assert fields[15:21] == ("", "1 min", "1800 S", "0", "TRADES", "2")
    h.clock.advance(120.0)  # later rounds do not ask again
    await h.settle()
    assert len(gw.state.requests(IN_REQ_HISTORICAL_DATA)) == 1


async def test_no_bars_means_a_live_warm_up_after_three_tries(h: Harness, gw: Gateway) -> None:
    h.engine = SeedingRecorder()
    gw.state.now = h.clock.now
    feed = h.start(vix=False)  # IB answers 162: no data for SPY
    await gw.wait_until(lambda: gw.state.requests(IN_REQ_HISTORICAL_DATA), DEADLINE)
    for n in (2, 3):
        await h.settle()  # the 162 has come back (the client reads in order)
        assert feed._backfill_failures == n - 1
        h.clock.advance(60.0)
        await gw.wait_until(
            lambda n=n: len(gw.state.requests(IN_REQ_HISTORICAL_DATA)) == n, DEADLINE
        )
    await h.settle()
    assert feed._backfill_failures == 3
    h.clock.advance(600.0)
    await h.settle()
    assert len(gw.state.requests(IN_REQ_HISTORICAL_DATA)) == 3
    assert h.engine.seeded == [] and feed.backfilled == 0
    # the held and underlying quotes flowed meanwhile
    gw.quote(SPY.con_id, bid=152.2, ask=152.4, last=152.3)
    spot = await h.until(lambda: h.engine.spots())
    assert spot[-1].price == 152.3


def _int_field(value: str) -> int:
    return int(value)
