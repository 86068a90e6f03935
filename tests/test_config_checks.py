"""Contradictions between keys are refused (or warned), each message naming both keys."""

from __future__ import annotations

import tomllib

import pytest

from engine.config import (
    UI_DEFAULT_KEYS,
    ConfigError,
    config_warnings,
    parse_config,
)


def errors_in(text: str, where: str = "c.toml") -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(tomllib.loads(text), text, where)
    return info.value.lines


def test_the_built_in_key_table_is_the_screens() -> None:
    from textual.binding import Binding

    from tui.app import MainScreen, TradeSupervisorApp

    bound = {
        b.id: b.key
        for b in [*MainScreen.BINDINGS, *TradeSupervisorApp.BINDINGS]
        if isinstance(b, Binding) and b.id
    }
    assert bound == UI_DEFAULT_KEYS


def test_a_binding_that_takes_a_built_in_key_is_refused_naming_both() -> None:
    [line] = errors_in('[ui]\n[ui.keys]\nclose_trade = "q"\n')
    assert line.startswith("c.toml, line 3: ui.keys.close_trade: ")
    assert "'q'" in line and "ui.keys.quit" in line


def test_two_configured_bindings_on_one_key_are_refused() -> None:
    [line] = errors_in('[ui.keys]\nclose_trade = "x"\npause_trade = "y, x"\n')
    assert "ui.keys.pause_trade" in line and "ui.keys.close_trade = 'x'" in line
    assert "line 3" in line


def test_moving_the_other_binding_away_too_is_accepted() -> None:
    text = '[ui.keys]\nclose_trade = "q"\nquit = "ctrl+x"\n'
    assert parse_config(tomllib.loads(text), text).ui.keys["close_trade"] == "q"


def test_a_key_the_toolkit_keeps_is_refused() -> None:
    [line] = errors_in('[ui.keys]\nhelp = "ctrl+p"\n')
    assert "ui.keys.help" in line and "command palette" in line


def test_shorthand_for_a_named_key_still_collides() -> None:
    [line] = errors_in('[ui.keys]\nmetrics = "?"\n')
    assert "ui.keys.help" in line


def test_trailing_activation_at_or_above_the_profit_target_is_refused() -> None:
    text = (
        "[auto_stop.criteria]\nprofit_target_percent = 40\ntrailing_drawdown_percent = 10\n"
        "trailing_activation_percent = 50\n"
    )
    [line] = errors_in(text)
    assert line.startswith("c.toml, line 4: auto_stop.criteria.trailing_activation_percent: ")
    assert "auto_stop.criteria.profit_target_percent (40)" in line
    # below the target: fine; without a target: fine; trailing off: nothing to arm
    ok = text.replace("= 50", "= 30")
    parse_config(tomllib.loads(ok), ok)
    parse_config(tomllib.loads(text.replace("profit_target_percent = 40\n", "")))


def test_a_strategy_whose_target_is_below_the_global_activation_is_refused() -> None:
    text = (
        "[auto_stop.criteria]\nprofit_target_percent = 80\ntrailing_drawdown_percent = 10\n"
        "trailing_activation_percent = 30\n"
        "[auto_stop.strategies.scalp.criteria]\nprofit_target_percent = 20\n"
    )
    [line] = errors_in(text)
    assert "auto_stop.strategies.scalp.criteria.profit_target_percent (20)" in line
    assert "line 4: auto_stop.criteria.trailing_activation_percent" in line


def test_an_override_of_a_rule_that_is_off_is_warned_naming_both_keys() -> None:
    text = (
        "[auto_stop.criteria]\n"
        "[auto_stop.strategies.scalp.criteria]\nreversal_window_seconds = 30\n"
        "trailing_activation_percent = 5\n"
    )
    cfg = parse_config(tomllib.loads(text), text)
    warnings = config_warnings(cfg)
    assert len(warnings) == 2
    assert any(
        "auto_stop.strategies.scalp.criteria.reversal_window_seconds" in w
        and "momentum_reversal_threshold_bps is off" in w
        for w in warnings
    )
    assert any("trailing_drawdown_percent is off" in w for w in warnings)
    on = text + "momentum_reversal_threshold_bps = 50\ntrailing_drawdown_percent = 10\n"
    assert config_warnings(parse_config(tomllib.loads(on), on)) == []


def test_the_shipped_config_has_no_contradiction() -> None:
    from pathlib import Path

    from engine.config import load_config

    cfg = load_config(Path(__file__).parent.parent / "config.toml")
    assert config_warnings(cfg) == []


async def test_the_threshold_editor_refuses_a_trail_above_the_target_naming_both() -> None:
    from textual.widgets import Static

    from engine.commands import CommandResult
    from tests.test_tui_detail import _detail, _Host, _input, _Submit, _text
    from tui.screens.edit import EditThresholdsScreen

    submit = _Submit(CommandResult(True, "ok"))
    screen = EditThresholdsScreen(_detail(), submit)
    app = _Host(screen)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        _input(screen, "profit_target_percent").value = "40"
        _input(screen, "trailing_drawdown_percent").value = "10"
        _input(screen, "trailing_activation_percent").value = "50"
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert submit.payloads == []  # nothing sent
        note = screen.query_one("#hint-trailing_activation_percent", Static)
        assert "profit_target_percent (40)" in _text(note) and note.has_class("-error")
        _input(screen, "trailing_activation_percent").value = "30"
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert submit.payloads and submit.payloads[0]["trailing_activation_percent"] == 30


def test_a_global_contradiction_is_said_once_not_per_strategy() -> None:
    text = (
        "[auto_stop.criteria]\nprofit_target_percent = 40\ntrailing_drawdown_percent = 10\n"
        "trailing_activation_percent = 50\n"
        "[auto_stop.strategies.a.criteria]\nmax_loss_percent = 20\n"
        "[auto_stop.strategies.b.criteria]\ntrailing_activation_percent = 60\n"
    )
    lines = errors_in(text)
    assert len(lines) == 2, lines  # the global one, and b's own activation (not a's)
    assert "line 4: auto_stop.criteria.trailing_activation_percent" in lines[0]
    assert "line 8: auto_stop.strategies.b.criteria.trailing_activation_percent: 60" in lines[1]
    assert "auto_stop.criteria.profit_target_percent (40)" in lines[1]  # where the target is


async def test_overrides_from_any_path_refuse_a_trailing_stop_that_never_trails(tmp_path):
    """The contradiction the config check and the editor refuse is refused for a trade's
    overrides too, whichever way they come (here: the engine's command, as the CLI queues it)."""
    from engine.commands import Command
    from tests.engine_harness import standard

    h = await standard(tmp_path)
    res = await h.engine.command(
        Command(
            "set_overrides",
            "t1",
            {
                "profit_target_percent": 30,
                "trailing_drawdown_percent": 10,
                "trailing_activation_percent": 40,
            },
        )
    )
    assert not res.ok and "trailing_activation_percent" in res.message
    assert "profit_target_percent" in res.message
    assert h.engine.trades["t1"].overrides == {}
    await h.close()
