"""Auto-stop rules: thresholds, distances, direction handling, windows, ordering."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from engine.config import Criteria
from engine.rules import (
    RULE_ORDER,
    RULES,
    RuleInput,
    RuleResult,
    evaluate,
    first_fired,
    max_holding_time,
    max_loss,
    min_time_value,
    momentum,
    momentum_reversal,
    nearest,
    price_gap,
    profit_target,
    trailing_drawdown,
    ttc_cutoff,
    volatility,
    volatility_spike,
)

NOW = 1_700_000_000.25  # a realistic Unix time with a fractional part


def inp(**kw: Any) -> RuleInput:
    base: dict[str, Any] = {
        "now": NOW,
        "opened_ts": NOW - 60.0,
        "pnl_pct": 0.0,
        "peak_pnl_pct": 0.0,
        "direction": 1,
        "momentum_bps": None,
    }
    base.update(kw)
    return RuleInput(**base)


def run(rule: str, c: Criteria, **kw: Any) -> RuleResult:
    r = RULES[rule](inp(**kw), c)
    assert r is not None
    assert r.rule == rule
    return r


# --- API shape -----------------------------------------------------------------------------------


def test_rules_table_matches_order() -> None:
    assert tuple(RULES) == RULE_ORDER
    assert len(RULE_ORDER) == 11


def test_all_disabled_by_default() -> None:
    full = inp(
        momentum_bps=500.0,
        vol_score=0.99,
        spot=90.0,
        prev_spot=100.0,
        ttc_seconds=1.0,
        in_the_money=False,
        time_value=0.0,
        pnl_pct=-99.0,
    )
    for fn in RULES.values():
        assert fn(full, Criteria()) is None
    assert evaluate(full, Criteria()) == []


# --- max_loss ------------------------------------------------------------------------------------


def test_max_loss_fires_exactly_at_threshold() -> None:
    c = Criteria(max_loss_percent=30)
    r = run("max_loss", c, pnl_pct=-30.0)
    assert r.fired and r.distance == 0.0
    assert r.value == -30.0 and r.threshold == -30.0 and r.unit == "%"
    assert run("max_loss", c, pnl_pct=-31.5).fired


def test_max_loss_not_before_threshold() -> None:
    c = Criteria(max_loss_percent=30)
    r = run("max_loss", c, pnl_pct=-30.0 + 1e-9)
    assert not r.fired
    assert r.distance == pytest.approx(1e-9, abs=1e-12)


def test_max_loss_distance() -> None:
    r = run("max_loss", Criteria(max_loss_percent=30), pnl_pct=-25.8)
    assert not r.fired
    assert r.distance == pytest.approx(4.2)  # -25.8 + 30
    assert r.proximity == pytest.approx(4.2 / 30)
    assert r.describe() == "max_loss 4.2%"
    r = run("max_loss", Criteria(max_loss_percent=30), pnl_pct=12.0)
    assert r.distance == pytest.approx(42.0)


def test_max_loss_describe_fired() -> None:
    r = run("max_loss", Criteria(max_loss_percent=30), pnl_pct=-31.5)
    assert r.describe() == "max_loss FIRED -31.5% <= -30%"
    assert r.detail == {"pnl_pct": -31.5, "max_loss_percent": 30.0}


def test_max_loss_disabled() -> None:
    assert max_loss(inp(pnl_pct=-99.0), Criteria()) is None


# --- profit_target -------------------------------------------------------------------------------


def test_profit_target() -> None:
    c = Criteria(profit_target_percent=50)
    r = run("profit_target", c, pnl_pct=50.0)
    assert r.fired and r.distance == 0.0
    r = run("profit_target", c, pnl_pct=50.0 - 1e-9)
    assert not r.fired
    r = run("profit_target", c, pnl_pct=12.5)
    assert r.distance == pytest.approx(37.5)
    r = run("profit_target", c, pnl_pct=-10.0)
    assert r.distance == pytest.approx(60.0)
    assert profit_target(inp(pnl_pct=99.0), Criteria()) is None


# --- trailing_drawdown ---------------------------------------------------------------------------


def test_trailing_fires_at_threshold() -> None:
    c = Criteria(trailing_drawdown_percent=10, trailing_activation_percent=20)
    r = run("trailing_drawdown", c, peak_pnl_pct=25.0, pnl_pct=15.0)
    assert r.fired and r.distance == 0.0 and r.value == pytest.approx(10.0)
    assert r.detail["activated"] is True


def test_trailing_float_rounding_still_fires() -> None:
    # 0.3 - 0.1 == 0.19999999999999998 in floats: still "at" the 0.2 threshold.
    r = run(
        "trailing_drawdown", Criteria(trailing_drawdown_percent=0.2), peak_pnl_pct=0.3, pnl_pct=0.1
    )
    assert r.fired


def test_trailing_not_before_threshold() -> None:
    c = Criteria(trailing_drawdown_percent=10, trailing_activation_percent=20)
    r = run("trailing_drawdown", c, peak_pnl_pct=25.0, pnl_pct=15.0 + 1e-9)
    assert not r.fired
    r = run("trailing_drawdown", c, peak_pnl_pct=25.0, pnl_pct=18.0)
    assert r.distance == pytest.approx(3.0)  # 10 - (25 - 18)


def test_trailing_needs_activation() -> None:
    c = Criteria(trailing_drawdown_percent=10, trailing_activation_percent=20)
    # Drawdown 15 >= 10 but the peak never reached the activation level.
    r = run("trailing_drawdown", c, peak_pnl_pct=19.0, pnl_pct=4.0)
    assert not r.fired
    assert r.detail["activated"] is False
    # Distance: up from 4 to 20 (16 points), then down by 10 -> 26.
    assert r.distance == pytest.approx(26.0)
    # Peak exactly at the activation level counts as activated.
    assert run("trailing_drawdown", c, peak_pnl_pct=20.0, pnl_pct=10.0).fired


def test_trailing_activation_none_means_zero() -> None:
    c = Criteria(trailing_drawdown_percent=5)
    r = run("trailing_drawdown", c, peak_pnl_pct=0.0, pnl_pct=-5.0)
    assert r.fired
    r = run("trailing_drawdown", c, peak_pnl_pct=-1.0, pnl_pct=-8.0)
    assert not r.fired  # peak below 0: not activated
    assert r.distance == pytest.approx(8.0 + 5.0)


def test_trailing_disabled() -> None:
    c = Criteria(trailing_activation_percent=10)
    assert trailing_drawdown(inp(peak_pnl_pct=50.0, pnl_pct=0.0), c) is None


# --- max_holding_time ----------------------------------------------------------------------------


def test_holding_time_fires_at_limit() -> None:
    c = Criteria(max_holding_time_minutes=10)
    r = run("max_holding_time", c, opened_ts=NOW - 600.0)
    assert r.fired and r.distance == 0.0 and r.unit == "min"
    assert r.value == pytest.approx(10.0)


def test_holding_time_deadline_exact_with_fractional_timestamps() -> None:
    opened = 1_700_000_000.1
    c = Criteria(max_holding_time_minutes=10)
    assert max_holding_time(inp(now=opened + 600.0, opened_ts=opened), c).fired  # type: ignore[union-attr]


def test_holding_time_not_before() -> None:
    c = Criteria(max_holding_time_minutes=10)
    r = run("max_holding_time", c, opened_ts=NOW - 599.0)
    assert not r.fired
    assert r.distance == pytest.approx(1 / 60)
    r = run("max_holding_time", c, opened_ts=NOW - 150.0)
    assert r.distance == pytest.approx(7.5)
    assert r.describe() == "max_holding_time 7.5 min"


def test_holding_time_disabled() -> None:
    assert max_holding_time(inp(opened_ts=0.0), Criteria()) is None


# --- momentum ------------------------------------------------------------------------------------


def test_momentum_long_adverse_is_falling() -> None:
    c = Criteria(momentum_threshold_bps=40)
    r = run("momentum", c, direction=1, momentum_bps=-40.0)
    assert r.fired and r.value == 40.0 and r.unit == "bps"
    assert not run("momentum", c, direction=1, momentum_bps=-39.0).fired
    assert not run("momentum", c, direction=1, momentum_bps=+200.0).fired


def test_momentum_short_adverse_is_rising() -> None:
    # A NO / short position loses when the underlying rises: rising momentum is against it.
    c = Criteria(momentum_threshold_bps=40)
    assert run("momentum", c, direction=-1, momentum_bps=40.0).fired
    r = run("momentum", c, direction=-1, momentum_bps=40.0 - 1e-9)
    assert not r.fired
    r = run("momentum", c, direction=-1, momentum_bps=-25.0)  # falling: favourable
    assert not r.fired and r.value == -25.0
    assert r.distance == pytest.approx(65.0)  # from -25 adverse to +40


def test_momentum_distance() -> None:
    r = run("momentum", Criteria(momentum_threshold_bps=40), direction=1, momentum_bps=-15.0)
    assert r.distance == pytest.approx(25.0)


def test_momentum_not_evaluable() -> None:
    c = Criteria(momentum_threshold_bps=40)
    assert momentum(inp(direction=0, momentum_bps=-500.0), c) is None
    assert momentum(inp(direction=1, momentum_bps=None), c) is None
    assert momentum(inp(direction=1, momentum_bps=float("nan")), c) is None
    assert momentum(inp(direction=1, momentum_bps=-500.0), Criteria()) is None


# --- momentum_reversal ---------------------------------------------------------------------------

REV = Criteria(momentum_reversal_threshold_bps=50, reversal_window_seconds=60)


def test_reversal_fires_on_swing_at_threshold() -> None:
    # Long position: +30 bps momentum was favourable (adverse -30); now -20 (adverse +20): swing 50.
    hist = [(NOW - 40.0, 30.0), (NOW - 20.0, 5.0)]
    r = run("momentum_reversal", REV, direction=1, momentum_bps=-20.0, momentum_history=hist)
    assert r.fired and r.distance == 0.0
    assert r.value == pytest.approx(50.0)
    assert r.detail["min_adverse_bps"] == -30.0
    assert r.detail["favourable_seen"] is True


def test_reversal_not_before_threshold() -> None:
    hist = [(NOW - 40.0, 30.0)]
    r = run("momentum_reversal", REV, direction=1, momentum_bps=-19.0, momentum_history=hist)
    assert not r.fired
    assert r.value == pytest.approx(49.0)
    assert r.distance == pytest.approx(1.0)


def test_reversal_short_position() -> None:
    # Short: falling momentum (-30) was favourable, rising (+20) is adverse.
    hist = [(NOW - 30.0, -30.0)]
    assert run(
        "momentum_reversal", REV, direction=-1, momentum_bps=20.0, momentum_history=hist
    ).fired
    # The mirror image is favourable for the short: no reversal.
    hist = [(NOW - 30.0, 30.0)]
    r = run("momentum_reversal", REV, direction=-1, momentum_bps=-20.0, momentum_history=hist)
    assert not r.fired


def test_reversal_ignores_samples_outside_window() -> None:
    # The favourable sample is 61 s old with a 60 s window: it does not count.
    hist = [(NOW - 61.0, 100.0), (NOW - 30.0, 0.0)]
    r = run("momentum_reversal", REV, direction=1, momentum_bps=-60.0, momentum_history=hist)
    assert not r.fired
    assert r.detail["favourable_seen"] is False
    assert r.detail["samples_in_window"] == 1.0
    # No favourable phase: must fall back below 0 (60) and then rise by 50 -> 110.
    assert r.distance == pytest.approx(110.0)
    # Exactly at the window's edge the sample counts.
    hist = [(NOW - 60.0, 100.0)]
    assert run(
        "momentum_reversal", REV, direction=1, momentum_bps=-60.0, momentum_history=hist
    ).fired


def test_reversal_needs_current_adverse() -> None:
    # A swing from -80 to -10 adverse is 70 >= 50, but momentum is still favourable now.
    hist = [(NOW - 30.0, 80.0)]
    r = run("momentum_reversal", REV, direction=1, momentum_bps=10.0, momentum_history=hist)
    assert not r.fired
    assert r.distance == pytest.approx(10.0)  # adverse must get above 0


def test_reversal_adverse_without_favourable_phase() -> None:
    hist = [(NOW - 30.0, -5.0)]  # adverse 5: never favourable
    r = run("momentum_reversal", REV, direction=1, momentum_bps=-80.0, momentum_history=hist)
    assert not r.fired


def test_reversal_not_evaluable() -> None:
    hist = [(NOW - 30.0, 30.0)]
    assert (
        momentum_reversal(inp(direction=0, momentum_bps=-30.0, momentum_history=hist), REV) is None
    )
    assert (
        momentum_reversal(inp(direction=1, momentum_bps=None, momentum_history=hist), REV) is None
    )
    c = Criteria(reversal_window_seconds=60)
    assert momentum_reversal(inp(direction=1, momentum_bps=-30.0, momentum_history=hist), c) is None


# --- volatility ----------------------------------------------------------------------------------


def test_volatility() -> None:
    c = Criteria(volatility_threshold=0.8)
    r = run("volatility", c, vol_score=0.8)
    assert r.fired and r.unit == "score"
    r = run("volatility", c, vol_score=0.8 - 1e-9)
    assert not r.fired
    r = run("volatility", c, vol_score=0.55)
    assert r.distance == pytest.approx(0.25)
    assert r.proximity == pytest.approx(0.25 / 0.8)
    assert volatility(inp(vol_score=None), c) is None
    assert volatility(inp(vol_score=1.0), Criteria()) is None


# --- volatility_spike ----------------------------------------------------------------------------

SPIKE = Criteria(volatility_spike_threshold=0.3, spike_window_seconds=300)


def test_spike_fires_at_threshold() -> None:
    hist = [(NOW - 200.0, 0.25), (NOW - 100.0, 0.4)]
    r = run("volatility_spike", SPIKE, vol_score=0.55, vol_history=hist)
    assert r.fired
    assert r.value == pytest.approx(0.3)
    assert r.detail["min_vol_score"] == 0.25


def test_spike_not_before_threshold() -> None:
    hist = [(NOW - 200.0, 0.25)]
    r = run("volatility_spike", SPIKE, vol_score=0.55 - 1e-9, vol_history=hist)
    assert not r.fired
    r = run("volatility_spike", SPIKE, vol_score=0.45, vol_history=hist)
    assert r.distance == pytest.approx(0.1)


def test_spike_window_and_current() -> None:
    # The low sample is outside the window: only the 0.5 sample and the current count.
    hist = [(NOW - 301.0, 0.1), (NOW - 100.0, 0.5)]
    r = run("volatility_spike", SPIKE, vol_score=0.6, vol_history=hist)
    assert not r.fired and r.value == pytest.approx(0.1)
    # No history: min is the current value, rise 0, distance the whole threshold.
    r = run("volatility_spike", SPIKE, vol_score=0.6)
    assert r.value == 0.0 and r.distance == pytest.approx(0.3)


def test_spike_disabled() -> None:
    hist = [(NOW - 10.0, 0.0)]
    assert volatility_spike(inp(vol_score=0.9, vol_history=hist), Criteria()) is None
    assert volatility_spike(inp(vol_score=None, vol_history=hist), SPIKE) is None


# --- price_gap -----------------------------------------------------------------------------------

GAP = Criteria(price_gap_threshold_percent=0.5)


def test_gap_long_fires_on_drop_at_threshold() -> None:
    r = run("price_gap", GAP, direction=1, spot=99.5, prev_spot=100.0)
    assert r.fired
    assert r.detail["move_pct"] == pytest.approx(-0.5)
    # Same size drop at BTC-like prices.
    assert run("price_gap", GAP, direction=1, spot=96515.0, prev_spot=97000.0).fired


def test_gap_not_before_threshold() -> None:
    r = run("price_gap", GAP, direction=1, spot=99.6, prev_spot=100.0)
    assert not r.fired
    assert r.distance == pytest.approx(0.1)
    assert not run("price_gap", GAP, direction=1, spot=100.5, prev_spot=100.0).fired


def test_gap_short_adverse_is_rising() -> None:
    assert run("price_gap", GAP, direction=-1, spot=100.5, prev_spot=100.0).fired
    r = run("price_gap", GAP, direction=-1, spot=99.0, prev_spot=100.0)
    assert not r.fired
    assert r.distance == pytest.approx(1.5)  # adverse -1.0 up to +0.5


def test_gap_unknown_direction_uses_size() -> None:
    assert run("price_gap", GAP, direction=0, spot=100.5, prev_spot=100.0).fired
    assert run("price_gap", GAP, direction=0, spot=99.5, prev_spot=100.0).fired
    r = run("price_gap", GAP, direction=0, spot=99.8, prev_spot=100.0)
    assert not r.fired and r.distance == pytest.approx(0.3)


def test_gap_not_evaluable() -> None:
    assert price_gap(inp(spot=90.0, prev_spot=None), GAP) is None
    assert price_gap(inp(spot=None, prev_spot=100.0), GAP) is None
    assert price_gap(inp(spot=90.0, prev_spot=0.0), GAP) is None
    assert price_gap(inp(spot=90.0, prev_spot=100.0), Criteria()) is None


# --- ttc_cutoff ----------------------------------------------------------------------------------

TTC = Criteria(ttc_cutoff_seconds=300)


def test_ttc_fires_at_cutoff_when_out_of_the_money() -> None:
    r = run("ttc_cutoff", TTC, ttc_seconds=300.0, in_the_money=False)
    assert r.fired and r.distance == 0.0 and r.unit == "s"
    assert r.describe() == "ttc_cutoff FIRED 300s <= 300s"


def test_ttc_not_before_cutoff() -> None:
    r = run("ttc_cutoff", TTC, ttc_seconds=301.0, in_the_money=False)
    assert not r.fired
    assert r.distance == pytest.approx(1.0)
    r = run("ttc_cutoff", TTC, ttc_seconds=3900.0, in_the_money=False)
    assert r.distance == pytest.approx(3600.0)


def test_ttc_in_the_money_is_kept() -> None:
    r = run("ttc_cutoff", TTC, ttc_seconds=10.0, in_the_money=True)
    assert not r.fired and r.distance == 0.0
    r = run("ttc_cutoff", TTC, ttc_seconds=10.0, in_the_money=None)
    assert not r.fired


def test_ttc_not_evaluable() -> None:
    assert ttc_cutoff(inp(ttc_seconds=None, in_the_money=False), TTC) is None
    assert ttc_cutoff(inp(ttc_seconds=1.0, in_the_money=False), Criteria()) is None


# --- min_time_value ------------------------------------------------------------------------------


def test_time_value_floor() -> None:
    c = Criteria(min_time_value=0.10)
    r = run("min_time_value", c, time_value=0.10)
    assert r.fired and r.unit == "$"
    assert r.describe() == "min_time_value FIRED $0.10 <= $0.10"  # cents kept
    r = run("min_time_value", c, time_value=0.10 + 1e-9)
    assert not r.fired
    r = run("min_time_value", c, time_value=0.35)
    assert r.distance == pytest.approx(0.25)
    assert r.describe() == "min_time_value $0.25"
    assert min_time_value(inp(time_value=None), c) is None
    assert min_time_value(inp(time_value=0.0), Criteria()) is None


def test_time_value_zero_floor_proximity_is_distance() -> None:
    r = run("min_time_value", Criteria(min_time_value=0), time_value=0.4)
    assert not r.fired and r.proximity == pytest.approx(0.4)
    assert run("min_time_value", Criteria(min_time_value=0), time_value=0.0).fired


# --- evaluate / first_fired / nearest ------------------------------------------------------------

ALL = Criteria(
    max_loss_percent=30,
    profit_target_percent=50,
    trailing_drawdown_percent=10,
    trailing_activation_percent=20,
    max_holding_time_minutes=120,
    momentum_threshold_bps=40,
    momentum_reversal_threshold_bps=50,
    volatility_threshold=0.9,
    volatility_spike_threshold=0.3,
    price_gap_threshold_percent=1.0,
    ttc_cutoff_seconds=300,
    min_time_value=0.10,
)


def full_input(**kw: Any) -> RuleInput:
    base: dict[str, Any] = {
        "pnl_pct": 5.0,
        "peak_pnl_pct": 8.0,
        "direction": 1,
        "momentum_bps": 10.0,
        "momentum_history": [(NOW - 30.0, 5.0)],
        "vol_score": 0.4,
        "vol_history": [(NOW - 100.0, 0.35)],
        "spot": 100.0,
        "prev_spot": 100.0,
        "ttc_seconds": 7200.0,
        "in_the_money": True,
        "time_value": 1.5,
    }
    base.update(kw)
    return inp(**base)


def test_evaluate_returns_all_in_order() -> None:
    results = evaluate(full_input(), ALL)
    assert [r.rule for r in results] == list(RULE_ORDER)
    assert first_fired(results) is None


def test_evaluate_skips_disabled_and_unevaluable() -> None:
    c = Criteria(max_loss_percent=30, momentum_threshold_bps=40, min_time_value=0.1)
    results = evaluate(full_input(direction=0, time_value=None), c)
    assert [r.rule for r in results] == ["max_loss"]


def test_first_fired_picks_first_in_rule_order() -> None:
    # Loss beyond max_loss, adverse momentum and out of the money near the close all fire.
    x = full_input(pnl_pct=-35.0, momentum_bps=-60.0, ttc_seconds=60.0, in_the_money=False)
    results = evaluate(x, ALL)
    fired = [r.rule for r in results if r.fired]
    assert fired[0] == "max_loss"
    assert {"momentum", "ttc_cutoff"} <= set(fired)
    assert first_fired(results).rule == "max_loss"  # type: ignore[union-attr]
    # Independent of the order of the list given.
    assert first_fired(list(reversed(results))).rule == "max_loss"  # type: ignore[union-attr]


def test_first_fired_later_rules() -> None:
    x = full_input(momentum_bps=-60.0, ttc_seconds=60.0, in_the_money=False)
    results = evaluate(x, ALL)
    assert first_fired(results).rule == "momentum"  # type: ignore[union-attr]
    assert nearest(results).rule == "momentum"  # type: ignore[union-attr]


def test_nearest_smallest_proximity() -> None:
    # max_loss: 4/30 = 0.133; profit_target: 24/50 = 0.48; momentum adverse -10 -> 50/40.
    x = full_input(pnl_pct=-26.0, peak_pnl_pct=1.0)
    r = nearest(evaluate(x, ALL))
    assert r is not None and r.rule == "max_loss" and not r.fired
    # Time value 0.11 against 0.10: 0.01/0.10 = 0.1 beats max_loss's 0.133.
    x = full_input(pnl_pct=-26.0, peak_pnl_pct=1.0, time_value=0.11)
    r = nearest(evaluate(x, ALL))
    assert r is not None and r.rule == "min_time_value"


def test_nearest_prefers_fired_over_closer() -> None:
    results = [
        RuleResult("profit_target", False, 49.0, 50.0, 1.0, "%", {}),
        RuleResult("ttc_cutoff", True, 10.0, 300.0, 0.0, "s", {}),
        RuleResult("volatility", True, 0.95, 0.9, 0.0, "score", {}),
    ]
    r = nearest(results)
    assert r is not None and r.rule == "volatility"


def test_nearest_ties_break_by_rule_order() -> None:
    results = [
        RuleResult("volatility", False, 0.45, 0.9, 0.45, "score", {}),
        RuleResult("max_loss", False, -15.0, -30.0, 15.0, "%", {}),
    ]
    assert nearest(results).rule == "max_loss"  # type: ignore[union-attr]


def test_empty() -> None:
    assert nearest([]) is None
    assert first_fired([]) is None


def test_results_are_frozen() -> None:
    r = run("max_loss", Criteria(max_loss_percent=30), pnl_pct=-1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.fired = True  # type: ignore[misc]


def test_distance_never_negative_and_zero_when_fired() -> None:
    cases = [
        full_input(),
        full_input(pnl_pct=-80.0, peak_pnl_pct=30.0, momentum_bps=-300.0, vol_score=0.99),
        full_input(pnl_pct=90.0, peak_pnl_pct=90.0, spot=80.0, time_value=0.0),
        full_input(direction=-1, momentum_bps=300.0, ttc_seconds=0.0, in_the_money=False),
    ]
    for x in cases:
        for r in evaluate(x, ALL):
            assert r.distance >= 0.0, r
            if r.fired:
                assert r.distance == 0.0, r
