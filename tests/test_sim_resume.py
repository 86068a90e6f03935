"""The simulated market resumes after the app was stopped: trades opened on an hourly event that
closed while the app was down are settled at the next start, even after a night away."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.clock import ManualClock
from engine.config import parse_config
from engine.feeds.sim_feed import STATE_KEY
from engine.models import TradeState
from engine.runtime import build_runtime

T0 = 1_795_003_200.0 - 300.0  # five minutes before the top of an hour (an event closes)


@pytest.mark.parametrize("hours_away", [0.5, 9.0, 6 * 24.0])
async def test_trades_on_an_event_that_closed_while_stopped_are_settled(
    tmp_path: Path, hours_away: float
) -> None:
    cfg = parse_config({"engine": {"data_dir": str(tmp_path)}, "alerts": {"log_file": ""}})
    clock = ManualClock(T0)
    rt = await build_runtime(cfg, None, clock=clock)
    demo = list(rt.engine.trades.values())
    assert demo and all(t.state == TradeState.OPEN for t in demo)
    [feed] = rt.feeds
    await rt.store.set_state(STATE_KEY, feed.market.state(), T0)  # as the running feed does
    await rt.close()

    clock.set(T0 + hours_away * 3600.0)
    rt = await build_runtime(cfg, None, clock=clock)
    try:
        trades = {t.trade_id: t for t in await rt.store.all_trades()}
        assert {t.trade_id for t in demo} <= trades.keys()
        for t in demo:
            got = trades[t.trade_id]
            assert got.state == TradeState.CLOSED and got.exit_reason == "settled", (
                f"{t.trade_id} on {t.contract_id}: {got.state} after {hours_away} h away"
            )
            assert got.exit_price in (0.0, 1.0)
        assert not rt.engine.trades  # nothing left showing stale data
        alerts = [a["message"] for a in await rt.store.recent_alerts(50)]
        assert not [m for m in alerts if "never settle" in m]
    finally:
        await rt.close()


async def test_after_more_than_a_week_away_the_stranded_trades_are_reported(tmp_path: Path) -> None:
    cfg = parse_config({"engine": {"data_dir": str(tmp_path)}, "alerts": {"log_file": ""}})
    clock = ManualClock(T0)
    rt = await build_runtime(cfg, None, clock=clock)
    demo = sorted(rt.engine.trades)
    [feed] = rt.feeds
    await rt.store.set_state(STATE_KEY, feed.market.state(), T0)
    await rt.close()

    clock.set(T0 + 8 * 86400.0)  # a fresh simulated session: the old events are unknown to it
    rt = await build_runtime(cfg, None, clock=clock)
    try:
        alerts = [a["message"] for a in await rt.store.recent_alerts(50)]
        [msg] = [m for m in alerts if "never settle" in m]
        assert f"{len(demo)} trade(s)" in msg and all(tid in msg for tid in demo)
        assert "trades close" in msg and "earlier simulated session" in msg
    finally:
        await rt.close()
