"""Shared set-up for the UI benchmarks (not a benchmark itself).

- `ui_config`: the shipped config.toml with the data dir in a temp dir, no alert log file, no demo
  trades and `sim.strikes` strikes (1000 by default), everything else as shipped (sim venue,
  dry_run, armed, refresh 0.25 s).
- `open_trades`: N trades opened through the engine's one command interface
  (`Command("add_trade", ...)`, as the UI and `trades add` do), spread evenly over the listed
  strikes (strike index i × count / N), 10 contracts each, holding the favourite (YES where the
  YES mid is ≥ 50¢, else NO) at its current bid (the mark), so they start at zero P&L and the
  sim's 1¢ quote noise moves them ~1% (a 1¢ long would hit profit_target on one cent of noise).
- `FrameApp`: `TradeSupervisorApp` with the terminal write put back. Headless, Textual's
  `Screen._compositor_refresh` still renders every dirty widget and builds the compositor update
  (`Compositor.render_update`), but `App._display` skips `render_segments` (the escape
  sequences) and the driver write when `is_headless`. `FrameApp._display` runs
  `render_segments` itself and records the time and size of each frame, so a headless frame costs
  what a terminal frame costs minus the write system call.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import time
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from textual._compositor import CompositorUpdate
from textual.screen import Screen

from engine.commands import Command
from engine.config import Config, parse_config
from engine.models import Contract, Quote
from engine.supervisor import Engine
from tui.app import TradeSupervisorApp

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_764_000_000.0  # 2025-11-24 16:00:00 UTC: a fresh hourly ladder, an hour to its close
STRIKES = 1000
TRADES = 500
SIZE = (200, 50)
QTY = 10.0


def config_data(data_dir: Path, strikes: int = STRIKES, **sections: dict[str, Any]) -> dict:
    """The shipped config.toml as a dict, with the benchmark's changes."""
    data = tomllib.loads((ROOT / "config.toml").read_text(encoding="utf-8"))
    data["engine"]["data_dir"] = str(data_dir)
    data["alerts"]["log_file"] = ""
    data["sim"]["strikes"] = strikes
    data["sim"]["demo_trades"] = 0
    for k, v in sections.items():
        data.setdefault(k, {}).update(v)
    return data


def ui_config(data_dir: Path, strikes: int = STRIKES, **sections: dict[str, Any]) -> Config:
    return parse_config(config_data(data_dir, strikes, **sections))


def trade_specs(engine: Engine, n: int, prefix: str = "U") -> list[dict[str, Any]]:
    """`add_trade` payloads for n trades spread evenly over the current ladder's strikes."""
    _, _, contracts = engine.current_event(engine.clock.now())
    return specs_for(contracts, engine.quotes, n, prefix)


def specs_for(
    contracts: Sequence[Contract], quotes: Mapping[str, Quote], n: int, prefix: str = "U"
) -> list[dict[str, Any]]:
    """n trade payloads over `contracts` (lowest strike first), entered at the quotes given."""
    if not contracts:
        raise RuntimeError("no listed contracts yet: advance the market first")
    out = []
    for j in range(n):
        c = contracts[j * len(contracts) // n]
        q = quotes.get(c.id)
        if q is None or q.bid is None or q.ask is None:
            raise RuntimeError(f"no quote for {c.id}")
        # Hold the favourite: YES when the YES mid is at least 50¢, else NO. A 1¢ contract
        # would trip profit_target (+80%) on one cent of quote noise; a favourite moves ~1%.
        side = "yes" if q.bid + q.ask >= 1.0 else "no"
        bid = q.bid if side == "yes" else 1.0 - q.ask  # the held side's bid: P&L starts at 0
        out.append(
            {
                "trade_id": f"{prefix}{j + 1:04d}",
                "contract_id": c.id,
                "side": side,
                "qty": QTY,
                "price": min(max(round(bid, 2), 0.01), 0.99),
            }
        )
    return out


async def add_trades(n: int, e: Engine) -> None:
    """Open n trades through `Engine.command(Command("add_trade", ...))` (on the engine loop)."""
    for p in trade_specs(e, n):
        r = await e.command(Command("add_trade", payload=p))
        if not r.ok:
            raise RuntimeError(f"add_trade {p['trade_id']}: {r.message}")


async def open_trades(host: Any, n: int) -> None:
    """`add_trades` on the host's engine, a thread `EngineHost` or a `ProcessEngineHost`."""
    await host.call(functools.partial(add_trades, n))


@dataclass
class Frame:
    t_end: float  # perf_counter when the frame was encoded
    cpu_end: float  # thread_time of the UI thread then
    paint: float  # seconds in Screen._compositor_refresh (render + compositor + encoding)
    encode: float  # of which render_segments
    chars: int  # characters of terminal output


@dataclass
class FrameLog:
    frames: list[Frame] = field(default_factory=list)


class FrameApp(TradeSupervisorApp):
    """The real app; headless frames are encoded as a terminal would get them, and timed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.frame_log = FrameLog()
        self.frame_event = asyncio.Event()  # set at every frame
        self.render_times: list[float] = []  # seconds in each render_main (tables diffed)
        self._paint_t0: float | None = None

    def render_main(self, snap: Any) -> None:
        t0 = time.perf_counter()
        super().render_main(snap)
        self.render_times.append(time.perf_counter() - t0)

    def _display(self, screen: Screen[Any], renderable: Any) -> None:
        super()._display(screen, renderable)
        if self.is_headless and isinstance(renderable, CompositorUpdate):
            t0 = time.perf_counter()
            out = renderable.render_segments(self.console)
            t1 = time.perf_counter()
            start = self._paint_t0 if self._paint_t0 is not None else t0
            self.frame_log.frames.append(
                Frame(t1, time.thread_time(), t1 - start, t1 - t0, len(out))
            )
            self.frame_event.set()

    def watch_paint(self, screen: Screen[Any]) -> None:
        """Time `screen._compositor_refresh` (the paint) from its start."""
        original = screen._compositor_refresh

        def timed() -> None:
            self._paint_t0 = time.perf_counter()
            try:
                original()
            finally:
                self._paint_t0 = None

        screen._compositor_refresh = timed  # type: ignore[method-assign]


class GcWatch:
    """Records every garbage collection (perf_counter start, duration, generation) while on.

    Collections stop every thread (they hold the GIL), so a full (generation 2) collection in
    either thread is a pause in both the screen and the engine.
    """

    def __init__(self) -> None:
        self.events: list[tuple[float, float, int]] = []
        self._t0 = 0.0

    def _cb(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            self.events.append((self._t0, time.perf_counter() - self._t0, info["generation"]))

    def __enter__(self) -> GcWatch:
        gc.callbacks.append(self._cb)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._cb)

    def full(self, t0: float, t1: float) -> list[float]:
        """Durations of the full collections that started between t0 and t1."""
        return [d for s, d, g in self.events if g == 2 and t0 <= s <= t1]
