"""Held Kalshi markets outside the current event: the feed follows them.

A trader can hold a position in a later event than the one closing next, or in an event that
closed while the engine was stopped. Without the feed following those markets, the position is
adopted with "no contract details" and no quotes (unprotected), and once Kalshi pays it out it is
closed as external at no price instead of settled at its payout.

Same loopback server and fixtures as tests/test_kalshi_feed.py (times there).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from engine.clock import ManualClock
from engine.models import Contract, ContractEvent, OpenEvent, QuoteEvent, SettleEvent, TradeState
from tests import test_kalshi_feed as feed_tests
from tests.engine_harness import Harness
from tests.kalshi_server import RunningServer
from tests.test_kalshi_feed import (
    ABOVE,
    CLOSE_16,
    CLOSE_17,
    CLOSE_18,
    EV16,
    EV18,
    NEXT,
    START,
    Recorder,
    of,
)

# The same loopback server and feed factory (pytest fixtures, found by these names).
server = feed_tests.server
make_feed = feed_tests.make_feed

OLD = f"{EV16}-T96000"  # closed at 16:00, before the engine (re)started at 16:30
OTHER = "KXBTC-26NOV2116-B97500"  # another series' range market, closing 16:45


class Holder(Recorder):
    """The engine as the feed sees it, holding some contracts."""

    def __init__(self, *held: str) -> None:
        super().__init__()
        self.held = set(held)

    def held_contract_ids(self) -> set[str]:
        return set(self.held)


def _market_gets(server: RunningServer, since: int) -> list[str]:
    return [r.path for r in server.state.requests[since:] if r.path.startswith("/markets/")]


async def test_a_position_in_a_later_event_is_announced_and_quoted(
    make_feed: Callable[..., Any], server: RunningServer
) -> None:
    feed, clock = make_feed(refresh_seconds=5.0)
    engine = Holder(ABOVE, NEXT)
    server.state.markets[NEXT].update(yes_bid_dollars="0.3300", yes_ask_dollars="0.3500")
    await feed.poll_once(engine)
    got = engine.take()
    contracts = {e.contract.id: e.contract for e in of(got, ContractEvent)}
    assert contracts[NEXT] == Contract(
        NEXT, "BTC-USD", "binary_above", 97000.0, CLOSE_18, event_id=EV18
    )
    quotes = {e.quote.id: e.quote for e in of(got, QuoteEvent)}
    assert (quotes[NEXT].bid, quotes[NEXT].ask) == (0.33, 0.35)

    # Followed from now on: a changed price is handed over; the market is looked up only once.
    before = len(server.state.requests)
    server.state.markets[NEXT]["yes_bid_dollars"] = "0.2900"
    clock.advance(1.0)
    await feed.poll_once(engine)
    assert [e.quote.bid for e in of(engine.take(), QuoteEvent)] == [0.29]
    assert _market_gets(server, before) == []

    # No longer held: no longer quoted.
    engine.held = {ABOVE}
    server.state.markets[NEXT]["yes_bid_dollars"] = "0.2000"
    clock.advance(1.0)
    await feed.poll_once(engine)
    assert NEXT not in {e.quote.id for e in of(engine.take(), QuoteEvent)}
    assert feed.held == {}


async def test_the_later_event_becomes_the_ladder_without_a_second_follower(
    make_feed: Callable[..., Any], server: RunningServer
) -> None:
    feed, clock = make_feed()
    engine = Holder(NEXT)
    await feed.poll_once(engine)
    engine.take()
    clock.set(CLOSE_17)
    await feed.poll_once(engine)
    assert feed.current is not None and feed.current.ticker == EV18
    assert feed.held == {}
    assert [e.quote.id for e in of(engine.take(), QuoteEvent)].count(NEXT) == 1
    clock.advance(1.0)
    server.state.markets[NEXT]["yes_bid_dollars"] = "0.2500"
    await feed.poll_once(engine)
    assert [e.quote.bid for e in of(engine.take(), QuoteEvent) if e.quote.id == NEXT] == [0.25]


async def test_a_position_in_an_event_that_closed_meanwhile_is_settled(
    make_feed: Callable[..., Any], server: RunningServer
) -> None:
    feed, clock = make_feed()
    engine = Holder(OLD)
    server.state.markets[OLD].update(status="closed")
    await feed.poll_once(engine)
    got = engine.take()
    assert [e.contract.close_ts for e in of(got, ContractEvent) if e.contract.id == OLD] == [
        CLOSE_16
    ]
    assert of(got, SettleEvent) == []
    assert OLD not in {e.quote.id for e in of(got, QuoteEvent)}  # closed: not quoted
    assert set(feed.closed) == {EV16}

    server.state.markets[OLD].update(status="finalized", result="no")
    clock.advance(1.0)
    await feed.poll_once(engine)
    assert [(s.contract_id, s.value) for s in of(engine.take(), SettleEvent)] == [(OLD, 0.0)]
    assert feed.closed == {}
    clock.advance(1.0)
    await feed.poll_once(engine)  # still held by the engine until it books the settlement
    assert of(engine.take(), SettleEvent) == []


async def test_another_series_keeps_its_own_underlying(
    make_feed: Callable[..., Any], server: RunningServer
) -> None:
    feed, _ = make_feed()
    engine = Holder(OTHER)
    server.state.markets[OTHER].update(status="determined", result="yes")
    await feed.poll_once(engine)
    got = engine.take()
    [contract] = [e.contract for e in of(got, ContractEvent) if e.contract.id == OTHER]
    assert contract.underlying == "KXBTC"  # not BTC-USD: the BTC spot rules stay off it
    assert [(s.contract_id, s.value) for s in of(got, SettleEvent)] == [(OTHER, 1.0)]


async def test_a_ticker_kalshi_does_not_know_is_asked_again_only_after_a_minute(
    make_feed: Callable[..., Any], server: RunningServer
) -> None:
    feed, clock = make_feed()
    engine = Holder("KXBTCD-26NOV2117-T1")
    before = len(server.state.requests)
    for _ in range(5):
        await feed.poll_once(engine)
        clock.advance(1.0)
    assert _market_gets(server, before) == ["/markets/KXBTCD-26NOV2117-T1"]
    assert feed.failures == 0  # not a failed poll: the engine's data guard speaks for it
    clock.advance(60.0)
    await feed.poll_once(engine)
    assert len(_market_gets(server, before)) == 2


async def test_engine_settles_a_trade_whose_event_closed_while_it_was_stopped(
    make_feed: Callable[..., Any], server: RunningServer, tmp_path: Any
) -> None:
    h = Harness(tmp_path)
    h.clock = ManualClock(START)
    await h.open()
    try:
        feed, _ = make_feed(clock=h.clock)
        await h.engine.start()
        await h.engine.handle(OpenEvent(START, "old", OLD, "yes", 10, 0.50))
        await h.engine.handle(OpenEvent(START, "next", NEXT, "no", 4, 0.60))
        server.state.markets[OLD].update(status="determined", result="yes")
        await feed.poll_once(h.engine)
        old = await h.store.get_trade("old")
        assert (old.state, old.exit_reason, old.exit_price) == (TradeState.CLOSED, "settled", 1.0)
        assert NEXT in h.engine.contracts and NEXT in h.engine.quotes
        row = {r.trade_id: r for r in h.engine.snapshot().trades}["next"]
        assert row.problem is None and row.mark is not None
    finally:
        await h.close()
