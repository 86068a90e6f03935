"""The immutable picture of the engine that the UI and the `status` command read.

Every number on the screen comes from here; the UI computes nothing of its own. Units: prices in
dollars, percentages as percent (5.0 = 5 %), momentum in basis points, times in Unix seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.alerts import Alert, ChannelHealth
from engine.watchdog import Unprotected


@dataclass(frozen=True, slots=True)
class MarketView:
    symbol: str
    spot: float | None
    spot_ts: float | None
    change_30m_pct: float | None
    sparkline: tuple[float, ...]  # one close per minute over the last 30 min, oldest first
    momentum_pct: tuple[tuple[int, float | None], ...]  # (window minutes, % change)
    momentum_bps: float | None
    sigma: float | None  # composite realised volatility, annualised (0.5 = 50 %)
    sigma_used: float  # the sigma the probability model uses (see sigma_source)
    vol_score: float | None  # 0..1
    regime: str | None
    event_id: str
    close_ts: float | None
    ttc_seconds: float | None
    # The spot source in use ("coinbase", "kraken", "sim"), None when none is usable or known.
    spot_source: str | None = None
    # Where sigma_used comes from: "implied" (DVOL), "realized" or "fallback" ([signals]
    # fallback_sigma, not enough history yet); and what [signals] sigma_source asks for. Asked
    # for "implied" but not using it: the DVOL is missing (implied_vol None) or stale.
    sigma_source: str = "realized"
    sigma_wanted: str = "realized"
    implied_vol: float | None = None  # the last DVOL read, annualised (0.52 = 52 %), if any
    implied_vol_age: float | None = None  # seconds since that reading's timestamp
    # Where `regime` comes from: "vix" (the VIX level, fresh) or "realized" (the volatility
    # score). The last VIX value (index points) and its age in seconds, if any was read.
    regime_source: str = "realized"
    vix: float | None = None
    vix_age: float | None = None
    # Options/stocks (an exchange's hours): how the pane names `close_ts`, e.g. "16:00 ET",
    # "13:00 ET early close", "Mon 16:00 ET"; None for a binary event (shown in UTC).
    close_label: str | None = None
    exchange_open: bool | None = None  # the exchange trades now (None: no exchange hours)


@dataclass(frozen=True, slots=True)
class StrikeRow:
    contract_id: str
    strike: float  # the threshold (above/below) or the floor (range), dollars
    cap: float | None
    below: bool  # a "below strike" contract (YES pays under the strike)
    buffer: float  # dollars, positive when YES would pay now: S − K, K − S (below), range: inside
    buffer_pct: float
    expected_move: float  # dollars
    bm: float | None  # |buffer| / expected move
    prob: float  # model probability of YES, 0..1
    yes_bid: float | None
    yes_ask: float | None
    no_bid: float | None
    no_ask: float | None
    diff_yes: float | None  # prob − YES ask
    diff_no: float | None  # (1 − prob) − NO ask
    volume: float
    open_interest: float
    atm: bool
    held: bool
    edge: bool  # |DIFF| on either side beyond the configured edge threshold
    quote_age: float | None


@dataclass(frozen=True, slots=True)
class OptionSide:
    """One option (the call or the put) of a strike in the chain. Prices in dollars per share."""

    contract_id: str
    bid: float | None
    ask: float | None
    iv: float | None  # the venue's implied volatility, annualised (0.25 = 25 %)
    delta: float | None  # the venue's delta (a put's is negative)
    time_value: float | None  # mid − intrinsic at the model's underlying price
    prob_itm: float | None  # N(d2) from this option's IV: probability of finishing in the money
    held: bool
    volume: float
    open_interest: float
    quote_age: float | None


@dataclass(frozen=True, slots=True)
class OptionStrikeRow:
    """One strike of an option chain (one expiry): its call and its put, side by side.

    In `Snapshot.strikes` instead of `StrikeRow`s when the current contracts are options."""

    contract_id: str  # the row's key: "<underlying> <expiry> <strike>", e.g. "SPY 20260116 450"
    strike: float  # dollars
    expiry: str  # YYYYMMDD (UTC date of the close)
    close_ts: float  # the options' last trading moment, Unix seconds
    underlying: float | None  # the price the model used (und_price, else spot), dollars
    call: OptionSide | None
    put: OptionSide | None
    atm: bool

    @property
    def held(self) -> bool:
        return any(s is not None and s.held for s in (self.call, self.put))


@dataclass(frozen=True, slots=True)
class RuleView:
    rule: str
    fired: bool
    value: float
    threshold: float
    distance: float
    unit: str
    text: str


@dataclass(frozen=True, slots=True)
class TradeRow:
    trade_id: str
    contract_id: str
    side: str
    qty: float
    entry: float
    mark: float | None
    pnl: float | None
    pnl_pct: float | None
    peak_pnl: float
    peak_pnl_pct: float
    drawdown: float  # peak P&L − current P&L, dollars
    opened_ts: float
    held_seconds: float
    nearest: str  # e.g. "max_loss 4.2%"
    rules: tuple[RuleView, ...]
    state: str  # armed / disarmed / paused / closing / stale / alert_only / halted
    problem: str | None  # why the data is not usable, when stale
    strategy: str
    paused: bool
    proceeds: float | None  # what closing the open quantity at the mark brings (negative: costs)
    contract_type: str = ""  # binary_above … option_call, option_put, stock, combo
    # Options and combos: the time value the evaluation measured (dollars per share) and, under
    # the min_time_value rule, its state against the rule's floor: SAFE (> 2 × floor), RISK
    # (<= 2 × floor), CRITICAL (<= floor: the rule fires); no state without the rule. None when
    # not measured.
    time_value: float | None = None
    tv_state: str | None = None
    # Why the engine is not protecting this trade right now (the watchdog: no evaluation on
    # fresh, valid data for longer than [engine] unprotected_after_seconds); None while it is.
    unprotected: str | None = None
    # A rule fired but its exit cannot be sent: why, in a word ("paused", "disarmed", "kill
    # switch", "alert_only"); `nearest` then reads "max_loss FIRED — paused". None otherwise.
    blocked: str | None = None


@dataclass(frozen=True, slots=True)
class SourceHealth:
    name: str
    last_ts: float | None
    age_seconds: float | None
    stale: bool


@dataclass(frozen=True, slots=True)
class RiskView:
    open_positions: int
    total_at_risk: float  # sum of open cost bases, dollars
    daily_pnl: float  # realised today (UTC) + unrealised of open trades, dollars
    breaches: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Snapshot:
    seq: int
    ts: float
    venue: str
    mode: str
    badge: str  # SIM / PAPER / LIVE / ALERT-ONLY
    real_money: bool  # arming sends real orders (live mode on a real venue)
    armed: bool
    paused_all: bool
    market: MarketView | None
    strikes: tuple[StrikeRow, ...] | tuple[OptionStrikeRow, ...]
    trades: tuple[TradeRow, ...]
    alerts: tuple[Alert, ...]
    health: tuple[SourceHealth, ...]
    risk: RiskView
    alert_channels: tuple[ChannelHealth, ...] = ()  # AlertBus.channel_health()
    # Every open trade the engine is not protecting right now, and why (engine/watchdog.py).
    unprotected: tuple[Unprotected, ...] = ()


@dataclass(frozen=True, slots=True)
class PnlLevel:
    """A horizontal line on a trade's P&L chart: where a stop or a reference sits, in dollars."""

    name: str  # entry / peak / max_loss / profit_target / trailing_stop
    pnl: float
    text: str  # e.g. "max_loss −40% = −$12.00"


@dataclass(frozen=True, slots=True)
class AuditEntry:
    ts: float
    event: str
    text: str  # the record's data, compact


@dataclass(frozen=True, slots=True)
class TradeDetail:
    """Everything the trade detail screen shows for one open trade."""

    row: TradeRow
    contract: str  # the contract's title, e.g. "BTC above $97,250 at 15:00"
    cost_basis: float
    marks: tuple[tuple[float, float], ...]  # (ts, P&L $), oldest first, ending with the latest
    levels: tuple[PnlLevel, ...]
    criteria: tuple[tuple[str, float | None], ...]  # the thresholds in force (None = rule off)
    overrides: tuple[tuple[str, float | None], ...]  # the trade's own, as saved
    audit: tuple[AuditEntry, ...]  # oldest first
    alerts: tuple[Alert, ...]  # newest first
