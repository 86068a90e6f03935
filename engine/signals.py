"""Market signals from the spot feed: momentum, realised volatility, regime, strike probabilities.

Pure Python (stdlib only), cheap enough to run on every spot update (about once a second) and over
strike tables of ~1000 rows.

Units, everywhere in this module:
- timestamps `ts`, `now`, `close_ts`: Unix seconds (float, UTC);
- spot prices, strikes, buffers and expected moves: quote currency (USD);
- windows: minutes (`*_minutes`, `MOMENTUM_WINDOWS_MIN`);
- momentum deltas: percent (1.0 = 1 %); momentum score: basis points (1 % = 100 bps);
- volatility `sigma` and drift `mu`: annualised, as fractions (0.50 = 50 % a year);
- time to close `tau_years`: years of 525,600 minutes (crypto trades 24/7);
- realised volatility: minute returns annualised over MINUTES_PER_YEAR for a 24/7 market, over
  TRADING_MINUTES_PER_YEAR for an exchange-traded underlying (its minute returns exist only while
  the exchange is open, so √525,600 would overstate it about 2.3 times);
- probabilities, volatility score, binary prices: 0..1 (binary prices are dollars per contract).

Probability model (DESIGN.md §4, venues.md "Probability model"): the spot is lognormal with drift
`mu` and volatility `sigma`; "above K" at close is P = N(d2),
d2 = (ln(S/K) + (mu − sigma²/2)·tau) / (sigma·√tau). A range [K1, K2) is N(d2(K1)) − N(d2(K2)).
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right, insort
from collections import deque
from dataclasses import dataclass
from itertools import pairwise

MINUTES_PER_YEAR = 525_600
"""Minutes in a (365-day) year: the annualisation base for a market that trades 24/7."""

TRADING_MINUTES_PER_YEAR = 252 * 390
"""Trading minutes in a year on a US exchange (252 sessions of 6.5 hours): the annualisation base
for the realised volatility of a stock or index, comparable with its options' implied volatility."""

MOMENTUM_WINDOWS_MIN = (1, 2, 3, 4, 15, 30)
"""Momentum look-back windows, minutes."""

REGIMES = ("very_low", "low", "medium", "high", "extreme")

SECONDS_PER_MINUTE = 60.0
_SQRT2 = math.sqrt(2.0)
_SQRT_MINUTES_PER_YEAR = math.sqrt(MINUTES_PER_YEAR)
# Compact the history's lists once this many trimmed samples sit at their front.
_COMPACT_AFTER = 4096


# --- spot history ---------------------------------------------------------------------------------


class SpotHistory:
    """Ring of (ts_seconds, price) samples, oldest first, trimmed to max_age_seconds.

    Timestamps are Unix seconds and prices are in the quote currency. The samples live in two
    parallel lists (timestamps, prices) so look-ups bisect the timestamps. Samples older than
    `max_age_seconds` before the latest one are dropped lazily: an offset marks the first live
    sample and the lists are compacted in one slice once enough dead samples pile up.
    """

    __slots__ = ("_prices", "_start", "_ts", "max_age_seconds")

    def __init__(self, max_age_seconds: float = 2 * 86400) -> None:
        self.max_age_seconds = float(max_age_seconds)
        self._ts: list[float] = []
        self._prices: list[float] = []
        self._start = 0

    def add(self, ts: float, price: float) -> None:
        """Append a sample (ts in Unix seconds, price in quote currency).

        A timestamp older than the last sample is ignored (out-of-order feed); one equal to it
        replaces the last price. Non-finite or non-positive prices and timestamps are ignored too
        (a log return needs positive prices).
        """
        if not (math.isfinite(ts) and math.isfinite(price)) or price <= 0.0:
            return
        tss = self._ts
        if len(tss) > self._start:
            last = tss[-1]
            if ts < last:
                return
            if ts == last:
                self._prices[-1] = price
                return
        tss.append(ts)
        self._prices.append(price)
        cutoff = ts - self.max_age_seconds
        if tss[self._start] < cutoff:
            self._start = bisect_left(tss, cutoff, self._start)
            if self._start >= _COMPACT_AFTER and 2 * self._start >= len(tss):
                del tss[: self._start]
                del self._prices[: self._start]
                self._start = 0

    def prepend(self, samples: list[tuple[float, float]]) -> int:
        """Put past samples, oldest first, in front of the history (a backfill that arrived after
        the first live prices). Only samples older than the oldest one held are taken, and only
        valid ones within `max_age_seconds` of the newest; returns how many were taken."""
        oldest = self.oldest()
        newest = self.latest()
        limit = oldest[0] if oldest is not None else math.inf
        cutoff = (newest[0] if newest is not None else -math.inf) - self.max_age_seconds
        ts_new: list[float] = []
        prices_new: list[float] = []
        for ts, price in samples:
            if not (math.isfinite(ts) and math.isfinite(price)) or price <= 0.0:
                continue
            if ts >= limit or ts < cutoff or (ts_new and ts <= ts_new[-1]):
                continue
            ts_new.append(ts)
            prices_new.append(price)
        if ts_new:
            self._ts = ts_new + self._ts[self._start :]
            self._prices = prices_new + self._prices[self._start :]
            self._start = 0
        return len(ts_new)

    def latest(self) -> tuple[float, float] | None:
        """The newest (ts_seconds, price), or None when empty."""
        if len(self._ts) > self._start:
            return self._ts[-1], self._prices[-1]
        return None

    def previous(self) -> tuple[float, float] | None:
        """The sample before the latest (ts_seconds, price), or None with fewer than 2 samples."""
        if len(self._ts) - self._start >= 2:
            return self._ts[-2], self._prices[-2]
        return None

    def oldest(self) -> tuple[float, float] | None:
        """The oldest retained (ts_seconds, price), or None when empty."""
        if len(self._ts) > self._start:
            return self._ts[self._start], self._prices[self._start]
        return None

    def price_at(self, ts: float) -> float | None:
        """Last price with sample ts <= `ts` (Unix seconds); None if no kept sample is that old."""
        i = bisect_right(self._ts, ts, self._start)
        if i == self._start:
            return None
        return self._prices[i - 1]

    def minute_closes(self, now: float, minutes: int) -> list[float]:
        """Closes of the last `minutes` whole 1-minute bars ending at `now`, then the current price.

        Bar boundaries are `now − k·60` s for k = minutes … 1 (bars are aligned to `now`, not to the
        clock's minute), so the result is oldest first and, with full history, has `minutes + 1`
        prices and `minutes` one-minute returns. Each close is the last sample at or before its
        boundary; boundaries older than the history are skipped (only the oldest ones can be).
        The final element is the price at `now`. Empty when there is no sample at or before `now`.
        """
        current = self.price_at(now)
        if current is None or minutes <= 0:
            return []
        tss, prices, start = self._ts, self._prices, self._start
        first_ts = tss[start]
        out: list[float] = []
        for k in range(minutes, 0, -1):
            boundary = now - k * SECONDS_PER_MINUTE
            if boundary < first_ts:
                continue
            out.append(prices[bisect_right(tss, boundary, start) - 1])
        out.append(current)
        return out

    def clear(self) -> None:
        self._ts.clear()
        self._prices.clear()
        self._start = 0

    def __len__(self) -> int:
        return len(self._ts) - self._start


# --- momentum -------------------------------------------------------------------------------------


def momentum_deltas(hist: SpotHistory, now: float) -> dict[int, float | None]:
    """Percent change of spot over each window of MOMENTUM_WINDOWS_MIN (minutes).

    delta_w = 100·(S_now / S_(now − w·60 s) − 1), in percent; None when the history does not reach
    back `w` minutes (or holds nothing at or before `now`).
    """
    s_now = hist.price_at(now)
    if s_now is None:
        return dict.fromkeys(MOMENTUM_WINDOWS_MIN)
    out: dict[int, float | None] = {}
    for w in MOMENTUM_WINDOWS_MIN:
        past = hist.price_at(now - w * SECONDS_PER_MINUTE)
        out[w] = None if past is None else 100.0 * (s_now / past - 1.0)
    return out


def momentum_score_bps(deltas: dict[int, float | None], weights: dict[str, float]) -> float | None:
    """Weighted sum of the deltas, in basis points (a delta of 1 % is 100 bps), signed.

    `weights` are keyed by window minutes as strings ("1", "15", …), as in SignalsConfig. Windows
    whose delta is None are skipped (no renormalisation); a window without a weight counts 0.
    None when no window has data.
    """
    score = 0.0
    seen = False
    for w, delta in deltas.items():
        if delta is None:
            continue
        seen = True
        score += weights.get(str(w), 0.0) * delta * 100.0
    return score if seen else None


# --- realised volatility --------------------------------------------------------------------------


def log_returns(prices: list[float]) -> list[float]:
    """Log returns ln(p_i / p_(i−1)) of consecutive prices (dimensionless)."""
    return [math.log(b / a) for a, b in pairwise(prices)]


def _sample_stdev(xs: list[float]) -> float:
    """Sample standard deviation (n − 1 denominator), two-pass; caller ensures len(xs) >= 2."""
    n = len(xs)
    mean = sum(xs) / n
    ss = sum((x - mean) * (x - mean) for x in xs)
    return math.sqrt(ss / (n - 1))


def realized_vol_from_closes(
    closes: list[float], minutes_per_year: float = MINUTES_PER_YEAR
) -> float | None:
    """Annualised volatility from 1-minute closes: stdev(log returns) · √minutes_per_year
    (MINUTES_PER_YEAR for 24/7 markets, TRADING_MINUTES_PER_YEAR for exchange-traded ones).

    None with fewer than 3 returns (4 closes).
    """
    if len(closes) < 4:
        return None
    scale = (
        _SQRT_MINUTES_PER_YEAR
        if minutes_per_year == MINUTES_PER_YEAR
        else math.sqrt(minutes_per_year)
    )
    return _sample_stdev(log_returns(closes)) * scale


def realized_vol(
    hist: SpotHistory, now: float, window_minutes: int, minutes_per_year: float = MINUTES_PER_YEAR
) -> float | None:
    """Annualised realised volatility over the last `window_minutes` minutes, as a fraction.

    From the 1-minute log returns of `hist.minute_closes(now, window_minutes)`:
    sample stdev(returns) · √minutes_per_year. None with fewer than 3 returns.
    """
    return realized_vol_from_closes(hist.minute_closes(now, window_minutes), minutes_per_year)


# --- volatility score and regime ------------------------------------------------------------------


def regime_for(score: float, thresholds: list[float]) -> str:
    """Regime name for a 0..1 volatility score.

    `thresholds` are 4 increasing boundaries t0 < t1 < t2 < t3: score < t0 → very_low,
    t0 <= score < t1 → low, …, score >= t3 → extreme (a score exactly at a boundary takes the
    higher regime).
    """
    if len(thresholds) != len(REGIMES) - 1:
        raise ValueError(f"need {len(REGIMES) - 1} regime thresholds, got {len(thresholds)}")
    return REGIMES[bisect_right(thresholds, score)]


def regime_past_margin(
    current: str | None, score: float, thresholds: list[float], margin: float
) -> str:
    """The regime a 0..1 volatility score points to, with hysteresis around `current`.

    The score leaves the current regime's band [t_(i−1), t_i) only once it is past one of its
    boundaries by `margin` (score units): below t_(i−1) − margin or at/above t_i + margin; then
    the answer is `regime_for(score)`. Inside the widened band the answer stays `current`, so a
    score wobbling around a boundary does not flip the regime back and forth. With no current
    regime (or margin 0) this is `regime_for(score, thresholds)`.
    """
    new = regime_for(score, thresholds)
    if current is None or new == current or current not in REGIMES:
        return new
    i = REGIMES.index(current)
    lo = thresholds[i - 1] if i > 0 else -math.inf
    hi = thresholds[i] if i < len(thresholds) else math.inf
    if lo - margin <= score < hi + margin:
        return current
    return new


def vix_regime(vix: float, thresholds: list[float]) -> str | None:
    """Regime name for a VIX level (index points) and 4 increasing boundaries, e.g.
    [12, 16, 20, 30]: very_low < 12 <= low < 16 <= medium < 20 <= high < 30 <= extreme (a level
    at a boundary takes the higher regime). None for a value that is not a positive number."""
    if not (math.isfinite(vix) and vix > 0.0):
        return None
    return regime_for(vix, thresholds)


@dataclass(frozen=True, slots=True)
class VolatilityState:
    per_window: dict[int, float | None]  # annualised sigma per window (minutes)
    sigma: float | None  # composite annualised sigma: mean of the available windows
    score: float | None  # 0..1: percentile of `sigma` against the trailing lookback
    regime: str | None  # very_low / low / medium / high / extreme


class VolatilityTracker:
    """Computes VolatilityState at most once per `recompute_seconds` (default 60: sigma from 1-min
    bars only changes once a minute) and keeps the trailing history of sigma samples for the
    percentile score (lookback_minutes). The score needs a little history: with fewer than 2
    samples the score is 0.5.

    Each recompute takes one composite sigma sample (mean of the windows' annualised sigmas that
    have data) and stores it with its time. The score is the mid-rank percentile of the newest
    sample among the other samples of the last `lookback_minutes` minutes:
    (count below + ½ · count equal) / count, so the highest sigma of the day scores 1.0, the lowest
    0.0 and a flat history 0.5. With no sigma yet (too little spot history) sigma, score and regime
    are None and no sample is stored.
    """

    __slots__ = (
        "_last_ts",
        "_samples",
        "_sorted",
        "_state",
        "lookback_minutes",
        "minutes_per_year",
        "recompute_seconds",
        "regime_thresholds",
        "windows_minutes",
    )

    def __init__(
        self,
        windows_minutes: list[int],
        lookback_minutes: int,
        regime_thresholds: list[float],
        recompute_seconds: float = 60.0,
        minutes_per_year: float = MINUTES_PER_YEAR,
    ) -> None:
        if not windows_minutes or any(w <= 0 for w in windows_minutes):
            raise ValueError("volatility windows must be a non-empty list of positive minutes")
        if len(regime_thresholds) != len(REGIMES) - 1:
            raise ValueError(f"need {len(REGIMES) - 1} regime thresholds")
        self.windows_minutes = list(windows_minutes)
        self.lookback_minutes = lookback_minutes
        self.regime_thresholds = list(regime_thresholds)
        self.recompute_seconds = recompute_seconds
        self.minutes_per_year = minutes_per_year
        self._samples: deque[tuple[float, float]] = deque()  # (ts_seconds, sigma), oldest first
        self._sorted: list[float] = []  # the same sigmas, sorted, for rank look-ups
        self._last_ts: float | None = None
        self._state = VolatilityState(dict.fromkeys(self.windows_minutes), None, None, None)

    @property
    def state(self) -> VolatilityState:
        """The last computed state (all None before the first successful recompute)."""
        return self._state

    def reset(self) -> None:
        """Forget the sigma history and the cached state (e.g. after the clock jumps back)."""
        self._samples.clear()
        self._sorted.clear()
        self._last_ts = None
        self._state = VolatilityState(dict.fromkeys(self.windows_minutes), None, None, None)

    def update(self, hist: SpotHistory, now: float) -> VolatilityState:
        """Recompute when `recompute_seconds` have passed since the last recompute, else return the
        cached state (an O(1) check, so calling this on every spot update is cheap).

        A `now` earlier than the last recompute also returns the cached state; call `reset()` to
        start over after rewinding a clock.
        """
        last = self._last_ts
        if last is not None and now - last < self.recompute_seconds:
            return self._state
        self._last_ts = now
        # One pass of bisects for the longest window; the shorter windows are its tails (only the
        # oldest boundaries can be missing, so a tail equals that window's own minute_closes).
        closes = hist.minute_closes(now, max(self.windows_minutes))
        per_window: dict[int, float | None] = {}
        for w in self.windows_minutes:
            per_window[w] = realized_vol_from_closes(closes[-(w + 1) :], self.minutes_per_year)
        vals = [v for v in per_window.values() if v is not None]
        if not vals:
            self._state = VolatilityState(per_window, None, None, None)
            return self._state
        sigma = sum(vals) / len(vals)
        score = self._add_sample(now, sigma)
        self._state = VolatilityState(
            per_window, sigma, score, regime_for(score, self.regime_thresholds)
        )
        return self._state

    def median_sigma_since(self, ts: float) -> float | None:
        """The median of the sigma samples kept (the lookback) taken at or after `ts` (Unix s);
        None when there is none."""
        vals = sorted(v for t, v in self._samples if t >= ts)
        if not vals:
            return None
        n = len(vals)
        return vals[n // 2] if n % 2 else 0.5 * (vals[n // 2 - 1] + vals[n // 2])

    def _add_sample(self, now: float, sigma: float) -> float:
        """Store (now, sigma), drop samples older than the lookback, return sigma's percentile."""
        cutoff = now - self.lookback_minutes * SECONDS_PER_MINUTE
        samples, ranked = self._samples, self._sorted
        while samples and samples[0][0] < cutoff:
            _, old = samples.popleft()
            del ranked[bisect_left(ranked, old)]
        others = len(ranked)
        below = bisect_left(ranked, sigma)
        equal = bisect_right(ranked, sigma) - below
        samples.append((now, sigma))
        insort(ranked, sigma)
        if others == 0:
            return 0.5
        return (below + 0.5 * equal) / others


# --- the sigma of the probability model -----------------------------------------------------------

SIGMA_SOURCES = ("realized", "implied")
"""[signals] sigma_source: what the strike probabilities use as sigma (see `choose_sigma`)."""


@dataclass(frozen=True, slots=True)
class SigmaChoice:
    sigma: float  # annualised, what the probability model uses
    source: str  # "implied" (DVOL), "realized" or "fallback" (fallback_sigma): where it came from
    implied_fresh: bool  # an implied sigma is present and younger than the maximum age


def choose_sigma(
    source: str,
    realized: float | None,
    fallback: float,
    implied: float | None,
    implied_ts: float | None,
    now: float,
    implied_max_age_seconds: float,
) -> SigmaChoice:
    """The sigma of the strike probabilities (annualised fractions; timestamps Unix seconds).

    `source` "implied": the implied sigma (Deribit's DVOL, a 30-day implied volatility index) while
    it is fresh, i.e. read and stamped at most `implied_max_age_seconds` before `now`; otherwise,
    as with `source` "realized", the realised composite sigma, and `fallback` while there is not
    enough spot history for that. A sigma that is not a positive finite number counts as missing.

    Only the probability model (strike table, DIFF, opportunity alerts) follows this choice. The
    volatility score and the regime stay on realised volatility on purpose: they say how the spot
    moves now against the trailing day, over 5-60 minute windows, and they feed the volatility and
    spike auto-stop rules; DVOL is a slow 30-day index read once a minute from a third party, so
    its percentile over a day would mostly rank noise, and the exits would come to depend on
    Deribit's availability. For the level of sigma over the next hour, DVOL is a good input.
    """
    implied_ok = implied is not None and math.isfinite(implied) and implied > 0.0
    fresh = (
        implied_ok
        and implied_ts is not None
        and math.isfinite(implied_ts)
        and now - implied_ts <= implied_max_age_seconds
    )
    if source == "implied" and fresh and implied is not None:
        return SigmaChoice(implied, "implied", True)
    if realized is not None and math.isfinite(realized) and realized > 0.0:
        return SigmaChoice(realized, "realized", fresh)
    return SigmaChoice(fallback, "fallback", fresh)


# --- probability model ----------------------------------------------------------------------------


def norm_cdf(x: float) -> float:
    """Standard normal CDF N(x) = ½·(1 + erf(x/√2)); N(±inf) = 1 / 0."""
    return 0.5 * (1.0 + math.erf(x / _SQRT2))


def d2(spot: float, strike: float, sigma: float, tau_years: float, mu: float = 0.0) -> float:
    """d2 = (ln(S/K) + (mu − sigma²/2)·tau) / (sigma·√tau), dimensionless.

    spot and strike in USD, sigma and mu annualised, tau in years. Degenerate inputs give ±inf so
    that N(d2) is the settled outcome: with tau <= 0 or sigma <= 0, +inf if spot > strike else
    −inf; a strike <= 0 is always below (+inf) and a spot <= 0 never above (−inf).
    """
    if strike <= 0.0:
        return math.inf
    if spot <= 0.0:
        return -math.inf
    if tau_years <= 0.0 or sigma <= 0.0:
        return math.inf if spot > strike else -math.inf
    return (math.log(spot / strike) + (mu - 0.5 * sigma * sigma) * tau_years) / (
        sigma * math.sqrt(tau_years)
    )


def prob_above(
    spot: float, strike: float, sigma: float, tau_years: float, mu: float = 0.0
) -> float:
    """Probability (0..1) that spot settles above `strike`: N(d2).

    At tau <= 0 or sigma <= 0: 1.0 if spot > strike else 0.0.
    """
    return norm_cdf(d2(spot, strike, sigma, tau_years, mu))


def prob_below(
    spot: float, strike: float, sigma: float, tau_years: float, mu: float = 0.0
) -> float:
    """Probability (0..1) that spot settles below `strike`: 1 − N(d2) = N(−d2).

    At tau <= 0 or sigma <= 0: 1.0 if spot < strike else 0.0 (a spot exactly at the strike is
    neither above nor below: 0.0, as `in_the_money` says).
    """
    x = d2(spot, strike, sigma, tau_years, mu)
    if math.isinf(x) and spot == strike:
        return 0.0
    return norm_cdf(-x)


def prob_range(
    spot: float,
    floor: float | None,
    cap: float | None,
    sigma: float,
    tau_years: float,
    mu: float = 0.0,
) -> float:
    """Probability (0..1) that spot settles in [floor, cap): N(d2(floor)) − N(d2(cap)).

    `cap` None is an "above floor" contract; `floor` None (an extension) is "below cap".
    """
    p_floor = 1.0 if floor is None else prob_above(spot, floor, sigma, tau_years, mu)
    if cap is None:
        return p_floor
    return max(0.0, p_floor - prob_above(spot, cap, sigma, tau_years, mu))


MOMENTUM_DRIFT_PER_BPS = 0.1
"""Annualised drift (fraction a year) per basis point of momentum score, before the clamp."""


def momentum_drift(score_bps: float | None, cap: float = 2.0) -> float:
    """Annualised drift mu for the momentum-aware model (fraction a year, e.g. 0.5 = +50 %/yr).

    mu = clamp(MOMENTUM_DRIFT_PER_BPS · score_bps, −cap, +cap), i.e. 0.1 per bp: a +10 bps score
    gives mu = +1.0, and ±20 bps (about a one-sigma ~7-minute move at 50 % vol, the default
    weights' mean horizon) already reaches the default cap of ±2.0. This is a deliberately gentle,
    linear tilt: extrapolating a minute-scale move to a year literally would give drifts of
    thousands of percent and swamp sigma. None (no momentum yet) gives 0.
    """
    if score_bps is None or not math.isfinite(score_bps):
        return 0.0
    mu = MOMENTUM_DRIFT_PER_BPS * score_bps
    return max(-cap, min(cap, mu))


def tau_years(close_ts: float, now: float) -> float:
    """Time to close in years: max(close_ts − now, 0) seconds / 60 / MINUTES_PER_YEAR."""
    return max(close_ts - now, 0.0) / SECONDS_PER_MINUTE / MINUTES_PER_YEAR


@dataclass(frozen=True, slots=True)
class StrikeMetrics:
    # Dollars, positive when YES would pay now: S − K ("above"), K − S ("below"), for ranges the
    # distance to the nearest bound (positive inside, negative outside).
    buffer: float
    buffer_pct: float  # buffer / S * 100
    expected_move: float  # S * sigma * sqrt(tau), dollars
    bm: float | None  # |buffer| / expected_move (None when EM is 0)
    prob: float  # model probability of YES (0..1)
    diff_yes: float | None  # prob - yes_ask (None when no ask)
    diff_no: float | None  # (1 - prob) - no_ask, where no_ask = 1 - yes_bid (None when no bid)


def strike_metrics(
    spot: float,
    strike: float,
    cap: float | None,
    sigma: float,
    tau_years: float,
    yes_bid: float | None,
    yes_ask: float | None,
    mu: float = 0.0,
    below: bool = False,
) -> StrikeMetrics:
    """Buffer, expected move, B/M, model probability and edges of one strike (plain arithmetic).

    spot/strike/cap in USD, sigma and mu annualised, tau in years, yes_bid/yes_ask in dollars
    (0..1). `cap` None is an "above strike" contract (buffer S − K), or with `below` a "below
    strike" one (buffer K − S, probability 1 − N(d2)); otherwise the range [strike, cap), whose
    buffer is min(S − floor, cap − S): positive inside, minus the distance to the crossed bound
    outside. diff_no = (1 − prob) − (1 − yes_bid) = yes_bid − prob.
    """
    if below:
        buffer = strike - spot
    else:
        buffer = spot - strike if cap is None else min(spot - strike, cap - spot)
    buffer_pct = buffer / spot * 100.0 if spot > 0.0 else 0.0
    vol_sqrt_tau = sigma * math.sqrt(tau_years) if tau_years > 0.0 and sigma > 0.0 else 0.0
    expected_move = spot * vol_sqrt_tau
    bm = abs(buffer) / expected_move if expected_move > 0.0 else None
    prob = (
        prob_below(spot, strike, sigma, tau_years, mu)
        if below
        else prob_range(spot, strike, cap, sigma, tau_years, mu)
    )
    return StrikeMetrics(
        buffer=buffer,
        buffer_pct=buffer_pct,
        expected_move=expected_move,
        bm=bm,
        prob=prob,
        diff_yes=None if yes_ask is None else prob - yes_ask,
        diff_no=None if yes_bid is None else (1.0 - prob) - (1.0 - yes_bid),
    )


# --- options --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OptionMetrics:
    mid: float | None  # (bid + ask) / 2, dollars per share; None without both sides
    intrinsic: float | None  # max(S − K, 0) for a call, max(K − S, 0) for a put; None without S
    time_value: float | None  # mid − intrinsic, dollars per share
    prob_itm: float | None  # model probability (0..1) of finishing in the money, from the IV


def option_metrics(
    call: bool,
    underlying: float | None,
    strike: float,
    iv: float | None,
    tau_years: float,
    bid: float | None,
    ask: float | None,
) -> OptionMetrics:
    """Time value and model probability of one option (plain arithmetic).

    `underlying` is the price the venue's model used (`Quote.und_price`) or the spot, in dollars;
    `iv` the option's own implied volatility (annualised fraction), `tau_years` the time to its
    close. prob_itm = N(d2) for a call (finishing above K), N(−d2) for a put, with drift 0: the
    risk-neutral probability that IV implies, to read against |delta| (N(d1) for a call, which
    is always a little higher). An IV or underlying that is not a positive number gives None.
    """
    mid = (bid + ask) / 2.0 if bid is not None and ask is not None else None
    und_ok = underlying is not None and math.isfinite(underlying) and underlying > 0.0
    intrinsic = None
    if und_ok:
        assert underlying is not None
        intrinsic = max(underlying - strike, 0.0) if call else max(strike - underlying, 0.0)
    time_value = mid - intrinsic if mid is not None and intrinsic is not None else None
    prob = None
    if und_ok and iv is not None and math.isfinite(iv) and iv > 0.0:
        assert underlying is not None
        prob = (
            prob_above(underlying, strike, iv, tau_years)
            if call
            else prob_below(underlying, strike, iv, tau_years)
        )
    return OptionMetrics(mid, intrinsic, time_value, prob)


TIME_VALUE_STATES = ("SAFE", "RISK", "CRITICAL")


def time_value_state(time_value: float, floor: float) -> str:
    """An option's time value against the min_time_value rule's floor (dollars per share):
    CRITICAL at or below the floor (the rule fires there), RISK up to twice the floor, SAFE
    above that. The rule's own comparison (with its float slack) decides the firing; see
    `engine.rules.min_time_value`."""
    if time_value <= floor:
        return "CRITICAL"
    if time_value <= 2.0 * floor:
        return "RISK"
    return "SAFE"
