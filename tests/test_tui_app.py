"""Pilot tests: the real app over the real engine on the simulated market (seed, manual clock)."""

from __future__ import annotations

from pathlib import Path

from tests.tui_harness import journal_trade, running_app, settle
from tui.host import EngineHost
from tui.panes import TradesPane


async def test_close_selected_trade_closes_it_on_the_venue_and_in_the_journal(
    tmp_path: Path,
) -> None:
    async with running_app(tmp_path) as (app, pilot, host):
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
        assert "demo-2" not in host.engine.trades
        row = await journal_trade(app.config, "demo-2")
        assert row["state"] == "closed" and row["exit_reason"] == "manual"
        assert await _held(host, t.contract_id, t.side) == held_before - t.qty


async def _held(host: EngineHost, contract_id: str, side: str) -> float:
    positions = await host.call(lambda e: e.venue.positions())
    return sum(p.qty for p in positions if p.contract_id == contract_id and p.side == side)
