"""Domain types shared by the engine: contracts, quotes, trades and market events.

Units: prices are in dollars per contract (a Kalshi binary trades in 0..1 dollars), quantities are
contract counts, timestamps are Unix seconds (float, UTC), spot prices are in the quote currency (USD).
The engine works in floats for speed; venue adapters convert their exact decimal strings at the
boundary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

Side = Literal["yes", "no", "long", "short"]
"""Position side. Binaries use yes/no; options and stocks use long/short."""

ContractType = Literal[
    "binary_above", "binary_below", "binary_range", "option_call", "option_put", "stock", "combo"
]
"""binary_above: YES pays if the underlying settles above `strike`; binary_below: YES pays if it
settles below `strike` (Kalshi strike_type "less"); binary_range: YES pays in [strike, cap);
combo: several legs traded as one (`Contract.legs`), priced as the sum of ratio × leg price."""


class TradeState(StrEnum):
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


class ExitReason(StrEnum):
    """Why a trade closed. Rule ids are exit reasons too (see engine.rules.RULE_ORDER)."""

    MANUAL = "manual"
    EXTERNAL = "external"
    SETTLED = "settled"
    CLOSE_ALL = "close_all"
    # A risk limit breached with [risk] on_daily_loss / on_total_risk = "close_all".
    RISK_DAILY_LOSS = "risk_daily_loss"
    RISK_TOTAL_RISK = "risk_total_risk"


class Mode(StrEnum):
    LIVE = "live"
    DRY_RUN = "dry_run"
    ALERT_ONLY = "alert_only"


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class AlertKind(StrEnum):
    EXIT_SIGNAL = "exit_signal"
    AUTO_STOP = "auto_stop"
    TRADE_DETECTED = "trade_detected"
    TRADE_CLOSED = "trade_closed"
    OPPORTUNITY = "opportunity"
    REGIME_CHANGE = "regime_change"
    RISK_LIMIT = "risk_limit"
    DATA_QUALITY = "data_quality"
    EXECUTION_FAILURE = "execution_failure"


@dataclass(frozen=True, slots=True)
class Leg:
    """One leg of a combo: a contract and its signed ratio (+ bought, − sold) in the combo."""

    contract_id: str
    ratio: int


@dataclass(frozen=True, slots=True)
class Contract:
    """A tradable instrument. For binaries `strike` is the threshold (above/below) or the floor
    (range), and `cap` the cap (range only)."""

    id: str
    underlying: str
    type: ContractType
    strike: float | None
    close_ts: float
    cap: float | None = None
    multiplier: float = 1.0
    event_id: str = ""
    legs: tuple[Leg, ...] = ()  # combos only

    @property
    def is_binary(self) -> bool:
        return self.type.startswith("binary")


@dataclass(frozen=True, slots=True)
class Quote:
    """Top of book for one contract, YES side for binaries, in dollars."""

    id: str
    bid: float | None
    ask: float | None
    ts: float
    bid_size: float = 0.0
    ask_size: float = 0.0
    last: float | None = None
    volume: float = 0.0
    open_interest: float = 0.0
    # Options: implied volatility (annualised, 0.25 = 25%) and delta from the venue's model, and
    # the underlying's price that model used (time value = mark − intrinsic at this price).
    iv: float | None = None
    delta: float | None = None
    und_price: float | None = None


def quote_problem(q: Quote | None, binary: bool) -> str | None:
    """Return why a quote cannot be acted on, or None when it is valid.

    Invalid means: missing, a missing side, NaN/inf, negative, crossed (bid > ask), or outside
    0..1 for a binary contract. Staleness is checked separately (it depends on the clock).
    """
    if q is None:
        return "no quote"
    if q.bid is None or q.ask is None:
        return "one-sided quote"
    for name, v in (("bid", q.bid), ("ask", q.ask)):
        if not math.isfinite(v):
            return f"{name} is not a number"
        if v < 0:
            return f"{name} is negative ({v})"
        if binary and v > 1:
            return f"{name} {v} is outside 0..1 for a binary"
    if q.bid > q.ask:
        return f"crossed quote (bid {q.bid} > ask {q.ask})"
    if not math.isfinite(q.ts):
        return "quote timestamp is not a number"
    return None


# --- market events: the replay format's kinds, one dataclass each -------------------------------


@dataclass(frozen=True, slots=True)
class ContractEvent:
    ts: float
    contract: Contract
    kind: str = "contract"


@dataclass(frozen=True, slots=True)
class SpotEvent:
    ts: float
    symbol: str
    price: float
    kind: str = "spot"


@dataclass(frozen=True, slots=True)
class QuoteEvent:
    ts: float
    quote: Quote
    kind: str = "quote"


@dataclass(frozen=True, slots=True)
class OpenEvent:
    """A trade opened elsewhere (replay `open` lines, `trades add`, the sim's demo trades)."""

    ts: float
    trade_id: str
    contract_id: str
    side: Side
    qty: float
    price: float
    strategy: str = ""
    kind: str = "open"


@dataclass(frozen=True, slots=True)
class SettleEvent:
    ts: float
    contract_id: str
    value: float
    kind: str = "settle"


@dataclass(frozen=True, slots=True)
class CommandEvent:
    ts: float
    action: str
    trade_id: str | None = None
    kind: str = "command"


MarketEvent = ContractEvent | SpotEvent | QuoteEvent | OpenEvent | SettleEvent | CommandEvent


# --- trades --------------------------------------------------------------------------------------


@dataclass(slots=True)
class Trade:
    """An open or closed position the supervisor watches. Mutable inside the engine only."""

    trade_id: str
    contract_id: str
    side: Side
    qty: float
    entry_price: float
    opened_ts: float
    strategy: str = ""
    venue: str = "sim"
    overrides: dict[str, float | None] = field(default_factory=dict)
    state: TradeState = TradeState.OPEN
    paused: bool = False
    fees: float = 0.0
    peak_pnl: float = 0.0
    peak_pnl_pct: float = 0.0
    trough_pnl: float = 0.0
    trough_pnl_pct: float = 0.0
    closed_ts: float | None = None
    exit_price: float | None = None
    exit_reason: str | None = None
    realized_pnl: float | None = None
    closed_qty: float = 0.0
    multiplier: float = 1.0  # the contract's, kept with the trade for when the contract is unknown

    @property
    def is_long_like(self) -> bool:
        """True when the position profits from its instrument's price rising (yes, long)."""
        return self.side in ("yes", "long")

    @property
    def cost_basis(self) -> float:
        return abs(self.qty) * self.entry_price
