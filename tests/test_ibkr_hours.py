"""IB exits and the exchange's trading hours, end to end on the loopback TWS gateway: outside
the session no order is sent, the trade says "exit due at the open" (screen and `status`), one
alert says so, no ladder attempt is counted, a restart while closed sends nothing, and the exit
goes out at the open on fresh prices. A stock's exit may go out in extended hours
(`exit_outside_rth`), an option's never.

The session runs on a `ShiftedClock` (real pace, moved to the next XNYS open minus 10 minutes,
and jumped past the open or the close); the market calendar is XNYS, as in production.
"""

from __future__ import annotations

import json
import time

import pytest

from engine import cli
from engine.commands import Command
from engine.market_hours import MarketHours
from engine.models import AlertKind, TradeState
from engine.snapshot import TradeRow
from tests.ib_client_guard import decoded_cleanly as decoded_cleanly  # autouse
from tests.ibkr_world import (
    IN_PLACE_ORDER,
    SPY,
    Session,
    ShiftedClock,
    World,
    oid,
)
from tests.ibkr_world import world as world
from tests.tws_gateway import Fill, Rest

HOURS = MarketHours("XNYS")
SINGLE = oid(150, "C")


def _next_open() -> float:
    return HOURS.next_open(time.time())


def _on_clock(w: World, at: float) -> ShiftedClock:
    """The world at `at`: the gateway's historical bars end there too."""
    clock = ShiftedClock(at)
    w.gw.state.now = clock.now
    minute = int(at) // 60 * 60
    w.gw.state.minute_bars[SPY.con_id] = [
        (minute - 60 * (60 - k), 157.0, 158.0, 157.0, round(157.0 + k / 60, 2)) for k in range(60)
    ]
    return clock


def _config(w: World, **ibkr: object):  # type: ignore[no-untyped-def]
    return w.config(ibkr={"exchange_calendar": "XNYS", **ibkr})


def _row(s: Session, contract_id: str) -> TradeRow:
    [row] = [r for r in s.engine.snapshot().trades if r.contract_id == contract_id]
    return row


def _placed(w: World) -> int:
    return len(w.gw.state.requests(IN_PLACE_ORDER))


async def _quoted(s: Session) -> None:
    await s.until(
        lambda: (
            len(s.trades()) == 2
            and all(r.time_value is not None for r in s.engine.snapshot().trades)
        ),
        "both trades adopted and quoted",
    )


async def _ticks(s: Session, seconds: float) -> None:
    """Let the engine run `seconds` of its clock (many ticks, ladder steps of 0.25 s)."""
    t0 = s.engine.clock.now()
    await s.until(lambda: s.engine.clock.now() - t0 >= seconds, f"{seconds}s of ticks")


def _due_alerts(s: Session, trade_id: str) -> list[str]:
    return [
        a.message
        for a in s.alerts(AlertKind.EXIT_SIGNAL)
        if a.trade_id == trade_id and "exit due at the open" in a.message
    ]


async def test_a_rule_firing_while_closed_sends_nothing_until_the_open(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    w = world
    opens = _next_open()
    clock = _on_clock(w, opens - 600)  # 09:20 ET: the options market is closed
    s = await w.start(_config(w), clock)
    async with w.market.ticking():
        await _quoted(s)
        single = s.trades()[SINGLE]
        res = await s.engine.command(
            Command("set_overrides", single.trade_id, {"min_time_value": 5.0})
        )
        assert res.ok
        await s.until(lambda: _due_alerts(s, single.trade_id), "the 'exit due at the open' alert")
        await _ticks(s, 1.5)  # six ladder steps' worth of ticks, the rule firing on each quote
        assert _placed(w) == 0
        assert len(_due_alerts(s, single.trade_id)) == 1
        assert "09:30 ET" in _due_alerts(s, single.trade_id)[0]
        assert single.trade_id not in s.engine.exits  # no exit started, no attempt counted
        assert s.engine.trades[single.trade_id].state == TradeState.OPEN
        assert not [a for a in s.alerts() if "LIMIT_REACHED" in a.message]
        row = _row(s, SINGLE)
        assert (row.state, row.nearest) == ("mkt closed", "exit due at the open")
        assert row.problem is not None and row.problem.startswith("MARKET_CLOSED: XNYS")

        # `trade-supervisor status` next to the running engine says it too
        async def heartbeat_says() -> bool:
            hb = await s.engine.store.get_state("heartbeat") or {}
            return single.trade_id in (hb.get("exits_held") or {})

        await s.until_async(heartbeat_says, "the heartbeat lists the held exit")
        capsys.readouterr()
        assert await cli._status(s.engine.config, False) == 0
        out = capsys.readouterr().out
        assert f"{single.trade_id}" in out and "exit due at the open: MARKET_CLOSED" in out
        assert await cli._status(s.engine.config, True) == 0
        info = json.loads(capsys.readouterr().out)
        assert info["exits_held"][single.trade_id].startswith("MARKET_CLOSED: XNYS is closed")
        # the spread's rule does not fire: it shows as usual
        assert _row(s, "SPY v-1").nearest != "exit due at the open"
        # the open: stale quotes first (the clock jumped), then a fresh one closes it
        w.gw.state.queue_outcome(Fill(price=9.40))
        clock.jump_to(opens + 1)
        await s.until(lambda: single.trade_id not in s.engine.trades, "closed at the open")
    assert _placed(w) == 1
    [order] = w.gw.state.orders
    assert order.action == "SELL"
    assert not order.outside_rth
    await s.close()


async def test_an_exit_under_way_at_the_close_waits_and_a_restart_while_closed_sends_nothing(
    world: World,
) -> None:
    w = world
    opens = _next_open()
    close = HOURS.next_close(opens)
    clock = _on_clock(w, close - 60)  # 15:59 ET
    s = await w.start(_config(w), clock)
    w.gw.state.default_outcome = Rest()  # nothing fills before the close
    async with w.market.ticking():
        await _quoted(s)
        single = s.trades()[SINGLE]
        tid = single.trade_id
        res = await s.engine.command(Command("set_overrides", tid, {"min_time_value": 5.0}))
        assert res.ok
        await s.until(lambda: _placed(w) == 1, "the first attempt")
        clock.jump_to(close + 60)  # 16:01 ET: the first attempt is cancelled unfilled
        await s.until(
            lambda: (ex := s.engine.exits.get(tid)) is not None and ex.held is not None,
            "the exit waits",
        )
        await _ticks(s, 1.5)
        ex = s.engine.exits[tid]
        assert ex.attempts == 1 and _placed(w) == 1
        held = [
            a.message
            for a in s.alerts(AlertKind.EXIT_SIGNAL)
            if a.trade_id == tid and "exit due at the open" in a.message
        ]
        assert len(held) == 1 and "1 attempt(s) so far" in held[0]
        assert not [a for a in s.alerts() if "LIMIT_REACHED" in a.message]
        assert _row(s, SINGLE).nearest == "exit due at the open"
    await s.die()

    # a restart in the night: the journaled exit is resumed and waits, nothing is sent
    s2 = await w.start(_config(w), clock)
    async with w.market.ticking():
        await s2.until(lambda: tid in s2.engine.exits, "the exit resumed")
        await s2.until(lambda: s2.engine.exits[tid].held is not None, "the resumed exit waits")
        await _ticks(s2, 1.5)
        assert _placed(w) == 1
        assert s2.engine.trades[tid].state == TradeState.CLOSING
        assert _row(s2, SINGLE).state == "mkt closed"
        # the next open: attempt 2 (the count went on from 1), on fresh prices
        w.gw.state.queue_outcome(Fill(price=9.35))
        clock.jump_to(HOURS.next_open(clock.now()) + 1)
        await s2.until(lambda: tid not in s2.engine.trades, "closed at the next open")
    assert _placed(w) == 2
    second = w.gw.state.orders[-1]
    assert second.order_ref.endswith("-2")
    await s2.close()


async def test_a_stock_exit_goes_out_in_extended_hours_an_option_waits(world: World) -> None:
    w = world
    w.gw.state.add_position(SPY, 100, 150.0, market_price=158.0)
    opens = _next_open()
    clock = _on_clock(w, opens - 600)  # 09:20 ET: pre-market for stocks
    s = await w.start(_config(w, exit_outside_rth=True), clock)
    async with w.market.ticking():
        await s.until(lambda: "SPY" in s.trades() and SINGLE in s.trades(), "adopted")
        await s.until(lambda: "SPY" in s.engine.quotes, "the stock quoted")
        stock, single = s.trades()["SPY"], s.trades()[SINGLE]
        assert (await s.engine.command(Command("close", stock.trade_id))).ok
        await s.until(lambda: stock.trade_id not in s.engine.trades, "the stock closed")
        [order] = w.gw.state.orders
        assert (order.contract.sec_type, order.action, order.outside_rth) == ("STK", "SELL", True)
        # a manual close of the option waits for the regular open
        assert (await s.engine.command(Command("close", single.trade_id))).ok
        await s.until(
            lambda: (ex := s.engine.exits.get(single.trade_id)) is not None and ex.held,
            "the option's exit waits",
        )
        await _ticks(s, 1.0)
        assert _placed(w) == 1
        assert _row(s, SINGLE).state == "mkt closed"
        w.gw.state.queue_outcome(Fill(price=9.40))
        clock.jump_to(opens + 1)
        await s.until(lambda: single.trade_id not in s.engine.trades, "the option closed")
    assert [o.outside_rth for o in w.gw.state.orders] == [True, False]
    await s.close()


async def test_without_exit_outside_rth_a_stock_waits_for_the_regular_open(world: World) -> None:
    w = world
    w.gw.state.add_position(SPY, 100, 150.0, market_price=158.0)
    opens = _next_open()
    clock = _on_clock(w, opens - 600)
    s = await w.start(_config(w), clock)
    async with w.market.ticking():
        await s.until(lambda: "SPY" in s.trades(), "adopted")
        stock = s.trades()["SPY"]
        assert (await s.engine.command(Command("close", stock.trade_id))).ok
        await s.until(
            lambda: (ex := s.engine.exits.get(stock.trade_id)) is not None and ex.held,
            "the stock's exit waits",
        )
        await _ticks(s, 1.0)
        assert _placed(w) == 0
        clock.jump_to(opens + 1)
        await s.until(lambda: stock.trade_id not in s.engine.trades, "closed at the open")
    assert [o.outside_rth for o in w.gw.state.orders] == [False]
    await s.close()


def test_extended_hours_and_the_next_open() -> None:
    opens = _next_open()
    assert not HOURS.is_open(opens - 1) and HOURS.is_open(opens)
    assert HOURS.extended_open(opens - 5.5 * 3600 + 1)  # 04:00 ET and a second
    assert not HOURS.extended_open(opens - 5.5 * 3600 - 1)  # 03:59:59 ET
    close = HOURS.next_close(opens)
    assert HOURS.extended_open(close + 4 * 3600 - 1) and not HOURS.extended_open(close + 4 * 3600)
    assert HOURS.next_open(close) > close
