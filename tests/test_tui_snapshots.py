"""SVG snapshots of the screen (pytest-textual-snapshot): the real app over the real engine.

Seed and clock are fixed (ManualClock at T0, the shipped config's sim seed), the engine host
does not run on its own (`drive=False`, `auto_publish=False`): each snapshot shows the market
30 simulated seconds after start, the same on every run. Toasts are cleared before the picture
is taken (they expire on the wall clock). Update with
`uv run pytest tests/test_tui_snapshots.py --snapshot-update` and look at the SVGs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot

from engine.clock import ManualClock
from tests.tui_harness import T0, settle, ui_config
from tui.app import TradeSupervisorApp
from tui.host import EngineHost

SnapCompare = Callable[..., bool]


def _compare(
    snap_compare: SnapCompare,
    tmp: Path,
    size: tuple[int, int],
    then: Callable[[Pilot[Any]], Awaitable[None]] | None = None,
) -> bool:
    cfg = ui_config(tmp)
    host = EngineHost(cfg, None, clock=ManualClock(T0), drive=False, auto_publish=False)
    host.start()

    async def run_before(pilot: Pilot[Any]) -> None:
        await host.advance(30)
        await settle(pilot)
        if then is not None:
            await then(pilot)
        pilot.app.clear_notifications()
        await settle(pilot)

    try:
        return snap_compare(
            TradeSupervisorApp(cfg, host), terminal_size=size, run_before=run_before
        )
    finally:
        host.stop()


@pytest.mark.parametrize("size", [(80, 24), (160, 50)], ids=["80x24", "160x50"])
def test_main_screen(snap_compare: SnapCompare, tmp_path: Path, size: tuple[int, int]) -> None:
    """Wide: the four panes. 80x24: the narrow layout, the trades pane and the pane tabs."""
    assert _compare(snap_compare, tmp_path, size)


def test_close_confirmation_80x24(snap_compare: SnapCompare, tmp_path: Path) -> None:
    """`c` on the selected trade (demo-1): the confirmation with P&L and expected proceeds."""

    async def press_close(pilot: Pilot[Any]) -> None:
        await pilot.press("c")
        await settle(pilot)

    assert _compare(snap_compare, tmp_path, (80, 24), press_close)
