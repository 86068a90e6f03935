"""The trade detail screen, its P&L chart and the thresholds form.

The chart is tested as a pure function; the screens run in a tiny host app under Textual's pilot
with a hand-built `TradeDetail` and fake async engine calls.
"""

from __future__ import annotations

from typing import Any

import pytest
from rich.text import Text
from textual.app import App
from textual.screen import Screen
from textual.widgets import DataTable, Input, Static

from engine.alerts import Alert
from engine.commands import CommandResult
from engine.models import AlertKind, Severity
from engine.snapshot import AuditEntry, PnlLevel, RuleView, TradeDetail, TradeRow
from tui.chart import PnlChart, render_pnl_chart
from tui.screens.detail import CLOSED_TEXT, TradeDetailScreen
from tui.screens.edit import EditThresholdsScreen

T0 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC

LEVELS = (
    PnlLevel("entry", 0.0, "entry (P&L 0)"),
    PnlLevel("peak", 6.0, "peak +6.00"),
    PnlLevel("max_loss", -12.0, "max_loss -40% = -12.00"),
    PnlLevel("profit_target", 15.0, "profit_target +50% = +15.00"),
)


def _row_of(lines: list[Text], needle: str) -> int:
    rows = [i for i, line in enumerate(lines) if needle in line.plain]
    assert rows, f"{needle!r} not in chart:\n" + "\n".join(line.plain for line in lines)
    return rows[0]


def _style_at(line: Text, needle: str) -> str:
    """The style of the first character of `needle` in `line`."""
    start = line.plain.index(needle)
    styles = [str(s.style) for s in line.spans if s.start <= start < s.end]
    return " ".join(styles)


# --- chart ---------------------------------------------------------------------------------


def test_chart_levels_sit_in_pnl_order_with_labels() -> None:
    points = [(T0 + i * 10, v) for i, v in enumerate([0.0, 2.0, 5.0, 6.0, 3.0, -4.0, 1.0])]
    lines = render_pnl_chart(points, LEVELS, 80, 20, up="green", down="red")
    assert len(lines) == 20
    assert all(line.cell_len == 80 for line in lines)
    target = _row_of(lines, "profit_target")
    peak = _row_of(lines, "peak")
    entry = _row_of(lines, "entry")
    loss = _row_of(lines, "max_loss")
    assert target < peak < entry < loss  # row 0 is the top of the chart
    # The range's ends are the extreme levels: profit target on the top row, max loss the bottom
    # plot row (the last line is the time axis).
    assert target == 0
    assert loss == len(lines) - 2
    # Dashed lines, coloured: stops in the down colour, the target in the up colour.
    assert "╌" in lines[loss].plain and "╌" in lines[target].plain
    assert "red" in _style_at(lines[loss], "max_loss")
    assert "green" in _style_at(lines[target], "profit_target")
    # The y-axis shows the level values; the time axis the first and last mark (UTC).
    assert "-12.00" in lines[loss].plain
    assert "+15.00" in lines[target].plain
    assert "22:13:20" in lines[-1].plain and "22:14:20" in lines[-1].plain
    # The P&L line itself is drawn in braille.
    assert any("\u2800" < ch <= "\u28ff" for line in lines for ch in line.plain)


def test_chart_range_covers_points_beyond_the_levels() -> None:
    # A mark below the max loss level (the exit has not happened yet): the line must stay on the
    # chart, so the max loss row is no longer the bottom one.
    points = [(T0, 0.0), (T0 + 60, -30.0)]
    lines = render_pnl_chart(points, LEVELS, 60, 16)
    loss = _row_of(lines, "max_loss")
    assert loss < len(lines) - 2
    bottom = lines[len(lines) - 2].plain
    assert "-30.00" in bottom
    assert any("\u2800" < ch <= "\u28ff" for ch in bottom)


def test_chart_trailing_stop_is_in_the_down_colour() -> None:
    levels = (*LEVELS, PnlLevel("trailing_stop", 3.0, "trailing_stop"))
    lines = render_pnl_chart([(T0, 1.0), (T0 + 5, 2.0)], levels, 80, 24, up="blue", down="magenta")
    row = _row_of(lines, "trailing_stop")
    assert _row_of(lines, "peak") < row < _row_of(lines, "entry")
    assert "magenta" in _style_at(lines[row], "trailing_stop")
    assert "blue" in _style_at(lines[_row_of(lines, "profit_target")], "profit_target")


@pytest.mark.parametrize(
    "points",
    [
        [],
        [(T0, 5.0)],
        [(T0, 2.0), (T0 + 1, 2.0), (T0 + 2, 2.0)],
        [(T0, 0.0), (T0, 0.0)],
        [(T0, float("nan")), (T0 + 1, 1.0)],
    ],
    ids=["empty", "one", "flat", "same-time-zero", "nan"],
)
@pytest.mark.parametrize("width,height", [(20, 6), (21, 3), (80, 12), (20, 1)])
@pytest.mark.parametrize("levels", [(), LEVELS], ids=["no-levels", "levels"])
def test_chart_edge_cases_keep_the_size(
    points: list[tuple[float, float]],
    width: int,
    height: int,
    levels: tuple[PnlLevel, ...],
) -> None:
    lines = render_pnl_chart(points, levels, width, height)
    assert len(lines) == height
    assert all(line.cell_len == width for line in lines)


def test_chart_single_and_flat_points_are_drawn() -> None:
    one = render_pnl_chart([(T0, 5.0)], (), 30, 6)
    assert any("\u2800" < ch <= "\u28ff" for line in one for ch in line.plain)
    flat = render_pnl_chart([(T0, 2.0), (T0 + 9, 2.0)], (), 30, 6)
    drawn = [i for i, line in enumerate(flat) if any("\u2800" < c <= "\u28ff" for c in line.plain)]
    assert len(drawn) == 1  # a flat line is one row of dots, mid-chart
    assert 0 < drawn[0] < 4


def test_chart_without_marks_says_so_and_still_draws_levels() -> None:
    lines = render_pnl_chart([], LEVELS, 60, 10)
    text = "\n".join(line.plain for line in lines)
    assert "no marks yet" in text
    assert _row_of(lines, "profit_target") < _row_of(lines, "entry") < _row_of(lines, "max_loss")


def test_chart_narrow_width_keeps_labels_on_the_lines() -> None:
    lines = render_pnl_chart([(T0, 1.0), (T0 + 1, -2.0)], LEVELS, 20, 10)
    assert all(line.cell_len == 20 for line in lines)
    assert _row_of(lines, "entry") < _row_of(lines, "max_loss")


def test_chart_zero_size_is_empty() -> None:
    assert render_pnl_chart([(T0, 1.0)], LEVELS, 0, 10) == []
    assert render_pnl_chart([(T0, 1.0)], LEVELS, 40, 0) == []


# --- fixtures --------------------------------------------------------------------------------

CRITERIA: tuple[tuple[str, float | None], ...] = (
    ("max_loss_percent", 40.0),
    ("profit_target_percent", 50.0),
    ("trailing_drawdown_percent", None),
    ("trailing_activation_percent", None),
    ("max_holding_time_minutes", 120.0),
    ("momentum_threshold_bps", None),
    ("momentum_reversal_threshold_bps", None),
    ("reversal_window_seconds", 60.0),
    ("volatility_threshold", 0.85),
    ("volatility_spike_threshold", None),
    ("spike_window_seconds", 300.0),
    ("price_gap_threshold_percent", None),
    ("ttc_cutoff_seconds", 90.0),
    ("min_time_value", None),
)


def _detail(
    overrides: tuple[tuple[str, float | None], ...] = (),
    alert_message: str = "t-1 max_loss fired",
) -> TradeDetail:
    rules = (
        RuleView("max_loss", False, -8.0, -40.0, 32.0, "%", "max_loss 32%"),
        RuleView("profit_target", False, -8.0, 50.0, 58.0, "%", "profit_target 58%"),
        RuleView("ttc_cutoff", True, 45.0, 90.0, 0.0, "s", "ttc_cutoff FIRED 45s <= 90s"),
    )
    row = TradeRow(
        trade_id="t-1",
        contract_id="KXBTC-97250",
        side="yes",
        qty=10,
        entry=0.30,
        mark=0.276,
        pnl=-0.24,
        pnl_pct=-8.0,
        peak_pnl=0.5,
        peak_pnl_pct=16.7,
        drawdown=0.74,
        opened_ts=T0,
        held_seconds=600,
        nearest="max_loss 32%",
        rules=rules,
        state="armed",
        problem=None,
        strategy="",
        paused=False,
        proceeds=2.76,
    )
    return TradeDetail(
        row=row,
        contract="BTC above $97,250 at 15:00 UTC",
        cost_basis=3.0,
        marks=((T0, 0.0), (T0 + 60, 0.5), (T0 + 120, -0.24)),
        levels=(
            PnlLevel("entry", 0.0, "entry (P&L 0)"),
            PnlLevel("peak", 0.5, "peak +0.50"),
            PnlLevel("max_loss", -1.2, "max_loss -40% = -1.20"),
            PnlLevel("profit_target", 1.5, "profit_target +50% = +1.50"),
        ),
        criteria=CRITERIA,
        overrides=overrides,
        audit=(
            AuditEntry(T0, "trade_opened", "qty=10, price=0.3"),
            AuditEntry(T0 + 3725, "command:pause", ""),
        ),
        alerts=(
            Alert(T0 + 7200, AlertKind.EXIT_SIGNAL, Severity.CRITICAL, alert_message, "t-1"),
            Alert(T0 + 1, AlertKind.TRADE_DETECTED, Severity.INFO, "t-1 detected", "t-1"),
        ),
    )


class _Host(App[None]):
    """Pushes one screen on mount and records what it was dismissed with."""

    def __init__(self, screen: Screen[Any]) -> None:
        super().__init__()
        self._screen = screen
        self.results: list[Any] = []

    def on_mount(self) -> None:
        self.push_screen(self._screen, self.results.append)


class _Fetch:
    def __init__(self, *answers: TradeDetail | None) -> None:
        self.answers = list(answers)
        self.calls: list[str] = []

    async def __call__(self, trade_id: str) -> TradeDetail | None:
        self.calls.append(trade_id)
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


class _Submit:
    def __init__(self, result: CommandResult) -> None:
        self.result = result
        self.payloads: list[dict[str, float | bool]] = []

    async def __call__(self, payload: dict[str, float | bool]) -> CommandResult:
        self.payloads.append(payload)
        return self.result


def _cells(table: DataTable[Any]) -> list[list[str]]:
    return [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]


def _text(widget: Static) -> str:
    return str(widget.render())


# --- detail screen ---------------------------------------------------------------------------


async def test_detail_shows_rules_audit_and_alerts() -> None:
    fetch = _Fetch(_detail())
    screen = TradeDetailScreen("t-1", fetch, refresh_seconds=3600)
    app = _Host(screen)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        assert fetch.calls == ["t-1"]
        assert app.screen is screen
        title = _text(screen.query_one("#detail-title", Static))
        for part in ("t-1", "BTC above $97,250", "YES 10 @ 0.30", "0.276", "-0.24", "-8.0%"):
            assert part in title
        assert "armed" in title

        rules = _cells(screen.query_one("#detail-rules", DataTable))
        assert [r[0] for r in rules] == ["max_loss", "profit_target", "ttc_cutoff"]
        assert rules[0][1:5] == ["ok", "-8%", "-40%", "32%"]
        assert rules[2][1] == "FIRED"
        assert rules[2][5] == "ttc_cutoff FIRED 45s <= 90s"

        audit = _cells(screen.query_one("#detail-audit", DataTable))
        assert audit == [
            ["22:13:20", "trade_opened", "qty=10, price=0.3"],
            ["23:15:25", "command:pause", ""],
        ]
        alerts = _cells(screen.query_one("#detail-alerts", DataTable))
        assert alerts[0] == ["00:13:20", "critical", "exit_signal", "t-1 max_loss fired"]
        assert alerts[1][1:] == ["info", "trade_detected", "t-1 detected"]

        chart = screen.query_one("#detail-chart", PnlChart)
        assert chart.points == _detail().marks
        assert "profit_target" in str(chart.render())
        assert _text(screen.query_one("#detail-status", Static)) == ""

        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is not screen


async def test_detail_refetch_updates_only_changed_tables() -> None:
    first, second = _detail(), _detail(alert_message="t-1 exit sent")
    fetch = _Fetch(first, second)
    screen = TradeDetailScreen("t-1", fetch, refresh_seconds=3600)
    async with _Host(screen).run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        rules_table = screen.query_one("#detail-rules", DataTable)
        row_keys = list(rules_table.rows)
        await screen.fetch_now()
        await pilot.pause()
        assert fetch.calls == ["t-1", "t-1"]
        alerts = _cells(screen.query_one("#detail-alerts", DataTable))
        assert alerts[0][3] == "t-1 exit sent"
        assert list(rules_table.rows) == row_keys  # unchanged rules were not rebuilt


async def test_detail_shows_closed_and_keeps_the_last_data() -> None:
    fetch = _Fetch(_detail(), None)
    screen = TradeDetailScreen("t-1", fetch, refresh_seconds=3600)
    async with _Host(screen).run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        await screen.fetch_now()
        await pilot.pause()
        assert CLOSED_TEXT in _text(screen.query_one("#detail-status", Static))
        assert screen.closed
        assert screen.query_one("#detail-rules", DataTable).row_count == 3
        assert "t-1" in _text(screen.query_one("#detail-title", Static))
        await screen.fetch_now()  # closed: no more polling
        assert fetch.calls == ["t-1", "t-1"]


async def test_detail_of_a_trade_already_closed() -> None:
    fetch = _Fetch(None)
    screen = TradeDetailScreen("t-9", fetch, refresh_seconds=3600)
    async with _Host(screen).run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        assert "closed" in _text(screen.query_one("#detail-status", Static))
        assert screen.query_one("#detail-rules", DataTable).row_count == 0


async def test_detail_fetch_error_is_shown_and_polling_continues() -> None:
    calls: list[str] = []

    async def failing(trade_id: str) -> TradeDetail | None:
        calls.append(trade_id)
        raise RuntimeError("journal locked")

    screen = TradeDetailScreen("t-1", failing, refresh_seconds=3600)
    async with _Host(screen).run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        assert "journal locked" in _text(screen.query_one("#detail-status", Static))
        assert not screen.closed
        assert screen._timer is not None  # re-armed for the next try


def test_detail_back_binding_has_an_id_and_tooltip() -> None:
    (binding,) = [b for b in TradeDetailScreen.BINDINGS if getattr(b, "id", None) == "back"]
    assert binding.key == "escape"
    assert binding.tooltip


# --- thresholds form -------------------------------------------------------------------------


def _input(screen: Screen[Any], field: str) -> Input:
    return screen.query_one(f"#edit-{field}", Input)


async def test_edit_prefills_the_values_in_force() -> None:
    screen = EditThresholdsScreen(_detail(), _Submit(CommandResult(True, "ok")))
    async with _Host(screen).run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        assert _input(screen, "max_loss_percent").value == "40"
        assert _input(screen, "volatility_threshold").value == "0.85"
        assert _input(screen, "trailing_drawdown_percent").value == ""  # off
        assert screen.focused is _input(screen, "max_loss_percent")


async def test_edit_refuses_an_invalid_value_without_submitting() -> None:
    submit = _Submit(CommandResult(True, "ok"))
    screen = EditThresholdsScreen(_detail(), submit)
    app = _Host(screen)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        _input(screen, "max_loss_percent").value = "-5"
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert submit.payloads == []
        assert app.screen is screen
        note = screen.query_one("#hint-max_loss_percent", Static)
        assert "greater than 0" in _text(note)
        assert note.has_class("-error")
        # A word that is not a number is refused too, next to its own field.
        _input(screen, "max_loss_percent").value = "40"
        _input(screen, "ttc_cutoff_seconds").value = "soon"
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert submit.payloads == []
        assert not screen.query_one("#hint-max_loss_percent", Static).has_class("-error")
        assert "expected a number" in _text(screen.query_one("#hint-ttc_cutoff_seconds", Static))


async def test_edit_sends_only_the_changed_field_with_the_keyboard() -> None:
    submit = _Submit(CommandResult(True, "t-1 thresholds updated"))
    screen = EditThresholdsScreen(_detail(), submit)
    app = _Host(screen)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        await pilot.press("tab")  # max_loss → profit_target (the text is selected on focus)
        assert screen.focused is _input(screen, "profit_target_percent")
        await pilot.press("7", "5", "ctrl+s")
        await pilot.pause()
        assert submit.payloads == [{"profit_target_percent": 75.0}]
        assert app.results == [True]
        assert app.screen is not screen


async def test_edit_emptied_field_switches_the_rule_off() -> None:
    submit = _Submit(CommandResult(True, "ok"))
    screen = EditThresholdsScreen(_detail(), submit)
    app = _Host(screen)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        _input(screen, "max_holding_time_minutes").value = ""
        await pilot.click("#edit-save")
        await pilot.pause()
        assert submit.payloads == [{"max_holding_time_minutes": False}]
        assert app.results == [True]


async def test_edit_keeps_the_trades_saved_overrides() -> None:
    # set_overrides replaces the trade's overrides, so the ones already saved go along.
    submit = _Submit(CommandResult(True, "ok"))
    saved = (("max_loss_percent", 40.0), ("momentum_threshold_bps", None))
    screen = EditThresholdsScreen(_detail(overrides=saved), submit)
    async with _Host(screen).run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        _input(screen, "ttc_cutoff_seconds").value = "30"
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert submit.payloads == [
            {"max_loss_percent": 40.0, "momentum_threshold_bps": False, "ttc_cutoff_seconds": 30.0}
        ]


async def test_edit_nothing_changed_dismisses_false() -> None:
    submit = _Submit(CommandResult(True, "ok"))
    screen = EditThresholdsScreen(_detail(), submit)
    app = _Host(screen)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        _input(screen, "max_loss_percent").value = "40.0"  # same value, written differently
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert submit.payloads == []
        assert app.results == [False]


async def test_edit_refused_result_is_shown_and_the_form_stays() -> None:
    submit = _Submit(CommandResult(False, "no open trade 't-1'"))
    screen = EditThresholdsScreen(_detail(), submit)
    app = _Host(screen)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        _input(screen, "max_loss_percent").value = "25"
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert submit.payloads == [{"max_loss_percent": 25.0}]
        assert app.screen is screen
        assert app.results == []
        message = screen.query_one("#edit-message", Static)
        assert "no open trade 't-1'" in _text(message)
        assert message.has_class("-error")


async def test_edit_escape_cancels() -> None:
    submit = _Submit(CommandResult(True, "ok"))
    screen = EditThresholdsScreen(_detail(), submit)
    app = _Host(screen)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        _input(screen, "max_loss_percent").value = "25"
        await pilot.press("escape")
        await pilot.pause()
        assert submit.payloads == []
        assert app.results == [False]
