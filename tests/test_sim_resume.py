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


async def test_the_signals_come_back_at_once_from_the_journal_and_the_sims_path(
    tmp_path: Path,
) -> None:
    # The sim ran 40 minutes (its spot journaled as it went), stopped for 20 minutes, and
    # restarted: momentum and volatility are there before the first live tick, from the
    # journaled history and the market's own path through the 20 minutes it was stopped.
    cfg = parse_config({"engine": {"data_dir": str(tmp_path)}, "alerts": {"log_file": ""}})
    clock = ManualClock(T0)
    rt = await build_runtime(cfg, None, clock=clock)
    [feed] = rt.feeds
    for k in range(1, 40 * 60 + 1):
        clock.set(T0 + k)
        for ev in feed.market.advance_to(T0 + k):
            await rt.engine.handle(ev)
    await rt.store.set_state(STATE_KEY, feed.market.state(), T0 + 40 * 60)
    await rt.close()

    clock.set(T0 + 60 * 60)
    rt = await build_runtime(cfg, None, clock=clock)
    try:
        e = rt.engine
        latest = e.spot_hist.latest()
        [feed] = rt.feeds
        assert latest == (T0 + 60 * 60, feed.market.spot())  # the path up to now
        assert e.spot_hist.price_at(T0 + 30 * 60) is not None  # and the journal before it
        assert all(e.momentum_deltas[w] is not None for w in (1, 15, 30))
        assert e.momentum_bps is not None
        assert e.vol.state.sigma is not None and e.vol.state.regime is not None
    finally:
        await rt.close()
