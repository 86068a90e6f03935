"""The metrics screen (`m`): the real app over the real engine (both hosts), every number checked
against the report `engine.analytics` computes directly from the journal; plus its SVG snapshot
on a fixed journal (`uv run pytest tests/test_tui_metrics.py --snapshot-update` to update)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from textual.binding import Binding
from textual.pilot import Pilot
from textual.widgets import DataTable

from engine import analytics
from engine.clock import ManualClock
from engine.commands import Command
from engine.config import Config
from engine.models import Trade
from engine.store import JOURNAL_FILENAME, Store
from tests.test_analytics import _closed_elsewhere, _rule_exit
from tests.tui_harness import T0, running_app, screen_text, settle, ui_config
from tui.app import MainScreen, TradeSupervisorApp
from tui.chart import PnlChart
from tui.host import EngineHost
from tui.screens.help import HelpScreen
from tui.screens.metrics import ALL_RULES, EMPTY_TEXT, GROUPS, MetricsScreen

BOTH_HOSTS = pytest.mark.parametrize("host_kind", ["thread", "process"])
WORKERS_TIMEOUT = 10.0
SnapCompare = Callable[..., bool]


async def _press(pilot: Pilot[Any], *keys: str) -> None:
    await pilot.press(*keys)
    await asyncio.wait_for(pilot.app.workers.wait_for_complete(), WORKERS_TIMEOUT)
    await settle(pilot)


async def _report(cfg: Config) -> analytics.Report:
    """The report computed directly from the journal (read-only, beside the running engine)."""
    store = Store(cfg.data_path() / JOURNAL_FILENAME)
    await store.open(readonly=True, lock=False)
    try:
        return await analytics.load_report(store, thresholds=analytics.config_thresholds(cfg))
    finally:
        await store.close()


def _num(text: str) -> float | None:
    """A number as the screen shows it ("+1,234.50", "45.0%", "0.93"); None for "—"."""
    text = text.strip()
    if text == "—" or text.startswith("n/a"):
        return None
    v = float(text.replace(",", "").rstrip("%"))
    return v / 100.0 if text.endswith("%") else v


def _close(a: float | None, b: float | None, places: int = 2) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return abs(a - b) <= 0.5 * 10**-places + 1e-9


def _cells(table: DataTable[Any], row: str) -> dict[str, str]:
    return {
        str(col.key.value): table.get_cell(row, col.key).plain  # type: ignore[union-attr]
        for col in table.columns.values()
    }


def _check_aggregate(cells: dict[str, str], a: analytics.Aggregate) -> None:
    assert int(cells["trades"]) == a.trades
    assert int(cells["wins"]) == a.wins
    assert int(cells["losses"]) == a.losses
    assert _close(_num(cells["win %"]), a.win_rate, 3)
    assert _close(_num(cells["total P&L"]), a.total_pnl)
    assert _close(_num(cells["avg P&L"]), a.avg_pnl)
    assert _close(_num(cells["PF"]), a.profit_factor)
    assert _close(_num(cells["expect."]), a.expectancy)
    assert _close(_num(cells["Sharpe"]), a.sharpe)
    assert _close(_num(cells["Sortino"]), a.sortino)
    assert _close(_num(cells["max DD"]), a.max_drawdown)
    assert cells["avg hold"] == analytics.fmt_duration(a.avg_holding_seconds)


def _check_screen(app: TradeSupervisorApp, report: analytics.Report) -> None:
    screen = app.screen
    assert isinstance(screen, MetricsScreen)
    text = screen_text(app)
    assert f"{len(report.trades)} closed trade" in text
    o = report.overall
    shown = dict(screen.overall_cells)
    assert int(shown["trades"]) == o.trades
    assert _close(_num(shown["win rate"]), o.win_rate, 3)
    assert _close(_num(shown["total P&L"]), o.total_pnl)
    assert _close(_num(shown["average P&L"]), o.avg_pnl)
    assert _close(_num(shown["profit factor"]), o.profit_factor)
    assert _close(_num(shown["expectancy"]), o.expectancy)
    assert _close(_num(shown["Sharpe"]), o.sharpe)
    assert _close(_num(shown["Sortino"]), o.sortino)
    assert _close(_num(shown["max drawdown"]), o.max_drawdown)
    assert shown["avg holding"] == analytics.fmt_duration(o.avg_holding_seconds)
    assert shown["wins / losses"] == f"{o.wins} / {o.losses}"
    for label, value in screen.overall_cells[:6]:  # the first rows are on screen, as shown
        assert re.search(rf"{re.escape(label)}\s+{re.escape(value)}", text), (label, value, text)
    # The equity curve: cumulative realised P&L by close time, the engine's.
    assert screen.query_one(PnlChart).points == tuple(analytics.equity_curve(report.trades))
    # Per rule: exits, settled, pending, saved, given up, net.
    rules = screen.query_one("#metrics-rules", DataTable)
    expected = {**report.effectiveness, ALL_RULES: report.effectiveness_total}
    assert [str(k.value) for k in rules.rows] == list(expected)
    for rule, e in expected.items():
        c = _cells(rules, rule)
        assert (int(c["exits"]), int(c["settled"]), int(c["pending"])) == (
            e.exits,
            e.settled,
            e.pending,
        )
        for col, v in (
            ("realised", e.realized_pnl),
            ("if held", e.if_held_pnl),
            ("saved", e.saved),
            ("given up", e.given_up),
            ("net", e.net),
        ):
            assert _close(_num(c[col]), v), (rule, col, c)


async def _check_groups(app: TradeSupervisorApp, pilot: Pilot[Any], report: analytics.Report):
    screen = app.screen
    assert isinstance(screen, MetricsScreen)
    for key, label in GROUPS:
        table = screen.query_one("#metrics-groups", DataTable)
        groups: dict[str, analytics.Aggregate] = getattr(report, key)
        assert f"By {label}" in screen_text(app)
        assert [str(k.value) for k in table.rows] == list(groups)
        for name, a in groups.items():
            _check_aggregate(_cells(table, name), a)
        await _press(pilot, "g")
    assert screen.group_index == 0  # back to strategy


# --- pilot tests ---------------------------------------------------------------------------------


@BOTH_HOSTS
async def test_m_shows_the_journals_metrics_and_escape_closes(
    tmp_path: Path, host_kind: str
) -> None:
    async with running_app(tmp_path, host_kind=host_kind) as (app, pilot, host):
        # demo-1 closed by hand; demo-2 and demo-3 by their max_loss rule (a tiny override).
        assert (await host.command(Command("close", "demo-1"))).ok
        for tid in ("demo-2", "demo-3"):
            cmd = Command("set_overrides", tid, {"max_loss_percent": 0.01})
            assert (await host.command(cmd)).ok
        await host.advance(5)
        await settle(pilot)

        await _press(pilot, "m")
        assert isinstance(app.screen, MetricsScreen)
        report = await _report(app.config)
        assert len(report.trades) == 3 and set(report.effectiveness) == {"max_loss"}
        _check_screen(app, report)
        await _check_groups(app, pilot, report)

        # r reads the journal again: a trade closed meanwhile is counted.
        assert (await host.command(Command("close", "demo-4"))).ok
        await host.advance(2)
        await _press(pilot, "r")
        report = await _report(app.config)
        assert len(report.trades) == 4
        _check_screen(app, report)

        await _press(pilot, "escape")
        assert isinstance(app.screen, MainScreen)


async def test_metrics_with_no_closed_trades_says_so(tmp_path: Path) -> None:
    async with running_app(tmp_path, size=(80, 24)) as (app, pilot, _host):
        await _press(pilot, "m")
        assert isinstance(app.screen, MetricsScreen)
        text = screen_text(app)
        assert "0 closed trades" in text
        assert f"{EMPTY_TEXT}: the metrics appear here once a trade has closed." in text
        await _press(pilot, "q")  # q closes the metrics, not the app
        assert isinstance(app.screen, MainScreen)
        assert app.is_running


async def test_metrics_scroll_at_80x24(tmp_path: Path) -> None:
    cfg = ui_config(tmp_path)
    await _fixed_journal(cfg)
    async with running_app(tmp_path, size=(80, 24), config=cfg) as (app, pilot, _host):
        await _press(pilot, "m")
        assert "Auto-stop effectiveness" not in screen_text(app)
        await _press(pilot, "end")
        text = screen_text(app)
        assert "Auto-stop effectiveness" in text and ALL_RULES in text
        await _press(pilot, "escape")
        assert isinstance(app.screen, MainScreen)


async def test_the_metrics_key_is_in_help_and_remappable(tmp_path: Path) -> None:
    cfg = ui_config(tmp_path, ui={"keys": {"metrics": "M"}})
    async with running_app(tmp_path, config=cfg) as (app, pilot, _host):
        await _press(pilot, "question_mark")
        assert isinstance(app.screen, HelpScreen)
        assert re.search(r"M\s+metrics\s+Metrics", screen_text(app))
        await _press(pilot, "escape")
        await _press(pilot, "m")
        assert isinstance(app.screen, MainScreen)
        await _press(pilot, "M")
        assert isinstance(app.screen, MetricsScreen)
        await _press(pilot, "escape")
        names = [c.title for c in app.get_system_commands(app.screen)]
        assert "Metrics" in names


def test_metrics_screen_bindings_have_ids_and_tooltips() -> None:
    for b in MetricsScreen.BINDINGS:
        assert isinstance(b, Binding) and b.id and b.tooltip


# --- snapshot on a fixed journal -----------------------------------------------------------------

C1, C2, C3, C4 = (f"KXBTCD-25NOV2316-T9{i}000" for i in range(1, 5))
DAY = 86400.0
START = T0 - 2 * DAY


async def _fixed_journal(cfg: Config) -> None:
    """Six closed trades two days before T0 (P&L net of fees): rule exits, one settled after its
    stop, a manual close and an external one."""
    path = cfg.data_path() / JOURNAL_FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    s = Store(path)
    await s.open()
    try:
        trades = {
            "A": Trade("A", C1, "yes", 10, 0.40, START, "scalp", "sim"),
            "B": Trade("B", C2, "no", 10, 0.30, START + 100, "scalp", "kalshi"),
            "C": Trade("C", C3, "yes", 20, 0.50, START + 1000, "swing", "sim"),
            "D": Trade("D", C4, "yes", 10, 0.55, START + 2000, "swing", "kalshi"),
            "E": Trade("E", C4, "yes", 10, 0.50, START + 3000, "scalp", "sim", peak_pnl=1.3),
            "F": Trade("F", C4, "no", 5, 0.40, START + DAY, "swing", "kalshi", trough_pnl=-1.0),
        }
        for t in trades.values():
            assert await s.add_trade(t, ts=t.opened_ts)
        await _rule_exit(
            s,
            trades["A"],
            "profit_target",
            [(5, 0.58, 0.05, START + 590), (5, 0.62, 0.05, START + 600)],
        )
        await _rule_exit(s, trades["B"], "max_loss", [(10, 0.15, 0.05, START + 400)])
        await _rule_exit(s, trades["C"], "max_loss", [(20, 0.35, 0.0, START + 1900)])
        await _rule_exit(s, trades["D"], "trailing_drawdown", [(10, 0.70, 0.10, START + 3200)])
        await _closed_elsewhere(s, trades["E"], 0.62, "manual", START + 3600)
        await _closed_elsewhere(s, trades["F"], 0.30, "external", START + DAY + 2200)
        for cid, value in ((C1, 0.0), (C2, 0.0), (C3, 0.0)):
            await s.record_settlement(cid, value, START + 3600)
    finally:
        await s.close()


def _compare(
    snap_compare: SnapCompare,
    tmp: Path,
    size: tuple[int, int],
    then: Callable[[Pilot[Any]], Awaitable[None]],
) -> bool:
    cfg = ui_config(tmp)
    asyncio.run(_fixed_journal(cfg))
    host = EngineHost(cfg, None, clock=ManualClock(T0), drive=False, auto_publish=False)
    host.start()

    async def run_before(pilot: Pilot[Any]) -> None:
        await host.advance(30)
        await settle(pilot)
        await then(pilot)
        pilot.app.clear_notifications()
        await settle(pilot)

    try:
        return snap_compare(
            TradeSupervisorApp(cfg, host), terminal_size=size, run_before=run_before
        )
    finally:
        host.stop()


def test_metrics_screen_160x50(snap_compare: SnapCompare, tmp_path: Path) -> None:
    """`m` on a fixed journal: the equity curve, the aggregates, by strategy, per rule."""

    async def open_metrics(pilot: Pilot[Any]) -> None:
        await _press(pilot, "m")

    assert _compare(snap_compare, tmp_path, (160, 50), open_metrics)
