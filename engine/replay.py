"""Replay a recorded session through the real engine on the injected clock.

Each event sets the clock to its `ts`; before it, the periodic tick runs at every whole tick
boundary crossed. Exits fill on a paper venue at the engine's mark (no slippage unless the config
sets one). Output, JSON Lines: `exit` and `alert` lines as they happen, then one `summary`.

`compare_replays` is the what-if: the same session run twice, under two configs, each on its own
temporary journal, and the outcome of every trade (which rule closed it, its realised P&L)
compared per rule, in total and trade by trade.
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
from engine.models import ExitReason, MarketEvent, Quote, Trade
from engine.replay_format import ReplayLineError, parse_line
from engine.rules import RULE_ORDER
from engine.store import JOURNAL_FILENAME, TRADE_STATES, Store
from engine.supervisor import Engine
from engine.venues.paper import PaperVenue


@dataclass
class ReplayResult:
    exits: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    errors: list[tuple[int, str]] = field(default_factory=list)
    trades: int = 0
    # Every trade in the journal when the replay ended (any state), oldest first.
    final_trades: list[Trade] = field(default_factory=list)

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
            result.final_trades = await store.load_trades(TRADE_STATES)
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
            await engine.start(restore_spot=False)  # the file is the session, not the journal
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


# --- what-if: one session, two configs ----------------------------------------------------------

OPEN = "open"  # the bucket of the trades still open (or closing) when the session ends
OPEN_LABEL = "still open at the end"
_EPS = 1e-9


@dataclass(frozen=True)
class Outcome:
    """How one trade ended in one run: the rule (exit reason) that closed it, or OPEN."""

    rule: str
    pnl: float  # realised P&L, dollars (fills so far for an open trade; 0 when unknown)
    closed_ts: float | None

    def to_json(self) -> dict[str, Any]:
        return {"rule": self.rule, "pnl": round(self.pnl, 6), "closed_ts": self.closed_ts}


def outcomes(result: ReplayResult) -> dict[str, Outcome]:
    """Each trade of a replay's journal → its outcome."""
    out: dict[str, Outcome] = {}
    for t in result.final_trades:
        closed = str(t.state) == "closed"
        rule = (t.exit_reason or "unknown") if closed else OPEN
        out[t.trade_id] = Outcome(rule, t.realized_pnl or 0.0, t.closed_ts if closed else None)
    return out


def _rule_key(rule: str) -> tuple[int, str]:
    order = [*RULE_ORDER, *(r.value for r in ExitReason)]
    if rule == OPEN:
        return (len(order) + 1, rule)
    return (order.index(rule), rule) if rule in order else (len(order), rule)


@dataclass
class Comparison:
    """Config A and config B on the same session: per rule, in total, and trade by trade."""

    a: ReplayResult
    b: ReplayResult

    @property
    def outcomes_a(self) -> dict[str, Outcome]:
        return outcomes(self.a)

    @property
    def outcomes_b(self) -> dict[str, Outcome]:
        return outcomes(self.b)

    def rules(self) -> list[dict[str, Any]]:
        """One row per exit rule (and settled/manual/external, and OPEN) used by either run:
        trades it closed and their realised P&L under A and under B, and B − A."""
        sides = {"a": self.outcomes_a, "b": self.outcomes_b}
        names = {o.rule for side in sides.values() for o in side.values()}
        rows = []
        for rule in sorted(names, key=_rule_key):
            row: dict[str, Any] = {"rule": rule}
            for key, side in sides.items():
                hits = [o for o in side.values() if o.rule == rule]
                row[key] = {"trades": len(hits), "pnl": round(sum(o.pnl for o in hits), 6)}
            row["diff"] = _diff(row["a"], row["b"])
            rows.append(row)
        return rows

    def totals(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, side in (("a", self.outcomes_a), ("b", self.outcomes_b)):
            out[key] = {
                "pnl": round(sum(o.pnl for o in side.values()), 6),
                "closed": sum(o.rule != OPEN for o in side.values()),
                "open": sum(o.rule == OPEN for o in side.values()),
            }
        out["diff"] = _diff(out["a"], out["b"])
        return out

    def trades(self) -> list[dict[str, Any]]:
        """The trades whose exit differs (rule, realised P&L or close time), in open order."""
        a, b = self.outcomes_a, self.outcomes_b
        order = [t.trade_id for t in self.a.final_trades]
        order += [t.trade_id for t in self.b.final_trades if t.trade_id not in a]
        rows = []
        for tid in order:
            oa, ob = a.get(tid), b.get(tid)
            if oa is not None and ob is not None and _same(oa, ob):
                continue
            rows.append(
                {
                    "trade_id": tid,
                    "a": oa.to_json() if oa else None,
                    "b": ob.to_json() if ob else None,
                    "diff_pnl": round((ob.pnl if ob else 0.0) - (oa.pnl if oa else 0.0), 6),
                }
            )
        return rows

    def to_json(self, config_a: str, config_b: str) -> dict[str, Any]:
        def run(label: str, result: ReplayResult) -> dict[str, Any]:
            s = result.summary()
            return {"config": label, **{k: v for k, v in s.items() if k != "event"}}

        return {
            "event": "compare",
            "a": run(config_a, self.a),
            "b": run(config_b, self.b),
            "rules": self.rules(),
            "totals": self.totals(),
            "trades": self.trades(),
        }


def _diff(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    return {k: round(b[k] - a[k], 6) if isinstance(a[k], float) else b[k] - a[k] for k in a}


def _same(a: Outcome, b: Outcome) -> bool:
    if a.rule != b.rule or abs(a.pnl - b.pnl) > _EPS:
        return False
    if a.closed_ts is None or b.closed_ts is None:
        return a.closed_ts == b.closed_ts
    return abs(a.closed_ts - b.closed_ts) <= _EPS


def _isolated(config: Config) -> Config:
    """A copy for one what-if run: nothing of it is written outside its temporary journal."""
    config = config.model_copy(deep=True)
    config.alerts.log_file = ""
    return config


async def compare_replays(
    lines: Iterable[str],
    config_a: Config,
    config_b: Config,
    *,
    on_error: Callable[[int, str], None] | None = None,
) -> Comparison:
    """Run the same session under A, then under B, each on a fresh engine, paper venue and
    temporary journal. B's paper broker is seeded as A's, so only the rules differ. Skipped lines
    are reported (through `on_error`) once, from A's run."""
    lines = list(lines)
    cfg_a, cfg_b = _isolated(config_a), _isolated(config_b)
    cfg_b.paper.seed = cfg_a.paper.seed
    a = await replay(lines, cfg_a, on_error=on_error)
    b = await replay(lines, cfg_b)
    return Comparison(a, b)


def format_comparison(cmp: Comparison, config_a: str, config_b: str) -> str:
    """The comparison as text: per rule, the totals, then the trades whose exit differs."""
    rules, totals, diffs = cmp.rules(), cmp.totals(), cmp.trades()
    w = max([22, *(len(r["rule"]) for r in rules)])

    def money(v: float | None) -> str:
        return f"{v:+10.2f}" if v is not None else " " * 10

    def count(n: int | None, sign: bool = False) -> str:
        return " " * 10 if n is None else f"{n:>+10}" if sign else f"{n:>10}"

    def row(label: str, a: dict[str, Any], b: dict[str, Any], d: dict[str, Any], n: str) -> str:
        pnl = "pnl" if n == "trades" else None
        return (
            f"{label:<{w}} {count(a.get(n))} {money(a.get(pnl) if pnl else None)}"
            f" {count(b.get(n))} {money(b.get(pnl) if pnl else None)}"
            f" {count(d.get(n), sign=True)} {money(d.get(pnl) if pnl else None)}"
        ).rstrip()

    out = [
        f"A: {config_a}",
        f"B: {config_b}",
        "",
        f"{'rule':<{w}} {'A trades':>10} {'A P&L':>10} {'B trades':>10} {'B P&L':>10}"
        f" {'B-A trades':>10} {'B-A P&L':>10}",
    ]
    for r in rules:
        label = OPEN_LABEL if r["rule"] == OPEN else r["rule"]
        out.append(row(label, r["a"], r["b"], r["diff"], "trades"))
    a, b, d = totals["a"], totals["b"], totals["diff"]
    out += [
        "",
        f"{'total realised P&L':<{w}} {'':>10} {money(a['pnl'])} {'':>10} {money(b['pnl'])}"
        f" {'':>10} {money(d['pnl'])}",
        row("trades closed", a, b, d, "closed"),
        row("still open", a, b, d, "open"),
        "",
    ]
    if not diffs:
        out.append("every trade ended the same way under A and B")
        return "\n".join(out)
    tw = max([8, *(len(x["trade_id"]) for x in diffs)])
    rw = max([12, *(len(x[k]["rule"]) for x in diffs for k in "ab" if x[k])])

    def side(o: dict[str, Any] | None) -> str:
        if o is None:
            return f"{'(absent)':<{rw}} {'':>10}"
        label = "open" if o["rule"] == OPEN else o["rule"]
        return f"{label:<{rw}} {money(o['pnl'])}"

    out.append(f"trades whose exit differs ({len(diffs)}):")
    out.append(
        f"{'trade':<{tw}}  {'A':<{rw}} {'P&L':>10}  {'B':<{rw}} {'P&L':>10}  {'B-A P&L':>10}"
    )
    for x in diffs:
        out.append(f"{x['trade_id']:<{tw}}  {side(x['a'])}  {side(x['b'])}  {money(x['diff_pnl'])}")
    return "\n".join(out)
