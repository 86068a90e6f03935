"""Runs the real app over a real engine host in tests: fixed seed, manual clock, temp journal.

The host is built with `drive=False`: nothing moves on its own. `host_kind` picks where the engine
runs: "thread" (`EngineHost`) or "process" (`ProcessEngineHost`, what `run_app` uses by default;
functions given to its `host.call` must be module-level, since they are pickled). `host.advance(seconds)` moves the
clock, steps the simulated market, ticks the engine and publishes a snapshot; `settle(pilot)`
then lets the app render it. No sleeps anywhere.
"""

from __future__ import annotations

import tomllib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from textual.pilot import Pilot

from engine.clock import ManualClock
from engine.config import Config, parse_config
from engine.store import JOURNAL_FILENAME, Store
from tui.app import TradeSupervisorApp
from tui.engine_process import ProcessEngineHost
from tui.host import EngineHost, Host

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_764_000_000.0  # 2025-11-24 16:00:00 UTC


def ui_config(tmp: Path, **sections: dict[str, Any]) -> Config:
    """The shipped config.toml with the data dir in `tmp` and `sections` merged over it."""
    data = tomllib.loads((ROOT / "config.toml").read_text(encoding="utf-8"))
    data["engine"]["data_dir"] = str(tmp / "data")
    data["alerts"]["log_file"] = ""
    for k, v in sections.items():
        data.setdefault(k, {}).update(v)
    return parse_config(data)


async def settle(pilot: Pilot[Any]) -> None:
    """Let the app process what the engine thread posted and redraw."""
    await pilot.pause()
    await pilot.pause()


@asynccontextmanager
async def running_app(
    tmp: Path,
    size: tuple[int, int] = (160, 50),
    config: Config | None = None,
    warmup_seconds: float = 5.0,
    config_path: Path | None = None,
    host_kind: str = "thread",
) -> AsyncIterator[tuple[TradeSupervisorApp, Pilot[Any], Any]]:
    cfg = config or ui_config(tmp)
    host = make_host(host_kind, cfg, config_path)
    host.start()
    app = TradeSupervisorApp(cfg, host)
    try:
        async with app.run_test(size=size) as pilot:
            if warmup_seconds:
                await host.advance(warmup_seconds)
            await settle(pilot)
            yield app, pilot, host
    finally:
        host.stop()


def make_host(kind: str, cfg: Config, config_path: Path | None = None) -> Host:
    """A host over the simulated market with a manual clock: nothing moves until `advance`."""
    hosts = {"thread": EngineHost, "process": ProcessEngineHost}
    return hosts[kind](cfg, config_path, clock=ManualClock(T0), drive=False, auto_publish=False)


def screen_text(app: TradeSupervisorApp) -> str:
    """The text the active screen shows now, one line per terminal row (styles dropped)."""
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips())


async def journal_trade(cfg: Config, trade_id: str) -> dict[str, Any]:
    """The trade's row as the journal holds it (read-only; the engine may still run)."""
    store = Store(cfg.data_path() / JOURNAL_FILENAME)
    await store.open(readonly=True, lock=False)
    try:
        t = await store.get_trade(trade_id)
        assert t is not None, f"{trade_id} is not in the journal"
        return {"state": str(t.state), "exit_reason": t.exit_reason, "paused": t.paused}
    finally:
        await store.close()
