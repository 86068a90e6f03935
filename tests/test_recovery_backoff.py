"""Recovery and back-off (issue 15, "Slow recovery, noisy alerts"): what a trader notices.

- After a long Kalshi outage (70 s of 503s on the quote poll) quotes flow again within ~2 s of
  the venue answering again (the poll's back-off is capped by `[engine] backoff_max_seconds`),
  not 30 s later as with the old hard-coded cap.
- `Retry-After` on 429 / 503, in both forms (seconds, an HTTP date), is waited for — never less —
  and at most `[engine] retry_after_max_seconds`; a venue asking for longer gets one alert that
  names it and the bound. For the Kalshi feed and client (reads and orders), the spot sources
  (Coinbase, Kraken, Deribit) and the webhook (in tests/test_alert_channels.py).
- A spot fallback switched off on purpose (`[spot] fallback = "none"`) raises no "none failing"
  alert and shows no failing source.

Everything runs against the loopback servers (tests/kalshi_server.py, tests/spot_servers.py),
on the tests' manual clock: a feed run as a task sleeps on `StepClock` and the test moves the
clock; no test sleeps for timing.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from email.utils import formatdate
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from engine.alerts import Alert
from engine.clock import ManualClock
from engine.feeds.coinbase import CoinbaseSpot
from engine.feeds.deribit import DeribitDvol
from engine.feeds.kraken import KrakenSpot
from engine.feeds.spot_feed import SpotFeed
from engine.feeds.spot_selector import PrimaryFallback
from engine.feeds.spot_sources import SourceUnavailable, SpotSourceError
from engine.feeds.spot_streams import CoinbaseStream
from engine.http_retry import RetryGate, backoff_delay, parse_retry_after
from engine.kalshi_runtime import _NoSpot
from engine.models import AlertKind, Severity, TradeState
from engine.runtime import Runtime
from engine.venues.kalshi import KalshiClient
from engine.venues.kalshi.auth import KalshiSigner
from engine.venues.kalshi.errors import KalshiRateLimited, KalshiUnavailable
from engine.venues.kalshi.stream import Disconnected, KalshiStream
from tests.engine_harness import T0, Harness
from tests.kalshi_server import RunningServer, kalshi_server
from tests.kalshi_world import HELD, START, World, feeds, step
from tests.kalshi_world import world as world  # the fixture
from tests.kalshi_ws_server import kalshi_ws_server
from tests.loopback import RecordedSleeps
from tests.spot_servers import (
    CoinbaseServer,
    CoinbaseWsServer,
    DeribitServer,
    KrakenServer,
    ParkedClock,
)

MARKETS = "/markets"


class StepClock(ParkedClock):
    """A `ParkedClock` (sleeps end when the test moves the clock past them) whose `step` also
    waits until the tasks it woke have parked again (their HTTP round trips done)."""

    def __init__(self, start: float) -> None:
        super().__init__(start)
        self.parked = asyncio.Event()

    def sleep(self, seconds: float) -> asyncio.Future[None]:  # type: ignore[override]
        fut = super().sleep(seconds)
        self.parked.set()
        return fut

    async def step(self, seconds: float) -> bool:
        """Move the clock; True when a sleeping task woke (and has parked again)."""
        due = [f for end, f in self._sleepers if end <= self.now() + seconds]
        self.parked.clear()
        self.advance(seconds)
        if due:
            await asyncio.wait_for(self.parked.wait(), 10)
        return bool(due)


def polls(w: World) -> list[float]:
    """How many quote polls (GET /markets) the server has seen: their count."""
    return [r.at for r in w.kalshi.state.requests if r.method == "GET" and r.path == MARKETS]


async def run_feed(w: World) -> tuple[Runtime, asyncio.Task[None], StepClock]:
    """The Kalshi session of tests/kalshi_world.py, its market feed running as a task on a
    `StepClock` (from the config's defaults), parked after its first poll."""
    clock = StepClock(START)
    w.clock = clock
    rt = await w.start()
    market, _ = feeds(rt)
    task = asyncio.create_task(market.run(rt.engine))
    await asyncio.wait_for(clock.parked.wait(), 10)
    return rt, task, clock


async def stop(rt: Runtime, task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await rt.close()


async def next_poll_time(w: World, clock: StepClock, limit: float, dt: float = 1.0) -> float:
    """Move the clock in `dt` steps until the feed polls once more; the clock time then."""
    seen = len(polls(w))
    start = clock.now()
    while clock.now() - start <= limit:
        await clock.step(dt)
        if len(polls(w)) > seen:
            return clock.now()
    raise AssertionError(f"no quote poll within {limit} s")


# ---- the helper ----------------------------------------------------------------------------


def test_retry_after_both_forms_on_the_given_clock() -> None:
    now = 1_795_280_400.0  # 2026-11-21T17:00:00Z
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after(" 7 ", now) == 7.0
    assert parse_retry_after("Sat, 21 Nov 2026 17:00:30 GMT", now) == 30.0  # IMF-fixdate
    assert parse_retry_after("Saturday, 21-Nov-26 17:00:30 GMT", now) == 30.0  # RFC 850
    assert parse_retry_after("Sat Nov 21 17:00:30 2026", now) == 30.0  # asctime
    assert parse_retry_after("Sat, 21 Nov 2026 16:59:00 GMT", now) == 0.0  # already past
    for bad in (None, "", "soon", "-5", "nan", "12abc"):
        assert parse_retry_after(bad, now) is None, bad
    gate = RetryGate("v", now=lambda: now, max_seconds=60.0)
    assert gate.note(200, {"Retry-After": "30"}) is None  # only 429 and 503
    assert gate.note(500, {"Retry-After": "30"}) is None and gate.remaining() == 0.0
    ra = gate.note(503, {"retry-after": "7200"})
    assert ra is not None and (ra.asked, ra.wait, ra.capped) == (7200.0, 60.0, True)
    assert gate.remaining() == 60.0 and gate.excess is ra
    assert "7200" in gate.describe() and "retry_after_max_seconds" in gate.describe()


def test_backoff_is_capped_jittered_and_never_faster_than_normal() -> None:
    rng = random.Random(7)
    waits = [backoff_delay(n, base=1.0, cap=2.0, rng=rng) for n in range(0, 40)]
    assert waits[:2] == [1.0, 1.0]
    assert all(1.0 <= x <= 2.0 for x in waits)
    assert len({round(x, 6) for x in waits[2:]}) > 10  # jittered, not in lockstep


# ---- Kalshi: recovery after an outage, Retry-After on the quote poll ------------------------


async def test_quotes_flow_again_within_2s_after_a_70s_outage(world: World) -> None:
    w = world
    rt, task, clock = await run_feed(w)
    try:
        assert rt.engine.quotes[HELD].ts == START
        w.kalshi.state.queue_fault("503", method="GET", path=MARKETS, persistent=True)
        for _ in range(70):  # 70 s without market data
            await clock.step(1.0)
        assert len(w.kalshi.state.faulted("GET", MARKETS)) >= 5
        assert rt.engine.quotes[HELD].ts == START  # nothing came meanwhile

        w.clear_faults()  # Kalshi answers again
        back = clock.now()
        while rt.engine.quotes[HELD].ts <= back and clock.now() - back < 40:
            await clock.step(0.25)
        assert rt.engine.quotes[HELD].ts > back
        assert clock.now() - back <= 2.0  # asked again within the 2 s cap, not 30 s later
        await rt.engine.tick()
        assert rt.engine.snapshot().trades[0].state == "armed"  # protected again
    finally:
        await stop(rt, task)


@pytest.mark.parametrize("status", ["429", "503"])
async def test_the_quote_poll_waits_for_retry_after_in_seconds(world: World, status: str) -> None:
    w = world
    rt, task, clock = await run_feed(w)
    try:
        w.kalshi.state.queue_fault(status, method="GET", path=MARKETS, retry_after="7")  # type: ignore[arg-type]
        refused = await next_poll_time(w, clock, 5)
        assert w.kalshi.state.faulted("GET", MARKETS)
        again = await next_poll_time(w, clock, 30)
        assert 7.0 <= again - refused <= 8.0  # not before Retry-After, and soon after it
        assert rt.engine.quotes[HELD].ts == again  # and the quotes came
    finally:
        await stop(rt, task)


async def test_the_quote_poll_waits_for_retry_after_as_an_http_date(world: World) -> None:
    w = world
    rt, task, clock = await run_feed(w)
    try:
        until = clock.now() + 13.0  # whole seconds: START is
        w.kalshi.state.queue_fault(
            "503", method="GET", path=MARKETS, retry_after=formatdate(until, usegmt=True)
        )
        await next_poll_time(w, clock, 5)
        again = await next_poll_time(w, clock, 30)
        assert until <= again <= until + 1.0
    finally:
        await stop(rt, task)


async def test_a_retry_after_of_an_hour_is_capped_at_a_minute_with_one_alert(
    world: World,
) -> None:
    w = world
    rt, task, clock = await run_feed(w)
    alerts: list[Alert] = []
    rt.engine.alerts.listeners.append(
        lambda a: alerts.append(a) if "Retry-After" in a.message else None
    )
    try:
        w.kalshi.state.queue_fault("429", method="GET", path=MARKETS, retry_after="3600")
        refused = await next_poll_time(w, clock, 5)
        again = await next_poll_time(w, clock, 200)
        assert 60.0 <= again - refused <= 61.0  # the bound ([engine] retry_after_max_seconds)
        [long, ok] = alerts
        assert (long.kind, long.severity) == (AlertKind.DATA_QUALITY, Severity.WARNING)
        assert "kalshi" in long.message and "3600" in long.message and "60" in long.message
        assert "retry_after_max_seconds" in long.message  # the fix: where the bound is set
        assert ok.severity is Severity.INFO and "recovered" in ok.message
    finally:
        await stop(rt, task)


async def test_the_bounds_come_from_the_config(world: World) -> None:
    w = world
    clock = StepClock(START)
    w.clock = clock
    rt = await w.start(w.config(engine={"backoff_max_seconds": 5.0, "retry_after_max_seconds": 9}))
    market, _ = feeds(rt)
    task = asyncio.create_task(market.run(rt.engine))
    await asyncio.wait_for(clock.parked.wait(), 10)
    try:
        w.kalshi.state.queue_fault("503", method="GET", path=MARKETS, retry_after="120")
        refused = await next_poll_time(w, clock, 5)
        again = await next_poll_time(w, clock, 200)
        assert 9.0 <= again - refused <= 10.0
        assert market.max_backoff_seconds == 5.0
    finally:
        await stop(rt, task)


# ---- Kalshi: the client, for every request --------------------------------------------------


@dataclass
class Kalshi:
    server: RunningServer
    client: KalshiClient
    clock: ManualClock
    sleeps: RecordedSleeps


@pytest.fixture
async def kalshi(rsa_key: rsa.RSAPrivateKey) -> AsyncIterator[Kalshi]:
    clock = ManualClock(START)
    sleeps = RecordedSleeps()
    async with kalshi_server("key-id", rsa_key.public_key()) as srv:
        srv.state.add_market(HELD, yes_bid="0.40", yes_ask="0.42")
        srv.state.set_book(HELD, yes=[("0.40", "50")])
        client = KalshiClient(
            base_url=srv.base_url,
            signer=KalshiSigner("key-id", rsa_key),
            max_attempts=3,
            read_per_second=1000.0,
            write_per_second=1000.0,
            burst=100,
            sleep=sleeps,
            rng=random.Random(1),
            now=clock.now,
        )
        async with client:
            yield Kalshi(srv, client, clock, sleeps)


async def test_the_client_waits_a_short_retry_after_then_tries_again(kalshi: Kalshi) -> None:
    kalshi.server.state.queue_fault("429", method="GET", path=MARKETS, retry_after="3")
    [m] = await kalshi.client.get_markets()
    assert m.ticker == HELD
    assert kalshi.sleeps.delays and kalshi.sleeps.delays[0] >= 3.0  # backoff alone: ≤ 0.25 s


async def test_during_a_long_retry_after_no_read_is_sent_but_orders_still_are(
    kalshi: Kalshi,
) -> None:
    state, client, clock = kalshi.server.state, kalshi.client, kalshi.clock
    state.queue_fault("503", method="GET", path=MARKETS, retry_after="30")
    with pytest.raises(KalshiUnavailable):
        await client.get_markets()
    assert len(state.requests) == 1  # not retried inside the request: the caller comes back
    clock.advance(20.0)  # 10 s to go: longer than the client waits inside a request
    with pytest.raises(KalshiRateLimited, match=r"not sent.*Retry-After"):
        await client.get_markets()
    assert len(state.requests) == 1 and kalshi.sleeps.delays == []
    # Orders have their own budget at Kalshi: an exit is not held back by market data's limit.
    order = await client.create_order(
        HELD, client_order_id="x-1", side="ask", count=1, price=Decimal("0.40")
    )
    assert order.fill_count == 1 and len(state.order_posts()) == 1
    clock.advance(8.0)  # 2 s to go: waited inside the request, then sent
    assert [m.ticker for m in await client.get_markets()] == [HELD]
    assert kalshi.sleeps.delays == [2.0]


async def test_an_order_refused_with_retry_after_is_not_sent_again_before_it(
    kalshi: Kalshi,
) -> None:
    state, client, clock = kalshi.server.state, kalshi.client, kalshi.clock
    state.queue_fault("429", method="POST", path="/portfolio/events/orders", retry_after="30")

    async def sell() -> object:
        return await client.create_order(
            HELD, client_order_id="x-1", side="ask", count=1, price=Decimal("0.40")
        )

    with pytest.raises(KalshiRateLimited):  # refused, not processed: a plain failure
        await sell()
    clock.advance(10.0)
    with pytest.raises(KalshiRateLimited, match="not sent"):
        await sell()
    assert len(state.order_posts()) == 1 and state.orders == {}
    assert [m.ticker for m in await client.get_markets()] == [HELD]  # reads go on meanwhile
    assert await client.get_positions() == []  # and the positions poll
    clock.advance(20.0)
    order = await sell()
    assert order.fill_count == 1 and len(state.order_posts()) == 2


async def test_a_rate_limited_positions_poll_does_not_hold_back_market_data(
    kalshi: Kalshi,
) -> None:
    state, client = kalshi.server.state, kalshi.client
    state.queue_fault("429", method="GET", path="/portfolio/positions", retry_after="30")
    with pytest.raises(KalshiRateLimited):
        await client.get_positions()
    with pytest.raises(KalshiRateLimited, match="not sent"):
        await client.get_fills()  # the account's reads wait
    assert [m.ticker for m in await client.get_markets()] == [HELD]  # market data does not


async def test_positions_poll_under_retry_after_one_alert_no_false_close(world: World) -> None:
    """Kalshi answers the positions poll 429 with Retry-After 30 s: the account is not asked
    again before then (the polls meanwhile are not sent), one venue alert names Retry-After,
    the trade is not closed as external, quotes keep protecting it, and after 30 s the poll
    sees the account again."""
    w = world
    rt = await w.start()
    alerts: list[Alert] = []
    rt.engine.alerts.listeners.append(
        lambda a: alerts.append(a) if a.kind is AlertKind.DATA_QUALITY else None
    )
    try:
        await step(w, rt, 1.0)
        [t] = rt.engine.trades.values()
        state = w.kalshi.state

        def asked() -> list[float]:
            return [r.at for r in state.requests if r.path == "/portfolio/positions"]

        state.queue_fault("429", method="GET", path="/portfolio/positions", retry_after="30")
        before = len(asked())
        for _ in range(28):
            await step(w, rt, 1.0)
            assert w.clock.now() - rt.engine.quotes[HELD].ts <= 2.0
        assert len(asked()) == before + 1  # the refused poll only: the others were not sent
        assert t.trade_id in rt.engine.trades  # not closed as external
        [venue] = alerts
        assert "Retry-After" in venue.message and "kalshi portfolio" in venue.message
        for _ in range(8):
            await step(w, rt, 1.0)
        assert len(asked()) >= before + 2  # asked again once the 30 s were over
        assert [a.severity for a in alerts] == [Severity.WARNING, Severity.INFO]  # recovered
        assert t.trade_id in rt.engine.trades
    finally:
        await rt.close()


async def test_an_exit_refused_with_retry_after_waits_for_it_then_closes_once(
    world: World,
) -> None:
    """The exit's order is rate limited with Retry-After 10 s: no order reaches Kalshi before
    then, quotes keep flowing meanwhile, then the exit completes exactly once at the venue's
    fill."""
    w = world
    rt = await w.start()
    try:
        await step(w, rt, 1.0)
        [t] = rt.engine.trades.values()
        w.kalshi.state.queue_fault(
            "429", method="POST", path="/portfolio/events/orders", retry_after="10"
        )
        w.book("0.30", "0.32")  # -50 % at the bid: max_loss fires
        refused_at = w.clock.now() + 1.0
        posts_at: list[float] = []
        for _ in range(16):
            await step(w, rt, 1.0)
            # Market data is never held back (a quiet quote is re-sent every 2 s).
            assert w.clock.now() - rt.engine.quotes[HELD].ts <= 2.0
            while len(posts_at) < len(w.kalshi.state.order_posts()):
                posts_at.append(w.clock.now())
            if t.trade_id not in rt.engine.trades:
                break
        assert posts_at[0] == refused_at and len(posts_at) == 2
        # Not before Retry-After: the clock's time between the two, plus what the client waited
        # itself before sending (the last few seconds are waited inside the request, on its
        # `sleep`, which the world records instead of sleeping).
        assert posts_at[1] - posts_at[0] + sum(w.sleeps.delays) >= 10.0
        closed = await rt.store.get_trade(t.trade_id)
        assert closed is not None and closed.state == TradeState.CLOSED
        assert closed.exit_reason == "max_loss"
        executed = [o for o in w.kalshi.state.orders.values() if o["fill_count_fp"] != "0.00"]
        assert [(o["ticker"], o["fill_count_fp"]) for o in executed] == [(HELD, "10.00")]
    finally:
        await rt.close()


# ---- the Kalshi websocket ------------------------------------------------------------------


def test_the_websockets_reconnect_within_the_cap(rsa_key: rsa.RSAPrivateKey) -> None:
    stream = KalshiStream(KalshiSigner("k", rsa_key), rng=random.Random(3))
    assert max(stream._backoff(n) for n in range(1, 40)) <= 2.0  # was up to 30 s
    spot = CoinbaseStream(ManualClock(0.0), _NoSpot(SourceUnavailable), url="ws://x", rng=None)
    assert max(spot.backoff(n) for n in range(1, 40)) <= 2.0


@pytest.mark.parametrize(
    ("retry_after", "waited"),
    [("20", 20.0), ("Fri, 20 Nov 2026 19:33:40 GMT", 20.0), ("7200", 60.0)],
    ids=["seconds", "date", "capped"],
)
async def test_a_busy_kalshi_websocket_handshake_waits_for_retry_after(
    rsa_key: rsa.RSAPrivateKey, retry_after: str, waited: float
) -> None:
    sleeps = RecordedSleeps()
    async with kalshi_ws_server("k", rsa_key.public_key()) as srv:
        srv.state.busy.append((503, retry_after))
        stream = KalshiStream(
            KalshiSigner("k", rsa_key),
            [HELD],
            url=srv.url,
            clock=ManualClock(1_795_203_200.0),  # 2026-11-20T19:33:20Z
            sleep=sleeps,
            rng=random.Random(3),
            proxy=None,
        )
        async with stream:
            while True:
                update = await asyncio.wait_for(anext(stream), 5.0)
                if isinstance(update, Disconnected):
                    break
            await srv.state.next_connection()  # and then it connects
        assert update.retry_in == waited and "Retry-After" in update.reason
        assert sleeps.delays[0] == waited


@pytest.mark.parametrize(("retry_after", "waited"), [("20", 20.0), ("7200", 60.0)])
async def test_a_busy_spot_websocket_handshake_waits_for_retry_after(
    retry_after: str, waited: float
) -> None:
    sleeps = RecordedSleeps()
    ws = CoinbaseWsServer()
    await ws.start()
    failures: list[str] = []
    try:
        ws.busy.append((429, retry_after))
        stream = CoinbaseStream(
            ManualClock(0.0), _NoSpot(SourceUnavailable), url=ws.url, sleep=sleeps, proxy=None
        )
        await stream.start(lambda _t: None, lambda _s, e: failures.append(e.detail))
        await ws.next_connection()
        await stream.aclose()
    finally:
        await ws.close()
    [failure] = failures
    assert "429" in failure and "Retry-After" in failure
    assert sleeps.delays[0] == waited


# ---- spot sources ----------------------------------------------------------------------------


@pytest.fixture
async def venues() -> AsyncIterator[tuple[CoinbaseServer, KrakenServer, DeribitServer]]:
    cb, kr, de = CoinbaseServer(), KrakenServer(), DeribitServer()
    for v in (cb, kr, de):
        await v.start()
    cb.ticker = {"price": "97000.00", "bid": "97000.00", "ask": "97000.02", "time": "x"}
    try:
        yield cb, kr, de  # type: ignore[misc]
    finally:
        for v in (cb, kr, de):
            await v.close()


@pytest.mark.parametrize("form", ["seconds", "date"])
@pytest.mark.parametrize("venue", ["coinbase", "kraken", "deribit"])
async def test_spot_sources_are_not_asked_again_before_retry_after(
    venues: tuple[CoinbaseServer, KrakenServer, DeribitServer], venue: str, form: str
) -> None:
    cb, kr, de = venues
    clock = ManualClock(float(int(T0)))
    server = {"coinbase": cb, "kraken": kr, "deribit": de}[venue]
    client = {
        "coinbase": lambda: CoinbaseSpot(clock, base_url=cb.url, timeout_seconds=0.5),
        "kraken": lambda: KrakenSpot(clock, base_url=kr.url, timeout_seconds=0.5),
        "deribit": lambda: DeribitDvol(clock, base_url=de.url, timeout_seconds=0.5),
    }[venue]()
    server.retry_after = "20" if form == "seconds" else formatdate(clock.now() + 20, usegmt=True)
    server.fail("429" if venue != "deribit" else "503")
    try:
        with pytest.raises(SourceUnavailable, match="Retry-After 20"):
            await client.latest()
        asked = len(server.requests)
        for _ in range(19):
            clock.advance(1.0)
            with pytest.raises(SourceUnavailable, match="not asked"):
                await client.latest()
        assert len(server.requests) == asked  # 19 s: not asked at all
        clock.advance(1.0)
        try:
            await client.latest()
        except SpotSourceError as e:  # asked now (what it answers may not please the parser)
            assert "not asked" not in str(e)
        assert len(server.requests) == asked + 1
    finally:
        await client.aclose()


async def test_a_spot_source_asking_for_hours_is_asked_after_a_minute_with_one_alert(
    tmp_path: Path, venues: tuple[CoinbaseServer, KrakenServer, DeribitServer]
) -> None:
    cb, kr, _ = venues
    h = await Harness(tmp_path).open()
    try:
        await h.start()
        primary = CoinbaseSpot(h.clock, base_url=cb.url, timeout_seconds=0.5)
        fallback = KrakenSpot(h.clock, base_url=kr.url, timeout_seconds=0.5)
        feed = SpotFeed(PrimaryFallback(primary, fallback, h.clock), h.clock)
        cb.retry_after, cb.down = "86400", "429"
        asked: list[float] = []
        for dt in range(0, 70):
            h.at(float(dt))
            n = len(cb.requests)
            await feed.step(h.engine)
            if len(cb.requests) > n:
                asked.append(float(dt))
        assert asked == [0.0, 60.0]  # asked once, then again after the 60 s bound
        key = "source:coinbase Retry-After"
        long = [a for a in h.alerts if a.data.get("source") == key]
        assert len(long) == 1 and "coinbase" in long[0].message and "86400" in long[0].message
        assert "retry_after_max_seconds" in long[0].message
        await primary.aclose()
        await fallback.aclose()
    finally:
        await h.close()


# ---- a fallback switched off on purpose -------------------------------------------------------


async def test_a_disabled_fallback_is_silent(
    tmp_path: Path, venues: tuple[CoinbaseServer, KrakenServer, DeribitServer]
) -> None:
    cb, _, _ = venues
    h = await Harness(tmp_path).open()
    try:
        await h.start()
        primary = CoinbaseSpot(h.clock, base_url=cb.url, timeout_seconds=0.5)
        selector = PrimaryFallback(primary, _NoSpot(SourceUnavailable), h.clock)  # type: ignore[arg-type]
        feed = SpotFeed(selector, h.clock)
        await feed.start(h.engine)
        cb.down = "500"  # the primary fails: no spot source usable
        for dt in range(1, 5):
            h.at(float(dt))
            await feed.step(h.engine)
        cb.down = None
        h.at(5.0)
        await feed.step(h.engine)
        texts = [a.message for a in h.alerts]
        assert any("coinbase" in t for t in texts)  # the primary's failure is alerted
        assert not [t for t in texts if "none" in t.split(":")[0] or "none failing" in t], texts
        assert not any("none" in key for key in h.engine._bad), h.engine._bad  # no failing one
        await primary.aclose()
    finally:
        await h.close()
