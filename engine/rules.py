"""Auto-stop rules (DESIGN.md §5): pure functions of a trade's numbers, its history and now.

Each rule takes a `RuleInput` and the effective `Criteria` and returns a `RuleResult` (fired or
not, the measured value, the threshold and how far it is from firing), or None when the rule is
disabled (its config key is None) or cannot be evaluated (an input it needs is missing, e.g. no
momentum yet, no time value for a binary, an unknown direction).

Conventions:
- Every rule fires exactly at its threshold, not before. Comparisons allow a relative/absolute
  slack of 1e-12 so that float rounding in derived quantities (e.g. 0.3 - 0.1 vs 0.2) does not
  keep a rule from firing at its threshold; anything a billionth of a unit short does not fire.
- `distance` is how far the measured value still has to move to fire, in the result's `unit`,
  never negative, 0 when fired. Where a rule needs a precondition before it can fire (trailing
  activation, a favourable momentum phase before a reversal) the distance is the minimum total
  movement: first to meet the precondition, then to the threshold (see each rule).
- Units: "%" = percentage points of P&L (or of spot for price_gap), "min" = minutes,
  "bps" = basis points of momentum score, "score" = volatility score 0..1, "s" = seconds,
  "$" = dollars per unit of underlying.
- Non-finite inputs (NaN, inf) make a rule not evaluable (None) and non-finite history samples
  are skipped; rejecting bad data and alerting on it is the engine's job (§5 safety rules).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from engine.config import Criteria

_REL_TOL = 1e-12
_ABS_TOL = 1e-12


@dataclass(frozen=True, slots=True)
class RuleInput:
    """Everything the rules read about one open trade at one instant."""

    now: float  # Unix seconds
    opened_ts: float  # Unix seconds
    pnl_pct: float  # P&L / cost basis * 100
    peak_pnl_pct: float  # highest pnl_pct since open, current included
    # +1: the position gains when the underlying rises, -1 when it falls, 0 unknown (range binary)
    direction: int
    momentum_bps: float | None  # signed momentum score, bps, + = underlying rising
    momentum_history: Sequence[tuple[float, float]] = ()  # (ts, signed momentum bps), oldest first
    vol_score: float | None = None  # 0..1
    vol_history: Sequence[tuple[float, float]] = ()  # (ts, vol score), oldest first
    spot: float | None = None
    prev_spot: float | None = None  # spot at the previous spot update
    ttc_seconds: float | None = None
    in_the_money: bool | None = None
    time_value: float | None = None  # options only: price - intrinsic, dollars per unit


@dataclass(frozen=True, slots=True)
class RuleResult:
    """One rule's verdict and the numbers behind it."""

    rule: str  # rule id (one of RULE_ORDER)
    fired: bool
    value: float  # the measured quantity in `unit`
    threshold: float  # in `unit`
    distance: float  # how far from firing, in `unit`, >= 0; 0 when fired
    unit: str  # "%", "min", "bps", "score", "s", "$"
    detail: Mapping[str, float | bool | None]  # the numbers behind it (for the audit record)

    @property
    def proximity(self) -> float:
        """Distance relative to the threshold's size (the distance itself for a 0 threshold)."""
        t = abs(self.threshold)
        return self.distance / t if t > 0 else self.distance

    def describe(self) -> str:
        """Short text for the screen: "max_loss 4.2%" or "max_loss FIRED -31.5% <= -30%"."""
        if self.fired:
            op = "<=" if self.rule in _FIRES_AT_OR_BELOW else ">="
            value = _fmt(self.value, self.unit)
            threshold = _fmt(self.threshold, self.unit)
            return f"{self.rule} FIRED {value} {op} {threshold}"
        return f"{self.rule} {_fmt(self.distance, self.unit)}"


RULE_ORDER: tuple[str, ...] = (
    "max_loss",
    "profit_target",
    "trailing_drawdown",
    "max_holding_time",
    "momentum",
    "momentum_reversal",
    "volatility",
    "volatility_spike",
    "price_gap",
    "ttc_cutoff",
    "min_time_value",
)

# Rules whose measured value fires when at or below the threshold (the rest: at or above).
_FIRES_AT_OR_BELOW = frozenset({"max_loss", "ttc_cutoff", "min_time_value"})


# --- helpers -------------------------------------------------------------------------------------


def fmt_dollars(x: float) -> str:
    """Dollars with cents at least and up to six decimals, never rounded into the threshold's
    look: 0.05 -> "0.05", 0.1 -> "0.10", 0.09996 -> "0.09996"."""
    n = f"{x:,.6f}".rstrip("0")
    whole, _, frac = n.partition(".")
    return f"{whole}.{frac:0<2}"


def _fmt(x: float, unit: str) -> str:
    if unit == "$":
        n = fmt_dollars(x)
        return f"-${n[1:]}" if n.startswith("-") else f"${n}"
    n = f"{x:.0f}" if abs(x) >= 1000 else f"{x:.4g}"
    if unit in ("%", "s"):
        return f"{n}{unit}"
    return f"{n} {unit}"


_isfinite = math.isfinite


def _finite(*xs: float | None) -> bool:
    # A loop rather than all(<generator>): this runs for every rule of every trade on every update.
    for x in xs:  # noqa: SIM110
        if x is None or not _isfinite(x):
            return False
    return True


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= max(_REL_TOL * max(abs(a), abs(b)), _ABS_TOL)


def _at_or_above(value: float, threshold: float) -> bool:
    return value >= threshold or _close(value, threshold)


def _at_or_below(value: float, threshold: float) -> bool:
    return value <= threshold or _close(value, threshold)


def _window(history: Sequence[tuple[float, float]], now: float, seconds: float) -> list[float]:
    """Finite sample values with ts >= now - seconds."""
    start = now - seconds
    return [v for ts, v in history if ts >= start and math.isfinite(v)]


def _above(
    rule: str, value: float, threshold: float, unit: str, detail: dict[str, float | bool | None]
) -> RuleResult:
    """A rule that fires when `value` >= `threshold`."""
    fired = _at_or_above(value, threshold)
    distance = 0.0 if fired else max(threshold - value, 0.0)
    return RuleResult(rule, fired, value, threshold, distance, unit, detail)


def _below(
    rule: str, value: float, threshold: float, unit: str, detail: dict[str, float | bool | None]
) -> RuleResult:
    """A rule that fires when `value` <= `threshold`."""
    fired = _at_or_below(value, threshold)
    distance = 0.0 if fired else max(value - threshold, 0.0)
    return RuleResult(rule, fired, value, threshold, distance, unit, detail)


# --- the rules -----------------------------------------------------------------------------------


def max_loss(inp: RuleInput, c: Criteria) -> RuleResult | None:
    """Fires when pnl_pct <= -max_loss_percent. Value and threshold are signed P&L %."""
    if c.max_loss_percent is None or not _finite(inp.pnl_pct):
        return None
    limit = float(c.max_loss_percent)
    return _below(
        "max_loss", inp.pnl_pct, -limit, "%", {"pnl_pct": inp.pnl_pct, "max_loss_percent": limit}
    )


def profit_target(inp: RuleInput, c: Criteria) -> RuleResult | None:
    """Fires when pnl_pct >= profit_target_percent."""
    if c.profit_target_percent is None or not _finite(inp.pnl_pct):
        return None
    target = float(c.profit_target_percent)
    detail: dict[str, float | bool | None] = {
        "pnl_pct": inp.pnl_pct,
        "profit_target_percent": target,
    }
    return _above("profit_target", inp.pnl_pct, target, "%", detail)


def trailing_drawdown(inp: RuleInput, c: Criteria) -> RuleResult | None:
    """Fires when peak >= activation and peak - pnl >= trailing_drawdown_percent.

    Activation None means 0. Value = drawdown from peak in P&L points. Before activation the
    distance is the P&L travel still needed: up to the activation level (activation - pnl), then
    down by the full drawdown, i.e. (activation - pnl_pct) + trailing_drawdown_percent.
    """
    if c.trailing_drawdown_percent is None or not _finite(inp.pnl_pct, inp.peak_pnl_pct):
        return None
    dd_limit = float(c.trailing_drawdown_percent)
    activation = float(c.trailing_activation_percent or 0.0)
    drawdown = inp.peak_pnl_pct - inp.pnl_pct
    activated = _at_or_above(inp.peak_pnl_pct, activation)
    detail: dict[str, float | bool | None] = {
        "pnl_pct": inp.pnl_pct,
        "peak_pnl_pct": inp.peak_pnl_pct,
        "drawdown_pct": drawdown,
        "trailing_drawdown_percent": dd_limit,
        "trailing_activation_percent": activation,
        "activated": activated,
    }
    if activated:
        return _above("trailing_drawdown", drawdown, dd_limit, "%", detail)
    distance = max(activation - inp.pnl_pct, 0.0) + dd_limit
    return RuleResult("trailing_drawdown", False, drawdown, dd_limit, distance, "%", detail)


def max_holding_time(inp: RuleInput, c: Criteria) -> RuleResult | None:
    """Fires when the trade has been open max_holding_time_minutes or longer.

    The firing test is now >= opened_ts + limit * 60 (the deadline), so a clock set to exactly the
    deadline fires despite the rounding of large Unix timestamps.
    """
    if c.max_holding_time_minutes is None or not _finite(inp.now, inp.opened_ts):
        return None
    limit = float(c.max_holding_time_minutes)
    deadline = inp.opened_ts + limit * 60.0
    held = (inp.now - inp.opened_ts) / 60.0
    fired = inp.now >= deadline or _close(inp.now, deadline)
    distance = 0.0 if fired else max((deadline - inp.now) / 60.0, 0.0)
    detail: dict[str, float | bool | None] = {
        "held_minutes": held,
        "max_holding_time_minutes": limit,
        "opened_ts": inp.opened_ts,
        "now": inp.now,
    }
    return RuleResult("max_holding_time", fired, held, limit, distance, "min", detail)


def momentum(inp: RuleInput, c: Criteria) -> RuleResult | None:
    """Fires when momentum against the position, -direction * momentum_bps, >= the threshold."""
    if c.momentum_threshold_bps is None or inp.direction == 0 or not _finite(inp.momentum_bps):
        return None
    assert inp.momentum_bps is not None
    threshold = float(c.momentum_threshold_bps)
    adverse = -inp.direction * inp.momentum_bps
    detail: dict[str, float | bool | None] = {
        "momentum_bps": inp.momentum_bps,
        "direction": float(inp.direction),
        "adverse_bps": adverse,
        "momentum_threshold_bps": threshold,
    }
    return _above("momentum", adverse, threshold, "bps", detail)


def momentum_reversal(inp: RuleInput, c: Criteria) -> RuleResult | None:
    """Fires on a favourable-then-adverse momentum swing inside the reversal window.

    Over the samples with ts >= now - reversal_window_seconds plus the current value, with
    adverse = -direction * momentum: fires when the window's minimum adverse was < 0 (favourable),
    the current adverse is > 0 and current - minimum >= momentum_reversal_threshold_bps.
    Value = the swing (current - minimum). Distance = the adverse momentum still to gain: with a
    favourable phase in the window, up to max(minimum + threshold, 0); without one, first down
    below 0 and then up by the threshold (current + threshold).
    """
    if (
        c.momentum_reversal_threshold_bps is None
        or inp.direction == 0
        or not _finite(inp.momentum_bps)
    ):
        return None
    assert inp.momentum_bps is not None
    threshold = float(c.momentum_reversal_threshold_bps)
    window = float(c.reversal_window_seconds)
    d = inp.direction
    current = -d * inp.momentum_bps
    adverse = [-d * m for m in _window(inp.momentum_history, inp.now, window)]
    lowest = min([*adverse, current])
    swing = current - lowest
    favourable_seen = lowest < 0
    fired = favourable_seen and current > 0 and _at_or_above(swing, threshold)
    if fired:
        distance = 0.0
    elif favourable_seen:
        distance = max(max(lowest + threshold, 0.0) - current, 0.0)
    else:
        distance = max(current, 0.0) + threshold
    detail: dict[str, float | bool | None] = {
        "momentum_bps": inp.momentum_bps,
        "direction": float(d),
        "adverse_bps": current,
        "min_adverse_bps": lowest,
        "swing_bps": swing,
        "favourable_seen": favourable_seen,
        "samples_in_window": float(len(adverse)),
        "momentum_reversal_threshold_bps": threshold,
        "reversal_window_seconds": window,
    }
    return RuleResult("momentum_reversal", fired, swing, threshold, distance, "bps", detail)


def volatility(inp: RuleInput, c: Criteria) -> RuleResult | None:
    """Fires when vol_score >= volatility_threshold."""
    if c.volatility_threshold is None or not _finite(inp.vol_score):
        return None
    assert inp.vol_score is not None
    threshold = float(c.volatility_threshold)
    detail: dict[str, float | bool | None] = {
        "vol_score": inp.vol_score,
        "volatility_threshold": threshold,
    }
    return _above("volatility", inp.vol_score, threshold, "score", detail)


def volatility_spike(inp: RuleInput, c: Criteria) -> RuleResult | None:
    """Fires when vol_score - min(vol scores in the spike window, current included) >= threshold."""
    if c.volatility_spike_threshold is None or not _finite(inp.vol_score):
        return None
    assert inp.vol_score is not None
    threshold = float(c.volatility_spike_threshold)
    window = float(c.spike_window_seconds)
    samples = _window(inp.vol_history, inp.now, window)
    lowest = min([*samples, inp.vol_score])
    rise = inp.vol_score - lowest
    detail: dict[str, float | bool | None] = {
        "vol_score": inp.vol_score,
        "min_vol_score": lowest,
        "rise": rise,
        "samples_in_window": float(len(samples)),
        "volatility_spike_threshold": threshold,
        "spike_window_seconds": window,
    }
    return _above("volatility_spike", rise, threshold, "score", detail)


def price_gap(inp: RuleInput, c: Criteria) -> RuleResult | None:
    """Fires when the spot move since the previous update, against the position, >= threshold %.

    move_pct = (spot - prev_spot) / prev_spot * 100; adverse = -direction * move_pct, or
    |move_pct| when the direction is unknown (0). Needs spot and a positive prev_spot.
    """
    if c.price_gap_threshold_percent is None or not _finite(inp.spot, inp.prev_spot):
        return None
    assert inp.spot is not None and inp.prev_spot is not None
    if inp.prev_spot <= 0:
        return None
    threshold = float(c.price_gap_threshold_percent)
    move_pct = (inp.spot - inp.prev_spot) / inp.prev_spot * 100.0
    adverse = abs(move_pct) if inp.direction == 0 else -inp.direction * move_pct
    detail: dict[str, float | bool | None] = {
        "spot": inp.spot,
        "prev_spot": inp.prev_spot,
        "move_pct": move_pct,
        "direction": float(inp.direction),
        "adverse_pct": adverse,
        "price_gap_threshold_percent": threshold,
    }
    return _above("price_gap", adverse, threshold, "%", detail)


def ttc_cutoff(inp: RuleInput, c: Criteria) -> RuleResult | None:
    """Fires when ttc_seconds <= ttc_cutoff_seconds and the position is out of the money.

    An in-the-money position near the close is kept, and so is one whose moneyness is unknown
    (in_the_money None). Distance = max(ttc - cutoff, 0) seconds, so it can be 0 without firing.
    """
    if c.ttc_cutoff_seconds is None or not _finite(inp.ttc_seconds):
        return None
    assert inp.ttc_seconds is not None
    cutoff = float(c.ttc_cutoff_seconds)
    ttc = inp.ttc_seconds
    within = _at_or_below(ttc, cutoff)
    fired = within and inp.in_the_money is False
    distance = 0.0 if within else max(ttc - cutoff, 0.0)
    detail: dict[str, float | bool | None] = {
        "ttc_seconds": ttc,
        "ttc_cutoff_seconds": cutoff,
        "in_the_money": inp.in_the_money,
    }
    return RuleResult("ttc_cutoff", fired, ttc, cutoff, distance, "s", detail)


def min_time_value(inp: RuleInput, c: Criteria) -> RuleResult | None:
    """Fires when an option's time value (price - intrinsic, $ per unit) <= min_time_value."""
    if c.min_time_value is None or not _finite(inp.time_value):
        return None
    assert inp.time_value is not None
    floor = float(c.min_time_value)
    detail: dict[str, float | bool | None] = {"time_value": inp.time_value, "min_time_value": floor}
    return _below("min_time_value", inp.time_value, floor, "$", detail)


RULES: dict[str, Callable[[RuleInput, Criteria], RuleResult | None]] = {
    "max_loss": max_loss,
    "profit_target": profit_target,
    "trailing_drawdown": trailing_drawdown,
    "max_holding_time": max_holding_time,
    "momentum": momentum,
    "momentum_reversal": momentum_reversal,
    "volatility": volatility,
    "volatility_spike": volatility_spike,
    "price_gap": price_gap,
    "ttc_cutoff": ttc_cutoff,
    "min_time_value": min_time_value,
}
assert tuple(RULES) == RULE_ORDER

_RANK = {rule: i for i, rule in enumerate(RULE_ORDER)}

# Rules that read only the market (plus the trade's direction and criteria), never its P&L, its
# quote or its age: equal for every trade with the same direction and criteria.
MARKET_RULES_ORDERED: tuple[str, ...] = (
    "momentum",
    "momentum_reversal",
    "volatility",
    "volatility_spike",
    "price_gap",
)
MARKET_RULES = frozenset(MARKET_RULES_ORDERED)


def evaluate(inp: RuleInput, c: Criteria) -> list[RuleResult]:
    """Every enabled, evaluable rule's result, in RULE_ORDER."""
    results: list[RuleResult] = []
    for rule in RULE_ORDER:
        r = RULES[rule](inp, c)
        if r is not None:
            results.append(r)
    return results


def first_fired(results: Sequence[RuleResult]) -> RuleResult | None:
    """The fired result that comes first in RULE_ORDER (the recorded exit reason), or None."""
    fired = [r for r in results if r.fired]
    return min(fired, key=lambda r: _RANK.get(r.rule, len(_RANK))) if fired else None


def nearest(results: Sequence[RuleResult]) -> RuleResult | None:
    """The first fired rule (RULE_ORDER) if any, else the smallest proximity (ties: RULE_ORDER)."""
    if not results:
        return None
    hit = first_fired(results)
    if hit is not None:
        return hit
    return min(results, key=lambda r: (r.proximity, _RANK.get(r.rule, len(_RANK))))


# --- the audit: every rule, on or off ------------------------------------------------------------

RULE_KEYS: dict[str, str] = {
    "max_loss": "max_loss_percent",
    "profit_target": "profit_target_percent",
    "trailing_drawdown": "trailing_drawdown_percent",
    "max_holding_time": "max_holding_time_minutes",
    "momentum": "momentum_threshold_bps",
    "momentum_reversal": "momentum_reversal_threshold_bps",
    "volatility": "volatility_threshold",
    "volatility_spike": "volatility_spike_threshold",
    "price_gap": "price_gap_threshold_percent",
    "ttc_cutoff": "ttc_cutoff_seconds",
    "min_time_value": "min_time_value",
}
"""Each rule's threshold key in `Criteria` (None there: the rule is off)."""
assert tuple(RULE_KEYS) == RULE_ORDER

RULE_UNITS: dict[str, str] = {
    "max_loss": "%",
    "profit_target": "%",
    "trailing_drawdown": "%",
    "max_holding_time": "min",
    "momentum": "bps",
    "momentum_reversal": "bps",
    "volatility": "score",
    "volatility_spike": "score",
    "price_gap": "%",
    "ttc_cutoff": "s",
    "min_time_value": "$",
}

# A stand-in threshold for a rule that is off: its measured value does not depend on it.
_PROBE = {rule: 1.0 for rule in RULE_ORDER} | {"volatility": 0.5, "volatility_spike": 0.5}


def all_on(c: Criteria) -> Criteria:
    """`c` with every rule that is off given a stand-in threshold (for measuring, never for
    deciding: see `audit`)."""
    off = {RULE_KEYS[r]: _PROBE[r] for r in RULE_ORDER if getattr(c, RULE_KEYS[r]) is None}
    return c.model_copy(update=off) if off else c


def audit(inp: RuleInput, c: Criteria) -> list[dict[str, object]]:
    """Every rule's numbers for the audit record, in RULE_ORDER, whether the rule is on or not.

    A rule that is on: as `evaluate` gives it (`on` True). A rule that is off: its value
    measured all the same, with no threshold and no distance (`on` False, never fired). A rule
    whose input is missing (no momentum yet, no time value for a binary): value None.
    """
    probe = all_on(c)
    out: list[dict[str, object]] = []
    for rule in RULE_ORDER:
        on = getattr(c, RULE_KEYS[rule]) is not None
        r = RULES[rule](inp, c if on else probe)
        out.append(
            {
                "rule": rule,
                "on": on,
                "fired": bool(r.fired) if r is not None and on else False,
                "value": r.value if r is not None else None,
                "threshold": r.threshold if r is not None and on else None,
                "distance": r.distance if r is not None and on else None,
                "unit": RULE_UNITS[rule],
            }
        )
    return out
