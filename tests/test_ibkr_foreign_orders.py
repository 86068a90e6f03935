"""Other clients' working orders on a position the supervisor closes, end to end on the loopback
TWS gateway: a closing order the user placed by hand in TWS (client id 0, order id 0 until
client 0 binds it) is listed by reqAllOpenOrders to every API client, as TWS does. Closing on
top of it would flip the account once both fill; `[venues.ibkr] on_foreign_orders` says what
the supervisor does: "warn" (close at most the position net of it), "hold" (close nothing
while it works), "cancel" (cancel it first, possible from client id 0 only).
"""

from __future__ import annotations

from engine.commands import Command
from engine.models import AlertKind, Severity
from engine.snapshot import TradeRow
from tests.ib_client_guard import decoded_cleanly as decoded_cleanly  # autouse
from tests.ibkr_world import C150, CLIENT_ID, Session, World, oid
from tests.ibkr_world import world as world
from tests.tws_gateway import Fill

SINGLE = oid(150, "C")
POLL = 8.0  # a positions poll (every 5 s) and its answer, at most


def _row(s: Session) -> TradeRow:
    [row] = [r for r in s.engine.snapshot().trades if r.contract_id == SINGLE]
    return row


def _ours(w: World, client_id: int = CLIENT_ID) -> list:  # type: ignore[type-arg]
    return [o for o in w.gw.state.orders if o.client_id == client_id and o.order_id > 0]


def _foreign_alerts(s: Session) -> list[str]:
    return [a.message for a in s.alerts() if "FOREIGN_ORDERS" in a.message or "TWS" in a.message]


async def _fire(s: Session) -> str:
    await s.until(
        lambda: (
            len(s.trades()) == 2
            and all(r.time_value is not None for r in s.engine.snapshot().trades)
        ),
        "both trades adopted and quoted",
    )
    tid = s.trades()[SINGLE].trade_id
    res = await s.engine.command(Command("set_overrides", tid, {"min_time_value": 5.0}))
    assert res.ok
    return tid


async def _ticks(s: Session, seconds: float) -> None:
    t0 = s.engine.clock.now()
    await s.until(lambda: s.engine.clock.now() - t0 >= seconds, f"{seconds}s of ticks")


async def test_a_tws_order_covering_the_position_is_not_doubled_and_its_fill_is_external(
    world: World,
) -> None:
    w = world
    tws = w.gw.state.add_foreign_order(C150, "SELL", 1, 9.80)  # by hand in TWS
    s = await w.start()
    async with w.market.ticking():
        tid = await _fire(s)
        perm = str(tws.perm_id)
        await s.until(
            lambda: any(perm in m and "TWS" in m for m in _foreign_alerts(s)),
            "an alert naming the TWS order",
        )
        await s.until(lambda: _row(s).state == "exit held", "the exit held")
        assert tid not in s.engine.exits  # no exit under way: nothing is counted or retried
        told = len(_foreign_alerts(s))
        await _ticks(s, 1.5)  # the rule fires on every quote, the ladder steps every 0.25 s
        assert _ours(w) == []  # never a second SELL on top of the TWS one
        assert len(_foreign_alerts(s)) == told  # said once, not per tick
        assert not [a for a in s.alerts() if "exit attempt" in a.message]  # no ladder failure
        assert not [a for a in s.alerts() if "LIMIT_REACHED" in a.message]
        row = _row(s)
        assert row.state == "exit held" and row.nearest == "exit held"
        assert row.problem is not None and "FOREIGN_ORDERS" in row.problem and perm in row.problem
        assert s.engine._heartbeat(s.engine.clock.now())["exits_held"].keys() == {tid}
        # the TWS order fills: the position is gone, booked as external; the account is flat
        w.gw.fill_order(tws.order_id, client_id=0, price=9.80)
        await s.until(lambda: tid not in s.engine.trades, "closed as external", timeout=POLL)
    assert _ours(w) == []
    pos = w.gw.state.position_of(C150.con_id)
    assert pos is not None and pos.position == 0
    await s.close()


async def test_a_tws_order_placed_just_before_the_rule_fires_is_found_by_the_close_itself(
    world: World,
) -> None:
    w = world
    s = await w.start()
    async with w.market.ticking():
        await s.until(lambda: len(s.trades()) == 2, "adopted")
        await s.until(lambda: s.engine._last_positions_poll > 0, "the first positions poll")
        tws = w.gw.state.add_foreign_order(C150, "SELL", 1, 9.80)  # between two polls
        tid = await _fire(s)
        await s.until(lambda: _row(s).state == "exit held", "the exit held")
        await _ticks(s, 1.0)
        assert _ours(w) == []
        assert tid not in s.engine.exits and tid in s.engine.trades  # given up, watched again
        # the close's own look found it: one rejection journaled, no ladder failure alerted
        assert not [a for a in s.alerts() if "exit attempt" in a.message]
        assert [a for a in s.alerts() if str(tws.perm_id) in a.message]
    await s.close()


async def test_warn_closes_only_the_position_net_of_the_tws_order(world: World) -> None:
    w = world
    held = w.gw.state.position_of(C150.con_id)
    assert held is not None
    held.position = 3  # +3 SPY 150C; a TWS order sells 1 of them
    tws = w.gw.state.add_foreign_order(C150, "SELL", 1, 9.80)
    s = await w.start()
    async with w.market.ticking():
        tid = await _fire(s)
        await s.until(lambda: _ours(w), "our closing order")
        await s.until(lambda: s.engine.trades[tid].qty == 1, "2 closed, 1 left")
        [order] = _ours(w)
        assert (order.action, order.total_quantity) == ("SELL", 2)
        warned = [a for a in s.alerts() if str(tws.perm_id) in a.message]
        assert warned and warned[0].severity == Severity.WARNING
        assert "at most 2 of 3" in warned[0].message
        await _ticks(s, 1.5)
        assert len(_ours(w)) == 1  # the last one is the TWS order's to close
        w.gw.fill_order(tws.order_id, client_id=0, price=9.80)
        await s.until(lambda: tid not in s.engine.trades, "the rest external", timeout=POLL)
    pos = w.gw.state.position_of(C150.con_id)
    assert pos is not None and pos.position == 0
    await s.close()


async def test_hold_closes_nothing_while_the_tws_order_works_then_closes(world: World) -> None:
    w = world
    tws = w.gw.state.add_foreign_order(C150, "SELL", 1, 12.00)  # far from the market
    s = await w.start(w.config(ibkr={"on_foreign_orders": "hold"}))
    async with w.market.ticking():
        tid = await _fire(s)
        await s.until(
            lambda: [
                a
                for a in s.alerts()
                if a.severity == Severity.CRITICAL and str(tws.perm_id) in a.message
            ],
            "a critical alert naming the TWS order",
        )
        await _ticks(s, 1.0)
        assert _ours(w) == []
        assert _row(s).state == "exit held"
        # the user cancels it in TWS: the exit goes out at the next look
        w.gw.state.queue_outcome(Fill(price=9.40))
        w.gw.cancel_order_by_tws(tws.order_id, client_id=0)
        await s.until(lambda: tid not in s.engine.trades, "closed", timeout=POLL)
    [order] = _ours(w)
    assert order.total_quantity == 1
    closed = [a for a in s.alerts(AlertKind.AUTO_STOP) if a.trade_id == tid]
    assert closed
    await s.close()


async def test_cancel_as_client_0_cancels_the_tws_order_then_closes_in_full(world: World) -> None:
    w = world
    tws = w.gw.state.add_foreign_order(C150, "SELL", 1, 12.00)
    s = await w.start(w.config(ibkr={"on_foreign_orders": "cancel", "client_id": 0}))
    async with w.market.ticking():
        tid = await _fire(s)
        await s.until(lambda: tid not in s.engine.trades, "closed")
    assert tws.order_id < 0  # bound by client 0's reqOpenOrders at connect
    assert tws.status == "Cancelled"
    [order] = _ours(w, client_id=0)
    assert (order.action, order.total_quantity) == ("SELL", 1)
    pos = w.gw.state.position_of(C150.con_id)
    assert pos is not None and pos.position == 0
    await s.close()


async def test_cancel_cannot_cancel_another_api_clients_order_and_says_so(world: World) -> None:
    w = world
    other = w.gw.state.add_foreign_order(C150, "SELL", 1, 12.00, client_id=5, order_id=41)
    s = await w.start(w.config(ibkr={"on_foreign_orders": "cancel"}))
    async with w.market.ticking():
        tid = await _fire(s)
        await s.until(lambda: _row(s).state == "exit held", "held")
        await _ticks(s, 1.0)
        assert _ours(w) == [] and other.status == "Submitted"
        assert tid in s.engine.trades
        [critical] = [
            a
            for a in s.alerts()
            if a.severity == Severity.CRITICAL and str(other.perm_id) in a.message
        ]
        assert "API client 5" in critical.message and "may not cancel" in critical.message
    await s.close()


# ---- the arithmetic: what another order would close, what may still be sent ------------------


def _trade(contract: object, action: str, qty: float, filled: float = 0.0) -> object:
    from engine.venues.ibkr.ib import LimitOrder, Trade, ib_lib

    order = LimitOrder(action, qty, 1.0)
    return Trade(contract, order, ib_lib.OrderStatus(status="Submitted", filled=filled))


def test_the_position_net_of_other_orders_never_flips_a_leg() -> None:
    from engine.venues.ibkr.ib import ComboLeg
    from engine.venues.ibkr.ib import Contract as IbContract
    from engine.venues.ibkr.venue import _closing_qty, _net_allowed

    c160, c165 = IbContract(conId=160, secType="OPT"), IbContract(conId=165, secType="OPT")
    # +2 160C / -2 165C held as 2 units of a spread
    legs = [(160, 2.0, 1.0), (165, -2.0, 1.0)]
    assert _net_allowed(2, legs, []) == 2
    # a SELL of the long leg closes it; a BUY of it would add (not counted)
    assert _closing_qty(_trade(c160, "SELL", 1), 160, 2.0) == 1  # type: ignore[arg-type]
    assert _closing_qty(_trade(c160, "BUY", 1), 160, 2.0) == 0  # type: ignore[arg-type]
    assert _net_allowed(2, legs, [_trade(c160, "SELL", 1)]) == 1  # type: ignore[list-item]
    # a BUY of the short leg, partly filled already: 1 of 2 left working
    assert _net_allowed(2, legs, [_trade(c165, "BUY", 2, filled=1)]) == 1  # type: ignore[list-item]
    # a BAG sold (the spread closed by someone else): each leg reversed, times its ratio
    bag = IbContract(
        secType="BAG",
        comboLegs=[
            ComboLeg(conId=160, ratio=1, action="BUY"),
            ComboLeg(conId=165, ratio=1, action="SELL"),
        ],
    )
    sold = _trade(bag, "SELL", 2)
    assert _closing_qty(sold, 160, 2.0) == 2 and _closing_qty(sold, 165, -2.0) == 2  # type: ignore[arg-type]
    assert _net_allowed(2, legs, [sold]) == 0  # type: ignore[list-item]
    assert _net_allowed(2, legs, [_trade(bag, "BUY", 2)]) == 2  # type: ignore[list-item]
    # more working than held: nothing, never negative
    assert _net_allowed(1, [(150, 1.0, 1.0)], [_trade(c160, "SELL", 5)]) == 1  # type: ignore[list-item]
    c150 = IbContract(conId=150, secType="OPT")
    assert _net_allowed(1, [(150, 1.0, 1.0)], [_trade(c150, "SELL", 5)]) == 0  # type: ignore[list-item]
