"""The venue's numbers are the booked numbers (issue 15, item 4).

A table over the held side × the path an exit order takes, through the real session wiring
(`build_runtime`, the real `KalshiClient` / `KalshiVenue`) against the loopback Kalshi server.
For every cell the journal's exit price, fees and realised P&L are compared with what the
venue's own fills say (`server.state.fills` for the exit's orders, each fill's price of the
held side), never with a number the test computes from its own set-up.

Paths: answered; timed out (outcome unknown, looked up at the next attempt; or, with more than
one attempt, the client's retry meets a 409 and finds the order); cut off (the connection
dropped mid-answer, looked up; or the retry meets the 409); found after a restart (the engine
stops while the outcome is unknown; the next engine reconciles it); partial then cancelled (an
IOC fills part, the rest is cancelled, the ladder's later attempts fill the rest; also with
that first answer cut off and the order found after the 409); fills not listed yet (409 then
find, with the venue's fills lagging its order: the order's own fill cost).

The account holds 10 contracts bought at 0.50 (YES, or NO) and the book falls to 0.25 on the
held side; Kalshi charges 0.014 a contract. Booked as the venue filled it, that is
10 × (0.25 − 0.50) − 0.14 = −2.64; the defect booked selling YES at the order's NO fill cost
0.75: +2.36 (+47 %).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from engine.models import TradeState
from engine.runtime import Runtime, build_runtime
from engine.venues.base import OrderRequest, OrderResult
from tests.engine_harness import standard
from tests.kalshi_world import HELD, World, step
from tests.kalshi_world import world as world  # the fixture

FEE = Decimal("0.014")


def hold(w: World, side: str) -> None:
    """The account holds 10 `side` bought at 0.50 (its one fill says so)."""
    s = w.kalshi.state
    s.fills.clear()
    s.set_position(HELD, "10.00" if side == "yes" else "-10.00", exposure="5.0000")
    s.add_fill(
        ticker=HELD,
        outcome_side=side,
        book_side="bid" if side == "yes" else "ask",
        count_fp="10.00",
        yes_price_dollars="0.5000",
        no_price_dollars="0.5000",
        fee_cost="0.0000",
    )
    s.fee_per_contract = FEE
    w.book("0.50", "0.52") if side == "yes" else quote_yes(w, "0.48", "0.50")


def quote_yes(w: World, bid: str, ask: str) -> None:
    m = w.kalshi.state.markets[HELD]
    m["yes_bid_dollars"], m["yes_ask_dollars"] = f"{bid}00", f"{ask}00"
    m["no_bid_dollars"] = f"{1 - float(ask):.4f}"
    m["no_ask_dollars"] = f"{1 - float(bid):.4f}"


def fall(w: World, side: str, levels: list[tuple[str, str]]) -> None:
    """The held side's bid falls to the first of `levels` ((held price, size)), which are also
    the resting bids an exit can sell into."""
    top = levels[0][0]
    s = w.kalshi.state
    if side == "yes":
        quote_yes(w, top, f"{float(top) + 0.02:.2f}")
        s.set_book(HELD, yes=levels)
    else:  # NO bid p is YES ask 1 − p; closing NO buys YES from the NO bids
        quote_yes(w, f"{1 - float(top) - 0.02:.2f}", f"{1 - float(top):.2f}")
        s.set_book(HELD, no=levels)


def venue_fills(w: World, intent_id: str, side: str) -> tuple[Decimal, Decimal, Decimal]:
    """(count, average price of the held side, fees) of the exit's fills at the venue."""
    orders = {
        o["order_id"]
        for o in w.kalshi.state.orders.values()
        if o["client_order_id"] == intent_id or o["client_order_id"].startswith(intent_id + "-")
    }
    fills = [f for f in w.kalshi.state.fills if f["order_id"] in orders]
    count = sum((Decimal(f["count_fp"]) for f in fills), Decimal(0))
    key = "yes_price_dollars" if side == "yes" else "no_price_dollars"
    value = sum((Decimal(f["count_fp"]) * Decimal(f[key]) for f in fills), Decimal(0))
    fees = sum((Decimal(f["fee_cost"]) for f in fills), Decimal(0))
    assert count > 0
    return count, value / count, fees


async def drive(w: World, rt: Runtime, seconds: float = 1.0) -> None:
    await step(w, rt, seconds)
    await rt.engine.drain_exits(timeout=5.0)


PATHS = [
    "answered",
    "timed_out",
    "timed_out_then_409",
    "cut_off",
    "cut_off_then_409",
    "restart",
    "partial_then_cancelled",
    "partial_cut_off_then_409",
    "fills_not_listed",
]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("side", ["yes", "no"])
async def test_the_booked_exit_is_what_the_venue_filled(world: World, side: str, path: str) -> None:
    w = world
    hold(w, side)
    kalshi: dict[str, Any] = {}
    auto: dict[str, Any] = {}
    if path.endswith("409") or path == "fills_not_listed":
        kalshi["max_attempts"] = 2  # the client retries the same id and meets the 409
    if path.startswith("timed_out"):
        kalshi["timeout_seconds"] = 0.2
    if path.startswith("partial"):
        auto = {"ladder_tick": 0.01, "ladder_step_seconds": 2.0, "ladder_max_attempts": 5}
    config = w.config(kalshi=kalshi, **auto)
    rt = await build_runtime(config, None, clock=w.clock)
    try:
        [t] = rt.engine.trades.values()
        assert (t.side, t.qty, t.entry_price) == (side, 10.0, pytest.approx(0.50))
        await drive(w, rt)
        assert w.kalshi.state.order_posts() == []

        post = {"method": "POST", "path": "/portfolio/events/orders"}
        if path.startswith("timed_out"):
            w.kalshi.state.queue_fault("delay", seconds=0.6, **post)
        elif path in (
            "cut_off",
            "cut_off_then_409",
            "restart",
            "fills_not_listed",
            "partial_cut_off_then_409",
        ):
            w.kalshi.state.queue_fault("cutoff", **post)
        if path == "fills_not_listed":
            w.kalshi.state.fills_listed = False
        if path.startswith("partial"):
            fall(w, side, [("0.25", "4"), ("0.22", "50")])  # 4 at the limit, the rest lower
        else:
            fall(w, side, [("0.25", "50")])
        await drive(w, rt)  # max_loss fires: −50 %
        [intent] = await rt.store.intents_for_trade(t.trade_id)
        iid = intent["intent_id"]
        if path == "restart":
            await rt.close()  # the engine stops while the order's outcome is unknown
            rt = await build_runtime(config, None, clock=w.clock)
        for _ in range(6):
            if (await rt.store.get_trade(t.trade_id)).state == TradeState.CLOSED:  # type: ignore[union-attr]
                break
            await drive(w, rt, 2.0)

        closed = await rt.store.get_trade(t.trade_id)
        assert closed is not None and closed.state == TradeState.CLOSED
        assert closed.exit_reason == "max_loss"
        count, price, fees = venue_fills(w, iid, side)
        assert count == 10
        assert closed.exit_price == pytest.approx(float(price), abs=1e-9)
        assert closed.fees == pytest.approx(float(fees), abs=1e-9)
        pnl = count * (price - Decimal("0.50")) - fees
        assert closed.realized_pnl == pytest.approx(float(pnl), abs=1e-9)
        if not path.startswith("partial"):
            assert closed.realized_pnl == pytest.approx(-2.64)  # 10 × (0.25 − 0.50) − 0.14
        assert w.kalshi.state.positions[HELD]["position_fp"] == "0.00"
        # No order was sent twice: every client order id reached the venue once.
        coids = [o["client_order_id"] for o in w.kalshi.state.orders.values()]
        assert len(coids) == len(set(coids))
    finally:
        await rt.close()


async def test_a_fill_without_a_price_books_nothing_and_is_looked_up_until_it_has_one(
    tmp_path: Any,
) -> None:
    """A venue answer that says the order filled but gives no price (IB: executions not in
    yet, no average in the order status) is never booked at a guess, and no second order is
    sent for the position it already closed: the order is 'unknown' until a lookup prices it."""
    h = await standard(tmp_path)
    lookups: list[str] = []
    real_submit, real_lookup = h.venue.submit, h.venue.lookup

    async def no_price(req: OrderRequest) -> OrderResult:
        res = await real_submit(req)  # the paper venue fills it (at its bid)
        return OrderResult(req.client_order_id, res.status, res.filled_qty, None, res.fees, "v1")

    async def priced_later(coid: str) -> OrderResult | None:
        """The first lookup still has no price; the second has the venue's."""
        lookups.append(coid)
        res = await real_lookup(coid)
        if res is None or len(lookups) > 1:
            return res
        return OrderResult(coid, res.status, res.filled_qty, None, res.fees, "v1")

    h.venue.submit = no_price  # type: ignore[method-assign]
    h.venue.lookup = priced_later  # type: ignore[method-assign]
    await h.quote(0.30, 0.32)  # max_loss fires; the venue fills 10 at 0.30, says no price
    [intent] = await h.store.intents_for_trade("t1")
    coid = intent["intent_id"]
    assert h.engine.trades["t1"].state == TradeState.CLOSING
    assert await h.store.fills_for_trade("t1") == []
    order = await h.store.get_order(coid)
    assert order["status"] == "unknown" and "no fill price" in order["reason"]
    [warn] = [a for a in h.of_kind("execution_failure") if coid in a.message]
    assert "nothing booked" in warn.message
    for i in range(1, 6):
        await h.quote(0.30, 0.32, ts=h.at(2.0 * i))
        await h.tick()
        if "t1" not in h.engine.trades:
            break
    assert len(h.venue.submitted) == 1  # the position was gone: nothing sent again
    assert lookups[:2] == [coid, coid]
    t = await h.store.get_trade("t1")
    assert t.state == TradeState.CLOSED and t.exit_price == pytest.approx(0.30)
    assert t.realized_pnl == pytest.approx(10 * (0.30 - 0.50))
    assert [(f["qty"], f["price"]) for f in await h.store.fills_for_trade("t1")] == [
        (10, pytest.approx(0.30))
    ]
    await h.close()
