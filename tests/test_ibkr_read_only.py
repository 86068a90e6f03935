"""A read-only TWS API session (TWS answers every order with warning 321), end to end: the first
321 stops all sending, with one critical alert that says how to fix it; no trade's exit is
retried into it, all night."""

from __future__ import annotations

from engine.commands import Command
from engine.models import AlertKind, Severity, TradeState
from tests.ib_client_guard import decoded_cleanly as decoded_cleanly  # autouse
from tests.ibkr_world import IN_PLACE_ORDER, SPREAD, World, oid
from tests.ibkr_world import world as world
from tests.tws_gateway import Fill


async def test_the_first_321_stops_sending_and_alerts_once(world: World) -> None:
    w = world
    w.gw.state.read_only_api = True
    s = await w.start()
    async with w.market.ticking():
        trades = await s.until(lambda: (t := s.trades()) and len(t) == 2 and t, "adopted")
        spread, single = trades[SPREAD], trades[oid(150, "C")]
        await s.until(
            lambda: all(r.time_value is not None for r in s.engine.snapshot().trades), "quoted"
        )
        # a rule fires on the spread: its first order meets 321
        res = await s.engine.command(
            Command("set_overrides", spread.trade_id, {"min_time_value": 5.0})
        )
        assert res.ok
        await s.until(lambda: w.gw.state.requests(IN_PLACE_ORDER), "the first order (321)")
        # the spread's exit is given up at once (no ladder into 321), the trade left open
        await s.until(lambda: spread.trade_id not in s.engine.exits, "the exit cancelled")
        # a rule fires on the other trade: nothing is sent, it says why
        res = await s.engine.command(
            Command("set_overrides", single.trade_id, {"min_time_value": 5.0})
        )
        assert res.ok
        await s.until(
            lambda: any(
                a.trade_id == single.trade_id and "READ_ONLY" in a.message
                for a in s.alerts(AlertKind.EXIT_SIGNAL)
            ),
            "the single's exit signal says READ_ONLY",
        )
        # a second passes (four ladder steps) with both rules firing: nothing more is sent
        t0 = s.engine.clock.now()
        await s.until(lambda: s.engine.clock.now() - t0 > 1.0, "a second of ticks")
        assert len(w.gw.state.requests(IN_PLACE_ORDER)) == 1
        assert s.engine.trades[spread.trade_id].state == TradeState.OPEN
        assert s.engine.trades[single.trade_id].state == TradeState.OPEN
        read_only = [a for a in s.alerts() if "Read-Only API" in a.message]
        critical = [a for a in read_only if a.severity == Severity.CRITICAL]
        assert len(critical) == 1
        assert "321" in critical[0].message and "untick 'Read-Only API'" in critical[0].message
        # 1100 / 1102 within the session: still read-only, still nothing sent
        w.gw.send_error(1100, "Connectivity between IB and Trader Workstation has been lost.")
        w.gw.send_error(1102, "Connectivity between IB and TWS has been restored- data maintained.")
        await s.until(lambda: s.conn.connected, "1102")
        assert s.venue.sending_blocked() is not None
        # the user unticks Read-Only API and the engine reconnects: orders go out again
        w.gw.state.read_only_api = False
        w.gw.state.queue_outcome(Fill(price=9.40))
        connects = s.conn.connects
        await w.gw.drop_connections()
        await s.until(lambda: s.conn.connects > connects, "reconnected")
        assert s.venue.sending_blocked() is None
        await s.until(lambda: single.trade_id not in s.engine.trades, "the single closed")
    assert len(w.gw.state.requests(IN_PLACE_ORDER)) >= 2
    await s.close()
