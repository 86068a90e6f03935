"""Trade analytics (engine/analytics.py) on a small fixed journal, every number worked out by hand;
the settlements table (migration v3) and the engine recording settlements; `metrics` on the CLI."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import math
import sqlite3
from pathlib import Path

import pytest

from engine import analytics
from engine import store as store_mod
from engine.analytics import TradeInput, build_report, classify_exit, load_report, trade_stats
from engine.models import Trade, TradeState
from engine.pricing import apply_fill, close_record
from engine.store import SCHEMA_VERSION, Store, StoreError
from tests.engine_harness import standard
from tests.test_cli import Cli

T0 = 1_764_000_000.0  # 2025-11-24 16:00:00 UTC
DAY = 86400.0
C1, C2, C3, C4, C5, C6 = (f"KXBTCD-25NOV2416-T9{i}000" for i in range(1, 7))


def thresholds(_t: Trade) -> tuple[float | None, float | None]:
    return 50.0, 30.0  # profit_target_percent, max_loss_percent


async def _rule_exit(
    s: Store, t: Trade, rule: str, fills: list[tuple[float, float, float, float]]
) -> None:
    """Book exit fills (qty, price, fees, ts) as the engine does and close the trade by `rule`."""
    for qty, price, fees, ts in fills:
        apply_fill(t, qty, price, fees)
        await s.add_fill(
            client_order_id=None, trade_id=t.trade_id, qty=qty, price=price, fees=fees, ts=ts
        )
    close_record(t, None, rule, fills[-1][3])
    await s.save_trade(t)


async def _closed_elsewhere(s: Store, t: Trade, price: float, reason: str, ts: float) -> None:
    close_record(t, price, reason, ts)
    await s.save_trade(t)


async def build_journal(s: Store) -> None:
    """The fixed journal. Closed trades, in close order (P&L net of fees):

    id  side qty  entry  strategy venue   exit                       P&L    held     closes
    B   no   10   0.30   scalp    kalshi  max_loss 10@0.15 f0.05     -1.55  300 s    T0+400
    A   yes  10   0.40   scalp    sim     profit_target 5@0.58 f0.05
                                          + 5@0.62 f0.05 (vwap 0.60) +1.90  600 s    T0+600
    C   yes  20   0.50   swing    sim     max_loss 20@0.35           -3.00  900 s    T0+1900
    D   yes  10   0.55   swing    kalshi  trailing_drawdown 10@0.70 f0.10
                                                                     +1.40  1200 s   T0+3200
    E   yes  10   0.50   scalp    sim     manual at 0.62             +1.20  600 s    T0+3600
    I   yes  10   0.50   swing    sim     profit_target 10@0.65      +1.50  300 s    T0+DAY+500
    F   no    5   0.40   swing    kalshi  external at 0.30           -0.50  1800 s   T0+DAY+2200
    G   yes  10   0.20   scalp    sim     settled at 0               -2.00  3600 s   T0+DAY+3700

    Settlements (YES terms): C1 (A) 0, C2 (B) 0 (so NO pays 1), C3 (C) 0, C4 (D) 1, C5 (G) 0;
    C6 (I) not settled. H (open, on C6) is not in any metric.
    """
    trades = {
        "A": Trade("A", C1, "yes", 10, 0.40, T0, "scalp", "sim"),
        "B": Trade("B", C2, "no", 10, 0.30, T0 + 100, "scalp", "kalshi"),
        "C": Trade("C", C3, "yes", 20, 0.50, T0 + 1000, "swing", "sim"),
        "D": Trade("D", C4, "yes", 10, 0.55, T0 + 2000, "swing", "kalshi"),
        "E": Trade("E", C6, "yes", 10, 0.50, T0 + 3000, "scalp", "sim", peak_pnl=1.30),
        "F": Trade(
            "F", C6, "no", 5, 0.40, T0 + DAY + 400, "swing", "kalshi", peak_pnl=0.2, trough_pnl=-1.0
        ),
        "G": Trade("G", C5, "yes", 10, 0.20, T0 + DAY + 100, "scalp", "sim", trough_pnl=-2.0),
        "I": Trade("I", C6, "yes", 10, 0.50, T0 + DAY + 200, "swing", "sim"),
        "H": Trade("H", C6, "yes", 10, 0.50, T0 + DAY + 300, "swing", "sim"),
    }
    for t in trades.values():
        assert await s.add_trade(t)
    # A's marks: P&L 0.5, 2.5, 1.0, 2.0, then 1.90 at the exit: largest fall from peak 2.5 - 1.0.
    await s.add_marks(
        [("A", T0 + 100 * i, 0.4, p, 0.0) for i, p in enumerate((0.5, 2.5, 1.0, 2.0))]
    )
    # E's marks: 1.3, 0.8, then 1.20 at the exit: 1.3 - 0.8 = 0.5.
    await s.add_marks([("E", T0 + 3100, 0.63, 1.3, 26.0), ("E", T0 + 3200, 0.58, 0.8, 16.0)])
    await _rule_exit(
        s, trades["A"], "profit_target", [(5, 0.58, 0.05, T0 + 590), (5, 0.62, 0.05, T0 + 600)]
    )
    await _rule_exit(s, trades["B"], "max_loss", [(10, 0.15, 0.05, T0 + 400)])
    await _rule_exit(s, trades["C"], "max_loss", [(20, 0.35, 0.0, T0 + 1900)])
    await _rule_exit(s, trades["D"], "trailing_drawdown", [(10, 0.70, 0.10, T0 + 3200)])
    await _closed_elsewhere(s, trades["E"], 0.62, "manual", T0 + 3600)
    await _rule_exit(s, trades["I"], "profit_target", [(10, 0.65, 0.0, T0 + DAY + 500)])
    await _closed_elsewhere(s, trades["F"], 0.30, "external", T0 + DAY + 2200)
    await _closed_elsewhere(s, trades["G"], 0.0, "settled", T0 + DAY + 3700)
    for cid, value, dt in ((C1, 0.0, 3600), (C2, 0.0, 3600), (C3, 0.0, 3600), (C4, 1.0, 3600)):
        await s.record_settlement(cid, value, T0 + dt)
    await s.record_settlement(C5, 0.0, T0 + DAY + 3700)


@pytest.fixture
async def journal(tmp_path: Path):
    s = Store(tmp_path / "data" / "trades.db")
    await s.open()
    await build_journal(s)
    yield s
    await s.close()


@pytest.fixture
async def report(journal: Store) -> analytics.Report:
    # The arithmetic of the ratios on this handful of trades (shown only from 20: see below).
    return await load_report(journal, thresholds=thresholds, min_ratio_trades=0)


def approx(v: float) -> object:
    return pytest.approx(v, abs=1e-9)


# --- per trade -------------------------------------------------------------------------------


async def test_per_trade_numbers(report: analytics.Report) -> None:
    rows = {r.trade_id: r for r in report.trades}
    assert [r.trade_id for r in report.trades] == ["B", "A", "C", "D", "E", "I", "F", "G"]
    assert "H" not in rows  # open
    a = rows["A"]
    # Exit from the fills: vwap (5 × 0.58 + 5 × 0.62) / 10 = 0.60 at the last fill, T0 + 600.
    assert (a.entry_price, a.entry_ts) == (0.40, T0)
    assert (a.exit_price, a.exit_ts, a.exit_source) == (approx(0.60), T0 + 600, "fills")
    assert a.holding_seconds == 600
    # 5 × 0.18 + 5 × 0.22 − 0.10 fees = 1.90; basis 10 × 0.40 = 4.00; 1.90 / 4 = 47.5 %.
    assert (a.realized_pnl, a.fees, a.cost_basis) == (approx(1.90), approx(0.10), approx(4.0))
    assert a.return_pct == approx(47.5)
    assert (a.marks, a.max_drawdown) == (4, approx(1.5))  # 2.5 − 1.0
    assert (a.exit_reason, a.by_rule, a.classification) == ("profit_target", True, None)
    b = rows["B"]  # NO 10 @ 0.30 sold at 0.15: 10 × (0.15 − 0.30) − 0.05 = −1.55
    assert (b.realized_pnl, b.holding_seconds, b.marks, b.max_drawdown) == (
        approx(-1.55),
        300,
        0,
        0.0,
    )
    e = rows["E"]  # closed by hand at 0.62, no fills: the journal's exit
    assert (e.exit_price, e.exit_ts, e.exit_source) == (0.62, T0 + 3600, "journal")
    assert (e.realized_pnl, e.return_pct) == (approx(1.20), approx(24.0))  # 10 × 0.12; / 5.00
    assert (e.marks, e.max_drawdown, e.peak_pnl) == (2, approx(0.5), 1.30)  # 1.3 − 0.8
    assert rows["G"].realized_pnl == approx(-2.0)  # 10 × (0 − 0.20)
    assert rows["G"].holding_seconds == 3600
    assert rows["F"].realized_pnl == approx(-0.5)  # 5 × (0.30 − 0.40)


async def test_exits_not_made_by_a_rule_are_classified(report: analytics.Report) -> None:
    c = {r.trade_id: r.classification for r in report.trades}
    # E: +1.20 is 24 % (< 0.9 × 50 target) but ≥ 0.9 × its peak 1.30 = 1.17: near its peak.
    assert c["E"] == "take_profit_likely"
    # F: −0.50 is −25 % (> −0.9 × 30 = −27 %) and > 0.9 × trough −1.00 = −0.90: neither.
    assert c["F"] == "manual_close"
    # G: settled, −100 % ≤ −27 %.
    assert c["G"] == "stop_loss_likely"
    assert {c[k] for k in "ABCDI"} == {None}  # rule exits


def test_classification_thresholds() -> None:
    # Near the target, far from the peak (peak 10, P&L 2.3 = 46 % ≥ 45 %).
    assert classify_exit(2.3, 46.0, 10.0, 0.0, 50.0, 30.0) == "take_profit_likely"
    assert classify_exit(2.3, 44.0, 10.0, 0.0, 50.0, 30.0) == "manual_close"
    # No thresholds: near the peak only; a peak not above the exit counts as at the peak.
    assert classify_exit(0.9, 9.0, 1.0, 0.0) == "take_profit_likely"
    assert classify_exit(0.5, 5.0, 0.0, 0.0) == "take_profit_likely"
    assert classify_exit(-1.4, -28.0, 0.0, -5.0, 50.0, 30.0) == "stop_loss_likely"
    assert classify_exit(-1.4, -26.0, 0.0, -5.0, 50.0, 30.0) == "manual_close"
    assert classify_exit(-4.6, -20.0, 0.0, -5.0) == "stop_loss_likely"  # ≤ 0.9 × −5
    assert classify_exit(0.0, 0.0, 1.0, -1.0) == "manual_close"
    assert classify_exit(None, None, 1.0, -1.0) is None


def test_partial_fills_then_closed_elsewhere_use_the_journals_exit() -> None:
    t = Trade("x", C1, "yes", 10, 0.50, T0)
    apply_fill(t, 4, 0.60, 0.0)
    close_record(t, 0.70, "manual", T0 + 60)  # the rest (6) closed by hand at 0.70
    st = trade_stats(TradeInput(t, ({"qty": 4, "price": 0.60, "ts": T0 + 30},)))
    # The fills cover 4 of 10: the journal's average exit (4 × 0.60 + 6 × 0.70) / 10 = 0.66.
    assert (st.exit_price, st.exit_ts, st.exit_source) == (approx(0.66), T0 + 60, "journal")
    assert st.realized_pnl == approx(1.6)  # 4 × 0.10 + 6 × 0.20


# --- aggregates ------------------------------------------------------------------------------


async def test_overall_aggregate(report: analytics.Report) -> None:
    o = report.overall
    # P&L: B −1.55, A +1.90, C −3.00, D +1.40, E +1.20, I +1.50, F −0.50, G −2.00
    assert (o.trades, o.wins, o.losses, o.win_rate) == (8, 4, 4, 0.5)
    assert o.total_pnl == approx(-1.05)
    assert o.avg_pnl == approx(-1.05 / 8)
    assert (o.best, o.worst) == (approx(1.90), approx(-3.00))
    # holds 300 + 600 + 900 + 1200 + 600 + 300 + 1800 + 3600 = 9300 s / 8
    assert o.avg_holding_seconds == approx(1162.5)
    # wins 1.90 + 1.40 + 1.20 + 1.50 = 6.00; losses 1.55 + 3.00 + 0.50 + 2.00 = 7.05
    assert (o.gross_wins, o.gross_losses) == (approx(6.0), approx(-7.05))
    assert o.profit_factor == approx(6.0 / 7.05)  # 0.851
    # 0.5 × (6.00 / 4) − 0.5 × (7.05 / 4) = 0.75 − 0.88125 = −0.13125 (= the average P&L)
    assert (o.avg_win, o.avg_loss) == (approx(1.5), approx(1.7625))
    assert o.expectancy == approx(-0.13125)
    # Returns (P&L / basis): A 1.90/4 = .475, B −1.55/3, C −3/10 = −.30, D 1.40/5.5, E 1.20/5
    # = .24, I 1.50/5 = .30, F −0.50/2 = −.25, G −2/2 = −1.
    r = [0.475, -1.55 / 3, -0.30, 1.40 / 5.5, 0.24, 0.30, -0.25, -1.0]
    mean = (0.475 - 0.516667 - 0.30 + 0.254545 + 0.24 + 0.30 - 0.25 - 1.0) / 8  # −0.099640
    assert mean == pytest.approx(sum(r) / 8, abs=1e-6)
    # sample variance Σ(r − mean)² / 7 = 1.778038 / 7 = 0.254005; sd 0.503989
    assert o.sharpe == pytest.approx(-0.099640 / 0.503989, abs=1e-5)  # −0.19770
    # downside: (0.516667² + 0.30² + 0.25² + 1²) / 8 = 1.419444 / 8; sqrt = 0.421225
    assert o.sortino == pytest.approx(-0.099640 / 0.421225, abs=1e-5)  # −0.23655
    # equity by close time: 0, −1.55, 0.35, −2.65, −1.25, −0.05, 1.45, 0.95, −1.05: 0.35 → −2.65
    assert o.max_drawdown == approx(3.0)
    assert o.unknown_pnl == 0


async def test_aggregates_by_strategy_venue_and_reason(report: analytics.Report) -> None:
    scalp, swing = report.by_strategy["scalp"], report.by_strategy["swing"]
    # scalp: B −1.55, A +1.90, E +1.20, G −2.00 (close order)
    assert (scalp.trades, scalp.wins, scalp.losses) == (4, 2, 2)
    assert scalp.total_pnl == approx(-0.45)
    assert scalp.profit_factor == approx(3.10 / 3.55)
    assert scalp.avg_holding_seconds == approx((300 + 600 + 600 + 3600) / 4)
    assert scalp.max_drawdown == approx(2.0)  # equity 0, −1.55, .35, 1.55, −.45: 1.55 → −.45
    # swing: C −3.00, D +1.40, I +1.50, F −0.50
    assert swing.total_pnl == approx(-0.60)
    assert swing.max_drawdown == approx(3.0)  # 0 → −3.00
    assert (swing.best, swing.worst) == (approx(1.5), approx(-3.0))
    kalshi, sim = report.by_venue["kalshi"], report.by_venue["sim"]
    assert (kalshi.trades, kalshi.wins, kalshi.total_pnl) == (3, 1, approx(-0.65))
    assert kalshi.win_rate == pytest.approx(1 / 3)
    assert (sim.trades, sim.wins, sim.losses, sim.total_pnl) == (5, 3, 2, approx(-0.40))
    assert set(report.by_exit_reason) == {
        "profit_target",
        "max_loss",
        "trailing_drawdown",
        "manual",
        "external",
        "settled",
    }
    pt = report.by_exit_reason["profit_target"]  # A +1.90 (47.5 %), I +1.50 (30 %)
    assert (pt.trades, pt.wins, pt.losses, pt.total_pnl) == (2, 2, 0, approx(3.4))
    assert pt.profit_factor is None and pt.sortino is None  # no losses
    # mean (0.475 + 0.30) / 2 = 0.3875; sd |0.475 − 0.30| / √2 = 0.123744
    assert pt.sharpe == pytest.approx(0.3875 / 0.123744, abs=1e-4)  # 3.1315
    assert pt.max_drawdown == 0.0
    ml = report.by_exit_reason["max_loss"]
    assert (ml.profit_factor, ml.win_rate, ml.total_pnl) == (0.0, 0.0, approx(-4.55))
    assert report.by_exit_reason["settled"].sharpe is None  # one trade


# --- effectiveness ---------------------------------------------------------------------------


async def test_effectiveness_both_ways(report: analytics.Report) -> None:
    rows = {r.trade_id: r for r in report.trades}
    # A: YES @0.40, settled at 0: held = 10 × (0 − 0.40) − 0.10 = −4.10; saved 1.90 + 4.10 = 6.00
    assert (rows["A"].settlement, rows["A"].if_held_pnl) == (0.0, approx(-4.10))
    assert (rows["A"].saved, rows["A"].given_up) == (approx(6.0), 0.0)
    # B: NO @0.30, YES settled at 0 so NO pays 1: held = 10 × (1 − 0.30) − 0.05 = 6.95;
    # given up 6.95 + 1.55 = 8.50
    assert rows["B"].if_held_pnl == approx(6.95)
    assert (rows["B"].saved, rows["B"].given_up) == (0.0, approx(8.5))
    # C: 20 × (0 − 0.50) = −10; saved −3 + 10 = 7.00
    assert (rows["C"].if_held_pnl, rows["C"].saved) == (approx(-10.0), approx(7.0))
    # D: YES settled at 1: 10 × (1 − 0.55) − 0.10 = 4.40; given up 4.40 − 1.40 = 3.00
    assert (rows["D"].if_held_pnl, rows["D"].given_up) == (approx(4.4), approx(3.0))
    # I: its contract has not settled; G settled but was not closed by a rule
    assert rows["I"].if_held_pnl is None and rows["I"].saved is None
    assert rows["G"].if_held_pnl is None and rows["G"].settlement == 0.0

    eff = report.effectiveness
    assert list(eff) == ["max_loss", "profit_target", "trailing_drawdown"]  # RULE_ORDER
    pt = eff["profit_target"]
    assert (pt.exits, pt.settled, pt.pending) == (2, 1, 1)
    assert (pt.realized_pnl, pt.if_held_pnl) == (approx(1.9), approx(-4.1))
    assert (pt.saved, pt.given_up, pt.net, pt.helped, pt.hurt) == (
        approx(6.0),
        0.0,
        approx(6.0),
        1,
        0,
    )
    ml = eff["max_loss"]  # B gave up 8.50, C saved 7.00
    assert (ml.exits, ml.settled, ml.pending) == (2, 2, 0)
    assert (ml.realized_pnl, ml.if_held_pnl) == (approx(-4.55), approx(6.95 - 10.0))
    assert (ml.saved, ml.given_up, ml.net) == (approx(7.0), approx(8.5), approx(-1.5))
    assert (ml.helped, ml.hurt) == (1, 1)
    td = eff["trailing_drawdown"]
    assert (td.saved, td.given_up, td.net) == (0.0, approx(3.0), approx(-3.0))
    tot = report.effectiveness_total  # saved 6 + 7 = 13, given up 8.5 + 3 = 11.5
    assert (tot.exits, tot.settled, tot.pending) == (5, 4, 1)
    assert (tot.saved, tot.given_up, tot.net) == (approx(13.0), approx(11.5), approx(1.5))


def test_if_held_of_a_short_option_with_a_recorded_settlement() -> None:
    t = Trade("o", "SPY-C500", "short", 2, 3.0, T0, multiplier=100.0, fees=1.0)
    # short 2 × 100 at 3.00, worth 1.00 at expiry: −1 × 2 × (1 − 3) × 100 − 1 = 399
    assert analytics.if_held_pnl(t, 1.0) == approx(399.0)


async def test_filters(journal: Store) -> None:
    day2 = T0 + DAY - 16 * 3600  # 2025-11-25 00:00 UTC
    r = await load_report(journal, since=day2, thresholds=thresholds)
    assert [t.trade_id for t in r.trades] == ["I", "F", "G"]
    assert r.overall.total_pnl == approx(-1.0)  # 1.50 − 0.50 − 2.00
    r = await load_report(journal, strategy="swing")
    assert {t.trade_id for t in r.trades} == {"C", "D", "I", "F"}
    assert set(r.by_strategy) == {"swing"}
    assert list(r.effectiveness) == ["max_loss", "profit_target", "trailing_drawdown"]


def test_empty_report() -> None:
    r = build_report([])
    assert r.overall.trades == 0 and r.overall.win_rate is None and r.overall.sharpe is None
    assert r.effectiveness == {}
    assert "0 closed trade(s)" in analytics.format_text(r)
    assert analytics.format_csv(r).strip() == ",".join(analytics.CSV_COLUMNS)
    json.dumps(r.to_dict(), allow_nan=False)


async def test_text_json_and_csv_output(report: analytics.Report) -> None:
    text = analytics.format_text(report)
    for piece in ("Overall", "By strategy", "By venue", "By exit reason", "effectiveness"):
        assert piece in text
    assert "-1.05" in text and "50.0%" in text and "0.85" in text and "19m22s" in text
    assert "+6.00" in text and "8.50" in text and "-1.50" in text and "all rules" in text
    d = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert d["overall"]["total_pnl"] == approx(-1.05)
    assert d["by_exit_reason"]["profit_target"]["profit_factor"] is None
    rows = list(csv.DictReader(io.StringIO(analytics.format_csv(report))))
    assert [r["trade_id"] for r in rows] == ["B", "A", "C", "D", "E", "I", "F", "G"]
    assert float(rows[1]["realized_pnl"]) == approx(1.9) and rows[1]["classification"] == ""


# --- the journal and the engine --------------------------------------------------------------


async def test_settlements_round_trip_and_replace(tmp_path: Path) -> None:
    async with Store(tmp_path / "j.db") as s:
        await s.record_settlement(C1, 1.0, T0)
        await s.record_settlement(C2, 0.0, T0 + 1)
        await s.record_settlement(C1, 0.0, T0 + 2)  # a repeated settlement replaces the first
        assert await s.settlements() == {C1: (0.0, T0 + 2), C2: (0.0, T0 + 1)}
        with pytest.raises(StoreError, match="not a number"):
            await s.record_settlement(C3, math.nan, T0)
    ro = Store(tmp_path / "j.db")
    await ro.open(readonly=True)
    try:
        assert set(await ro.settlements()) == {C1, C2}
        with pytest.raises(StoreError, match="read-only"):
            await ro.record_settlement(C3, 1.0, T0)
    finally:
        await ro.close()


async def test_v2_journal_migrates_to_v3_keeping_its_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert SCHEMA_VERSION >= 3  # v4 (the spot history) came after
    path = tmp_path / "j.db"
    monkeypatch.setattr(store_mod, "MIGRATIONS", store_mod.MIGRATIONS[:2])
    monkeypatch.setattr(store_mod, "SCHEMA_VERSION", 2)
    async with Store(path) as s:
        t = Trade("A", C1, "yes", 10, 0.40, T0, multiplier=1.0)
        await s.add_trade(t)
        await _rule_exit(s, t, "max_loss", [(10, 0.20, 0.05, T0 + 60)])
        await s.add_mark("A", T0 + 30, 0.3, -1.0, -25.0)
    with sqlite3.connect(path) as c:
        assert c.execute("PRAGMA user_version").fetchone()[0] == 2
        assert (
            c.execute("SELECT name FROM sqlite_master WHERE name='settlements'").fetchone() is None
        )
    monkeypatch.undo()
    ro = Store(path)  # read-only cannot upgrade: it says to start the supervisor once
    with pytest.raises(StoreError, match="start the supervisor once"):
        await ro.open(readonly=True)
    async with Store(path) as s:
        got = await s.get_trade("A")
        assert got is not None and got.realized_pnl == approx(-2.05)
        assert len(await s.fills_for_trade("A")) == 1 and len(await s.marks("A")) == 1
        assert await s.settlements() == {}
        await s.record_settlement(C1, 1.0, T0 + 3600)
        r = await load_report(s)
    with sqlite3.connect(path) as c:
        assert c.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    # held: 10 × (1 − 0.40) − 0.05 = 5.95; max_loss gave up 5.95 + 2.05 = 8.00
    assert r.effectiveness["max_loss"].given_up == approx(8.0)


async def test_the_engine_records_settlements_of_trades_it_closed_earlier(tmp_path: Path) -> None:
    h = await standard(tmp_path)  # max_loss 30 %; t1: YES 10 @ 0.50
    await h.quote(0.30, 0.32)  # −40 %: max_loss closes t1 at the bid
    t1 = await h.store.get_trade("t1")
    assert t1 is not None and t1.exit_reason == "max_loss"
    await h.settle(1.0)
    assert await h.store.settlements() == {
        "KXBTCD-25NOV2415-T97000": (1.0, pytest.approx(h.clock.now()))
    }
    await h.settle(7.0)  # an impossible value is refused before anything is recorded
    assert (await h.store.settlements())["KXBTCD-25NOV2415-T97000"][0] == 1.0
    r = await load_report(h.store)
    row = r.trades[0]
    # held to 1: 10 × (1 − 0.50) − fees; the stop gave up held − realised
    assert row.if_held_pnl == approx(5.0 - t1.fees)
    assert r.effectiveness["max_loss"].given_up == approx(5.0 - t1.fees - t1.realized_pnl)
    await h.close()


# --- the command -----------------------------------------------------------------------------


@pytest.fixture
def cli_journal(tmp_path: Path) -> Cli:
    c = Cli(tmp_path)
    c.write_config(
        """
        [auto_stop.criteria]
        profit_target_percent = 50
        max_loss_percent = 30
        """
    )

    async def make() -> None:
        async with Store(c.data / "trades.db") as s:
            await build_journal(s)

    asyncio.run(make())
    return c


def test_metrics_command_text_json_csv(cli_journal: Cli) -> None:
    cli = cli_journal
    text = cli.ok("--config", str(cli.config), "metrics")
    assert "8 closed trade(s)" in text
    for piece in ("By strategy", "scalp", "swing", "kalshi", "max_loss", "all rules"):
        assert piece in text
    assert "-1.05" in text and "+6.00" in text and "8.50" in text
    d = json.loads(cli.ok("--config", str(cli.config), "metrics", "--json"))
    assert d["overall"]["trades"] == 8 and d["overall"]["total_pnl"] == approx(-1.05)
    assert d["effectiveness"]["max_loss"]["given_up"] == approx(8.5)
    assert {t["trade_id"]: t["classification"] for t in d["trades"]}["E"] == "take_profit_likely"
    rows = list(csv.reader(io.StringIO(cli.ok("--config", str(cli.config), "metrics", "--csv"))))
    assert rows[0] == list(analytics.CSV_COLUMNS) and len(rows) == 1 + 8


def test_metrics_command_filters(cli_journal: Cli) -> None:
    cli = cli_journal
    d = json.loads(
        cli.ok("--config", str(cli.config), "metrics", "--since", "2025-11-25", "--json")
    )
    assert [t["trade_id"] for t in d["trades"]] == ["I", "F", "G"]
    assert d["filters"]["since"] == T0 + DAY - 16 * 3600
    assert "closed since 2025-11-25" in cli.ok(
        "--config", str(cli.config), "metrics", "--since", "2025-11-25"
    )
    rows = list(
        csv.DictReader(
            io.StringIO(
                cli.ok("--config", str(cli.config), "metrics", "--strategy", "scalp", "--csv")
            )
        )
    )
    assert sorted(r["trade_id"] for r in rows) == ["A", "B", "E", "G"]
    bad = cli.run("--config", str(cli.config), "metrics", "--since", "last tuesday")
    assert bad.returncode == 2 and "YYYY-MM-DD" in bad.stderr
    both = cli.run("--config", str(cli.config), "metrics", "--json", "--csv")
    assert both.returncode == 2


def test_metrics_command_beside_a_running_engine(cli_journal: Cli) -> None:
    """The engine holds the journal's lock: metrics reads it read-only all the same."""

    async def hold_and_run() -> str:
        async with Store(cli_journal.data / "trades.db") as s:  # the engine's lock
            assert s.engine_pid() is not None
            proc = await asyncio.to_thread(
                cli_journal.run, "metrics", "--config", str(cli_journal.config), "--json"
            )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    assert json.loads(asyncio.run(hold_and_run()))["overall"]["trades"] == 8


def test_metrics_command_without_a_journal(tmp_path: Path) -> None:
    cli = Cli(tmp_path)
    cli.write_config()
    assert "no journal at" in cli.ok("--config", str(cli.config), "metrics")
    assert (
        json.loads(cli.ok("--config", str(cli.config), "metrics", "--json"))["overall"]["trades"]
        == 0
    )
    assert not (cli.data / "trades.db").exists()


async def test_ratios_of_a_handful_of_trades_are_not_shown(journal: Store) -> None:
    r = await load_report(journal, thresholds=thresholds)  # 8 closed trades, fewer than 20
    o = r.overall
    assert o.trades == 8 < analytics.MIN_RATIO_TRADES
    assert (o.sharpe, o.sortino, o.profit_factor) == (None, None, None)
    assert o.expectancy is not None and o.win_rate == 0.5  # plain averages and counts stay
    text = analytics.format_text(r)
    overall = next(line for line in text.splitlines() if line.lstrip().startswith("all "))
    assert overall.count("n/a (n=8)") == 3, overall
    assert r.to_dict()["min_ratio_trades"] == 20


def test_ratios_are_shown_from_twenty_trades() -> None:
    def stats(i: int, pnl: float) -> analytics.TradeStats:
        full = trade_stats(
            TradeInput(
                Trade(f"t{i}", "C", "yes", 1.0, 0.5, 1.0e9 + i, state=TradeState.CLOSED,
                      closed_ts=1.0e9 + i + 60, exit_price=0.5 + pnl, exit_reason="manual",
                      realized_pnl=pnl),
                (),
                (),
            )
        )  # fmt: skip
        return full

    rows = [stats(i, 0.1 if i % 3 else -0.05) for i in range(20)]
    a = analytics.aggregate(rows)
    assert a.sharpe is not None and a.sortino is not None and a.profit_factor is not None
    b = analytics.aggregate(rows[:19])
    assert (b.sharpe, b.sortino, b.profit_factor) == (None, None, None)
