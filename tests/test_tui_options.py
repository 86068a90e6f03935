"""The screen with an option chain (IBKR-like): the strike table's call/put layout with IV,
delta, time value and N(d2) from IV, the market pane's VIX regime and exchange close, and each
option trade's time value state (SAFE / RISK / CRITICAL) in the trades pane.

The engine is the real one in its host; its simulated BTC market is replaced, before the first
picture, by an SPY chain (contracts, quotes with the venue's greeks, an SPY spot), the NYSE's
real hours and three option trades. T0 is Monday 2025-11-24 16:00 UTC (11:00 ET).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from textual.pilot import Pilot

from engine import signals
from engine.clock import ManualClock
from engine.config import Config
from engine.market_hours import MarketHours
from engine.models import Contract, ContractEvent, OpenEvent, Quote, QuoteEvent, SpotEvent
from engine.supervisor import Engine
from tests.tui_harness import T0, running_app, screen_text, settle, ui_config
from tui.app import TradeSupervisorApp
from tui.host import EngineHost
from tui.panes import MarketPane, StrikesPane, TradesPane
from tui.rows import OPTION_STRIKE_COLUMNS, STRIKE_COLUMNS, TRADE_COLUMNS_TV

SPOT = 600.0
EXPIRY = "20251124"
HOURS = MarketHours("XNYS", start="2025-01-02", end="2026-12-31")
CLOSE = HOURS.close_of(EXPIRY)  # 21:00 UTC, 16:00 ET
# strike -> (call bid, ask, iv, delta), (put bid, ask, iv, delta)
CHAIN: dict[float, tuple[tuple[float, float, float, float], tuple[float, float, float, float]]] = {
    590.0: ((10.10, 10.20, 0.22, 0.93), (0.05, 0.09, 0.24, -0.07)),
    600.0: ((2.00, 2.10, 0.20, 0.52), (1.90, 2.00, 0.21, -0.48)),
    610.0: ((0.10, 0.14, 0.19, 0.08), (10.05, 10.25, 0.23, -0.92)),
}


def _cid(strike: float, right: str) -> str:
    return f"SPY {EXPIRY} {strike:g}{right}"


def options_config(tmp: Path) -> Config:
    return ui_config(
        tmp,
        sim={"demo_trades": 0},
        auto_stop={"mode": "alert_only", "criteria": {"min_time_value": 0.10}},
    )


async def _option_market(e: Engine) -> None:
    """Swap the sim's BTC ladder for an SPY chain, with VIX, the NYSE hours and three trades."""
    now = e.clock.now()
    e.contracts.clear()
    e.quotes.clear()
    e.spot_hist.clear()
    e.market_hours = HOURS
    for k, (call, put) in CHAIN.items():
        for right, (bid, ask, iv, delta) in (("C", call), ("P", put)):
            kind = "option_call" if right == "C" else "option_put"
            c = Contract(_cid(k, right), "SPY", kind, k, CLOSE, multiplier=100.0)  # type: ignore[arg-type]
            await e.handle(ContractEvent(now, c))
            q = Quote(c.id, bid, ask, now, iv=iv, delta=delta, und_price=SPOT)
            await e.handle(QuoteEvent(now, q))
    await e.handle(SpotEvent(now, "SPY", SPOT))
    await e.vix_update(18.4, now)
    # Time value (mid − intrinsic at 600) against min_time_value 0.10:
    # 600C 2.05 (SAFE), 590C 10.15 − 10 = 0.15 (RISK), 590P 0.07 (CRITICAL: the rule fires).
    for tid, cid in (("safe", "600C"), ("risk", "590C"), ("crit", "590P")):
        k, right = float(cid[:-1]), cid[-1]
        await e.handle(OpenEvent(now, tid, _cid(k, right), "long", 1, 1.0))


def _cell(pane: Any, row: str, col: str) -> str:
    return str(pane.table.get_cell(row, col))


async def test_the_option_chain_vix_close_and_time_value_states(tmp_path: Path) -> None:
    async with running_app(tmp_path, config=options_config(tmp_path), warmup_seconds=0) as (
        app,
        pilot,
        host,
    ):
        await host.call(_option_market)
        await host.sync(force=True)
        await settle(pilot)
        main = app.main

        strikes = main.query_one(StrikesPane)
        assert strikes.table.columns_spec == OPTION_STRIKE_COLUMNS
        assert str(strikes.border_title).startswith(f"Options SPY {EXPIRY}")
        assert strikes.table.keys == [f"SPY {EXPIRY} {k:g}" for k in (590, 600, 610)]
        tau = signals.tau_years(CLOSE, T0)
        for k, (call, put) in CHAIN.items():
            row = f"SPY {EXPIRY} {k:g}"
            for side, (bid, ask, iv, delta), right in (("c", call, "C"), ("p", put, "P")):
                intrinsic = max(SPOT - k, 0.0) if right == "C" else max(k - SPOT, 0.0)
                prob = (
                    signals.prob_above(SPOT, k, iv, tau)
                    if right == "C"
                    else signals.prob_below(SPOT, k, iv, tau)
                )
                assert _cell(strikes, row, f"{side}_ba") == f"{bid:.2f}/{ask:.2f}"
                assert _cell(strikes, row, f"{side}_iv") == f"{iv * 100:.1f}"
                assert _cell(strikes, row, f"{side}_delta") == f"{delta:+.2f}"
                assert _cell(strikes, row, f"{side}_tv") == f"{(bid + ask) / 2 - intrinsic:.2f}"
                assert _cell(strikes, row, f"{side}_prob") == f"{prob:.2f}"
        # The at-the-money strike is 600; 590 is held (call and put).
        assert _cell(strikes, f"SPY {EXPIRY} 600", "flag").startswith("◆")
        assert "●" in _cell(strikes, f"SPY {EXPIRY} 590", "flag")
        # N(d2) from IV against |delta|, at the money with 5 hours left: 0.499 vs 0.52 (by hand:
        # d2 = −σ√τ/2 with τ = 5 h of a 365-day year).
        assert _cell(strikes, f"SPY {EXPIRY} 600", "c_prob") == "0.50"
        assert math.isclose(signals.prob_above(SPOT, 600.0, 0.20, tau), 0.49905, abs_tol=1e-5)
        assert tau == 5 * 3600 / (365 * 86400)

        market = str(main.query_one(MarketPane).query_one("#market-lines").render())
        assert "closes 16:00 ET" in market and "5:00:00" in market  # TTC to 21:00 UTC
        assert "Event SPY 20251124" in market
        assert "MEDIUM" in market and "VIX 18.4" in market

        trades = main.query_one(TradesPane)
        assert trades.table.columns_spec == TRADE_COLUMNS_TV
        assert _cell(trades, "safe", "tv") == "SAFE 2.05"
        assert _cell(trades, "risk", "tv") == "RISK .15"
        assert _cell(trades, "crit", "tv") == "CRITICAL .07"
        assert "FIRED" in _cell(trades, "crit", "nearest")

        # 80x24: the stacked layout still shows a trade's state and its time value state.
        await pilot.resize_terminal(80, 24)
        await settle(pilot)
        text = screen_text(app)
        assert "CRITICAL .07" in text and "RISK .15" in text


async def test_time_value_without_the_rule_shows_the_value_alone(tmp_path: Path) -> None:
    """No min_time_value: there is no floor to measure a state against, but an options trader
    still reads each option's time value in the trades pane."""
    cfg = ui_config(tmp_path, sim={"demo_trades": 0}, auto_stop={"mode": "alert_only"})
    async with running_app(tmp_path, config=cfg, warmup_seconds=0) as (app, pilot, host):
        await host.call(_option_market)
        await host.sync(force=True)
        await settle(pilot)
        trades = app.main.query_one(TradesPane)
        assert trades.table.columns_spec == TRADE_COLUMNS_TV
        cells = {tid: _cell(trades, tid, "tv") for tid in ("safe", "risk", "crit")}
        assert cells == {"safe": "2.05", "risk": ".15", "crit": ".07"}


async def test_binary_strikes_keep_their_layout(tmp_path: Path) -> None:
    async with running_app(tmp_path) as (app, _pilot, _host):
        assert app.main.query_one(StrikesPane).table.columns_spec == STRIKE_COLUMNS
        assert app.main.query_one(StrikesPane).border_title == "Strikes"
        assert "Time value" not in screen_text(app)


def test_option_chain_160x50(snap_compare: Any, tmp_path: Path) -> None:
    """The option layout: calls | strike | puts, VIX regime, NYSE close, time value states."""
    cfg = options_config(tmp_path)
    host = EngineHost(cfg, None, clock=ManualClock(T0), drive=False, auto_publish=False)
    host.start()

    async def run_before(pilot: Pilot[Any]) -> None:
        await host.call(_option_market)
        await host.sync(force=True)
        await settle(pilot)
        pilot.app.clear_notifications()
        await settle(pilot)

    try:
        assert snap_compare(
            TradeSupervisorApp(cfg, host), terminal_size=(160, 50), run_before=run_before
        )
    finally:
        host.stop()
