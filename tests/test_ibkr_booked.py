"""The venue's numbers are the booked numbers, at IBKR (issue 15, item 4): the short side.

The long side (a debit spread sold, a single option sold) is booked in tests/test_ibkr_session.py;
here the account is short: a credit spread (−2 SPY 160C sold at 3.20, +2 SPY 165C bought at
1.20, config group "v-1": defined inverted and held short 2 at 2.00) and a short single
(−2 SPY 150C sold at 9.00). Each is bought back by max_loss, through `build_runtime` and the
REAL ib_async client against the loopback TWS gateway, on three paths: answered (filled at
once), partial then cancelled (the first order fills 1, its rest is cancelled after
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


def short_account(w: World) -> None:
    st = w.gw.state
    st.positions.clear()
    st.add_position(C160, -2, 320.0, market_price=3.10)
    st.add_position(C165, 2, 120.0, market_price=1.10)
    st.add_position(C150, -2, 900.0, market_price=9.50)


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


@pytest.mark.parametrize("path", ["answered", "partial_then_cancelled", "restart"])
@pytest.mark.parametrize("held", ["short_combo", "short_single"])
async def test_a_short_is_booked_at_what_tws_filled_it(world: World, held: str, path: str) -> None:
    w = world
    short_account(w)
    combo = held == "short_combo"
    cid = SPREAD if combo else SINGLE
    config = w.config(
        criteria={"min_time_value": None, "max_loss_percent": 40},
        ibkr={"attempt_timeout_seconds": 2.0 if path == "restart" else 0.25},
    )
    s = await w.start(config)
    t = await s.until(lambda: s.trades().get(cid), f"{cid} adopted")
    assert (t.side, t.qty, t.entry_price) == ("short", 2.0, pytest.approx(2.00 if combo else 9.00))
    await s.until(lambda: s.engine.quotes.get(cid) is not None, f"{cid} quoted")

    # Bought back at the ask, one price_increment higher per attempt: 3.70, 3.75 (the combo:
    # 160C at its ask, 165C at its bid) or 13.60, 13.65.
    def legs(up: float) -> dict[int, float]:
        return {C160.con_id: 4.70 + up, C165.con_id: 1.00}

    if path == "answered":
        w.gw.state.queue_outcome(Fill(commission=2.0, leg_prices=legs(0) if combo else None))
    elif path == "partial_then_cancelled":
        w.gw.state.queue_outcome(
            Fill(quantity=1, commission=2.0, leg_prices=legs(0) if combo else None),
            Fill(commission=1.5, leg_prices=legs(0.05) if combo else None),
        )
    else:
        w.gw.state.queue_outcome(Rest())
    if combo:
        await quoted(s, w, C160, 4.50, 4.70)  # the spread's ask 4.70 − 1.00 = 3.70: −85 %
    else:
        await quoted(s, w, C150, 13.40, 13.60)  # −51 %
    if path == "restart":
        order = await w.gw.wait_for_order(1)
        await w.gw.wait_until(lambda: order.status == "Submitted")
        await s.die()  # the order works on at TWS and fills while no engine runs
        w.gw.fill_order(
            order.order_id,
            client_id=CLIENT_ID,
            commission=2.0,
            leg_prices=legs(0) if combo else None,
        )
        s = await w.start(config)
    await s.until(lambda: t.trade_id not in s.engine.trades, f"{cid} closed")

    closed = await s.rt.store.get_trade(t.trade_id)
    assert closed is not None and closed.state == TradeState.CLOSED
    assert closed.exit_reason == "max_loss"
    [intent] = await s.rt.store.intents_for_trade(t.trade_id)
    units, price, fees = venue_executions(w, intent["intent_id"], combo)
    assert units == 2
    assert [o.action for o in w.gw.state.orders] == ["BUY"] * len(w.gw.state.orders)
    assert closed.exit_price == pytest.approx(price)
    assert closed.fees == pytest.approx(fees)
    entry = 2.00 if combo else 9.00
    assert closed.realized_pnl == pytest.approx(-units * (price - entry) * 100 - fees)
    if path != "partial_then_cancelled":  # bought back at 3.70 / 13.60, 2 commission
        assert closed.realized_pnl == pytest.approx(
            -2 * ((3.70 - 2.00) if combo else (13.60 - 9.00)) * 100 - 2.0
        )
    flat, kept = ((C160, C165), (C150,)) if combo else ((C150,), (C160, C165))
    assert all(w.gw.state.position_of(c.con_id).position == 0 for c in flat)  # type: ignore[union-attr]
    assert all(w.gw.state.position_of(c.con_id).position != 0 for c in kept)  # type: ignore[union-attr]
    await s.close()
