"""The IBKR session's world: the loopback TWS gateway (tests/tws_gateway.py) on 127.0.0.1 and
the config that wires `build_runtime` to it (`engine.venue = "ibkr"`, live, armed).

The account (`DU1234567`) holds, on SPY options of `EXPIRY` (the first exchange session at least
30 days from today, so the real clock never sees it expire):

- a bull call spread, config group "v-1": +2 SPY 160C bought at 3.20, −2 SPY 165C sold at 1.20:
  one trade, long 2 at 2.00;
- a single option: +1 SPY 150C bought at 9.00.

The market (`Market`) starts with SPY at 158 and every option of the strike table quoted with
the model's greeks; the spread's time value is 3.10 − 1.10 = 2.00 and the single's 9.50 − 8 =
1.50, both above `min_time_value` = 1.00. `World.start` builds the runtime as a real session does
and runs `engine.run(feeds)` as a task (the IB feed needs its own loop: it listens to the
client's ticker events); a test then waits for conditions with deadlines (`Session.until`).

Everything runs at the real pace on the world's clock (`World.clock`, a `ShiftedClock` one hour
into the latest XNYS session, so exits may go out whatever the hour the tests run at; the
trading-hours tests move it): the exit ladder's `attempt_timeout_seconds` is 0.25 s, the
engine ticks every 0.05 s, reconnect backoff is 0.05–0.2 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from engine.alerts import Alert
from engine.clock import Clock
from engine.config import Config, parse_config
from engine.models import AlertKind, Trade
from engine.runtime import Runtime, build_runtime
from engine.supervisor import Engine
from engine.venues.ibkr.connection import IbConnection
from engine.venues.ibkr.feed import IbkrMarketFeed
from engine.venues.ibkr.venue import IbkrVenue
from tests.tws_gateway import (
    Fill,
    Gateway,
    GwContract,
    GwOrder,
    option_contract,
    stock_contract,
    tws_gateway,
)

ACCOUNT = "DU1234567"
CLIENT_ID = 17
DEADLINE = 5.0  # the longest any condition is waited for
SPY = stock_contract(756733, "SPY", primary_exchange="ARCA")
STRIKES = (145.0, 150.0, 155.0, 160.0, 165.0, 170.0)
SPOT = 158.0
IN_REQ_MKT_DATA, IN_PLACE_ORDER, IN_CANCEL_ORDER = 1, 3, 4


@functools.cache
def expiry() -> str:
    """The first XNYS session at least 30 days after today (YYYYMMDD)."""
    from engine.market_hours import MarketHours

    hours = MarketHours("XNYS")
    day = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=30)
    for _ in range(30):
        text = day.strftime("%Y%m%d")
        with contextlib.suppress(ValueError):
            hours.close_of(text)
            return text
        day += dt.timedelta(days=1)
    raise AssertionError("no XNYS session in the 30 days after today + 30")


def in_session() -> float:
    """A moment one hour into the latest XNYS session that opened (today's at 10:30 ET when
    it is open now or opens within the hour; else the last trading day's)."""
    from engine.market_hours import MarketHours

    hours = MarketHours("XNYS")
    now = time.time()
    opens = hours.next_open(now - 7 * 86400)
    while (nxt := hours.next_open(opens)) <= now + 3600:
        opens = nxt
    return opens + 3600


def later_expiry() -> str:
    e = dt.datetime.strptime(expiry(), "%Y%m%d") + dt.timedelta(days=35)
    return e.strftime("%Y%m%d")


def con_id(strike: float, right: str) -> int:
    return 800_000 + int(strike) * 2 + (right == "P")


def option(strike: float, right: str) -> GwContract:
    return option_contract(con_id(strike, right), "SPY", expiry(), strike, right)


def oid(strike: float, right: str) -> str:
    """The engine's id of a SPY option of `EXPIRY`."""
    return f"SPY {expiry()} {strike:g}{right}"


C150, C160, C165 = option(150.0, "C"), option(160.0, "C"), option(165.0, "C")
SPREAD = "SPY v-1"


@dataclass
class OptionQuote:
    bid: float
    ask: float
    iv: float
    delta: float


def _intrinsic(strike: float, right: str, und: float) -> float:
    return max(und - strike, 0.0) if right == "C" else max(strike - und, 0.0)


class Market:
    """What the gateway quotes: SPY and every option of the strike table (bid/ask and the model's
    greeks at `spot`). `push()` sends it all to the gateway (stored for later subscriptions
    too); `tick()` sends it again with the sizes changed, as a live market does."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.spot = SPOT
        self.options: dict[int, OptionQuote] = {}
        self._size = 10.0
        for k in STRIKES:
            for right in "CP":
                tv = max(3.1 - abs(k - 160.0) * 0.4, 0.3)
                mid = _intrinsic(k, right, SPOT) + tv
                delta = 0.5 if k == 160 else (0.7 if k < 160 else 0.3)
                self.options[con_id(k, right)] = OptionQuote(
                    round(mid - 0.1, 2),
                    round(mid + 0.1, 2),
                    0.20 + abs(k - 160) / 1000,
                    delta if right == "C" else delta - 1.0,
                )
        self.set(C150, 9.40, 9.60)  # time value 9.50 - 8 = 1.50
        self.set(C160, 3.00, 3.20, iv=0.21, delta=0.48)  # 3.10
        self.set(C165, 1.00, 1.20)  # 1.10: the spread's 2.00

    def set(self, c: GwContract, bid: float, ask: float, **greeks: float) -> None:
        q = self.options[c.con_id]
        q.bid, q.ask = bid, ask
        for k, v in greeks.items():
            setattr(q, k, v)

    def push(self, con_ids: Iterator[int] | None = None) -> None:
        size = self._size
        self.gw.quote(SPY.con_id, bid=self.spot - 0.01, ask=self.spot + 0.01, last=self.spot)
        for cid in con_ids if con_ids is not None else list(self.options):
            q = self.options[cid]
            self.gw.quote(cid, bid=q.bid, ask=q.ask, bid_size=size, ask_size=size)
            self.gw.option_computation(
                cid,
                implied_vol=q.iv,
                delta=q.delta,
                opt_price=(q.bid + q.ask) / 2,
                und_price=self.spot,
            )

    def tick(self) -> None:
        self._size = 11.0 if self._size == 10.0 else 10.0
        self.push()

    def leg_prices(self, sell: bool = True) -> dict[int, float]:
        """The spread's legs at the prices a combo sell (or buy) fills at."""
        c160, c165 = self.options[C160.con_id], self.options[C165.con_id]
        if sell:
            return {C160.con_id: c160.bid, C165.con_id: c165.ask}
        return {C160.con_id: c160.ask, C165.con_id: c165.bid}

    def bag_fill(self, quantity: float | None = None, commission: float = 2.0) -> Fill:
        """A fill of our closing BAG order at its limit, with one execution per leg (the legs'
        positions are booked, as TWS does)."""
        return Fill(quantity=quantity, commission=commission, leg_prices=self.leg_prices())

    @contextlib.asynccontextmanager
    async def ticking(self, every: float = 0.05) -> AsyncIterator[None]:
        """Quotes keep arriving (every `every` seconds) while the block runs."""

        async def loop() -> None:
            while True:
                self.tick()
                await asyncio.sleep(every)

        task = asyncio.create_task(loop(), name="market-ticks")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class ShiftedClock:
    """Real time, moved to another moment (`at`), and moved again by `jump_to`: a session at
    any hour of the exchange's week, running at the real pace (the gateway, the client and the
    engine all read it; ticks stamped by the feed carry it)."""

    def __init__(self, at: float) -> None:
        self.offset = at - time.time()

    def now(self) -> float:
        return time.time() + self.offset

    def jump_to(self, ts: float) -> None:
        self.offset = ts - time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


@dataclass
class Session:
    """A runtime from `build_runtime` and its `engine.run(feeds)` task."""

    rt: Runtime
    task: asyncio.Task[None]
    closed: bool = False

    @property
    def engine(self) -> Engine:
        return self.rt.engine

    @property
    def venue(self) -> IbkrVenue:
        v = self.rt.engine.venue
        assert isinstance(v, IbkrVenue)
        return v

    @property
    def feed(self) -> IbkrMarketFeed:
        [f] = [f for f in self.rt.feeds if isinstance(f, IbkrMarketFeed)]
        return f

    @property
    def conn(self) -> IbConnection:
        return self.feed.conn

    def trades(self) -> dict[str, Trade]:
        """Open trades by contract id."""
        return {t.contract_id: t for t in self.engine.trades.values()}

    def alerts(self, kind: AlertKind | None = None) -> list[Alert]:
        return [a for a in self.engine.alerts.recent if kind is None or a.kind == kind]

    async def until(
        self, predicate: Callable[[], Any], what: str = "", timeout: float = DEADLINE
    ) -> Any:
        """Wait (polling every 10 ms, at most `timeout` s) until `predicate()` is truthy."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if self.task.done():
                self.task.result()  # the engine stopped: its error, if any
                raise AssertionError(f"the engine stopped while waiting for {what}")
            if loop.time() > deadline:
                raise AssertionError(f"not within {timeout:g}s: {what or predicate}")
            await asyncio.sleep(0.01)

    async def until_async(
        self, predicate: Callable[[], Awaitable[Any]], what: str = "", timeout: float = DEADLINE
    ) -> Any:
        """`until` for a coroutine predicate (e.g. a journal read)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            value = await predicate()
            if value:
                return value
            if self.task.done():
                self.task.result()
                raise AssertionError(f"the engine stopped while waiting for {what}")
            if loop.time() > deadline:
                raise AssertionError(f"not within {timeout:g}s: {what or predicate}")
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        """Stop the engine (orders still working are answered first) and close the runtime."""
        if self.closed:
            return
        self.closed = True
        self.engine.stop()
        try:
            await asyncio.wait_for(asyncio.shield(self.task), DEADLINE)
        finally:
            await self.rt.close()

    async def die(self) -> None:
        """The process dies: exit orders are left where they are (their tasks cancelled, nothing
        more is written), the feeds stop, the journal and the connection close."""
        self.closed = True
        for t in list(self.engine._exit_tasks):
            t.cancel()
        self.task.cancel()
        await asyncio.gather(self.task, *self.engine._exit_tasks, return_exceptions=True)
        await self.rt.store.close()
        for closer in self.rt.closers:
            result = closer()
            if asyncio.iscoroutine(result):
                await result


@dataclass
class World:
    gw: Gateway
    data: Path
    market: Market
    # The world's time: the real pace, inside an XNYS session whatever the hour the tests run
    # at (no exit goes out while the market is closed); the gateway's bars end on it.
    clock: ShiftedClock = field(default_factory=lambda: ShiftedClock(in_session()))
    sessions: list[Session] = field(default_factory=list)

    def config(
        self,
        *,
        ibkr: Mapping[str, Any] | None = None,
        engine: Mapping[str, Any] | None = None,
        criteria: Mapping[str, Any] | None = None,
        **auto_stop: Any,
    ) -> Config:
        return parse_config(
            {
                "engine": {
                    "venue": "ibkr",
                    "data_dir": str(self.data),
                    "tick_seconds": 0.05,
                    **(engine or {}),
                },
                "auto_stop": {
                    "mode": "live",
                    "armed": True,
                    "criteria": {"min_time_value": 1.0, **(criteria or {})},
                    **auto_stop,
                },
                "alerts": {"log_file": "", "cooldown_seconds": 0.0},
                "venues": {
                    "ibkr": {
                        "host": "127.0.0.1",
                        "port": self.gw.port,
                        "client_id": CLIENT_ID,
                        "connect_timeout_seconds": 2.0,
                        "reconnect_min_seconds": 0.05,
                        "reconnect_max_seconds": 0.2,
                        "underlying": "SPY",
                        "strikes": 4,
                        "vix": False,
                        "min_price": 0.05,
                        "price_increment": 0.05,
                        "max_attempts": 3,
                        "attempt_timeout_seconds": 0.25,
                        "groups": [{"name": "v-1", "legs": [oid(160, "C"), oid(165, "C")]}],
                        **(ibkr or {}),
                    }
                },
            }
        )

    async def start(self, config: Config | None = None, clock: Clock | None = None) -> Session:
        rt = await build_runtime(config or self.config(), None, clock=clock or self.clock)
        task = asyncio.create_task(rt.engine.run(rt.feeds), name="engine-run")
        s = Session(rt, task)
        self.sessions.append(s)
        return s

    def bag_orders(self) -> list[GwOrder]:
        return [o for o in self.gw.state.orders if o.contract.sec_type == "BAG"]


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with tws_gateway(accounts=[ACCOUNT]) as gw:
        st = gw.state
        st.add_contract_details(SPY)
        exp = expiry()
        st.add_option_chain(SPY.con_id, "SPY", [exp, later_expiry()], list(STRIKES))
        for k in STRIKES:
            for right in "CP":
                st.add_contract_details(option(k, right))
        st.add_position(C160, 2, 320.0, market_price=3.10)
        st.add_position(C165, -2, 120.0, market_price=1.10)
        st.add_position(C150, 1, 900.0, market_price=9.50)
        # SPY's last hour of minute bars (for the backfill): 157.00 rising to 157.98
        clock = ShiftedClock(in_session())
        st.now = clock.now  # the end of a historical request for "now"
        minute = int(clock.now()) // 60 * 60
        st.minute_bars[SPY.con_id] = [
            (minute - 60 * (60 - k), 157.0, 158.0, 157.0, round(157.0 + k / 60, 2))
            for k in range(60)
        ]
        market = Market(gw)
        market.push()
        w = World(gw, tmp_path / "data", market, clock)
        try:
            yield w
        finally:
            for s in w.sessions:
                with contextlib.suppress(Exception):
                    await s.close()
