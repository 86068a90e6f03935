"""Trade analytics over the journal: per-trade numbers, aggregates, and how much the auto-stop
rules saved or gave up against holding to settlement (`trade-supervisor metrics`).

Pure functions over journal rows (a `Trade`, its fills, its mark samples, recorded settlements)
plus one async loader, `load_report(store)`, that only reads (a read-only `Store` works while an
engine runs). No UI imports. Units as in engine.models: dollars, contracts, Unix seconds (UTC).

Which trades: closed trades only (open and closing ones are left out). `since` keeps trades
closed at or after that time; `strategy` keeps one strategy tag. A closed trade whose realised
P&L is unknown (closed elsewhere without a price) is listed but counted in no aggregate (its
group's `unknown_pnl` counts it).

Per trade
---------
* entry: `entry_price` at `opened_ts` (the journal has no entry fills: trades are opened
  elsewhere). exit: the volume-weighted price of the trade's exit fills and the time of the last
  one, when the fills cover the closed quantity (`exit_source = "fills"`); else the journal's
  `exit_price` / `closed_ts` (settled, external, closed elsewhere: `exit_source = "journal"`).
* holding time = exit time − entry time, seconds.
* cost basis = closed quantity × entry price × multiplier (as the engine's P&L %).
* realised P&L = the journal's `realized_pnl` (net of every fee paid); return = realised P&L /
  cost basis (`return_pct` = × 100; None when the basis is 0).
* peak (MFE) and trough (MAE): the engine's `peak_pnl(_pct)` / `trough_pnl(_pct)`.
* max drawdown from peak = the largest fall of P&L from its running maximum over the trade's
  mark samples (`marks` table, time order) followed by the realised P&L at the exit, dollars
  (0 with fewer than two points). `marks` = the number of mark samples.
* exit reason: the journal's (a rule id of engine.rules.RULE_ORDER, `manual`, `close_all`,
  `external`, `settled`). Exits not made by a rule get a classification, with NEAR = 0.9 and the
  trade's profit target / max loss as configured now (global, strategy, trade overrides):
    - `take_profit_likely`: P&L > 0 and (P&L % ≥ NEAR × profit_target_percent, or P&L ≥ NEAR ×
      peak P&L — i.e. within 10 % of its peak; a recorded peak not above the exit counts as at
      the peak);
    - `stop_loss_likely`: P&L < 0 and (P&L % ≤ −NEAR × max_loss_percent, or P&L ≤ NEAR ×
      trough P&L — within 10 % of its trough, the same way);
    - `manual_close`: anything else (breakeven included). Rule exits have none (None).

Aggregates (overall, by strategy, by venue, by exit reason), over trades with a known P&L
-----------------------------------------------------------------------------------------
* trades, wins (P&L > 0), losses (P&L < 0; breakeven trades are neither), win rate = wins /
  trades, loss rate = losses / trades.
* total and average P&L, best, worst, average holding time.
* profit factor = gross wins / |gross losses|; None when there are no losses (undefined; JSON
  has no infinity), 0 when there are losses and no wins.
* expectancy = win rate × average win − loss rate × average |loss| (equals the average P&L).
* Sharpe = mean / sample standard deviation (n − 1) of per-trade returns (realised P&L / cost
  basis), not annualised; None with fewer than two returns or no dispersion.
* Sortino = mean return / downside deviation, downside deviation = sqrt(Σ min(r, 0)² / n) over
  all n returns (target 0); None when no return is negative.
* max drawdown = the largest fall of the cumulative realised P&L curve (starting at 0, trades
  ordered by close time, i.e. the exit time above) from its running maximum, dollars (≥ 0).

Auto-stop effectiveness
-----------------------
For a trade closed by a rule whose contract later settled (the `settlements` table; the engine
records every valid settlement it sees), the P&L it would have had if held:
    if_held = s × closed qty × (settlement value of the held side − entry) × multiplier − fees,
with s = −1 for `short`, else +1; the held side's value is the settlement value for `yes`,
1 − value for `no` (a NO position's price is 1 − YES, engine.pricing), the recorded value itself
for `long`/`short`; fees are the fees the trade actually paid (the comparison is of prices: the
exit's own fees are not charged to the rule). Then, with d = realised − if_held:
    saved = d when d > 0 (the stop avoided a loss), given up = −d when d < 0,
and per rule: exits, settled (compared), pending (not settled yet), realised, if-held, saved,
given up, net = saved − given up. Options (and option combos) traded by the engine get their
value at expiry recorded the same way (intrinsic at the underlying's price at the close:
`Engine._record_expiries`); a trade whose contract has no recorded value yet stays pending and
is left out of the sums.
"""

from __future__ import annotations

import asyncio
import csv
import functools
import io
import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.models import Trade, TradeState
from engine.rules import RULE_ORDER

if TYPE_CHECKING:
    from engine.config import Config
    from engine.store import Store
    from engine.supervisor import Engine

__all__ = [
    "NEAR",
    "Aggregate",
    "Report",
    "RuleEffect",
    "TradeInput",
    "TradeStats",
    "aggregate",
    "build_report",
    "classify_exit",
    "config_thresholds",
    "equity_curve",
    "equity_max_drawdown",
    "format_csv",
    "format_text",
    "if_held_pnl",
    "load_report",
    "max_drawdown",
    "metrics_for",
    "profit_factor",
    "selected",
    "sharpe",
    "sortino",
    "trade_stats",
]

NEAR = 0.9  # "near" a threshold, peak or trough: within 10 % of it
MIN_RATIO_TRADES = 20
"""Sharpe, Sortino and the profit factor of fewer trades than this mean nothing: they are None
(JSON null) and shown as "n/a (n=7)"."""
EPS = 1e-9
Thresholds = Callable[[Trade], tuple[float | None, float | None]]
"""A trade -> (profit_target_percent, max_loss_percent) as configured (None: rule off)."""


# --- inputs and per-trade numbers ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TradeInput:
    """One closed trade's journal rows: the trade, its exit fills (Store.fills_for_trade dicts)
    and its mark samples ((ts, mark, pnl, pnl_pct), Store.marks)."""

    trade: Trade
    fills: tuple[Mapping[str, Any], ...] = ()
    marks: tuple[tuple[float, float | None, float | None, float | None], ...] = ()


@dataclass(frozen=True, slots=True)
class TradeStats:
    trade_id: str
    contract_id: str
    side: str
    strategy: str
    venue: str
    qty: float
    multiplier: float
    entry_price: float
    entry_ts: float
    exit_price: float | None
    exit_ts: float | None
    exit_source: str
    holding_seconds: float | None
    cost_basis: float
    fees: float
    realized_pnl: float | None
    return_pct: float | None
    peak_pnl: float
    peak_pnl_pct: float
    trough_pnl: float
    trough_pnl_pct: float
    max_drawdown: float
    marks: int
    exit_reason: str
    by_rule: bool
    classification: str | None
    settlement: float | None
    if_held_pnl: float | None
    saved: float | None
    given_up: float | None


def selected(t: Trade, since: float | None = None, strategy: str | None = None) -> bool:
    """Whether a trade is in the report: closed, at or after `since`, of `strategy`."""
    if t.state != TradeState.CLOSED:
        return False
    if since is not None and (t.closed_ts is None or t.closed_ts < since):
        return False
    return strategy is None or t.strategy == strategy


def max_drawdown(series: Iterable[float]) -> float:
    """The largest fall of `series` from its running maximum (0 for fewer than two points)."""
    peak = -math.inf
    worst = 0.0
    for x in series:
        peak = max(peak, x)
        worst = max(worst, peak - x)
    return worst


def classify_exit(
    pnl: float | None,
    pnl_pct: float | None,
    peak_pnl: float,
    trough_pnl: float,
    profit_target_pct: float | None = None,
    max_loss_pct: float | None = None,
) -> str | None:
    """`take_profit_likely`, `stop_loss_likely` or `manual_close` (see the module docstring);
    None when the P&L is unknown."""
    if pnl is None:
        return None
    if pnl > 0:
        near_target = (
            profit_target_pct is not None
            and pnl_pct is not None
            and pnl_pct >= NEAR * profit_target_pct
        )
        if near_target or pnl >= NEAR * peak_pnl:
            return "take_profit_likely"
    elif pnl < 0:
        near_limit = (
            max_loss_pct is not None and pnl_pct is not None and pnl_pct <= -NEAR * max_loss_pct
        )
        if near_limit or pnl <= NEAR * trough_pnl:
            return "stop_loss_likely"
    return "manual_close"


def _closed_qty(t: Trade) -> float:
    return t.closed_qty if t.closed_qty > 0 else abs(t.qty)


def if_held_pnl(t: Trade, settlement: float) -> float:
    """The trade's P&L had it been held to `settlement` (YES terms for a binary), net of the
    fees it actually paid."""
    held = 1.0 - settlement if t.side == "no" else settlement
    sign = -1.0 if t.side == "short" else 1.0
    return sign * _closed_qty(t) * (held - t.entry_price) * t.multiplier - t.fees


def trade_stats(
    inp: TradeInput,
    *,
    profit_target_pct: float | None = None,
    max_loss_pct: float | None = None,
    settlement: float | None = None,
) -> TradeStats:
    """The per-trade numbers of one closed trade (module docstring for each definition)."""
    t = inp.trade
    qty = _closed_qty(t)
    basis = qty * t.entry_price * t.multiplier
    pnl = t.realized_pnl
    ret = 100.0 * pnl / basis if pnl is not None and basis > 0 else None

    fill_qty = sum(float(f["qty"]) for f in inp.fills)
    if inp.fills and fill_qty >= qty - EPS and fill_qty > 0:
        value = sum(float(f["qty"]) * float(f["price"]) for f in inp.fills)
        exit_price: float | None = value / fill_qty
        exit_ts: float | None = max(float(f["ts"]) for f in inp.fills)
        source = "fills"
    else:
        exit_price, exit_ts, source = t.exit_price, t.closed_ts, "journal"
    holding = exit_ts - t.opened_ts if exit_ts is not None else None

    path = [float(m[2]) for m in inp.marks if m[2] is not None and math.isfinite(m[2])]
    if pnl is not None:
        path.append(pnl)

    reason = t.exit_reason or ""
    by_rule = reason in RULE_ORDER
    held = saved = given_up = None
    if by_rule and settlement is not None and pnl is not None:
        held = if_held_pnl(t, settlement)
        d = pnl - held
        saved, given_up = max(d, 0.0), max(-d, 0.0)
    return TradeStats(
        trade_id=t.trade_id,
        contract_id=t.contract_id,
        side=t.side,
        strategy=t.strategy,
        venue=t.venue,
        qty=qty,
        multiplier=t.multiplier,
        entry_price=t.entry_price,
        entry_ts=t.opened_ts,
        exit_price=exit_price,
        exit_ts=exit_ts,
        exit_source=source,
        holding_seconds=holding,
        cost_basis=basis,
        fees=t.fees,
        realized_pnl=pnl,
        return_pct=ret,
        peak_pnl=t.peak_pnl,
        peak_pnl_pct=t.peak_pnl_pct,
        trough_pnl=t.trough_pnl,
        trough_pnl_pct=t.trough_pnl_pct,
        max_drawdown=max_drawdown(path),
        marks=len(inp.marks),
        exit_reason=reason,
        by_rule=by_rule,
        classification=None
        if by_rule
        else classify_exit(pnl, ret, t.peak_pnl, t.trough_pnl, profit_target_pct, max_loss_pct),
        settlement=settlement,
        if_held_pnl=held,
        saved=saved,
        given_up=given_up,
    )


# --- aggregates ------------------------------------------------------------------------------


def profit_factor(pnls: Sequence[float]) -> float | None:
    """Gross wins / |gross losses|; None without losses."""
    losses = -sum(p for p in pnls if p < 0)
    if losses <= 0:
        return None
    return sum(p for p in pnls if p > 0) / losses


def sharpe(returns: Sequence[float]) -> float | None:
    """Mean / sample standard deviation of per-trade returns; None for n < 2 or no spread."""
    if len(returns) < 2:
        return None
    sd = statistics.stdev(returns)
    return statistics.fmean(returns) / sd if sd > 0 else None


def sortino(returns: Sequence[float]) -> float | None:
    """Mean / downside deviation (sqrt(Σ min(r, 0)² / n)); None when no return is negative."""
    if not returns:
        return None
    dd = math.sqrt(sum(min(r, 0.0) ** 2 for r in returns) / len(returns))
    return statistics.fmean(returns) / dd if dd > 0 else None


def equity_max_drawdown(rows: Sequence[TradeStats]) -> float:
    """Max drawdown of the cumulative realised P&L (from 0), trades ordered by close time."""
    done = sorted(
        (r for r in rows if r.realized_pnl is not None),
        key=lambda r: (r.exit_ts if r.exit_ts is not None else math.inf, r.trade_id),
    )
    equity, curve = 0.0, [0.0]
    for r in done:
        assert r.realized_pnl is not None
        equity += r.realized_pnl
        curve.append(equity)
    return max_drawdown(curve)


@dataclass(frozen=True, slots=True)
class Aggregate:
    trades: int = 0
    wins: int = 0
    losses: int = 0
    win_rate: float | None = None
    total_pnl: float = 0.0
    avg_pnl: float | None = None
    best: float | None = None
    worst: float | None = None
    avg_holding_seconds: float | None = None
    gross_wins: float = 0.0
    gross_losses: float = 0.0
    avg_win: float | None = None
    avg_loss: float | None = None
    profit_factor: float | None = None
    expectancy: float | None = None
    sharpe: float | None = None
    sortino: float | None = None
    max_drawdown: float = 0.0
    unknown_pnl: int = 0


def aggregate(rows: Sequence[TradeStats], min_ratio_trades: int | None = None) -> Aggregate:
    """The aggregate numbers of a group of trades (module docstring). The ratios (profit factor,
    Sharpe, Sortino) need `min_ratio_trades` trades with a known P&L (MIN_RATIO_TRADES)."""
    least = MIN_RATIO_TRADES if min_ratio_trades is None else min_ratio_trades
    known = [r for r in rows if r.realized_pnl is not None]
    unknown = len(rows) - len(known)
    n = len(known)
    if n == 0:
        return Aggregate(unknown_pnl=unknown)
    pnls = [r.realized_pnl for r in known if r.realized_pnl is not None]
    wins = [p for p in pnls if p > 0]
    losses = [p for p in pnls if p < 0]
    avg_win = statistics.fmean(wins) if wins else None
    avg_loss = -statistics.fmean(losses) if losses else None
    win_rate, loss_rate = len(wins) / n, len(losses) / n
    holds = [r.holding_seconds for r in known if r.holding_seconds is not None]
    returns = [r.return_pct / 100.0 for r in known if r.return_pct is not None]
    return Aggregate(
        trades=n,
        wins=len(wins),
        losses=len(losses),
        win_rate=win_rate,
        total_pnl=sum(pnls),
        avg_pnl=sum(pnls) / n,
        best=max(pnls),
        worst=min(pnls),
        avg_holding_seconds=statistics.fmean(holds) if holds else None,
        gross_wins=sum(wins),
        gross_losses=sum(losses),
        avg_win=avg_win,
        avg_loss=avg_loss,
        profit_factor=profit_factor(pnls) if n >= least else None,
        expectancy=win_rate * (avg_win or 0.0) - loss_rate * (avg_loss or 0.0),
        sharpe=sharpe(returns) if n >= least else None,
        sortino=sortino(returns) if n >= least else None,
        max_drawdown=equity_max_drawdown(known),
        unknown_pnl=unknown,
    )


def _group(
    rows: Sequence[TradeStats],
    key: Callable[[TradeStats], str],
    min_ratio_trades: int | None = None,
) -> dict[str, Aggregate]:
    groups: dict[str, list[TradeStats]] = {}
    for r in rows:
        groups.setdefault(key(r) or "(none)", []).append(r)
    return {k: aggregate(v, min_ratio_trades) for k, v in sorted(groups.items())}


# --- effectiveness ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RuleEffect:
    exits: int = 0
    settled: int = 0
    pending: int = 0
    realized_pnl: float = 0.0
    if_held_pnl: float = 0.0
    saved: float = 0.0
    given_up: float = 0.0
    net: float = 0.0
    helped: int = 0
    hurt: int = 0


def _effect(rows: Sequence[TradeStats]) -> RuleEffect:
    done = [r for r in rows if r.if_held_pnl is not None]
    saved = sum(r.saved or 0.0 for r in done)
    given_up = sum(r.given_up or 0.0 for r in done)
    return RuleEffect(
        exits=len(rows),
        settled=len(done),
        pending=len(rows) - len(done),
        realized_pnl=sum(r.realized_pnl or 0.0 for r in done),
        if_held_pnl=sum(r.if_held_pnl or 0.0 for r in done),
        saved=saved,
        given_up=given_up,
        net=saved - given_up,
        helped=sum(1 for r in done if (r.saved or 0.0) > 0),
        hurt=sum(1 for r in done if (r.given_up or 0.0) > 0),
    )


def effectiveness(rows: Sequence[TradeStats]) -> dict[str, RuleEffect]:
    """Per rule (in RULE_ORDER): what its exits saved and gave up against holding."""
    by: dict[str, list[TradeStats]] = {}
    for r in rows:
        if r.by_rule:
            by.setdefault(r.exit_reason, []).append(r)
    return {rule: _effect(by[rule]) for rule in RULE_ORDER if rule in by}


# --- the report ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Report:
    trades: list[TradeStats]
    overall: Aggregate
    by_strategy: dict[str, Aggregate]
    by_venue: dict[str, Aggregate]
    by_exit_reason: dict[str, Aggregate]
    effectiveness: dict[str, RuleEffect]
    effectiveness_total: RuleEffect
    filters: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Every number, JSON-ready (None where undefined)."""
        return {
            "filters": self.filters,
            "overall": asdict(self.overall),
            "by_strategy": {k: asdict(v) for k, v in self.by_strategy.items()},
            "by_venue": {k: asdict(v) for k, v in self.by_venue.items()},
            "by_exit_reason": {k: asdict(v) for k, v in self.by_exit_reason.items()},
            "effectiveness": {k: asdict(v) for k, v in self.effectiveness.items()},
            "effectiveness_total": asdict(self.effectiveness_total),
            "trades": [asdict(r) for r in self.trades],
            "problems": self.problems,
            "min_ratio_trades": MIN_RATIO_TRADES,  # fewer: profit factor, Sharpe, Sortino null
        }


def build_report(
    inputs: Sequence[TradeInput],
    settlements: Mapping[str, float] | None = None,
    thresholds: Thresholds | None = None,
    *,
    filters: dict[str, Any] | None = None,
    problems: Sequence[str] = (),
    min_ratio_trades: int | None = None,
) -> Report:
    """The whole report from journal rows. `settlements`: contract_id -> settlement value;
    `min_ratio_trades`: see MIN_RATIO_TRADES."""
    least = min_ratio_trades
    settlements = settlements or {}
    rows: list[TradeStats] = []
    for inp in inputs:
        target, max_loss = thresholds(inp.trade) if thresholds is not None else (None, None)
        rows.append(
            trade_stats(
                inp,
                profit_target_pct=target,
                max_loss_pct=max_loss,
                settlement=settlements.get(inp.trade.contract_id),
            )
        )
    rows.sort(key=lambda r: (r.exit_ts if r.exit_ts is not None else math.inf, r.trade_id))
    return Report(
        trades=rows,
        overall=aggregate(rows, least),
        by_strategy=_group(rows, lambda r: r.strategy, least),
        by_venue=_group(rows, lambda r: r.venue, least),
        by_exit_reason=_group(rows, lambda r: r.exit_reason, least),
        effectiveness=effectiveness(rows),
        effectiveness_total=_effect([r for r in rows if r.by_rule]),
        filters=dict(filters or {}),
        problems=list(problems),
    )


async def load_report(
    store: Store,
    *,
    since: float | None = None,
    strategy: str | None = None,
    thresholds: Thresholds | None = None,
    min_ratio_trades: int | None = None,
) -> Report:
    """Read the journal (reads only: a read-only store works beside a running engine) and build
    the report of the closed trades selected by `since` (closed at or after, Unix seconds) and
    `strategy`."""
    trades = await store.load_trades(("closed",))
    problems = list(store.last_load_problems)
    inputs = []
    for t in trades:
        if not selected(t, since, strategy):
            continue
        fills = await store.fills_for_trade(t.trade_id)
        marks = await store.marks(t.trade_id)
        inputs.append(TradeInput(t, tuple(fills), tuple(marks)))
    settled = {cid: v for cid, (v, _ts) in (await store.settlements()).items()}
    # The arithmetic on a thread: called from the engine's loop (the metrics screen), a large
    # journal must not hold the loop an exit may need.
    return await asyncio.to_thread(
        functools.partial(
            build_report,
            inputs,
            settled,
            thresholds,
            filters={"since": since, "strategy": strategy},
            problems=problems,
            min_ratio_trades=min_ratio_trades,
        )
    )


def config_thresholds(config: Config) -> Thresholds:
    """A trade's profit target and max loss as `config` sets them now (global, strategy, trade
    overrides; overrides the config no longer accepts fall back to the strategy's)."""

    def thresholds(t: Trade) -> tuple[float | None, float | None]:
        try:
            c = config.auto_stop.criteria_for(t.strategy, t.overrides)
        except ValueError:
            c = config.auto_stop.criteria_for(t.strategy)
        return c.profit_target_percent, c.max_loss_percent

    return thresholds


def equity_curve(rows: Sequence[TradeStats]) -> list[tuple[float, float]]:
    """(close time, cumulative realised P&L) per trade with a known P&L and exit time, in close
    order (the curve `equity_max_drawdown` measures, without its starting 0)."""
    out: list[tuple[float, float]] = []
    equity = 0.0
    done = [r for r in rows if r.realized_pnl is not None and r.exit_ts is not None]
    for r in sorted(done, key=lambda r: (r.exit_ts, r.trade_id)):
        assert r.realized_pnl is not None and r.exit_ts is not None
        equity += r.realized_pnl
        out.append((r.exit_ts, equity))
    return out


async def metrics_for(engine: Engine) -> dict[str, Any]:
    """The screen's metrics (`host.call(metrics_for)`, on the engine loop): the report of every
    closed trade in the engine's journal as plain data (`Report.to_dict()` without the per-trade
    rows), plus `equity` ([close ts, cumulative P&L] pairs) and `as_of` (the engine's clock).

    Reads through a read-only connection of its own, so the engine's writes never queue behind
    these reads (the engine's own connection is used only when the journal is not a file)."""
    from engine.store import Store

    thresholds = config_thresholds(engine.config)
    path = getattr(engine.store, "path", None)
    if isinstance(path, Path) and path.is_file():
        store = Store(path)
        await store.open(readonly=True, lock=False)
        try:
            report = await load_report(store, thresholds=thresholds)
        finally:
            await store.close()
    else:
        report = await load_report(engine.store, thresholds=thresholds)
    data = await asyncio.to_thread(_screen_data, report)
    data["as_of"] = engine.clock.now()
    return data


def _screen_data(report: Report) -> dict[str, Any]:
    data = report.to_dict()
    del data["trades"]
    data["equity"] = [list(p) for p in equity_curve(report.trades)]
    data["closed_trades"] = len(report.trades)
    return data


# --- output ----------------------------------------------------------------------------------


def _money(v: float | None) -> str:
    return "n/a" if v is None else f"{v:+.2f}"


def _ratio(v: float | None, trades: int | None = None) -> str:
    if v is None:
        return ratio_na(trades)
    return f"{v:.2f}"


def ratio_na(trades: int | None) -> str:
    """How a ratio left out is shown: "n/a (n=7)" when too few trades, else "n/a"."""
    if trades is not None and 0 < trades < MIN_RATIO_TRADES:
        return f"n/a (n={trades})"
    return "n/a"


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100.0 * v:.1f}%"


def fmt_duration(seconds: float | None) -> str:
    """1h02m, 12m30s, 45s; n/a when unknown."""
    if seconds is None:
        return "n/a"
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


_AGG_COLS = (
    ("trades", 6),
    ("wins", 5),
    ("losses", 6),
    ("win%", 6),
    ("total P&L", 10),
    ("avg P&L", 9),
    ("best", 9),
    ("worst", 9),
    ("avg hold", 8),
    ("PF", 10),
    ("expect.", 9),
    ("Sharpe", 10),
    ("Sortino", 10),
    ("max DD", 9),
)


def _agg_cells(a: Aggregate) -> list[str]:
    return [
        str(a.trades),
        str(a.wins),
        str(a.losses),
        _pct(a.win_rate),
        _money(a.total_pnl),
        _money(a.avg_pnl),
        _money(a.best),
        _money(a.worst),
        fmt_duration(a.avg_holding_seconds),
        _ratio(a.profit_factor, a.trades),
        _money(a.expectancy),
        _ratio(a.sharpe, a.trades),
        _ratio(a.sortino, a.trades),
        f"{a.max_drawdown:.2f}",
    ]


def _table(title: str, label: str, head: Sequence[tuple[str, int]], body: list[list[str]]) -> str:
    width = max([len(label), *(len(r[0]) for r in body)])
    lines = [title, f"  {label:<{width}}  " + "  ".join(f"{h:>{w}}" for h, w in head)]
    for r in body:
        lines.append(
            f"  {r[0]:<{width}}  "
            + "  ".join(f"{c:>{w}}" for c, (_h, w) in zip(r[1:], head, strict=True))
        )
    return "\n".join(lines)


def _agg_table(title: str, label: str, groups: Mapping[str, Aggregate]) -> str:
    return _table(title, label, _AGG_COLS, [[k, *_agg_cells(a)] for k, a in groups.items()])


_EFF_COLS = (
    ("exits", 5),
    ("settled", 7),
    ("pending", 7),
    ("realised", 9),
    ("if held", 9),
    ("saved", 9),
    ("given up", 9),
    ("net", 9),
)


def _eff_cells(e: RuleEffect) -> list[str]:
    return [
        str(e.exits),
        str(e.settled),
        str(e.pending),
        _money(e.realized_pnl),
        _money(e.if_held_pnl),
        f"{e.saved:.2f}",
        f"{e.given_up:.2f}",
        _money(e.net),
    ]


def format_text(report: Report) -> str:
    """Readable tables: overall, by strategy, by venue, by exit reason, per-rule effectiveness."""
    parts = []
    f = report.filters
    scope = ", ".join(
        s
        for s in (
            f"closed since {f['since_text']}" if f.get("since_text") else "",
            f"strategy {f['strategy']}" if f.get("strategy") is not None else "",
        )
        if s
    )
    parts.append(
        f"Trade metrics: {report.overall.trades} closed trade(s)" + (f" ({scope})" if scope else "")
    )
    if report.overall.unknown_pnl:
        parts.append(f"  ({report.overall.unknown_pnl} closed without a known P&L, not counted)")
    parts.append(_agg_table("\nOverall", "", {"all": report.overall}))
    parts.append(_agg_table("\nBy strategy", "strategy", report.by_strategy))
    parts.append(_agg_table("\nBy venue", "venue", report.by_venue))
    parts.append(_agg_table("\nBy exit reason", "reason", report.by_exit_reason))
    body = [[k, *_eff_cells(e)] for k, e in report.effectiveness.items()]
    if body:
        body.append(["all rules", *_eff_cells(report.effectiveness_total)])
    parts.append(
        _table(
            "\nAuto-stop effectiveness (rule exits vs holding to settlement)",
            "rule",
            _EFF_COLS,
            body,
        )
        if body
        else "\nAuto-stop effectiveness: no trades closed by a rule"
    )
    manual = [r for r in report.trades if r.classification is not None]
    if manual:
        counts: dict[str, int] = {}
        for r in manual:
            counts[r.classification or ""] = counts.get(r.classification or "", 0) + 1
        parts.append(
            "\nExits not made by a rule: "
            + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        )
    for p in report.problems:
        parts.append(f"warning: {p}")
    return "\n".join(parts) + "\n"


CSV_COLUMNS = tuple(f.name for f in fields(TradeStats))


def format_csv(report: Report) -> str:
    """One row per trade (the TradeStats fields), with a header; empty cells for None."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in report.trades:
        w.writerow(["" if (v := getattr(r, c)) is None else v for c in CSV_COLUMNS])
    return out.getvalue()
