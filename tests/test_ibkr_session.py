"""An IBKR session end to end: `build_runtime` with `engine.venue = "ibkr"` against the loopback
TWS gateway (tests/tws_gateway.py) on 127.0.0.1, with the REAL ib_async client; nothing in the
adapter or the engine is patched. The world (tests/ibkr_world.py): a bull call spread grouped by
config (+2 SPY 160C / −2 SPY 165C, long 2 at 2.00) and a single SPY 150C; `min_time_value` 1.00.

The engine runs as in production (`engine.run(feeds)` in a task, the real clock); each test
waits for conditions with deadlines, never for a fixed time.
"""

from __future__ import annotations

import pytest

from engine.alerts import Alert
from engine.commands import Command
from engine.models import AlertKind, Leg, Mode, Severity, TradeState
from engine.snapshot import OptionStrikeRow
from tests.ib_client_guard import decoded_cleanly as decoded_cleanly  # autouse
from tests.ibkr_world import (
    C150,
    C160,
    C165,
    CLIENT_ID,
    DEADLINE,
    IN_CANCEL_ORDER,
    IN_PLACE_ORDER,
    IN_REQ_MKT_DATA,
    SPREAD,
    SPY,
    Session,
    World,
    expiry,
    oid,
)
from tests.ibkr_world import world as world
from tests.tws_gateway import Fill, GwContract, GwOrder, Reject, Rest


async def test_the_spread_and_the_option_are_adopted_with_greeks_and_time_value(
    world: World,
) -> None:
    w = world
    s = await w.start()
    eng = s.engine
    trades = s.trades()
    assert trades.keys() == {SPREAD, oid(150, "C")}
    spread, single = trades[SPREAD], trades[oid(150, "C")]
    assert (spread.side, spread.qty) == ("long", 2)
    assert spread.entry_price == pytest.approx(2.00)  # 3.20 - 1.20
    assert (single.side, single.qty, single.entry_price) == ("long", 1, pytest.approx(9.00))
    combo = eng.contracts[SPREAD]
    assert combo.type == "combo" and combo.multiplier == 100.0
    assert combo.legs == (Leg(oid(160, "C"), 1), Leg(oid(165, "C"), -1))

    def rows() -> dict[float, OptionStrikeRow]:
        snap = eng.snapshot()
        out = {r.strike: r for r in snap.strikes if isinstance(r, OptionStrikeRow)}
        full = len(out) == 4 and all(
            r.call and r.call.iv and r.put and r.put.iv for r in out.values()
        )
        return out if full else {}

    table = await s.until(rows, "the strike table with greeks")
    assert sorted(table) == [150.0, 155.0, 160.0, 165.0]  # the 4 strikes nearest 158
    row = table[160.0]
    assert row.expiry == expiry() and row.underlying == pytest.approx(158.0)
    assert row.call is not None and row.call.contract_id == oid(160, "C")
    assert (row.call.bid, row.call.ask) == (3.00, 3.20)
    assert (row.call.iv, row.call.delta) == (pytest.approx(0.21), pytest.approx(0.48))
    assert row.call.time_value == pytest.approx(3.10)
    assert table[150.0].call is not None and table[150.0].call.held  # the single option
    assert table[155.0].call is not None and not table[155.0].call.held
    assert row.call.held  # a leg of the spread
    assert table[165.0].call is not None and table[165.0].call.held
    assert eng.snapshot().market is not None and eng.snapshot().market.spot == 158.0  # type: ignore[union-attr]
    assert eng.snapshot().market.spot_source == "ibkr"  # type: ignore[union-attr]
    # SPY's last hour of minute bars seeded the history: momentum and volatility at once
    m = await s.until(
        lambda: (m := eng.snapshot().market) is not None and m.sigma is not None and m,
        "realised volatility from the backfill",
    )
    momentum = dict(m.momentum_pct)
    assert momentum[30] is not None and momentum[30] > 0  # rising all hour
    assert m.sigma_source == "realized"

    def trade_rows() -> dict[str, object]:
        out = {r.contract_id: r for r in eng.snapshot().trades}
        return out if all(r.time_value is not None for r in out.values()) else {}

    by_id = await s.until(trade_rows, "time value on the trades")
    assert by_id[SPREAD].time_value == pytest.approx(2.00)  # 3.10 - 1.10
    assert by_id[SPREAD].tv_state == "RISK"  # within twice the floor (1.00)
    assert by_id[oid(150, "C")].time_value == pytest.approx(1.50)  # 9.50 - intrinsic 8
    assert by_id[oid(150, "C")].tv_state == "RISK"
    assert by_id[SPREAD].mark == pytest.approx(1.80)  # the combo's bid: 3.00 - 1.20
    assert w.gw.state.requests(IN_PLACE_ORDER) == []
    await s.close()


async def _quoted(s: Session, w: World, *changes: tuple[GwContract, float, float]) -> None:
    """Move legs' quotes one at a time (the engine sees each before the next is sent), so the
    combo is never priced on a mix the test did not mean."""
    for c, bid, ask in changes:
        w.market.set(c, bid, ask)
        w.market.push([c.con_id])
        cid = oid(c.strike, c.right)
        await s.until(
            lambda cid=cid, bid=bid, ask=ask: (
                (q := s.engine.quotes.get(cid)) is not None and (q.bid, q.ask) == (bid, ask)
            ),
            f"{cid} quoted {bid}/{ask}",
        )


async def _time_values_in(s: Session) -> None:
    await s.until(
        lambda: all(r.time_value is not None for r in s.engine.snapshot().trades),
        "time value on every trade",
    )


async def test_time_value_closes_the_spread_in_two_attempts_after_a_partial_fill(
    world: World,
) -> None:
    """The spread's time value falls to 0.95 (floor 1.00): one BAG order SELL 2 @ 0.80 (the
    combo's bid) fills 1 and its rest is cancelled after attempt_timeout_seconds; the second
    attempt, orderRef `<intent>-2`, SELL 1 @ 0.75 (one price_increment lower) fills the rest."""
    w = world
    s = await w.start()
    await _time_values_in(s)
    spread = s.trades()[SPREAD]
    w.gw.state.queue_outcome(
        Fill(quantity=1, commission=2.0, leg_prices={C160.con_id: 1.40, C165.con_id: 0.60}),
        Fill(commission=1.5, leg_prices={C160.con_id: 1.35, C165.con_id: 0.60}),
    )
    # the short leg first: in between, the spread is worth more (time value 2.55), not less
    await _quoted(s, w, (C165, 0.50, 0.60), (C160, 1.40, 1.60))  # 1.50 - 0.55 = 0.95

    closed = await s.until(lambda: spread.trade_id not in s.engine.trades, "the spread closed")
    assert closed
    first, second = w.bag_orders()
    [intent] = await s.rt.store.intents_for_trade(spread.trade_id)
    coid = intent["intent_id"]
    assert (first.order_ref, first.action, first.total_quantity) == (coid, "SELL", 2)
    assert (first.lmt_price, first.tif) == (0.80, "DAY")
    assert [(leg.con_id, leg.ratio, leg.action) for leg in first.contract.combo_legs] == [
        (C160.con_id, 1, "BUY"),
        (C165.con_id, 1, "SELL"),
    ]
    assert (first.status, first.filled) == ("Cancelled", 1)  # the rest cancelled by the venue
    assert len(w.gw.state.requests(IN_CANCEL_ORDER)) == 1
    assert (second.order_ref, second.action, second.total_quantity) == (f"{coid}-2", "SELL", 1)
    assert second.lmt_price == pytest.approx(0.75)
    assert (second.status, second.filled) == ("Filled", 1)
    assert w.gw.state.position_of(C160.con_id).position == 0  # type: ignore[union-attr]
    assert w.gw.state.position_of(C165.con_id).position == 0  # type: ignore[union-attr]

    t = await s.rt.store.get_trade(spread.trade_id)
    assert t is not None and t.state == TradeState.CLOSED
    assert t.exit_reason == "min_time_value"
    assert t.exit_price == pytest.approx(0.775)
    fills = await s.rt.store.fills_for_trade(spread.trade_id)
    assert [(f["client_order_id"], f["qty"], f["price"]) for f in fills] == [
        (coid, 1, pytest.approx(0.80)),
        (f"{coid}-2", 1, pytest.approx(0.75)),
    ]
    assert [f["fees"] for f in fills] == [pytest.approx(2.0), pytest.approx(1.5)]
    assert t.fees == pytest.approx(3.5)
    # (0.80 + 0.75 - 2 × 2.00) × 100 - 3.50 of commissions
    assert t.realized_pnl == pytest.approx((0.80 + 0.75 - 4.00) * 100 - 3.5)
    orders = await s.rt.store.orders_for_intent(coid)
    assert [(o["client_order_id"], o["status"], o["limit_price"]) for o in orders] == [
        (coid, "partial", pytest.approx(0.80)),
        (f"{coid}-2", "filled", pytest.approx(0.75)),
    ]
    assert "CANCELLED" in orders[0]["reason"]
    [warned] = [a for a in s.alerts(AlertKind.EXECUTION_FAILURE)]
    assert "partial" in warned.message and "1 left" in warned.message
    [closed_alert] = s.alerts(AlertKind.AUTO_STOP)
    assert "min_time_value" in closed_alert.message
    assert s.trades().keys() == {oid(150, "C")}  # the single option is still watched
    await s.close()
    assert len(w.gw.state.requests(IN_PLACE_ORDER)) == 2  # nothing more was sent


NOT_AVAILABLE = "Order rejected - reason:The contract is not available for short sale."


async def test_rejections_alert_with_their_code_and_the_trade_stays_protected(
    world: World,
) -> None:
    """TWS refuses every attempt: first for margin (error 201 → NO_MARGIN), then for another
    reason (201 → REJECTED_201). The exit alerts with the code, steps the ladder (3 attempts,
    each a new orderRef, one increment lower), then gives up with a critical alert; the trade
    is left OPEN and watched."""
    w = world
    s = await w.start()
    await _time_values_in(s)
    spread = s.trades()[SPREAD]
    w.gw.state.queue_outcome(
        Reject(),  # the default text: equity with loan value below the initial margin
        Reject(201, NOT_AVAILABLE),
        Reject(201, NOT_AVAILABLE),
    )
    await _quoted(s, w, (C165, 0.50, 0.60), (C160, 1.40, 1.60))

    def gave_up() -> list[Alert]:
        return [a for a in s.alerts(AlertKind.EXECUTION_FAILURE) if a.severity == Severity.CRITICAL]

    [critical] = await s.until(gave_up, "the ladder given up")
    [intent] = await s.rt.store.intents_for_trade(spread.trade_id)
    coid = intent["intent_id"]
    assert intent["status"] == "failed"
    bags = w.bag_orders()
    assert [(o.order_ref, o.lmt_price, o.total_quantity) for o in bags] == [
        (coid, 0.80, 2),
        (f"{coid}-2", pytest.approx(0.75), 2),
        (f"{coid}-3", pytest.approx(0.70), 2),
    ]
    [warning] = [a for a in s.alerts(AlertKind.EXECUTION_FAILURE) if a.severity == Severity.WARNING]
    assert "NO_MARGIN" in warning.message and "rejected" in warning.message
    assert warning.trade_id == spread.trade_id
    assert "REJECTED_201" in critical.message and "ladder exhausted" in critical.message
    assert critical.trade_id == spread.trade_id
    orders = await s.rt.store.orders_for_intent(coid)
    assert [o["status"] for o in orders] == ["rejected"] * 3
    assert orders[0]["reason"].startswith("NO_MARGIN: ")
    assert all(o["reason"].startswith("REJECTED_201: ") for o in orders[1:])
    # the trade is open and watched: its state, its quotes and its rules go on
    t = s.engine.trades[spread.trade_id]
    assert t.state == TradeState.OPEN and spread.trade_id not in s.engine.exits
    stored = await s.rt.store.get_trade(spread.trade_id)
    assert stored is not None and stored.state == TradeState.OPEN and stored.qty == 2
    await _quoted(s, w, (C160, 1.45, 1.60))
    row = next(r for r in s.engine.snapshot().trades if r.contract_id == SPREAD)
    assert row.mark == pytest.approx(0.85) and row.tv_state == "CRITICAL"
    assert len(w.gw.state.requests(IN_PLACE_ORDER)) == 3  # the cool-down: nothing more sent
    await s.close()


async def test_a_dropped_connection_is_one_alert_then_data_resubscribes_and_recovers(
    world: World,
) -> None:
    """TWS goes away (connections dropped, the port closed): one data_quality alert
    GATEWAY_UNREACHABLE however many reconnect attempts fail; the quotes go stale and a rule
    that would fire meanwhile sends nothing. TWS comes back: the client reconnects, every line
    is requested again, quotes flow, a recovery alert; the rule fires on fresh data."""
    w = world
    s = await w.start(w.config(engine={"max_quote_age_seconds": 0.5}))
    async with w.market.ticking():
        await _time_values_in(s)
        spread = s.trades()[SPREAD]
        # the engine's first positions poll is behind it (the next is 5 s away); an outage
        # during one is test_an_outage_during_a_positions_poll_is_still_one_alert
        # (the tick after the one that polled scans for opportunities: the poll is over)
        await s.until(lambda: s.engine._last_opportunity_scan > 0, "the first positions poll")
        await w.gw.stop_listening(drop_connections=True)
        await s.until(lambda: s.conn.failures >= 2, "two failed reconnect attempts")
        await s.until(  # held at once (the feed knows the data stopped), not only aged
            lambda: (
                "IB market data not flowing" in (s.engine.status[spread.trade_id].problem or "")
            ),
            "held quotes",
        )
        # a threshold that fires at the spread's time value (2.00): not on stale data
        res = await s.engine.command(
            Command("set_overrides", spread.trade_id, {"min_time_value": 5.0})
        )
        assert res.ok
        w.gw.state.queue_outcome(w.market.bag_fill())
        failures = s.conn.failures
        await s.until(lambda: s.conn.failures >= failures + 2, "more reconnect attempts")
        assert w.gw.state.requests(IN_PLACE_ORDER) == []
        assert spread.trade_id not in s.engine.exits
        assert s.engine.trades[spread.trade_id].state == TradeState.OPEN
        down = [a for a in s.alerts(AlertKind.DATA_QUALITY) if "GATEWAY_UNREACHABLE" in a.message]
        assert len(down) == 1 and down[0].severity == Severity.WARNING
        assert down[0].data["source"] == "source:ibkr"
        lines_before = len(w.gw.state.requests(IN_REQ_MKT_DATA))
        reconnected_at = s.engine.clock.now()

        await w.gw.start_listening()
        for c in (C160, C165, C150, SPY):  # every line again, on the new connection
            await w.gw.wait_for_mkt_data(c.con_id, timeout=DEADLINE)
        assert len(w.gw.state.requests(IN_REQ_MKT_DATA)) >= lines_before + 4
        recovered = await s.until(
            lambda: [
                a for a in s.alerts(AlertKind.DATA_QUALITY) if "recovered: source:ibkr" in a.message
            ],
            "the recovery alert",
        )
        assert recovered[0].severity == Severity.INFO
        await s.until(lambda: spread.trade_id not in s.engine.trades, "the spread closed")
    [bag] = w.bag_orders()
    assert bag.lmt_price == pytest.approx(1.80)  # the combo's bid on fresh quotes
    quote = s.engine.quotes[oid(150, "C")]
    assert quote.ts > reconnected_at  # quotes flow again
    t = await s.rt.store.get_trade(spread.trade_id)
    assert t is not None and t.state == TradeState.CLOSED and t.exit_reason == "min_time_value"
    down = [a for a in s.alerts(AlertKind.DATA_QUALITY) if "GATEWAY_UNREACHABLE" in a.message]
    down.sort(key=lambda a: a.seq)
    assert [a.severity for a in down] == [Severity.WARNING, Severity.INFO]  # down, recovered
    assert s.conn.connects == 2
    await s.close()


async def test_an_outage_during_a_positions_poll_is_still_one_alert(world: World) -> None:
    """The engine reads the venue's positions every 5 s (the first at its first tick): when a
    read falls inside the outage, the venue's GATEWAY_UNREACHABLE is the same episode as the
    feed's, not a second alert."""
    w = world
    s = await w.start()
    await w.gw.stop_listening(drop_connections=True)  # before the engine's first tick
    await s.until(lambda: s.conn.failures >= 2, "two failed reconnect attempts")
    await s.until(lambda: s.engine._last_positions_poll > 0, "a positions poll in the outage")
    await w.gw.start_listening()
    await s.until(lambda: s.conn.connects == 2, "reconnected")
    await s.until(
        lambda: [a for a in s.alerts(AlertKind.DATA_QUALITY) if "recovered" in a.message],
        "the recovery alert",
    )
    down = [
        a
        for a in s.alerts(AlertKind.DATA_QUALITY)
        if "GATEWAY_UNREACHABLE" in a.message and a.severity == Severity.WARNING
    ]
    await s.close()
    assert len(down) == 1, [a.message for a in down]


async def _exit_resting_then_die(w: World) -> tuple[str, GwOrder, str]:
    """A session whose spread's exit is resting at TWS (no answer yet) when the process dies.
    Returns the spread's trade id, the resting order and its orderRef."""
    s = await w.start(w.config(ibkr={"attempt_timeout_seconds": 2.0}))
    await _time_values_in(s)
    spread = s.trades()[SPREAD]
    w.gw.state.queue_outcome(Rest())
    await _quoted(s, w, (C165, 0.50, 0.60), (C160, 1.40, 1.60))
    order = await w.gw.wait_for_order(1)
    await w.gw.wait_until(lambda: order.status == "Submitted")
    await s.die()  # no answer was journaled: the order is "pending" in the journal
    assert order.is_open  # TWS keeps a DAY order working when the API client goes away
    return spread.trade_id, order, order.order_ref


async def test_restart_finds_the_exit_filled_at_tws_and_sends_nothing_again(
    world: World,
) -> None:
    w = world
    tid, order, coid = await _exit_resting_then_die(w)
    # while the engine is down the order fills at TWS
    w.gw.fill_order(
        order.order_id, client_id=CLIENT_ID, commission=2.0, leg_prices=w.market.leg_prices()
    )
    s = await w.start()
    t = await s.rt.store.get_trade(tid)  # reconciled at start, by orderRef
    assert t is not None and t.state == TradeState.CLOSED and t.exit_reason == "min_time_value"
    assert t.exit_price == pytest.approx(0.80)
    [fill] = await s.rt.store.fills_for_trade(tid)
    assert (fill["client_order_id"], fill["qty"], fill["fees"]) == (coid, 2, pytest.approx(2.0))
    [intent] = await s.rt.store.intents_for_trade(tid)
    assert intent["status"] == "filled"
    assert s.trades().keys() == {oid(150, "C")}  # the spread is not adopted again
    await s.until(lambda: s.engine._last_opportunity_scan > 0, "a positions poll")
    assert s.trades().keys() == {oid(150, "C")}
    await s.close()
    assert len(w.gw.state.requests(IN_PLACE_ORDER)) == 1  # nothing was sent twice


async def test_restart_cancels_the_exit_still_working_and_the_ladder_goes_on(
    world: World,
) -> None:
    w = world
    tid, order, coid = await _exit_resting_then_die(w)
    w.gw.state.queue_outcome(w.market.bag_fill())
    s = await w.start()
    # the working order was looked up by orderRef and cancelled; the next attempt is -2
    await s.until(lambda: tid not in s.engine.trades, "the spread closed")
    assert order.status == "Cancelled" and order.filled == 0
    assert len(w.gw.state.requests(IN_CANCEL_ORDER)) == 1
    first, second = w.bag_orders()
    assert first is order and second.order_ref == f"{coid}-2"
    assert second.lmt_price == pytest.approx(0.75) and second.total_quantity == 2
    t = await s.rt.store.get_trade(tid)
    assert t is not None and t.state == TradeState.CLOSED and t.exit_price == pytest.approx(0.75)
    orders = await s.rt.store.orders_for_intent(coid)
    assert [(o["client_order_id"], o["status"]) for o in orders] == [
        (coid, "unfilled"),
        (f"{coid}-2", "filled"),
    ]
    await s.close()
    assert len(w.gw.state.requests(IN_PLACE_ORDER)) == 2


async def test_restart_books_the_fill_found_at_tws_with_the_contracts_multiplier(
    world: World,
) -> None:
    w = world
    tid, order, _ = await _exit_resting_then_die(w)
    w.gw.fill_order(
        order.order_id, client_id=CLIENT_ID, commission=2.0, leg_prices=w.market.leg_prices()
    )
    s = await w.start()
    t = await s.rt.store.get_trade(tid)
    await s.close()
    assert t is not None and t.state == TradeState.CLOSED
    assert t.realized_pnl == pytest.approx((0.80 - 2.00) * 2 * 100 - 2.0)


async def _signal_only(w: World, s: Session) -> None:
    """The spread's time value falls below the floor; wait until the engine has said so."""
    await _time_values_in(s)
    await _quoted(s, w, (C165, 0.50, 0.60), (C160, 1.40, 1.60))
    await s.until(
        lambda: any(
            r.contract_id == SPREAD and r.tv_state == "CRITICAL" for r in s.engine.snapshot().trades
        ),
        "the rule fired",
    )


async def test_alert_only_never_places_an_order(world: World) -> None:
    w = world
    s = await w.start(w.config(mode="alert_only"))
    assert s.engine.mode is Mode.ALERT_ONLY
    await _signal_only(w, s)
    [signal] = await s.until(lambda: s.alerts(AlertKind.EXIT_SIGNAL), "the exit signal")
    assert "min_time_value" in signal.message and "alert_only" in signal.message
    res = await s.engine.command(Command("close", s.trades()[SPREAD].trade_id))
    assert not res.ok  # a manual close too: alert_only sends nothing
    await s.until(lambda: s.engine._last_opportunity_scan > 0, "a few ticks")
    trades = await s.rt.store.all_trades()
    await s.close()
    assert w.gw.state.requests(IN_PLACE_ORDER) == []
    assert len(trades) == 2 and all(t.state == TradeState.OPEN for t in trades)


async def test_readonly_never_places_an_order(world: World) -> None:
    """`[venues.ibkr] readonly = true` in live mode: the exit is journaled and refused by the
    venue (READ_ONLY) on every attempt, nothing reaches TWS, the trade stays open."""
    w = world
    s = await w.start(w.config(ibkr={"readonly": True}))
    await _signal_only(w, s)

    def gave_up() -> list[Alert]:
        return [a for a in s.alerts(AlertKind.EXECUTION_FAILURE) if a.severity == Severity.CRITICAL]

    [critical] = await s.until(gave_up, "the ladder given up")
    assert "READ_ONLY" in critical.message
    [warning] = [a for a in s.alerts(AlertKind.EXECUTION_FAILURE) if a.severity == Severity.WARNING]
    assert "READ_ONLY" in warning.message
    trades = await s.rt.store.all_trades()
    await s.close()
    assert w.gw.state.requests(IN_PLACE_ORDER) == []
    assert len(trades) == 2 and all(t.state == TradeState.OPEN for t in trades)
