"""One slow order never freezes the other trades (issue 15, "isolation"), over loopback Kalshi.

Reported: while one Kalshi exit order waited 12 s for its answer, the quote poll waited with it:
no market data for 11 s, every other trade's stop suspended. Here Kalshi holds the answer to the
first exit order for as long as the test wants; meanwhile the quote poll goes on, the second
trade's stop fires and its order goes out, and both exits complete exactly once.
"""

from __future__ import annotations

import asyncio

from engine.models import TradeState
from tests.kalshi_world import EVENT, HELD, World, step
from tests.kalshi_world import world as world  # the fixture

OTHER = f"{EVENT}-T96500"
ORDERS = "/portfolio/events/orders"


def book(w: World, ticker: str, bid: str, ask: str) -> None:
    m = w.kalshi.state.markets[ticker]
    m["yes_bid_dollars"], m["yes_ask_dollars"] = f"{bid}00", f"{ask}00"
    m["no_bid_dollars"] = f"{1 - float(ask):.4f}"
    m["no_ask_dollars"] = f"{1 - float(bid):.4f}"
    w.kalshi.state.set_book(ticker, yes=[(bid, "50")])


async def posts_reach(w: World, n: int) -> None:
    async with asyncio.timeout(10):  # a bound for loopback I/O, not a timing
        while len(w.kalshi.state.order_posts()) < n:
            await asyncio.sleep(0.005)


async def test_a_held_exit_order_does_not_hold_quotes_or_the_next_trades_exit(world: World):
    w = world
    s = w.kalshi.state
    s.set_position(OTHER, "10.00", exposure="6.0000")
    s.add_fill(
        ticker=OTHER,
        outcome_side="yes",
        book_side="bid",
        count_fp="10.00",
        yes_price_dollars="0.6000",
        no_price_dollars="0.4000",
    )
    book(w, OTHER, "0.58", "0.60")
    # A long client timeout, as a trader's default would be: the held answer is waited for.
    rt = await w.start(w.config(kalshi={"timeout_seconds": 60.0}))
    try:
        await step(w, rt)
        by_contract = {t.contract_id: t for t in rt.engine.trades.values()}
        assert set(by_contract) == {HELD, OTHER}
        first, second = by_contract[HELD], by_contract[OTHER]

        release = asyncio.Event()
        s.queue_fault("delay", method="POST", path=ORDERS, times=1, release=release)
        w.book("0.30", "0.32")  # HELD at −50 %: max_loss fires, its order is held by Kalshi
        await step(w, rt, drain=False)
        await posts_reach(w, 1)
        assert rt.engine.trades[first.trade_id].state == TradeState.CLOSING

        # While that answer is held, the market goes on: quotes keep arriving and evaluating.
        for _ in range(3):
            await step(w, rt, drain=False)
        q = rt.engine.quotes[OTHER]
        assert w.clock.now() - q.ts <= 1.5
        assert rt.engine.snapshot().unprotected == ()
        book(w, OTHER, "0.30", "0.32")  # now the second trade's stop fires
        await step(w, rt, drain=False)
        await posts_reach(w, 2)
        await rt.engine.drain_exits(timeout=0.5)
        assert second.trade_id not in rt.engine.trades  # closed while the first still waits
        assert first.trade_id in rt.engine.trades

        release.set()
        await rt.engine.drain_exits()
        for _ in range(3):
            await step(w, rt)
        assert rt.engine.trades == {}
        tickers = [p.body["ticker"] for p in s.order_posts()]
        assert sorted(tickers) == sorted([HELD, OTHER])  # one order each, never twice
    finally:
        release.set()
        await rt.close()
