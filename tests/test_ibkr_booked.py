"""The venue's numbers are the booked numbers, at IBKR (issue 15, item 4).

A table over what is held × the path of the exit order. Held: a debit spread (+2 SPY 160C
bought at 3.20, −2 SPY 165C sold at 1.20, config group "v-1": long 2 at 2.00) and a long single
(+2 SPY 150C at 9.00), each sold; a credit spread (the same legs the other way round: defined
inverted and held short 2 at 2.00) and a short single (−2 SPY 150C sold at 9.00), each bought
back. Each exit is made by max_loss, through `build_runtime` and the REAL ib_async client
against the loopback TWS gateway, on three paths: answered (filled at once), partial then
cancelled (the first order fills 1, its rest is cancelled after
attempt_timeout_seconds, the next attempt fills the rest), and found after a restart (the order
rests, the engine dies, it fills at TWS meanwhile, the next engine reconciles it).

The journal's exit price, fees and realised P&L are compared with the gateway's executions for
the exit's orders (a combo: its BAG executions' price per unit, its legs' commissions).
"""

from __future__ import annotations

import pytest

from engine.models import TradeState
from tests.ib_client_guard import decoded_cleanly as decoded_cleanly  # autouse
from tests.ibkr_world import C150, C160, C165, CLIENT_ID, SPREAD, Session, World, oid
from tests.ibkr_world import world as world
from tests.tws_gateway import Fill, GwContract, Rest

SINGLE = oid(150, "C")


def account(w: World, short: bool) -> None:
    """Long: +2 160C at 3.20 / −2 165C at 1.20 (a debit spread, long 2 at 2.00) and +2 150C at
    9.00. Short: the same legs the other way round (a credit spread, short 2 at 2.00) and −2
    150C at 9.00."""
    sign = -1 if short else 1
    st = w.gw.state
    st.positions.clear()
    st.add_position(C160, 2 * sign, 320.0, market_price=3.10)
    st.add_position(C165, -2 * sign, 120.0, market_price=1.10)
    st.add_position(C150, 2 * sign, 900.0, market_price=9.50)


async def quoted(s: Session, w: World, c: GwContract, bid: float, ask: float) -> None:
    w.market.set(c, bid, ask)
    w.market.push([c.con_id])
    cid = oid(c.strike, c.right)
    await s.until(
        lambda: (q := s.engine.quotes.get(cid)) is not None and (q.bid, q.ask) == (bid, ask),
        f"{cid} quoted {bid}/{ask}",
    )


def venue_executions(w: World, coid: str, combo: bool) -> tuple[float, float, float]:
    """(units, average price per unit, commissions) of the exit's orders at TWS."""
    mine = [
        e
        for e in w.gw.state.executions
        if e.order_ref == coid or e.order_ref.startswith(coid + "-")
    ]
    top = [e for e in mine if (e.contract.sec_type == "BAG") == combo]
    units = sum(e.shares for e in top)
    price = sum(e.shares * e.price for e in top) / units
    charged = [e for e in mine if e.contract.sec_type != "BAG"]
    return units, price, sum(e.commission for e in charged)


# What makes max_loss fire (the quote moved) and the prices the exit's first and second
# attempts fill at: the ladder starts at the bid (a sell) or the ask (a buy back) and moves one
# price_increment (0.05) per attempt; a combo's legs fill at their own bid / ask.
CASES = {
    # the spread's bid 2.10 − 1.20 = 0.90: −55 %
    "long_combo": ((C160, 2.10, 2.30), (0.90, 0.85), lambda d: {C160.con_id: 2.10 - d}),
    # the 150C's bid 4.30: −52 %
    "long_single": ((C150, 4.30, 4.50), (4.30, 4.25), None),
    # the spread's ask 4.70 − 1.00 = 3.70: −85 %
    "short_combo": ((C160, 4.50, 4.70), (3.70, 3.75), lambda d: {C160.con_id: 4.70 + d}),
    # the 150C's ask 13.60: −51 %
    "short_single": ((C150, 13.40, 13.60), (13.60, 13.65), None),
}


@pytest.mark.parametrize("path", ["answered", "partial_then_cancelled", "restart"])
@pytest.mark.parametrize("held", list(CASES))
async def test_an_exit_is_booked_at_what_tws_filled_it(world: World, held: str, path: str) -> None:
    w = world
    short = held.startswith("short")
    combo = held.endswith("combo")
    account(w, short)
    (moved, bid, ask), (first, _), leg_of = CASES[held]
    other = C165.con_id

    def legs(step: int) -> dict[int, float] | None:
        if leg_of is None:
            return None
        return {**leg_of(0.05 * step), other: 1.20 if not short else 1.00}

    cid = SPREAD if combo else SINGLE
    config = w.config(
        criteria={"min_time_value": None, "max_loss_percent": 40},
        ibkr={"attempt_timeout_seconds": 2.0 if path == "restart" else 0.25},
    )
    s = await w.start(config)
    t = await s.until(lambda: s.trades().get(cid), f"{cid} adopted")
    entry = 2.00 if combo else 9.00
    assert (t.side, t.qty) == ("short" if short else "long", 2.0)
    assert t.entry_price == pytest.approx(entry)
    await s.until(lambda: s.engine.quotes.get(cid) is not None, f"{cid} quoted")

    if path == "answered":
        w.gw.state.queue_outcome(Fill(commission=2.0, leg_prices=legs(0)))
    elif path == "partial_then_cancelled":
        w.gw.state.queue_outcome(
            Fill(quantity=1, commission=2.0, leg_prices=legs(0)),
            Fill(commission=1.5, leg_prices=legs(1)),
        )
    else:
        w.gw.state.queue_outcome(Rest())
    await quoted(s, w, moved, bid, ask)
    if path == "restart":
        order = await w.gw.wait_for_order(1)
        await w.gw.wait_until(lambda: order.status == "Submitted")
        await s.die()  # the order works on at TWS and fills while no engine runs
        w.gw.fill_order(order.order_id, client_id=CLIENT_ID, commission=2.0, leg_prices=legs(0))
        s = await w.start(config)
    await s.until(lambda: t.trade_id not in s.engine.trades, f"{cid} closed")

    closed = await s.rt.store.get_trade(t.trade_id)
    assert closed is not None and closed.state == TradeState.CLOSED
    assert closed.exit_reason == "max_loss"
    [intent] = await s.rt.store.intents_for_trade(t.trade_id)
    units, price, fees = venue_executions(w, intent["intent_id"], combo)
    assert units == 2
    action = "BUY" if short else "SELL"
    assert [o.action for o in w.gw.state.orders] == [action] * len(w.gw.state.orders)
    assert closed.exit_price == pytest.approx(price)
    assert closed.fees == pytest.approx(fees)
    sign = -1 if short else 1
    assert closed.realized_pnl == pytest.approx(sign * units * (price - entry) * 100 - fees)
    if path != "partial_then_cancelled":  # all at the first attempt's price, 2 of commission
        assert closed.realized_pnl == pytest.approx(sign * 2 * (first - entry) * 100 - 2.0)
    flat, kept = ((C160, C165), (C150,)) if combo else ((C150,), (C160, C165))
    assert all(w.gw.state.position_of(c.con_id).position == 0 for c in flat)  # type: ignore[union-attr]
    assert all(w.gw.state.position_of(c.con_id).position != 0 for c in kept)  # type: ignore[union-attr]
    await s.close()
