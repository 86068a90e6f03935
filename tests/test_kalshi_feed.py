"""`KalshiMarketFeed` against the loopback Kalshi server (real HTTP on 127.0.0.1).

The feed is driven one poll at a time with `poll_once` on a `ManualClock`; a recorder stands in
for the engine and keeps what `handle_safely` receives. Times below were computed by hand:
2026-11-21T17:00:00Z = 1795280400, 18:00 = 1795284000, 16:00 = 1795276800.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from engine.clock import ManualClock
from engine.config import KalshiConfig
from engine.feeds.kalshi_feed import KalshiMarketFeed, rfc3339_to_unix
from engine.models import Contract, ContractEvent, MarketEvent, Quote, QuoteEvent, SettleEvent
from engine.venues.kalshi import KalshiAuthError, KalshiClient
from tests.kalshi_server import RunningServer, kalshi_server

CLOSE_16 = 1795276800.0
CLOSE_17 = 1795280400.0
CLOSE_18 = 1795284000.0
START = CLOSE_17 - 1800.0  # 16:30 UTC

EV16, EV17, EV18 = "KXBTCD-26NOV2116", "KXBTCD-26NOV2117", "KXBTCD-26NOV2118"
ABOVE = f"{EV17}-T96999.99"
ABOVE_EQ = f"{EV17}-T97999.99"
RANGE = f"{EV17}-B97500"  # the ticker's number is NOT the bounds: the feed must read the fields
BELOW = f"{EV17}-T95000"
NEXT = f"{EV18}-T97000"


class Recorder:
    """The engine as the feed sees it: records every event handed over."""

    def __init__(self) -> None:
        self.events: list[MarketEvent] = []

    async def handle_safely(self, event: MarketEvent) -> None:
        self.events.append(event)

    def take(self) -> list[MarketEvent]:
        out, self.events = self.events, []
        return out


def of(events: list[MarketEvent], cls: type) -> list[Any]:
    return [e for e in events if isinstance(e, cls)]


def _market(state: Any, ticker: str, event: str, close: str, **fields: Any) -> None:
    state.add_market(ticker, event_ticker=event, close_time=close, **fields)


@pytest.fixture
async def server(rsa_key: rsa.RSAPrivateKey) -> AsyncIterator[RunningServer]:
    async with kalshi_server("key-id", rsa_key.public_key()) as srv:
        s = srv.state
        # Closed an hour ago but still listed as open: must not be picked.
        s.add_event(EV16)
        _market(s, f"{EV16}-T96000", EV16, "2026-11-21T16:00:00Z", floor_strike=96000)
        # A later event, listed first: must not be picked before 17:00.
        s.add_event(EV18)
        _market(s, NEXT, EV18, "2026-11-21T18:00:00Z", floor_strike=97000)
        # The event closing next: above, above-or-equal, a range, and a "below".
        s.add_event(EV17)
        _market(
            s,
            ABOVE,
            EV17,
            "2026-11-21T17:00:00Z",
            strike_type="greater",
            floor_strike="96999.99",
            yes_bid_dollars="0.5600",
            yes_ask_dollars="0.5800",
            yes_bid_size_fp="12.00",
            yes_ask_size_fp="34.00",
            last_price_dollars="0.5700",
            volume_fp="1234.00",
            open_interest_fp="500.00",
        )
        _market(
            s,
            ABOVE_EQ,
            EV17,
            "2026-11-21T17:00:00Z",
            strike_type="greater_or_equal",
            floor_strike=97999.99,
            yes_bid_dollars="0.1000",
            yes_ask_dollars="0.1200",
        )
        _market(
            s,
            RANGE,
            EV17,
            "2026-11-21T17:00:00Z",
            strike_type="between",
            floor_strike=97250,
            cap_strike="97749.99",
        )
        _market(s, BELOW, EV17, "2026-11-21T17:00:00Z", strike_type="less", cap_strike=95000)
        # Another series' event closing sooner: the series filter keeps it out.
        s.add_event("KXBTC-26NOV2116", series_ticker="KXBTC")
        _market(
            s,
            "KXBTC-26NOV2116-B97500",
            "KXBTC-26NOV2116",
            "2026-11-21T16:45:00Z",
            strike_type="between",
            floor_strike=97250,
            cap_strike=97749.99,
        )
        yield srv


@pytest.fixture
async def make_feed(
    server: RunningServer,
) -> AsyncIterator[Callable[..., tuple[KalshiMarketFeed, ManualClock]]]:
    clients: list[KalshiClient] = []

    async def no_wait(seconds: float) -> None:
        await asyncio.sleep(0)

    def make(
        clock: ManualClock | None = None, client_kw: dict[str, Any] | None = None, **kw: Any
    ) -> tuple[KalshiMarketFeed, ManualClock]:
        options: dict[str, Any] = {
            "base_url": server.base_url,
            "timeout_seconds": 2.0,
            "read_per_second": 10_000,
            "burst": 100,
            "max_attempts": 1,  # one failed request = one failed poll
            "sleep": no_wait,
        }
        options.update(client_kw or {})
        client = KalshiClient(**options)
        clients.append(client)
        clock = clock or ManualClock(START)
        return KalshiMarketFeed(client, clock, **kw), clock

    yield make
    for client in clients:
        await client.aclose()


def test_rfc3339() -> None:
    assert rfc3339_to_unix("2026-11-21T17:00:00Z") == CLOSE_17
    assert rfc3339_to_unix("2026-11-21T17:00:00.500Z") == CLOSE_17 + 0.5
    assert rfc3339_to_unix("2026-11-21T18:00:00+01:00") == CLOSE_17


async def test_ladder_of_the_event_closing_next(make_feed: Callable[..., Any]) -> None:
    feed, _ = make_feed()
    engine = Recorder()
    await feed.poll_once(engine)
    got = engine.take()
    contracts = {e.contract.id: e.contract for e in of(got, ContractEvent)}
    assert contracts == {
        ABOVE: Contract(ABOVE, "BTC-USD", "binary_above", 96999.99, CLOSE_17, event_id=EV17),
        ABOVE_EQ: Contract(ABOVE_EQ, "BTC-USD", "binary_above", 97999.99, CLOSE_17, event_id=EV17),
        RANGE: Contract(
            RANGE, "BTC-USD", "binary_range", 97250.0, CLOSE_17, cap=97749.99, event_id=EV17
        ),
        BELOW: Contract(BELOW, "BTC-USD", "binary_below", 95000.0, CLOSE_17, event_id=EV17),
    }
    assert all(e.ts == START for e in of(got, ContractEvent))
    # Contracts come before their quotes, as in the sim.
    kinds = [e.kind for e in got]
    assert kinds.index("quote") > max(i for i, k in enumerate(kinds) if k == "contract")
    assert feed.current is not None and feed.current.ticker == EV17


async def test_quotes_with_the_right_numbers_only_when_changed(
    make_feed: Callable[..., Any], server: RunningServer
) -> None:
    feed, clock = make_feed(refresh_seconds=5.0)
    engine = Recorder()
    await feed.poll_once(engine)
    quotes = {e.quote.id: e for e in of(engine.take(), QuoteEvent)}
    assert set(quotes) == {ABOVE, ABOVE_EQ, RANGE, BELOW}
    assert quotes[ABOVE].ts == START
    assert quotes[ABOVE].quote == Quote(
        ABOVE,
        bid=0.56,
        ask=0.58,
        ts=START,
        bid_size=12.0,
        ask_size=34.0,
        last=0.57,
        volume=1234.0,
        open_interest=500.0,
    )

    clock.advance(1.0)
    await feed.poll_once(engine)
    assert engine.take() == []  # nothing changed

    server.state.markets[ABOVE_EQ]["yes_bid_dollars"] = "0.0000"  # no bid
    server.state.markets[RANGE]["yes_ask_dollars"] = "1.0000"  # no offer
    clock.advance(1.0)
    await feed.poll_once(engine)
    got = {e.quote.id: e.quote for e in of(engine.take(), QuoteEvent)}
    assert set(got) == {ABOVE_EQ, RANGE}
    assert got[ABOVE_EQ].bid is None and got[ABOVE_EQ].bid_size == 0.0
    assert got[ABOVE_EQ].ask == 0.12
    assert got[RANGE].ask is None and got[RANGE].bid == 0.40
    assert got[RANGE].ts == START + 2.0

    # A quiet market is re-confirmed every refresh_seconds so the data guard sees it current.
    clock.advance(3.0)
    await feed.poll_once(engine)
    assert {e.quote.id for e in of(engine.take(), QuoteEvent)} == {ABOVE, BELOW}


async def test_by_default_a_quiet_market_is_confirmed_every_two_seconds(
    make_feed: Callable[..., Any], server: RunningServer
) -> None:
    """With the default config a quote Kalshi keeps answering unchanged is handed over again
    every other 1 s poll: the header's quote age stays within 2 s of Kalshi's last word on a calm
    market (it read up to 5 s), and the engine is not asked to re-evaluate every trade on
    unchanged prices every second (that doubled the reaction benchmark's p99 in some runs)."""
    feed, clock = make_feed(refresh_seconds=KalshiConfig().quote_refresh_seconds)
    engine = Recorder()
    await feed.poll_once(engine)
    engine.take()
    clock.advance(1.0)
    await feed.poll_once(engine)
    assert of(engine.take(), QuoteEvent) == []
    clock.advance(1.0)
    await feed.poll_once(engine)
    again = of(engine.take(), QuoteEvent)
    assert {e.quote.id for e in again} == {ABOVE, ABOVE_EQ, RANGE, BELOW}
    assert {e.quote.ts for e in again} == {START + 2.0}


async def test_rolls_to_the_next_event_at_close_and_settles_once(
    make_feed: Callable[..., Any], server: RunningServer
) -> None:
    feed, clock = make_feed()
    engine = Recorder()
    await feed.poll_once(engine)
    engine.take()

    clock.set(CLOSE_17)
    for t in (ABOVE, ABOVE_EQ, RANGE, BELOW):
        server.state.markets[t]["status"] = "closed"
    await feed.poll_once(engine)
    got = engine.take()
    assert [e.contract for e in of(got, ContractEvent)] == [
        Contract(NEXT, "BTC-USD", "binary_above", 97000.0, CLOSE_18, event_id=EV18)
    ]
    assert {e.quote.id for e in of(got, QuoteEvent)} == {NEXT}  # the closed event is not quoted
    assert of(got, SettleEvent) == []
    assert set(feed.closed) == {EV17}

    m = server.state.markets
    m[ABOVE].update(status="determined", result="yes")
    m[ABOVE_EQ].update(status="finalized", result="no")
    m[RANGE].update(status="disputed", result="yes")  # not final yet
    m[BELOW].update(status="determined", result="yes")
    clock.advance(1.0)
    await feed.poll_once(engine)
    settles = of(engine.take(), SettleEvent)
    assert sorted((s.contract_id, s.value, s.ts) for s in settles) == sorted(
        [(ABOVE, 1.0, CLOSE_17 + 1), (ABOVE_EQ, 0.0, CLOSE_17 + 1), (BELOW, 1.0, CLOSE_17 + 1)]
    )

    clock.advance(1.0)
    await feed.poll_once(engine)
    assert of(engine.take(), SettleEvent) == []  # exactly once
    assert set(feed.closed) == {EV17}

    m[RANGE].update(status="amended", result="no")
    clock.advance(1.0)
    await feed.poll_once(engine)
    assert [(s.contract_id, s.value) for s in of(engine.take(), SettleEvent)] == [(RANGE, 0.0)]
    assert feed.closed == {}  # fully settled: no more polling of EV17

    before = len(server.state.requests)
    clock.advance(1.0)
    await feed.poll_once(engine)
    polled = [r.query.get("event_ticker") for r in server.state.requests[before:]]
    assert polled == [EV18]


async def test_500_skips_a_poll_and_the_next_recovers(
    make_feed: Callable[..., Any], server: RunningServer
) -> None:
    feed, clock = make_feed()
    engine = Recorder()
    server.state.queue_fault("500", path="/markets")
    await feed.poll_once(engine)
    got = engine.take()
    assert len(of(got, ContractEvent)) == 4 and of(got, QuoteEvent) == []
    assert feed.failures == 1

    clock.advance(1.0)
    await feed.poll_once(engine)
    assert {e.quote.id for e in of(engine.take(), QuoteEvent)} == {ABOVE, ABOVE_EQ, RANGE, BELOW}
    assert feed.failures == 0


async def test_timeout_skips_a_poll_and_the_next_recovers(
    make_feed: Callable[..., Any], server: RunningServer
) -> None:
    feed, clock = make_feed(client_kw={"timeout_seconds": 0.2}, refresh_seconds=5.0)
    engine = Recorder()
    await feed.poll_once(engine)
    engine.take()
    server.state.markets[ABOVE]["yes_bid_dollars"] = "0.6000"
    server.state.queue_fault("delay", path="/markets", seconds=1.0)
    clock.advance(1.0)
    await feed.poll_once(engine)
    assert engine.take() == [] and feed.failures == 1
    clock.advance(1.0)
    await feed.poll_once(engine)
    [q] = of(engine.take(), QuoteEvent)
    assert q.quote.id == ABOVE and q.quote.bid == 0.60
    assert feed.failures == 0


class _Stop(Exception):
    pass


class RecordingClock(ManualClock):
    """A ManualClock that records each wait and stops the loop after `limit` of them."""

    def __init__(self, start: float, limit: int) -> None:
        super().__init__(start)
        self.waits: list[float] = []
        self.limit = limit

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        if len(self.waits) >= self.limit:
            raise _Stop
        self.advance(seconds)
        await asyncio.sleep(0)


async def test_repeated_failures_back_off_then_recover(
    make_feed: Callable[..., Any], server: RunningServer
) -> None:
    clock = RecordingClock(START, limit=5)
    feed, _ = make_feed(clock=clock, poll_seconds=1.0, max_backoff_seconds=3.0)
    engine = Recorder()
    server.state.queue_fault("500", path="/markets", times=3)
    with pytest.raises(_Stop):
        await feed.run(engine)
    # Doubling with jitter (between half and all of the step, never under poll_seconds),
    # capped, reset on success.
    first, second, third, *after = clock.waits
    assert first == 1.0 and 1.0 <= second <= 2.0 and 1.5 <= third <= 3.0 and after == [1.0, 1.0]
    assert of(engine.events, QuoteEvent)  # quotes flowed again after the failures


async def test_auth_error_stops_the_feed(
    make_feed: Callable[..., Any], server: RunningServer
) -> None:
    feed, _ = make_feed()
    engine = Recorder()
    server.state.queue_fault(
        "refuse", path="/markets", status=401, code="authentication_error", message="bad key"
    )
    with pytest.raises(KalshiAuthError, match="bad key"):
        await asyncio.wait_for(feed.run(engine), timeout=5)


async def test_no_open_event_then_one_appears(
    make_feed: Callable[..., Any], server: RunningServer
) -> None:
    feed, clock = make_feed()
    clock.set(CLOSE_18 + 10)  # every listed event has closed
    engine = Recorder()
    await feed.poll_once(engine)
    assert engine.take() == [] and feed.current is None and feed.failures == 0
    server.state.add_event("KXBTCD-26NOV2119")
    server.state.add_market(
        "KXBTCD-26NOV2119-T98000", close_time="2026-11-21T19:00:00Z", floor_strike=98000
    )
    clock.advance(1.0)
    await feed.poll_once(engine)
    [c] = of(engine.take(), ContractEvent)
    assert c.contract.close_ts == CLOSE_18 + 3600 and c.contract.strike == 98000.0


# ---- the optional stream -----------------------------------------------------------------


class FakeStream:
    """Stands in for `KalshiStream`: updates are pushed by the test; an exception ends it."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[object] = asyncio.Queue()
        self.started = False
        self.added: list[list[str]] = []
        self.removed: list[list[str]] = []

    async def start(self) -> None:
        self.started = True

    def __aiter__(self) -> FakeStream:
        return self

    async def __anext__(self) -> object:
        item = await self.queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    async def add_tickers(self, tickers: Any) -> None:
        self.added.append(list(tickers))

    async def remove_tickers(self, tickers: Any) -> None:
        self.removed.append(list(tickers))


class GateClock(ManualClock):
    """A ManualClock whose sleep waits until the test lets the loop go round once more."""

    def __init__(self, start: float) -> None:
        super().__init__(start)
        self.gate: asyncio.Queue[None] = asyncio.Queue()
        self.sleeping = asyncio.Event()

    async def sleep(self, seconds: float) -> None:
        self.sleeping.set()
        await self.gate.get()
        self.sleeping.clear()

    async def next_round(self) -> None:
        """Let the feed poll once more and wait until it sleeps again."""
        self.sleeping.clear()
        self.gate.put_nowait(None)
        await asyncio.wait_for(self.sleeping.wait(), 5)


async def _drain() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def _sq(ticker: str, bid: str | None, ask: str | None, **kw: Any) -> Any:
    from decimal import Decimal

    from engine.venues.kalshi.stream import KalshiQuote

    return KalshiQuote(
        ticker=ticker,
        yes_bid=None if bid is None else Decimal(bid),
        yes_bid_size=Decimal("7"),
        yes_ask=None if ask is None else Decimal(ask),
        yes_ask_size=Decimal("9"),
        ts=None,
        received=0.0,
        source="book",
        **kw,
    )


async def test_stream_quotes_replace_rest_polling(
    make_feed: Callable[..., Any], server: RunningServer
) -> None:
    clock = GateClock(START)
    stream = FakeStream()
    feed, _ = make_feed(clock=clock, stream=stream, refresh_seconds=5.0)
    engine = Recorder()
    task = asyncio.create_task(feed.run(engine))
    try:
        await asyncio.wait_for(clock.sleeping.wait(), 5)
        got = engine.take()
        assert len(of(got, ContractEvent)) == 4
        # No stream quote yet: REST quotes meanwhile.
        assert {e.quote.id: e.quote.bid for e in of(got, QuoteEvent)} == {
            ABOVE: 0.56,
            ABOVE_EQ: 0.10,
            RANGE: 0.40,
            BELOW: 0.40,
        }
        assert stream.started and stream.added == [sorted([ABOVE, ABOVE_EQ, RANGE, BELOW])]

        clock.advance(0.5)
        stream.queue.put_nowait(_sq(ABOVE, "0.6100", "0.6300"))
        stream.queue.put_nowait(_sq(NEXT, "0.2000", "0.2200"))  # not the current event
        await _drain()
        [q] = [e.quote for e in of(engine.take(), QuoteEvent)]
        # Prices and sizes from the stream; volume, open interest, last from the REST poll.
        assert q == Quote(ABOVE, 0.61, 0.63, START + 0.5, 7.0, 9.0, 0.57, 1234.0, 500.0)

        stream.queue.put_nowait(_sq(ABOVE, "0.6100", "0.6300"))  # unchanged
        await _drain()
        assert engine.take() == []

        # A REST poll refreshes volume but never overrides the stream's prices.
        server.state.markets[ABOVE]["volume_fp"] = "2000.00"
        clock.advance(1.0)
        await clock.next_round()
        [q] = [e.quote for e in of(engine.take(), QuoteEvent)]
        assert (q.bid, q.ask, q.volume, q.ts) == (0.61, 0.63, 2000.0, START + 1.5)

        # The stream drops: its cached quote is not re-stamped, REST quotes meanwhile.
        from engine.venues.kalshi.stream import Disconnected

        stream.queue.put_nowait(Disconnected("closed", 1.0, 1, 0.0))
        await _drain()
        clock.advance(1.0)
        await clock.next_round()
        [q] = [e.quote for e in of(engine.take(), QuoteEvent)]
        assert (q.id, q.bid, q.ask) == (ABOVE, 0.56, 0.58)

        # At close the stream follows the next event.
        clock.set(CLOSE_17)
        await clock.next_round()
        assert stream.added[-1] == [NEXT]
        assert stream.removed == [sorted([ABOVE, ABOVE_EQ, RANGE, BELOW])]
        got = engine.take()
        assert [e.contract.id for e in of(got, ContractEvent)] == [NEXT]
        assert [e.quote.bid for e in of(got, QuoteEvent)] == [0.40]  # REST until a snapshot
        stream.queue.put_nowait(_sq(ABOVE, "0.9900", "1.0000"))  # closed event: ignored
        stream.queue.put_nowait(_sq(NEXT, "0.2000", "1.0000"))  # an ask of 1 is no offer
        await _drain()
        got = [e.quote for e in of(engine.take(), QuoteEvent)]
        assert [(q.id, q.bid, q.ask, q.ask_size) for q in got] == [(NEXT, 0.2, None, 0.0)]

        # The stream's end (here a refused handshake) ends the feed with its error.
        stream.queue.put_nowait(KalshiAuthError("handshake refused", status=401))
        await _drain()
        clock.gate.put_nowait(None)  # the loop wakes, sees the stream ended, and stops
    except BaseException:
        task.cancel()
        raise
    with pytest.raises(KalshiAuthError, match="handshake refused"):
        await asyncio.wait_for(task, 5)


# ---- with the real engine ----------------------------------------------------------------


async def test_real_engine_takes_the_ladder_quotes_and_settlement(
    make_feed: Callable[..., Any], server: RunningServer, tmp_path: Any
) -> None:
    from engine.models import OpenEvent, TradeState
    from tests.engine_harness import Harness

    h = Harness(tmp_path)
    h.clock = ManualClock(START)
    await h.open()
    try:
        feed, _ = make_feed(clock=h.clock)
        await feed.poll_once(h.engine)
        assert {ABOVE, ABOVE_EQ, RANGE, BELOW} <= set(h.engine.contracts)
        assert h.engine.quotes[ABOVE].bid == 0.56
        await h.engine.start()
        await h.engine.handle(OpenEvent(START, "t1", ABOVE, "yes", 10, 0.50))
        h.clock.set(CLOSE_17)
        server.state.markets[ABOVE].update(status="determined", result="yes")
        await feed.poll_once(h.engine)
        t1 = await h.store.get_trade("t1")
        assert (t1.state, t1.exit_reason, t1.exit_price) == (TradeState.CLOSED, "settled", 1.0)
    finally:
        await h.close()
