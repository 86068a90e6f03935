"""Signals: spot history, momentum, realised volatility, regime and the probability model.

Expected values are worked out by hand in each test (prices in USD, times in Unix seconds, sigma
annualised, tau in years of 525,600 minutes).
"""

from __future__ import annotations

import math
import statistics

import pytest

from engine.signals import (
    MINUTES_PER_YEAR,
    MOMENTUM_WINDOWS_MIN,
    TRADING_MINUTES_PER_YEAR,
    SpotHistory,
    StrikeMetrics,
    VolatilityTracker,
    d2,
    momentum_deltas,
    momentum_drift,
    momentum_score_bps,
    norm_cdf,
    prob_above,
    prob_range,
    realized_vol,
    regime_for,
    strike_metrics,
    tau_years,
)

THRESHOLDS = [0.2, 0.4, 0.6, 0.8]
ONE_HOUR_YEARS = 60 / 525_600


def minute_history(prices: list[float], start: float = 0.0) -> SpotHistory:
    """One sample per minute: prices[k] at start + 60·k seconds."""
    h = SpotHistory()
    for k, p in enumerate(prices):
        h.add(start + 60.0 * k, p)
    return h


# --- SpotHistory ----------------------------------------------------------------------------------


def test_empty_history() -> None:
    h = SpotHistory()
    assert len(h) == 0
    assert h.latest() is None
    assert h.previous() is None
    assert h.price_at(1e12) is None
    assert h.minute_closes(1e9, 5) == []


def test_latest_and_previous() -> None:
    h = SpotHistory()
    h.add(100.0, 50.0)
    assert h.latest() == (100.0, 50.0)
    assert h.previous() is None
    h.add(101.0, 51.0)
    assert h.latest() == (101.0, 51.0)
    assert h.previous() == (100.0, 50.0)
    assert len(h) == 2


def test_older_timestamp_ignored() -> None:
    h = SpotHistory()
    h.add(100.0, 50.0)
    h.add(99.0, 999.0)  # out of order: dropped
    assert len(h) == 1
    assert h.latest() == (100.0, 50.0)
    assert h.price_at(99.5) is None


def test_equal_timestamp_replaces_last_price() -> None:
    h = SpotHistory()
    h.add(100.0, 50.0)
    h.add(100.0, 52.0)
    assert len(h) == 1
    assert h.latest() == (100.0, 52.0)


@pytest.mark.parametrize(
    ("ts", "price"), [(1.0, math.nan), (1.0, math.inf), (1.0, 0.0), (1.0, -5.0), (math.nan, 5.0)]
)
def test_invalid_samples_ignored(ts: float, price: float) -> None:
    h = SpotHistory()
    h.add(ts, price)
    assert len(h) == 0


def test_price_at_boundaries() -> None:
    h = SpotHistory()
    for ts, p in ((100.0, 1.0), (110.0, 2.0), (120.0, 3.0)):
        h.add(ts, p)
    assert h.price_at(99.999) is None  # nothing that old
    assert h.price_at(100.0) == 1.0  # a sample exactly at ts counts
    assert h.price_at(109.999) == 1.0
    assert h.price_at(110.0) == 2.0
    assert h.price_at(119.0) == 2.0
    assert h.price_at(120.0) == 3.0
    assert h.price_at(1e9) == 3.0  # later than the last sample: the last price


def test_trim_to_max_age() -> None:
    h = SpotHistory(max_age_seconds=10.0)
    for t in range(31):  # ts 0..30, price = ts + 1
        h.add(float(t), float(t + 1))
    # Kept: ts >= 30 - 10 = 20, i.e. 20..30 -> 11 samples.
    assert len(h) == 11
    assert h.oldest() == (20.0, 21.0)
    assert h.price_at(19.99) is None
    assert h.price_at(20.0) == 21.0


def test_trim_compacts_storage() -> None:
    h = SpotHistory(max_age_seconds=100.0)
    for t in range(20_000):
        h.add(float(t), 1.0 + t)
    assert len(h) == 101  # ts 19899..19999
    assert h.oldest() == (19_899.0, 19_900.0)
    assert h.price_at(19_950.5) == 19_951.0
    assert len(h._ts) < 10_000  # dead front samples were dropped, not kept forever


def test_minute_closes_aligned_to_now() -> None:
    h = SpotHistory()
    for t in range(0, 601, 10):  # a sample every 10 s, price = ts + 1000
        h.add(float(t), 1000.0 + t)
    # now = 600: boundaries 600-180=420, 480, 540, then the current price at 600.
    assert h.minute_closes(600.0, 3) == [1420.0, 1480.0, 1540.0, 1600.0]
    # now = 605: boundaries 425, 485, 545 -> last samples at 420, 480, 540; current = 600's.
    assert h.minute_closes(605.0, 3) == [1420.0, 1480.0, 1540.0, 1600.0]


def test_minute_closes_skips_boundaries_without_data() -> None:
    h = SpotHistory()
    h.add(500.0, 1.0)
    h.add(550.0, 2.0)
    h.add(600.0, 3.0)
    # Boundaries 420 and 480 precede the first sample (skipped); 540 -> sample at 500.
    assert h.minute_closes(600.0, 3) == [1.0, 3.0]


# --- momentum -------------------------------------------------------------------------------------


def test_one_percent_drop_over_one_minute() -> None:
    h = SpotHistory()
    h.add(1000.0, 100.0)
    h.add(1060.0, 99.0)
    deltas = momentum_deltas(h, 1060.0)
    assert set(deltas) == set(MOMENTUM_WINDOWS_MIN)
    assert deltas[1] == pytest.approx(100 * (99.0 / 100.0 - 1))  # -1.0 %
    assert deltas[1] == pytest.approx(-1.0)
    assert all(deltas[w] is None for w in (2, 3, 4, 15, 30))  # history is only 1 minute long
    # Score: 0.3 × (−1.0 %) × 100 bps/% = −30 bps; the other windows have no data.
    score = momentum_score_bps(deltas, {"1": 0.3, "2": 0.2, "30": 0.1})
    assert score == pytest.approx(0.3 * -100.0)


def test_momentum_deltas_all_windows() -> None:
    # 31 minutes of prices rising 10 USD a minute from 1000: S(k) = 1000 + 10k, now at k = 30.
    h = minute_history([1000.0 + 10.0 * k for k in range(31)])
    deltas = momentum_deltas(h, 30 * 60.0)
    s_now = 1300.0
    for w in MOMENTUM_WINDOWS_MIN:
        s_past = 1000.0 + 10.0 * (30 - w)
        assert deltas[w] == pytest.approx(100.0 * (s_now / s_past - 1.0))
    assert deltas[30] == pytest.approx(30.0)  # 1000 -> 1300 is +30 %


def test_momentum_deltas_without_samples_are_none() -> None:
    h = SpotHistory()
    h.add(500.0, 10.0)
    assert momentum_deltas(h, 400.0) == dict.fromkeys(MOMENTUM_WINDOWS_MIN)


def test_momentum_score_weighted_sum_skips_none() -> None:
    deltas: dict[int, float | None] = {1: 0.5, 2: -0.2, 3: None, 4: 0.1, 15: 1.0, 30: None}
    weights = {"1": 0.3, "2": 0.2, "3": 0.15, "4": 0.1, "15": 0.15, "30": 0.1}
    # 100 × (0.3·0.5 + 0.2·(−0.2) + 0.1·0.1 + 0.15·1.0) = 100 × (0.15 − 0.04 + 0.01 + 0.15) = 27
    assert momentum_score_bps(deltas, weights) == pytest.approx(27.0)
    # A window without a weight contributes nothing.
    assert momentum_score_bps({1: 2.0, 15: 5.0}, {"1": 0.5}) == pytest.approx(100.0)


def test_momentum_score_none_without_data() -> None:
    assert momentum_score_bps(dict.fromkeys(MOMENTUM_WINDOWS_MIN), {"1": 1.0}) is None
    assert momentum_score_bps({}, {"1": 1.0}) is None


# --- realised volatility --------------------------------------------------------------------------


def test_realized_vol_alternating_series() -> None:
    # Closes 100, 101, 100, 101, 100: returns r, −r, r, −r with r = ln(1.01).
    # Mean 0, sum of squares 4r², sample variance 4r²/3, stdev 2r/√3.
    h = minute_history([100.0, 101.0, 100.0, 101.0, 100.0])
    r = math.log(1.01)
    expected = 2 * r / math.sqrt(3) * math.sqrt(525_600)
    assert realized_vol(h, 4 * 60.0, 4) == pytest.approx(expected)
    assert expected == pytest.approx(statistics.stdev([r, -r, r, -r]) * math.sqrt(MINUTES_PER_YEAR))


def test_realized_vol_of_an_exchange_traded_underlying_counts_trading_minutes() -> None:
    # The same minute returns: a stock trades 252 × 390 = 98,280 minutes a year, so its σ is
    # 2r/√3 · √98,280 (about 2.3 times lower than the 24/7 figure), comparable with option IVs.
    h = minute_history([100.0, 101.0, 100.0, 101.0, 100.0])
    r = math.log(1.01)
    assert TRADING_MINUTES_PER_YEAR == 98_280
    stock = realized_vol(h, 4 * 60.0, 4, TRADING_MINUTES_PER_YEAR)
    assert stock == pytest.approx(2 * r / math.sqrt(3) * math.sqrt(98_280))
    crypto = realized_vol(h, 4 * 60.0, 4)
    assert (
        crypto is not None and stock is not None and crypto / stock == pytest.approx(2.3125, 1e-4)
    )
    tr = VolatilityTracker([4], 1440, THRESHOLDS, minutes_per_year=TRADING_MINUTES_PER_YEAR)
    assert tr.update(h, 4 * 60.0).sigma == pytest.approx(stock)


def test_realized_vol_needs_three_returns() -> None:
    h = minute_history([100.0, 101.0, 100.0, 101.0, 100.0])
    assert realized_vol(h, 4 * 60.0, 2) is None  # 3 closes, 2 returns
    assert realized_vol(h, 4 * 60.0, 3) is not None  # 4 closes, 3 returns
    short = minute_history([100.0, 101.0, 100.0])  # only 2 returns of history
    assert realized_vol(short, 2 * 60.0, 60) is None


def test_realized_vol_flat_is_zero() -> None:
    h = minute_history([100.0] * 10)
    assert realized_vol(h, 9 * 60.0, 5) == 0.0


# --- VolatilityTracker ----------------------------------------------------------------------------


def _alt_sigma(up: float) -> float:
    """Annualised sigma of 3 returns r, −r, r (r = ln(up)): mean r/3, squared deviations
    4r²/9 + 16r²/9 + 4r²/9 = 8r²/3, sample variance 4r²/3, stdev 2r/√3."""
    r = math.log(up)
    return 2 * r / math.sqrt(3) * math.sqrt(525_600)


def _three_regimes_history() -> SpotHistory:
    # Each 5-minute segment ends with closes 100, 100u, 100, 100u (3 returns r, −r, r).
    return minute_history(
        [
            *(100.0, 100.0, 101.0, 100.0, 101.0),  # minutes 0..4, u = 1.01
            *(100.0, 100.0, 102.0, 100.0, 102.0),  # minutes 5..9, u = 1.02
            *(100.0, 100.0, 101.5, 100.0, 101.5),  # minutes 10..14, u = 1.015
        ]
    )


def test_tracker_percentile_score_and_regime() -> None:
    h = _three_regimes_history()
    tr = VolatilityTracker([3], lookback_minutes=1440, regime_thresholds=THRESHOLDS)

    s1 = tr.update(h, 4 * 60.0)
    assert s1.sigma == pytest.approx(_alt_sigma(1.01))
    assert s1.score == 0.5  # first sample: no history to rank against
    assert s1.regime == "medium"

    s2 = tr.update(h, 9 * 60.0)
    assert s2.sigma == pytest.approx(_alt_sigma(1.02))
    assert s2.score == 1.0  # above the 1 earlier sample: 1/1
    assert s2.regime == "extreme"

    s3 = tr.update(h, 14 * 60.0)
    assert s3.sigma == pytest.approx(_alt_sigma(1.015))
    assert s3.score == 0.5  # one earlier sample below, one above: 1/2
    assert s3.regime == "medium"
    assert tr.state is s3


def test_tracker_lookback_drops_old_samples() -> None:
    h = _three_regimes_history()
    tr = VolatilityTracker([3], lookback_minutes=5, regime_thresholds=THRESHOLDS)
    tr.update(h, 4 * 60.0)
    tr.update(h, 9 * 60.0)
    # At 840 s the cutoff is 840 − 300 = 540: the 240 s sample is gone, only the higher 540 s one
    # remains, so the score is 0/1.
    s3 = tr.update(h, 14 * 60.0)
    assert s3.score == 0.0
    assert s3.regime == "very_low"


def test_tracker_equal_sigma_scores_half() -> None:
    h = minute_history([100.0, 100.0, 101.0, 100.0, 101.0] * 2)
    tr = VolatilityTracker([3], lookback_minutes=1440, regime_thresholds=THRESHOLDS)
    tr.update(h, 4 * 60.0)
    s2 = tr.update(h, 9 * 60.0)
    assert s2.sigma == pytest.approx(_alt_sigma(1.01))
    assert s2.score == 0.5  # (0 below + ½ × 1 equal) / 1


def test_tracker_recomputes_at_most_once_per_interval() -> None:
    h = minute_history([100.0, 100.0, 101.0, 100.0, 101.0])
    tr = VolatilityTracker([3], lookback_minutes=1440, regime_thresholds=THRESHOLDS)
    first = tr.update(h, 240.0)
    h.add(250.0, 150.0)  # a big move that would change sigma
    assert tr.update(h, 270.0) is first  # 30 s later: cached
    assert tr.update(h, 299.9) is first
    again = tr.update(h, 300.0)  # 60 s later: recomputed
    assert again is not first
    assert again.sigma != first.sigma


def test_tracker_composite_is_mean_of_available_windows() -> None:
    prices = [100.0, 102.0, 100.0, 101.0, 100.0]
    h = minute_history(prices)
    tr = VolatilityTracker([2, 3, 4, 60], lookback_minutes=1440, regime_thresholds=THRESHOLDS)
    st = tr.update(h, 240.0)
    ann = math.sqrt(525_600)
    # Window 4: closes 100, 102, 100, 101, 100; window 3: the last four of them.
    r4 = [math.log(102 / 100), math.log(100 / 102), math.log(101 / 100), math.log(100 / 101)]
    v4 = statistics.stdev(r4) * ann
    v3 = statistics.stdev(r4[1:]) * ann
    assert st.per_window[4] == pytest.approx(v4)
    assert st.per_window[3] == pytest.approx(v3)
    assert st.per_window[2] is None  # 2 returns only: too few
    # The 60-minute window uses what history there is (4 returns), like realized_vol.
    assert st.per_window[60] == pytest.approx(v4)
    assert st.sigma == pytest.approx((v3 + v4 + v4) / 3)


def test_tracker_windows_match_realized_vol() -> None:
    # A deterministic wiggly series with a sample every 15 s over 2 hours.
    h = SpotHistory()
    for i in range(480):
        h.add(15.0 * i, 1000.0 + 10.0 * math.sin(i * 0.7) + 3.0 * math.cos(i * 1.3) + 0.05 * i)
    now = 15.0 * 479 + 7.0
    windows = [5, 15, 30, 60]
    st = VolatilityTracker(windows, 1440, THRESHOLDS).update(h, now)
    for w in windows:
        assert st.per_window[w] == pytest.approx(realized_vol(h, now, w))


def test_tracker_without_history() -> None:
    tr = VolatilityTracker([5, 15], lookback_minutes=60, regime_thresholds=THRESHOLDS)
    assert tr.state.sigma is None
    st = tr.update(SpotHistory(), 1000.0)
    assert st.per_window == {5: None, 15: None}
    assert (st.sigma, st.score, st.regime) == (None, None, None)


# --- regime ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("score", "regime"),
    [
        (0.0, "very_low"),
        (0.19999, "very_low"),
        (0.2, "low"),  # exactly at a threshold: the higher regime
        (0.39999, "low"),
        (0.4, "medium"),
        (0.6, "high"),
        (0.79999, "high"),
        (0.8, "extreme"),
        (1.0, "extreme"),
    ],
)
def test_regime_boundaries(score: float, regime: str) -> None:
    assert regime_for(score, THRESHOLDS) == regime


def test_regime_needs_four_thresholds() -> None:
    with pytest.raises(ValueError):
        regime_for(0.5, [0.3, 0.6])
    with pytest.raises(ValueError):
        VolatilityTracker([5], 60, [0.5])


# --- probability model ----------------------------------------------------------------------------


def test_norm_cdf() -> None:
    assert norm_cdf(0.0) == 0.5
    assert norm_cdf(1.959963984540054) == pytest.approx(0.975)
    assert norm_cdf(-1.0) == pytest.approx(1.0 - norm_cdf(1.0))
    assert norm_cdf(math.inf) == 1.0
    assert norm_cdf(-math.inf) == 0.0


def test_prob_above_at_the_money_one_hour() -> None:
    # S = K, sigma = 0.5, tau = 1 h = 60/525600 years:
    # d2 = (ln 1 − 0.5²/2 · tau) / (0.5 √tau) = −0.125 tau / (0.5 √tau) = −0.25 √tau.
    tau = 60 / 525_600
    d = -0.25 * math.sqrt(tau)
    assert d2(100_000.0, 100_000.0, 0.5, tau) == pytest.approx(d)
    expected = 0.5 * (1 + math.erf(d / math.sqrt(2)))
    assert prob_above(100_000.0, 100_000.0, 0.5, tau) == pytest.approx(expected, abs=1e-15)
    assert expected < 0.5  # the −sigma²/2 convexity term tilts ATM slightly below a coin flip


def test_d2_with_drift() -> None:
    s, k, sigma, tau, mu = 101.0, 100.0, 0.8, 0.01, 1.5
    expected = (math.log(101 / 100) + (1.5 - 0.32) * 0.01) / (0.8 * 0.1)
    assert d2(s, k, sigma, tau, mu) == pytest.approx(expected)
    assert prob_above(s, k, sigma, tau, mu) > prob_above(s, k, sigma, tau)


@pytest.mark.parametrize(("tau", "sigma"), [(0.0, 0.5), (-1.0, 0.5), (0.01, 0.0)])
def test_prob_above_degenerate(tau: float, sigma: float) -> None:
    assert prob_above(101.0, 100.0, sigma, tau) == 1.0
    assert prob_above(100.0, 100.0, sigma, tau) == 0.0
    assert prob_above(99.0, 100.0, sigma, tau) == 0.0


def test_prob_range_is_difference_of_above() -> None:
    s, lo, hi, sigma, tau = 97_000.0, 96_500.0, 97_250.0, 0.6, 2 * ONE_HOUR_YEARS
    expected = prob_above(s, lo, sigma, tau) - prob_above(s, hi, sigma, tau)
    assert prob_range(s, lo, hi, sigma, tau) == pytest.approx(expected)
    assert 0.0 < expected < 1.0
    assert prob_range(s, lo, None, sigma, tau) == prob_above(s, lo, sigma, tau)
    # With drift the same identity holds.
    assert prob_range(s, lo, hi, sigma, tau, 1.0) == pytest.approx(
        prob_above(s, lo, sigma, tau, 1.0) - prob_above(s, hi, sigma, tau, 1.0)
    )


def test_prob_range_at_close() -> None:
    assert prob_range(100.0, 99.0, 101.0, 0.5, 0.0) == 1.0
    assert prob_range(102.0, 99.0, 101.0, 0.5, 0.0) == 0.0
    assert prob_range(98.0, 99.0, 101.0, 0.5, 0.0) == 0.0


@pytest.mark.parametrize(
    ("score", "cap", "mu"),
    [
        (None, 2.0, 0.0),
        (0.0, 2.0, 0.0),
        (5.0, 2.0, 0.5),
        (-12.0, 2.0, -1.2),
        (100.0, 2.0, 2.0),
        (-100.0, 2.0, -2.0),
        (30.0, 1.0, 1.0),
    ],
)
def test_momentum_drift(score: float | None, cap: float, mu: float) -> None:
    # mu = clamp(0.1 per bp × score, −cap, cap)
    assert momentum_drift(score, cap) == pytest.approx(mu)


def test_tau_years() -> None:
    assert tau_years(1_000_000.0 + 3600.0, 1_000_000.0) == pytest.approx(60 / 525_600)
    assert tau_years(1_000_000.0 + 525_600 * 60.0, 1_000_000.0) == pytest.approx(1.0)
    assert tau_years(1_000_000.0, 1_000_010.0) == 0.0


# --- strike metrics -------------------------------------------------------------------------------


def test_strike_metrics_above() -> None:
    s, k, sigma, tau = 100_000.0, 99_000.0, 0.5, ONE_HOUR_YEARS
    m = strike_metrics(s, k, None, sigma, tau, yes_bid=0.55, yes_ask=0.60)
    em = 100_000.0 * 0.5 * math.sqrt(60 / 525_600)  # ≈ 534 USD
    p = 0.5 * (1 + math.erf(d2(s, k, sigma, tau) / math.sqrt(2)))
    assert isinstance(m, StrikeMetrics)
    assert m.buffer == 1000.0
    assert m.buffer_pct == pytest.approx(1.0)
    assert m.expected_move == pytest.approx(em)
    assert m.bm == pytest.approx(1000.0 / em)
    assert m.prob == pytest.approx(p)
    assert m.diff_yes == pytest.approx(p - 0.60)
    assert m.diff_no == pytest.approx((1 - p) - (1 - 0.55))


def test_strike_metrics_diff_signs() -> None:
    # Strike far below spot: the model says YES is near certain (p ≈ 0.97).
    cheap_yes = strike_metrics(100_000.0, 99_000.0, None, 0.5, ONE_HOUR_YEARS, 0.40, 0.45)
    assert cheap_yes.prob > 0.9
    assert cheap_yes.diff_yes is not None and cheap_yes.diff_yes > 0  # YES ask below the model
    assert cheap_yes.diff_no is not None and cheap_yes.diff_no < 0  # NO ask 0.60 > 1 − p
    # Strike far above spot: YES is near worthless, so a YES bid of 0.30 makes NO cheap.
    cheap_no = strike_metrics(100_000.0, 101_000.0, None, 0.5, ONE_HOUR_YEARS, 0.30, 0.35)
    assert cheap_no.diff_yes is not None and cheap_no.diff_yes < 0
    assert cheap_no.diff_no is not None and cheap_no.diff_no > 0


def test_strike_metrics_range_buffer() -> None:
    args = (0.5, ONE_HOUR_YEARS, None, None)
    inside = strike_metrics(100_000.0, 99_800.0, 100_500.0, *args)
    assert inside.buffer == 200.0  # min(100000 − 99800, 100500 − 100000)
    below = strike_metrics(99_500.0, 99_800.0, 100_500.0, *args)
    assert below.buffer == -300.0  # 300 below the floor
    above = strike_metrics(100_700.0, 99_800.0, 100_500.0, *args)
    assert above.buffer == -200.0  # 200 above the cap
    assert inside.prob == pytest.approx(
        prob_above(100_000.0, 99_800.0, 0.5, ONE_HOUR_YEARS)
        - prob_above(100_000.0, 100_500.0, 0.5, ONE_HOUR_YEARS)
    )


def test_strike_metrics_missing_quotes_and_expired() -> None:
    m = strike_metrics(100.0, 99.0, None, 0.5, 0.0, yes_bid=None, yes_ask=None)
    assert m.diff_yes is None and m.diff_no is None
    assert m.expected_move == 0.0
    assert m.bm is None
    assert m.prob == 1.0  # settled above


def test_strike_metrics_with_drift() -> None:
    base = strike_metrics(100.0, 100.0, None, 0.5, 0.01, 0.5, 0.5)
    up = strike_metrics(100.0, 100.0, None, 0.5, 0.01, 0.5, 0.5, mu=momentum_drift(20.0))
    assert up.prob == pytest.approx(prob_above(100.0, 100.0, 0.5, 0.01, 2.0))
    assert up.prob > base.prob
