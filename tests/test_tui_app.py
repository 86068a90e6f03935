"""Pilot tests: the real app over the real engine on the simulated market (seed, manual clock).

Each test drives the app with keys, as a trader would, and checks what the trader would notice:
the screen (table cells, header, dialogs) and what the engine and the journal did. A rule is made
to fire by giving trades a tiny `max_loss_percent` override through the engine's command
interface (the demo trades are a few percent down at the start: entry at the ask, marked at the
bid), so the rule keeps firing on every evaluation until something lets it act.
"""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.screen import Screen
from textual.widgets import Input

from engine.commands import Command
from engine.config import UI_KEY_IDS, load_config
from engine.models import AlertKind, Severity
from engine.supervisor import Engine
from engine.venues.base import VenuePosition
from tests.tui_harness import (
    ROOT,
    journal_trade,
    running_app,
    screen_text,
    settle,
    ui_config,
)
from tui.app import MainScreen, TradeSupervisorApp
from tui.host import Host
from tui.panes import AlertsPane, MarketPane, StatusBar, StrikesPane, TradesPane
from tui.screens.confirm import ConfirmScreen, TypedConfirmScreen
from tui.screens.detail import TradeDetailScreen
from tui.screens.edit import EditThresholdsScreen
from tui.screens.help import HelpScreen
from tui.tables import LiveTable

DEMO = ["demo-1", "demo-2", "demo-3", "demo-4"]
# The money paths run over both engine hosts: a thread of this process and a child process (what
# run_app uses by default).
BOTH_HOSTS = pytest.mark.parametrize("host_kind", ["thread", "process"])
WORKERS_TIMEOUT = 10.0  # seconds; the actions take milliseconds


# --- helpers -------------------------------------------------------------------------------


def _trades(app: TradeSupervisorApp) -> LiveTable:
    assert app.main is not None
    return app.main.query_one(TradesPane).table


def _state_cell(app: TradeSupervisorApp, trade_id: str) -> str:
    return _trades(app).get_cell(trade_id, "state").plain


def _header(app: TradeSupervisorApp) -> str:
    assert app.main is not None
    return str(app.main.query_one(StatusBar).render())


async def _select(app: TradeSupervisorApp, pilot: Pilot[Any], trade_id: str) -> None:
    table = _trades(app)
    table.focus()
    await pilot.pause()
    while table.selected_key != trade_id:
        assert table.cursor_row < table.row_count - 1, f"{trade_id} is not in the trades table"
        await pilot.press("down")
    assert app.selected_trade() is not None and app.selected_trade().trade_id == trade_id


async def _press(pilot: Pilot[Any], *keys: str) -> None:
    """Press keys and wait for the actions they started (engine commands) and the redraw."""
    await pilot.press(*keys)
    try:
        # Bounded: an action stuck on a dialog nobody expected fails here, not at the 120 s
        # test timeout.
        await asyncio.wait_for(pilot.app.workers.wait_for_complete(), WORKERS_TIMEOUT)
    except TimeoutError:
        raise AssertionError(f"{keys}: the action did not finish (waiting on a dialog?)") from None
    await settle(pilot)


async def _wait_group(app: TradeSupervisorApp, group: str) -> None:
    """Wait for the running workers of one group (others may be waiting on a dialog)."""
    for w in [w for w in app.workers if w.group == group]:
        await asyncio.wait_for(w.wait(), WORKERS_TIMEOUT)


async def _make_rule_fire(app: TradeSupervisorApp, pilot: Pilot[Any], *trade_ids: str) -> None:
    """Give the trades a max loss they are already beyond: their max_loss rule fires."""
    for tid in trade_ids:
        row = next(t for t in app.snapshot.trades if t.trade_id == tid)
        assert row.pnl_pct is not None and row.pnl_pct < -0.5, row  # the premise of the tests
        result = await app.host.command(Command("set_overrides", tid, {"max_loss_percent": 0.01}))
        assert result.ok, result.message
    await app.host.sync()
    await settle(pilot)


def _max_loss_fired(app: TradeSupervisorApp, trade_id: str) -> bool:
    row = next(t for t in app.snapshot.trades if t.trade_id == trade_id)
    return any(r.rule == "max_loss" and r.fired for r in row.rules)


async def _open_ids(host: Host) -> list[str]:
    return await host.call(_engine_trade_ids)


async def _engine_trade_ids(e: Engine) -> list[str]:
    return sorted(e.trades)


async def _read_attr(name: str, e: Engine) -> object:
    return getattr(e, name)


async def _engine_attr(host: Host, name: str) -> object:
    return await host.call(functools.partial(_read_attr, name))


async def _positions(e: Engine) -> list[VenuePosition]:
    return await e.venue.positions()


async def _held(host: Host, contract_id: str, side: str) -> float:
    positions = await host.call(_positions)
    return sum(p.qty for p in positions if p.contract_id == contract_id and p.side == side)


def _notes(app: TradeSupervisorApp) -> list[tuple[str, str, str]]:
    return [(n.title, n.message, n.severity) for n in app._notifications]


# --- close the selected trade ---------------------------------------------------------------


@BOTH_HOSTS
async def test_close_selected_trade_closes_it_on_the_venue_and_in_the_journal(
    tmp_path: Path,
    host_kind: str,
) -> None:
    async with running_app(tmp_path, host_kind=host_kind) as (app, pilot, host):
        table = app.main.query_one(TradesPane).table
        assert table.keys[:2] == ["demo-1", "demo-2"]
        await pilot.press("down")  # demo-2
        assert table.selected_key == "demo-2"
        t = next(r for r in app.snapshot.trades if r.trade_id == "demo-2")
        held_before = await _held(host, t.contract_id, t.side)
        await pilot.press("c")
        await settle(pilot)
        assert "Close demo-2?" in str(app.screen.query_one(".dialog-title").render())
        await pilot.press("y")
        await app.workers.wait_for_complete()
        await settle(pilot)
        assert "demo-2" not in table.keys
        assert "demo-2" not in await _open_ids(host)
        row = await journal_trade(app.config, "demo-2")
        assert row["state"] == "closed" and row["exit_reason"] == "manual"
        assert await _held(host, t.contract_id, t.side) == held_before - t.qty


# --- 1. pause one trade -------------------------------------------------------------------


@BOTH_HOSTS
async def test_paused_trade_is_not_auto_stopped_until_resumed(
    tmp_path: Path, host_kind: str
) -> None:
    async with running_app(tmp_path, host_kind=host_kind) as (app, pilot, host):
        # demo-2 and demo-3: the same contract, side and strategy; only demo-3 is paused.
        await _select(app, pilot, "demo-3")
        await _press(pilot, "p")
        assert _state_cell(app, "demo-3") == "paused"
        assert _state_cell(app, "demo-2") == "armed"
        assert (await journal_trade(app.config, "demo-3"))["paused"]

        await _make_rule_fire(app, pilot, "demo-2", "demo-3")
        await host.advance(5)
        await settle(pilot)
        assert "demo-2" not in _trades(app).keys
        assert (await journal_trade(app.config, "demo-2"))["exit_reason"] == "max_loss"
        assert "demo-3" in await _open_ids(host)
        assert _max_loss_fired(app, "demo-3")  # it would fire ...
        assert _state_cell(app, "demo-3") == "paused"  # ... but the trade is held
        assert _trades(app).selected_key == "demo-3"

        await _press(pilot, "p")  # resume: the rule acts at once
        assert "demo-3" not in await _open_ids(host)
        assert "demo-3" not in _trades(app).keys
        row = await journal_trade(app.config, "demo-3")
        assert row["state"] == "closed" and row["exit_reason"] == "max_loss"


# --- 2. kill switch --------------------------------------------------------------------------


async def test_the_header_says_no_rules_when_no_rule_protects_any_trade(tmp_path: Path) -> None:
    """A config without criteria: ARMED would protect nothing, and the header says so."""
    bare = ui_config(tmp_path, auto_stop={"criteria": {}, "strategies": {}})
    async with running_app(tmp_path, config=bare) as (app, _pilot, _host):
        assert "ARMED" in _header(app) and "NO RULES" in _header(app)
    async with running_app(tmp_path / "shipped") as (app, _pilot, _host):
        assert "ARMED" in _header(app) and "NO RULES" not in _header(app)


@BOTH_HOSTS
async def test_kill_switch_stops_every_automatic_exit_until_switched_off(
    tmp_path: Path, host_kind: str
) -> None:
    async with running_app(tmp_path, host_kind=host_kind) as (app, pilot, host):
        assert "PAUSED" not in _header(app)
        await _press(pilot, "P")
        assert await _engine_attr(host, "paused_all") is True
        assert "PAUSED" in _header(app)
        assert [_state_cell(app, t) for t in DEMO] == ["paused"] * 4

        await _make_rule_fire(app, pilot, *DEMO)
        await host.advance(5)
        await settle(pilot)
        assert await _open_ids(host) == DEMO
        assert _trades(app).keys == DEMO
        assert all(_max_loss_fired(app, t) for t in DEMO)

        await _press(pilot, "P")
        assert await _engine_attr(host, "paused_all") is False
        assert "PAUSED" not in _header(app)
        assert await _open_ids(host) == []
        assert _trades(app).keys == []
        for tid in DEMO:
            assert (await journal_trade(app.config, tid))["exit_reason"] == "max_loss"


@pytest.mark.parametrize(
    ("key", "screen"),
    [("question_mark", HelpScreen), ("enter", TradeDetailScreen), ("c", ConfirmScreen)],
    ids=["help", "detail", "close-dialog"],
)
async def test_kill_switch_works_from_any_screen(
    tmp_path: Path, key: str, screen: type[Screen[Any]]
) -> None:
    async with running_app(tmp_path) as (app, pilot, host):
        await pilot.press(key)
        await settle(pilot)
        assert isinstance(app.screen, screen)
        await pilot.press("P")
        await _wait_group(app, "kill")
        assert await _engine_attr(host, "paused_all") is True
        assert isinstance(app.screen, screen)  # the key acted; the screen stayed
        await _press(pilot, "escape")
        assert isinstance(app.screen, MainScreen)
        assert "PAUSED" in _header(app)
        assert await _open_ids(host) == DEMO  # escape on the dialog closed nothing


async def test_capital_p_in_the_filter_box_is_typed_not_the_kill_switch(tmp_path: Path) -> None:
    async with running_app(tmp_path) as (app, pilot, host):
        await _press(pilot, "slash")
        box = app.main.query_one(TradesPane).query_one(Input)
        assert app.focused is box
        await _press(pilot, "P")
        assert box.value == "P"
        assert await _engine_attr(host, "paused_all") is False
        assert "PAUSED" not in _header(app)


# --- 3. arm / disarm -------------------------------------------------------------------------


@BOTH_HOSTS
async def test_disarmed_engine_closes_nothing_until_armed_again(
    tmp_path: Path, host_kind: str
) -> None:
    async with running_app(tmp_path, host_kind=host_kind) as (app, pilot, host):
        assert " ARMED " in _header(app)
        await _press(pilot, "a")  # sim is not real money: no confirmation
        assert isinstance(app.screen, MainScreen)
        assert await _engine_attr(host, "armed") is False
        assert "DISARMED" in _header(app)
        assert [_state_cell(app, t) for t in DEMO] == ["disarmed"] * 4

        await _make_rule_fire(app, pilot, "demo-1", "demo-4")
        await host.advance(5)
        await settle(pilot)
        assert await _open_ids(host) == DEMO
        assert _max_loss_fired(app, "demo-1") and _max_loss_fired(app, "demo-4")

        await _press(pilot, "a")
        assert await _engine_attr(host, "armed") is True
        assert " ARMED " in _header(app) and "DISARMED" not in _header(app)
        assert await _open_ids(host) == ["demo-2", "demo-3"]
        assert _trades(app).keys == ["demo-2", "demo-3"]


async def test_arming_a_real_money_venue_asks_to_confirm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_app(tmp_path) as (app, pilot, host):
        # The sim venue is never real money: the engine is made to say it is (the UI reads it
        # from the snapshot, as it would for a live venue).
        monkeypatch.setattr(host.engine, "real_money", lambda: True)
        await _press(pilot, "a")  # disarming never asks
        assert isinstance(app.screen, MainScreen)
        assert app.snapshot.real_money and not app.snapshot.armed

        await pilot.press("a")
        await settle(pilot)
        assert isinstance(app.screen, ConfirmScreen)
        assert "Arm a live venue?" in screen_text(app)
        await _press(pilot, "n")
        assert isinstance(app.screen, MainScreen)
        assert await _engine_attr(host, "armed") is False
        assert "DISARMED" in _header(app)

        await pilot.press("a")
        await settle(pilot)
        assert isinstance(app.screen, ConfirmScreen)
        await _press(pilot, "y")
        assert await _engine_attr(host, "armed") is True
        assert " ARMED " in _header(app)


# --- 4. close all ----------------------------------------------------------------------------


@BOTH_HOSTS
async def test_close_all_needs_the_typed_word_in_capitals(tmp_path: Path, host_kind: str) -> None:
    async with running_app(tmp_path, host_kind=host_kind) as (app, pilot, host):
        await pilot.press("X")
        await settle(pilot)
        assert isinstance(app.screen, TypedConfirmScreen)
        await pilot.press(*"close", "enter")
        await settle(pilot)
        assert isinstance(app.screen, TypedConfirmScreen)  # still asking
        assert "type CLOSE exactly" in screen_text(app)
        assert await _open_ids(host) == DEMO

        await _press(pilot, *"CLOSE", "enter")
        assert isinstance(app.screen, MainScreen)
        assert await _open_ids(host) == []
        assert _trades(app).keys == []
        for tid in DEMO:
            row = await journal_trade(app.config, tid)
            assert row["state"] == "closed" and row["exit_reason"] == "close_all"


async def test_close_all_escape_cancels(tmp_path: Path) -> None:
    async with running_app(tmp_path) as (app, pilot, host):
        await pilot.press("X")
        await settle(pilot)
        assert isinstance(app.screen, TypedConfirmScreen)
        await pilot.press(*"CLOSE")
        await _press(pilot, "escape")
        assert isinstance(app.screen, MainScreen)
        assert await _open_ids(host) == DEMO
        assert _trades(app).keys == DEMO


# --- 5. quit ---------------------------------------------------------------------------------


async def test_quit_with_armed_open_trades_warns_and_can_stay(tmp_path: Path) -> None:
    async with running_app(tmp_path) as (app, pilot, _host):
        for no in ("n", "escape"):
            await pilot.press("q")
            await settle(pilot)
            assert isinstance(app.screen, ConfirmScreen)
            assert "--headless" in screen_text(app)
            await _press(pilot, no)
            assert isinstance(app.screen, MainScreen)
            assert app.is_running and app.return_value is None

        await pilot.press("q")
        await settle(pilot)
        await _press(pilot, "y")
        assert app.return_value == 0
        assert not app.is_running


@pytest.mark.parametrize("how", ["close_all", "disarm"])
async def test_quit_exits_at_once_when_nothing_is_armed_and_open(tmp_path: Path, how: str) -> None:
    async with running_app(tmp_path) as (app, pilot, _host):
        await app.send(Command(how))
        await settle(pilot)
        assert (app.snapshot.trades == ()) if how == "close_all" else not app.snapshot.armed
        await _press(pilot, "q")
        assert app.return_value == 0
        assert not app.is_running


# --- 6. detail and edit ----------------------------------------------------------------------


@BOTH_HOSTS
async def test_enter_opens_the_selected_trades_detail_and_escape_returns(
    tmp_path: Path, host_kind: str
) -> None:
    async with running_app(tmp_path, host_kind=host_kind) as (app, pilot, _host):
        await _select(app, pilot, "demo-3")
        await _press(pilot, "enter")
        assert isinstance(app.screen, TradeDetailScreen)
        assert app.screen.trade_id == "demo-3"
        await _press(pilot, "escape")
        assert app.screen is app.main
        assert _trades(app).selected_key == "demo-3"


@BOTH_HOSTS
async def test_e_opens_the_threshold_form_for_the_selected_trade(
    tmp_path: Path, host_kind: str
) -> None:
    async with running_app(tmp_path, host_kind=host_kind) as (app, pilot, _host):
        await _select(app, pilot, "demo-2")
        await _press(pilot, "e")
        assert isinstance(app.screen, EditThresholdsScreen)
        assert app.screen.detail.row.trade_id == "demo-2"


# --- 7. reload, help, filter, panes, alert filters ---------------------------------------------


def _write_config(tmp: Path, armed: bool) -> Path:
    text = (ROOT / "config.toml").read_text(encoding="utf-8")
    text = text.replace('data_dir = "./data"', f'data_dir = "{tmp / "data"}"', 1)
    text = text.replace('log_file = "alerts.jsonl"', 'log_file = ""', 1)
    text = text.replace("armed = true", f"armed = {str(armed).lower()}", 1)
    path = tmp / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


async def test_r_reloads_the_config_file_and_says_so(tmp_path: Path) -> None:
    path = _write_config(tmp_path, armed=True)
    async with running_app(tmp_path, config=load_config(path), config_path=path) as (
        app,
        pilot,
        host,
    ):
        assert " ARMED " in _header(app)
        _write_config(tmp_path, armed=False)
        await _press(pilot, "r")
        assert ("reload", "config reloaded", "information") in _notes(app)
        assert await _engine_attr(host, "armed") is False
        assert "DISARMED" in _header(app)


async def test_help_lists_every_remappable_key(tmp_path: Path) -> None:
    async with running_app(tmp_path) as (app, pilot, _host):
        await _press(pilot, "question_mark")
        assert isinstance(app.screen, HelpScreen)
        shown = screen_text(app)
        missing = [kid for kid in UI_KEY_IDS if f" {kid} " not in shown]
        assert not missing, shown
        await _press(pilot, "escape")
        assert isinstance(app.screen, MainScreen)


async def test_slash_filters_the_trades_table_and_escape_clears(tmp_path: Path) -> None:
    async with running_app(tmp_path) as (app, pilot, host):
        pane = app.main.query_one(TradesPane)
        await _press(pilot, "slash")
        await _press(pilot, *"demo-3")
        assert _trades(app).keys == ["demo-3"]
        assert "─ 4 [demo-3] 1/4 ─╯" in screen_text(app)  # the pane border says so
        await host.advance(5)  # live updates keep the filter
        await settle(pilot)
        assert _trades(app).keys == ["demo-3"]
        await _press(pilot, "escape")
        assert _trades(app).keys == DEMO
        assert app.focused is _trades(app)
        assert not pane.query_one(Input).display


async def test_tab_moves_focus_through_the_panes(tmp_path: Path) -> None:
    async with running_app(tmp_path) as (app, pilot, _host):
        main = app.main
        assert app.focused is _trades(app)
        expected = [
            main.query_one(MarketPane),
            main.query_one(StrikesPane).table,
            main.query_one(AlertsPane).table,
            _trades(app),
        ]
        for widget in expected:
            await _press(pilot, "tab")
            assert app.focused is widget
        await _press(pilot, "shift+tab")
        assert app.focused is main.query_one(AlertsPane).table


async def test_s_cycles_the_alert_severity_filter(tmp_path: Path) -> None:
    async with running_app(tmp_path) as (app, pilot, host):

        async def raise_two(e: Engine) -> None:
            await e._alert(AlertKind.DATA_QUALITY, Severity.WARNING, "a warning")
            await e._alert(AlertKind.EXECUTION_FAILURE, Severity.CRITICAL, "a critical one")

        await host.call(raise_two)
        await host.sync()
        await settle(pilot)
        pane = app.main.query_one(AlertsPane)
        total = pane.table.row_count
        assert total >= 6  # four trade_detected (info), the warning and the critical one

        def sevs() -> set[str]:
            return {pane.table.get_cell(k, "sev").plain for k in pane.table.keys}

        await _press(pilot, "s")
        assert sevs() == {"warning", "critical"} and pane.table.row_count < total
        assert "≥warning" in pane.border_title
        await _press(pilot, "s")
        assert sevs() == {"critical"}
        await _press(pilot, "s")
        assert pane.table.row_count == total and pane.border_title == "Alerts"


async def _raise_many(e: Engine, tag: str, n: int) -> None:
    for i in range(n):
        await e._alert(AlertKind.DATA_QUALITY, Severity.WARNING, f"{tag} {i}", subject=f"{tag}{i}")


async def test_new_alerts_come_into_view_unless_the_trader_selected_an_older_one(
    tmp_path: Path,
) -> None:
    async with running_app(tmp_path) as (app, pilot, host):
        await host.call(functools.partial(_raise_many, tag="first", n=30))
        await host.sync()
        await settle(pilot)
        table = app.main.query_one(AlertsPane).table
        assert table.cursor_row == 0 and table.scroll_y == 0

        await host.call(functools.partial(_raise_many, tag="second", n=30))
        await host.sync()
        await settle(pilot)
        # Untouched, the pane follows the newest: it is the first row, on screen.
        top = table.get_row_at(0)
        assert "second 29" in str(top[-1]) and table.cursor_row == 0 and table.scroll_y == 0

        table.focus()
        await _press(pilot, "down", "down")  # the trader looks at an older alert
        chosen = table.selected_key
        await host.call(functools.partial(_raise_many, tag="third", n=5))
        await host.sync()
        await settle(pilot)
        assert table.selected_key == chosen and table.cursor_row == 2 + 5


# --- 8. selection follows the trade ----------------------------------------------------------


async def test_selection_stays_on_the_same_trade_when_rows_change(tmp_path: Path) -> None:
    async with running_app(tmp_path) as (app, pilot, _host):
        await _select(app, pilot, "demo-3")
        assert _trades(app).cursor_row == 2
        result = await app.send(Command("close", "demo-1"))
        assert result.ok
        await settle(pilot)
        assert _trades(app).keys == ["demo-2", "demo-3", "demo-4"]
        assert _trades(app).selected_key == "demo-3"  # its row moved up; the cursor with it


async def test_strike_cursor_stays_on_its_strike_across_price_updates(tmp_path: Path) -> None:
    async with running_app(tmp_path) as (app, pilot, host):
        table = app.main.query_one(StrikesPane).table
        await _press(pilot, "tab", "tab")
        assert app.focused is table
        await _press(pilot, *["down"] * 5)
        key = table.selected_key
        assert key is not None and table.cursor_row == 5
        updates = table.updates
        await host.advance(5)
        await settle(pilot)
        assert table.updates > updates  # prices moved
        assert table.selected_key == key


# --- 9. key remapping -------------------------------------------------------------------------


async def test_ui_keys_remap_a_binding(tmp_path: Path) -> None:
    cfg = ui_config(tmp_path, ui={"keys": {"close_trade": "C"}})
    async with running_app(tmp_path, config=cfg) as (app, pilot, host):
        await pilot.press("c")
        await settle(pilot)
        assert isinstance(app.screen, MainScreen)
        await pilot.press("C")
        await settle(pilot)
        assert isinstance(app.screen, ConfirmScreen)
        assert "Close demo-1?" in screen_text(app)
        await _press(pilot, "n")
        assert await _open_ids(host) == DEMO


# --- 10. critical alerts: toast and bell -------------------------------------------------------


@pytest.mark.parametrize("bell", [True, False])
async def test_critical_alert_pops_a_toast_and_rings_the_bell(tmp_path: Path, bell: bool) -> None:
    cfg = ui_config(tmp_path, ui={"bell": bell})
    async with running_app(tmp_path, config=cfg) as (app, pilot, host):
        assert app.bells == 0

        async def critical(e: Engine) -> None:
            await e._alert(AlertKind.DATA_QUALITY, Severity.CRITICAL, "feed is lying")

        await host.call(critical)
        await host.sync()
        await settle(pilot)
        assert ("data_quality", "feed is lying", "error") in _notes(app)
        assert app.bells == (1 if bell else 0)


# --- 11. narrow layout ------------------------------------------------------------------------


async def test_narrow_terminal_shows_one_pane_at_a_time(tmp_path: Path) -> None:
    async with running_app(tmp_path, size=(80, 24)) as (app, pilot, _host):
        main = app.main
        assert main.has_class("narrow")

        def shown() -> list[str]:
            return [p.id for p in main.query(".pane") if p.display and p.region.area]

        assert shown() == ["trades"]
        await _press(pilot, "tab")
        assert shown() == ["market"]
        await _press(pilot, "tab")
        assert shown() == ["strikes"]
        assert "Strikes" in screen_text(app)


# --- the engine process dies -----------------------------------------------------------------


async def test_a_dead_engine_process_shows_engine_stopped_and_unprotected(tmp_path: Path) -> None:
    async with running_app(tmp_path, host_kind="process") as (app, pilot, host):
        assert "ENGINE STOPPED" not in _header(app)
        host.process.kill()
        assert await asyncio.to_thread(host.stopped.wait, 20.0)
        await settle(pilot)
        assert "ENGINE STOPPED" in _header(app)
        (title, message, severity) = _notes(app)[-1]
        assert title == "Engine stopped" and severity == "error"
        assert "exit code -9" in message and "NOT protected" in message
        assert app.bells == 1
