"""Replay a recorded session through the real engine on the injected clock.

Each event sets the clock to its `ts`; before it, the periodic tick runs at every whole tick
boundary crossed. Exits fill on a paper venue at the engine's mark (no slippage unless the config
sets one). Output, JSON Lines: `exit` and `alert` lines as they happen, then one `summary`.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from engine.alerts import Alert, AlertBus
from engine.clock import ManualClock
from engine.config import Config
from engine.models import MarketEvent, Quote
from engine.replay_format import ReplayLineError, parse_line
from engine.store import JOURNAL_FILENAME, Store
from engine.supervisor import Engine
from engine.venues.paper import PaperVenue


@dataclass
class ReplayResult:
    exits: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    errors: list[tuple[int, str]] = field(default_factory=list)
    trades: int = 0

    def summary(self) -> dict[str, Any]:
        return {
            "event": "summary",
            "trades": self.trades,
            "exits": len(self.exits),
            "alerts": len(self.alerts),
            "invalid_lines": len(self.errors),
        }


def read_events(
    lines: Iterable[str], on_error: Callable[[int, str], None]
) -> Iterable[MarketEvent]:
    """Parse lines; a bad line is reported (with its 1-based number) and skipped, never fatal."""
    for n, line in enumerate(lines, start=1):
        try:
            ev = parse_line(line)
        except ReplayLineError as e:
            on_error(n, str(e))
            continue
        if ev is not None:
            yield ev


async def replay(
    lines: Iterable[str],
    config: Config,
    *,
    db_path: Path | None = None,
    emit: Callable[[dict[str, Any]], None] | None = None,
    on_error: Callable[[int, str], None] | None = None,
) -> ReplayResult:
    result = ReplayResult()

    def error(n: int, msg: str) -> None:
        result.errors.append((n, msg))
        if on_error is not None:
            on_error(n, msg)

    with tempfile.TemporaryDirectory(prefix="ts-replay-") as tmp:
        store = Store(db_path or Path(tmp) / JOURNAL_FILENAME)
        await store.open()
        try:
            await _run(lines, config, store, result, emit, error)
        finally:
            await store.close()
    return result


async def _run(
    lines: Iterable[str],
    config: Config,
    store: Store,
    result: ReplayResult,
    emit: Callable[[dict[str, Any]], None] | None,
    error: Callable[[int, str], None],
) -> None:
    clock = ManualClock()
    quotes: dict[str, Quote] = {}
    venue = PaperVenue(config.paper, quotes.get, state_path=None, fill_at="reference", name="paper")
    bus = AlertBus(config.alerts.cooldown_seconds, config.engine.snapshot_alerts)
    engine = Engine(config, clock, store, venue, alerts=bus)
    engine.quotes = quotes

    def on_alert(a: Alert) -> None:
        result.alerts.append(a)
        if emit is not None:
            emit(
                {
                    "ts": a.ts,
                    "event": "alert",
                    "kind": a.kind.value,
                    "severity": a.severity.value,
                    "trade_id": a.trade_id,
                    "message": a.message,
                }
            )

    def on_exit(info: dict[str, Any]) -> None:
        row = {
            "ts": info["ts"],
            "event": "exit",
            "trade_id": info["trade_id"],
            "rule": info["rule"],
            "mark": info["mark"],
            "pnl": round(info["pnl"], 6),
            "pnl_pct": round(info["pnl_pct"], 4),
        }
        result.exits.append(row)
        if emit is not None:
            emit(row)

    bus.listeners.append(on_alert)
    engine.exit_listeners.append(on_exit)
    engine.recorders.append(lambda ev: _count_open(ev, result))

    period = config.engine.tick_seconds
    started = False
    for ev in read_events(lines, error):
        if not started:
            clock.set(ev.ts)
            await engine.start()
            started = True
            last_tick = math.floor(ev.ts / period) * period
        else:
            nxt = last_tick + period
            while nxt <= ev.ts:
                clock.set(nxt)
                await engine.tick()
                last_tick = nxt
                nxt += period
        clock.set(ev.ts)
        await engine.handle(ev)
    await engine.flush()


def _count_open(ev: MarketEvent, result: ReplayResult) -> None:
    if ev.kind == "open":
        result.trades += 1


def print_jsonl(stream: TextIO = sys.stdout) -> Callable[[dict[str, Any]], None]:
    def emit(obj: dict[str, Any]) -> None:
        stream.write(json.dumps(obj, separators=(",", ":")) + "\n")

    return emit
