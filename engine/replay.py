"""Replay a recorded session through the real engine on the injected clock.

Each event sets the clock to its `ts`; before it, the periodic tick runs at every whole tick
boundary crossed. Exits fill on a paper venue at the engine's mark (no slippage unless the config
sets one). Output, JSON Lines: `exit` and `alert` lines as they happen, then one `summary`.

`compare_replays` is the what-if: the same session run twice, under two configs, each on its own
temporary journal, and the outcome of every trade (which rule closed it, its realised P&L)
compared per rule, in total and trade by trade.
"""

from __future__ import annotations

import inspect
import json
import math
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from engine import analytics
from engine.alerts import Alert, AlertBus
from engine.clock import ManualClock
from engine.config import Config
from engine.models import ExitReason, MarketEvent, Quote, Trade
from engine.replay_format import FED_INFO_KINDS, InfoRecord, ReplayLineError, parse_record
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
    # A tape's informational lines (what the live engine did: exits, fills, closes, drops).
    taped: list[InfoRecord] = field(default_factory=list)
    # Against holding to the end (engine/analytics.py, as `metrics`): per rule and "all rules",
    # what the rule exits of trades whose contract settled saved and gave up.
    holding: dict[str, dict[str, Any]] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "event": "summary",
            "trades": self.trades,
            "exits": len(self.exits),
            "alerts": len(self.alerts),
            "invalid_lines": len(self.errors),
        }


def read_events(
    lines: Iterable[str],
    on_error: Callable[[int, str], None],
    on_info: Callable[[InfoRecord], None] | None = None,
    *,
    fed: bool = False,
) -> Iterable[MarketEvent | InfoRecord]:
    """Parse lines; a bad line is reported (with its 1-based number) and skipped, never fatal
    (a tape header of another version is: TapeVersionError). Informational tape lines go to
    `on_info`; with `fed`, those a replay acts on (FED_INFO_KINDS) are yielded too, in order. On a
    tape, an `open` of a trade already opened is skipped: a later session of the same day
    adopted it again from its journal."""
    opened: set[str] = set()
    tape = False
    for n, line in enumerate(lines, start=1):
        try:
            ev = parse_record(line)
        except ReplayLineError as e:
            on_error(n, str(e))
            continue
        if isinstance(ev, InfoRecord):
            tape = tape or ev.kind == "header"
            if on_info is not None:
                on_info(ev)
            if fed and ev.kind in FED_INFO_KINDS:
                yield ev
            continue
        if ev is not None and ev.kind == "open":
            tid = ev.trade_id  # type: ignore[union-attr]
            if tape and tid in opened:
                continue
            opened.add(tid)
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
            report = await analytics.load_report(
                store, thresholds=analytics.config_thresholds(config)
            )
            result.holding = {k: asdict(v) for k, v in report.effectiveness.items()}
            result.holding[ALL_RULES] = asdict(report.effectiveness_total)
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
    # On a tape, time is the tape's: a session starts at its header (an `open` line of a trade
    # adopted at start carries its old open time, which must not rewind the clock or make the
    # replay tick through the days since), and the gap before a later session of the same tape
    # (the engine was not running) is jumped over without ticks.
    floor: float | None = None
    session: float | None = None

    def on_info(rec: InfoRecord) -> None:
        nonlocal session
        result.taped.append(rec)
        if rec.kind == "header":
            session = rec.ts

    for ev in read_events(lines, error, on_info, fed=True):
        if session is not None:
            floor = max(floor or session, session)
            session = None
            if started and floor > clock.now():
                clock.set(floor)
                last_tick = math.floor(floor / period) * period
        at = ev.ts if floor is None else max(ev.ts, floor)
        if floor is not None:
            floor = at
        if not started:
            clock.set(at)
            await engine.start(restore_spot=False)  # the file is the session, not the journal
            started = True
            last_tick = math.floor(at / period) * period
        else:
            nxt = last_tick + period
            while nxt <= at:
                clock.set(nxt)
                await engine.tick()
                last_tick = nxt
                nxt += period
        clock.set(at)
        if isinstance(ev, InfoRecord):
            await _act_on(engine, ev)
        else:
            await engine.handle(ev)
    await engine.flush()


async def _act_on(engine: Engine, rec: InfoRecord) -> None:
    """A tape line the engine acts on again: the spot feed's backfill, or a feed's call
    (REPLAY_CALLS: quotes held and released, a source's problem and recovery, a VIX value)."""
    if rec.kind == "spot_history":
        engine.seed_spot_history([(float(a), float(b)) for a, b in rec.data["closes"]])
        return
    result = getattr(engine, rec.data["call"])(*rec.data["args"])
    if inspect.isawaitable(result):
        await result


def live_differences(result: ReplayResult) -> list[dict[str, Any]]:
    """On a tape: each trade whose live end (the tape's `exit` / `closed` lines) differs from the
    replay's (rule, close time or exit price), in open order. Empty for a plain recording."""
    live: dict[str, dict[str, Any]] = {}
    prices: dict[str, float] = {}
    for r in result.taped:
        if r.kind == "exit":
            live[r.data["trade_id"]] = {"rule": r.data.get("rule"), "ts": r.ts}
        elif r.kind == "closed":
            live[r.data["trade_id"]] = {"rule": r.data.get("reason"), "ts": r.ts}
            if r.data.get("price") is not None:
                prices[r.data["trade_id"]] = float(r.data["price"])
        elif r.kind == "fill":
            prices[r.data["trade_id"]] = float(r.data["price"])  # the last fill of the exit
    if not any(r.kind == "header" for r in result.taped):
        return []
    rows = []
    for t in result.final_trades:
        closed = str(t.state) == "closed"
        mine = {"rule": t.exit_reason if closed else OPEN, "ts": t.closed_ts if closed else None}
        theirs = live.get(t.trade_id, {"rule": OPEN, "ts": None})
        price_live, price_replay = prices.get(t.trade_id), t.exit_price if closed else None
        same = mine["rule"] == theirs["rule"] and mine["ts"] == theirs["ts"]
        if same and (
            price_live is None or price_replay is None or abs(price_live - price_replay) <= _EPS
        ):
            continue
        rows.append(
            {
                "trade_id": t.trade_id,
                "live": {**theirs, "price": price_live},
                "replay": {**mine, "price": price_replay},
            }
        )
    return rows


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
ALL_RULES = "all rules"
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

    def against_holding(self) -> list[dict[str, Any]]:
        """Per rule used by either run (then "all rules"): what its exits saved and gave up
        against holding to the end (trades whose contract settled), under A and B, and B − A."""
        names = [k for k in {**self.a.holding, **self.b.holding} if k != ALL_RULES]
        rows = []
        for rule in [*sorted(names, key=_rule_key), ALL_RULES]:
            row: dict[str, Any] = {"rule": rule}
            for key, res in (("a", self.a), ("b", self.b)):
                e = res.holding.get(rule) or {}
                row[key] = {
                    k: round(float(e.get(k, 0.0)), 6) for k in ("saved", "given_up", "net")
                } | {"settled": int(e.get("settled", 0)), "pending": int(e.get("pending", 0))}
            row["diff_net"] = round(row["b"]["net"] - row["a"]["net"], 6)
            rows.append(row)
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
            "against_holding": self.against_holding(),
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
    out += _holding_lines(cmp, w, money)
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


def _holding_lines(cmp: Comparison, w: int, money: Callable[[float | None], str]) -> list[str]:
    """The rule exits against holding to the end, under A and under B (as `metrics` counts)."""
    rows = cmp.against_holding()
    out = [
        "against holding to the end (rule exits of trades whose contract settled; + saved):",
        f"{'rule':<{w}} {'A saved':>10} {'A gave up':>10} {'B saved':>10} {'B gave up':>10}"
        f" {'B-A net':>10}",
    ]
    for r in rows:
        a, b = r["a"], r["b"]
        pending = a["pending"] + b["pending"]
        out.append(
            f"{r['rule']:<{w}} {money(a['saved'])} {money(-a['given_up'] or 0.0)}"
            f" {money(b['saved'])} {money(-b['given_up'] or 0.0)} {money(r['diff_net'])}"
            + (f"  ({pending} not settled yet)" if pending else "")
        )
    out.append("")
    return out
