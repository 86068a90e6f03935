"""`[ui]` per-channel alert filters: toast_min_severity / toast_kinds, bell_min_severity /
bell_kinds, toast_quiet_hours / bell_quiet_hours (defaults: toasts for warning and critical, the
bell for critical, no quiet hours)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engine.config import ConfigError, parse_config
from engine.models import AlertKind, Severity
from engine.supervisor import Engine
from tests.tui_harness import ROOT, running_app, settle, ui_config
from tui.app import TradeSupervisorApp

ALERTS = [
    (AlertKind.DATA_QUALITY, Severity.INFO, "info note"),
    (AlertKind.RISK_LIMIT, Severity.WARNING, "risk warning"),
    (AlertKind.DATA_QUALITY, Severity.WARNING, "feed warning"),
    (AlertKind.DATA_QUALITY, Severity.CRITICAL, "feed is lying"),
]


async def _raise_alerts(e: Engine) -> None:
    for kind, severity, text in ALERTS:
        await e._alert(kind, severity, text)


async def _raise_warning(e: Engine) -> None:
    await e._alert(AlertKind.RISK_LIMIT, Severity.WARNING, "risk warning")


def _toasted(app: TradeSupervisorApp) -> set[str]:
    return {n.message for n in app._notifications}


async def _run(tmp_path: Path, ui: dict[str, Any], fn: Any = _raise_alerts) -> tuple[set[str], int]:
    cfg = ui_config(tmp_path, ui=ui)
    async with running_app(tmp_path, config=cfg) as (app, pilot, host):
        app.clear_notifications()
        await host.call(fn)
        await host.sync()
        await settle(pilot)
        return _toasted(app) & {t for _k, _s, t in ALERTS}, app.bells


async def test_defaults_toast_warnings_and_ring_for_critical(tmp_path: Path) -> None:
    toasted, bells = await _run(tmp_path, {})
    assert toasted == {"risk warning", "feed warning", "feed is lying"}
    assert bells == 1


async def test_toast_min_severity_and_kinds_filter_the_toasts(tmp_path: Path) -> None:
    toasted, bells = await _run(
        tmp_path, {"toast_min_severity": "info", "toast_kinds": ["data_quality"]}
    )
    assert toasted == {"info note", "feed warning", "feed is lying"}
    assert bells == 1


async def test_bell_min_severity_and_kinds_filter_the_bell(tmp_path: Path) -> None:
    _t, bells = await _run(
        tmp_path, {"bell_min_severity": "warning", "bell_kinds": ["risk_limit"]}, _raise_warning
    )
    assert bells == 1
    _t, bells = await _run(tmp_path / "2", {"bell_kinds": ["risk_limit"]}, _raise_alerts)
    assert bells == 0  # the only critical alert is data_quality


def test_the_shipped_config_reproduces_the_old_behaviour() -> None:
    ui = parse_config({}).ui
    assert (ui.toast_min_severity, ui.toast_kinds) == ("warning", [])
    assert (ui.bell_min_severity, ui.bell_kinds) == ("critical", [])
    text = (ROOT / "config.toml").read_text(encoding="utf-8")
    for key in (
        "toast_min_severity",
        "toast_kinds",
        "toast_quiet_hours",
        "bell_min_severity",
        "bell_kinds",
        "bell_quiet_hours",
    ):
        assert f"\n{key} = " in text


@pytest.mark.parametrize(
    "ui", [{"toast_min_severity": "loud"}, {"bell_kinds": ["nope"]}], ids=["severity", "kind"]
)
def test_bad_filters_are_config_errors(ui: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        parse_config({"ui": ui})


async def test_quiet_hours_silence_toasts_and_the_bell_except_critical(tmp_path: Path) -> None:
    # The harness's clock reads 16:00 UTC ([alerts] time_zone defaults to UTC).
    quiet = {"toast_quiet_hours": "15:00-17:00", "bell_quiet_hours": "15:00-17:00"}
    toasted, bells = await _run(tmp_path, {**quiet, "bell_min_severity": "warning"})
    assert toasted == {"feed is lying"}  # warnings held back, the critical one passes
    assert bells == 1  # rung by the critical alert only (the warnings were quiet)
    _t, bells = await _run(
        tmp_path / "2",
        {**quiet, "bell_min_severity": "warning"},
        _raise_warning,
    )
    assert bells == 0
    toasted, _b = await _run(tmp_path / "3", {"toast_quiet_hours": "17:00-18:00"})
    assert toasted == {"risk warning", "feed warning", "feed is lying"}  # outside the window


def test_bad_quiet_hours_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        parse_config({"ui": {"bell_quiet_hours": "late"}})
