"""A seeded, reproducible simulated BTC-like market with hourly binary strike ladders.

Spot follows geometric Brownian motion with stochastic volatility and jumps, stepped once per
second of market time (dt = 1/31_536_000 years):

- log spot:      d ln S = −σ²/2 dt + σ dW                       (μ = 0)
- log variance:  v = ln σ², an Ornstein–Uhlenbeck process in *days*:
                 dv = κ (θ − v) dt_d + ξ dW_d, κ = 4 per day (half-life ≈ 4 h),
                 θ = ln(annual_vol²) (so the median σ is `annual_vol`), ξ = `vol_of_vol` per √day.
- jumps:         Poisson, `jumps_per_day` on average; size N(0, jump_size_percent %) in log spot,
                 and each jump lifts the log variance by 0.5 (a volatility spike that decays).

Every hour the market lists a ladder of `strikes` "BTC above K at HH:00 UTC" binaries
(`binary_above`) spaced `strike_spacing` dollars apart, centred on spot rounded to the spacing, and
closes it at the next top of the hour. Settlement is 1.0 when the average of the last 60 one-second
spot prints (those at close−59 … close) is above the strike, else 0.0.

Quotes are the YES side in dollars: fair value N(d2) with the sim's current σ, plus Gaussian noise
(`quote_noise` dollars), ± half the `spread`, rounded to whole cents and clamped so that
0.01 ≤ bid < ask ≤ 0.99. Sizes are random, volume and open interest grow with simulated trades.

Everything is drawn from two `random.Random` streams seeded from `seed` (one for the spot path,
one for the order books), so the spot path does not depend on the number of strikes, and the same
seed and start time give the same events however `advance_to` is chunked.
"""

from __future__ import annotations

import math
import random
from collections import deque
from datetime import UTC, datetime
from statistics import NormalDist
from typing import Any

from engine.config import SimConfig
from engine.models import (
    Contract,
    ContractEvent,
    MarketEvent,
    OpenEvent,
    Quote,
    QuoteEvent,
    SettleEvent,
    SpotEvent,
)

SYMBOL = "BTC-USD"
SERIES = "KXBTCD"
SECONDS_PER_YEAR = 31_536_000
SECONDS_PER_DAY = 86_400
HOUR = 3600
SETTLE_WINDOW_SECONDS = 60
STATE_VERSION = 1

_DT = 1.0 / SECONDS_PER_YEAR
_SQRT_DT = math.sqrt(_DT)
_DT_DAY = 1.0 / SECONDS_PER_DAY
_SQRT_DT_DAY = math.sqrt(_DT_DAY)
_KAPPA_PER_DAY = 4.0
_JUMP_VARIANCE_KICK = 0.5
# Keep σ within [5%, 500%] a year whatever the random draws do.
_V_MIN = math.log(0.05**2)
_V_MAX = math.log(5.0**2)
_SQRT2 = math.sqrt(2.0)
_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_STRATEGIES = ("scalp", "swing", "momentum", "fade")
# Quote noise draws from a 4096-point table of standard normal quantiles (cheaper than gauss()).
_NORMALS = tuple(NormalDist().inv_cdf((i + 0.5) / 4096) for i in range(4096))


def norm_cdf(x: float) -> float:
    """Standard normal CDF."""
    return 0.5 * (1.0 + math.erf(x / _SQRT2))


def event_id_for(close_ts: float) -> str:
    """Event id of the hourly ladder closing at `close_ts`: KXBTCD-YYMMMDDHH (UTC)."""
    d = datetime.fromtimestamp(close_ts, UTC)
    return f"{SERIES}-{d.year % 100:02d}{_MONTHS[d.month - 1]}{d.day:02d}{d.hour:02d}"


def _strike_text(k: float) -> str:
    if float(k).is_integer():
        return str(int(k))
    return f"{k:.2f}".rstrip("0").rstrip(".")


def contract_id_for(event_id: str, strike: float) -> str:
    """Contract id of one strike: e.g. KXBTCD-25NOV2114-T97000."""
    return f"{event_id}-T{_strike_text(strike)}"


def ladder_strikes(spot: float, count: int, spacing: float) -> list[float]:
    """`count` strikes `spacing` apart centred on spot rounded to the spacing.

    With an even count the extra strike goes below the centre. A ladder never lists a strike
    at or below zero: when the centred ladder would reach that far (many strikes, wide spacing),
    it is shifted up so its lowest strike is one spacing; the count stays `count`.
    """
    centre = round(spot / spacing) * spacing
    low = centre - (count // 2) * spacing
    if low <= 0:
        low = spacing
    return [low + i * spacing for i in range(count)]


def _rng_state(rng: random.Random) -> list[Any]:
    version, internal, gauss_next = rng.getstate()
    return [version, list(internal), gauss_next]


def _set_rng_state(rng: random.Random, state: list[Any]) -> None:
    rng.setstate((state[0], tuple(state[1]), state[2]))


GAP_CLOSES_KEPT = 2 * 1440
"""Minute closes of a silent run (the time the app was stopped) kept for the engine's spot
history: two days, more than the volatility lookback needs."""


class SimMarket:
    """The simulated market. Drive it with `advance_to(ts)`; it never reads the wall clock.

    `state` is a dict previously returned by `state()`: the market resumes exactly where it was
    (same spot, volatility, random streams, listed ladder). If `start_ts` is later than the saved
    time, the gap is run without emitting spot or quote events (the process was down); ladders
    that were announced and closed in the gap still report their `SettleEvent`s. The first
    `advance_to` after construction (fresh or resumed) announces the current ladder with
    `ContractEvent`s.

    `gap_closes` holds the path through that gap as one close a minute (the last `GAP_CLOSES_KEPT`
    of them), for the engine's spot history (`Engine.start(spot_backfill=...)`): momentum and
    volatility after a restart come from the market's own path, not from a warm-up.
    """

    def __init__(
        self, cfg: SimConfig, start_ts: float, state: dict[str, Any] | None = None
    ) -> None:
        self._cfg = cfg
        self._theta = math.log(cfg.annual_vol**2)
        self._xi = cfg.vol_of_vol
        self._jump_p = cfg.jumps_per_day / SECONDS_PER_DAY
        self._jump_sd = cfg.jump_size_percent / 100.0
        self._noise_c = cfg.quote_noise * 100.0
        self._half_c = cfg.spread * 50.0
        self._pending: list[MarketEvent] = []
        self._window: deque[tuple[int, float]] = deque(maxlen=SETTLE_WINDOW_SECONDS)
        # The listed ladder (parallel lists, index = strike position).
        self._close = 0
        self._event_id = ""
        self._contracts: list[Contract] = []
        self._ln_k: list[float] = []
        self._volume: list[float] = []
        self._last: list[float | None] = []
        self._quotes: list[Quote] = []
        self._announced = False
        self.gap_closes: deque[tuple[float, float]] = deque(maxlen=GAP_CLOSES_KEPT)

        self._rng = random.Random(f"sim-path:{cfg.seed}")
        self._qrng = random.Random(f"sim-book:{cfg.seed}")
        start = math.floor(start_ts)
        if state is None:
            self._t = start
            self._ln_s = math.log(cfg.start_price)
            self._v = self._theta
            self._window.append((start, cfg.start_price))
            self._pending.append(SpotEvent(float(start), SYMBOL, cfg.start_price))
            self._list_ladder(start, announce=True, out=self._pending)
            self._emit_quotes(start, self._pending)
        else:
            self._load(state)
            if start > self._t:
                self._run(start, self._pending, silent=True)
            # Re-announce the current ladder: a restarted consumer needs its contracts again.
            self._pending.extend(ContractEvent(float(self._t), c) for c in self._contracts)
            self._announced = True

    # --- public API -------------------------------------------------------------------------

    def advance_to(self, ts: float) -> list[MarketEvent]:
        """Every event from the last call up to and including `ts`, in time order."""
        out = self._pending
        self._pending = []
        end = math.floor(ts)
        if end > self._t:
            self._run(end, out, silent=False)
        return out

    def contracts(self) -> list[Contract]:
        """The currently listed (open) contracts, lowest strike first."""
        return list(self._contracts)

    def spot(self) -> float:
        return math.exp(self._ln_s)

    @property
    def now(self) -> float:
        """The market time of the last produced second."""
        return float(self._t)

    @property
    def sigma(self) -> float:
        """The current annualised volatility of the spot process."""
        return math.exp(0.5 * self._v)

    def state(self) -> dict[str, Any]:
        """A JSON-serialisable snapshot to resume from (see the constructor)."""
        return {
            "version": STATE_VERSION,
            "ts": float(self._t),  # market time of the snapshot (Unix seconds)
            "t": self._t,
            "log_spot": self._ln_s,
            "log_var": self._v,
            "rng": _rng_state(self._rng),
            "book_rng": _rng_state(self._qrng),
            "window": [[t, p] for t, p in self._window],
            "ladder": {
                "close_ts": self._close,
                "event_id": self._event_id,
                "strikes": [c.strike for c in self._contracts],
                "volume": list(self._volume),
                "last": list(self._last),
                "announced": self._announced,
            },
        }

    def demo_trades(self, ts: float, count: int) -> list[OpenEvent]:
        """`count` plausible open trades near the money on the current ladder (ids demo-1…).

        Sides mix yes and no, quantities are 5..50 contracts, the entry is about the current ask of
        the held side. Drawn from a stream seeded from the seed and `ts` (the market's own streams
        are not touched), so the same seed and time give the same trades.
        """
        if count <= 0 or not self._contracts:
            return []
        rng = random.Random(f"sim-demo:{self._cfg.seed}:{math.floor(ts)}")
        spot = self.spot()
        by_distance = sorted(
            range(len(self._contracts)),
            key=lambda i: abs((self._contracts[i].strike or 0.0) - spot),
        )
        # Near the money means a YES mid between 0.2 and 0.8: cheap wings would trip a loss rule on
        # the spread alone and make a poor demonstration. Fall back to the two nearest strikes.
        near = [i for i in by_distance if 0.2 <= sum(self._yes_bid_ask(i)) / 2 <= 0.8][:6]
        near = near or by_distance[:2]
        out: list[OpenEvent] = []
        for n in range(count):
            i = rng.choice(near)
            c = self._contracts[i]
            side = "yes" if n % 2 == 0 else "no"
            if rng.random() < 0.3:
                side = "no" if side == "yes" else "yes"
            bid, ask = self._yes_bid_ask(i)
            # Entered a while ago around the held side's mid, so it starts near break-even.
            held_mid = (bid + ask) / 2 if side == "yes" else 1.0 - (bid + ask) / 2
            price = min(0.99, max(0.01, round(held_mid + rng.choice((-0.01, 0.0, 0.0, 0.01)), 2)))
            out.append(
                OpenEvent(
                    ts=float(ts),
                    trade_id=f"demo-{n + 1}",
                    contract_id=c.id,
                    side=side,
                    qty=float(rng.randint(5, 50)),
                    price=price,
                    strategy=_STRATEGIES[rng.randrange(len(_STRATEGIES))],
                )
            )
        return out

    # --- internals --------------------------------------------------------------------------

    def _yes_bid_ask(self, i: int) -> tuple[float, float]:
        """The last quoted YES bid/ask of strike i, or the model's noiseless quote."""
        if i < len(self._quotes):
            q = self._quotes[i]
            if q.bid is not None and q.ask is not None:
                return q.bid, q.ask
        tau = max(self._close - self._t, 1) * _DT
        sd = self.sigma * math.sqrt(tau)
        fv_c = 100.0 * norm_cdf((self._ln_s - self._ln_k[i] - 0.5 * sd * sd) / sd)
        bid_c, ask_c = _cents(fv_c - self._half_c, fv_c + self._half_c)
        return bid_c / 100.0, ask_c / 100.0

    def _run(self, end: int, out: list[MarketEvent], silent: bool) -> None:
        """Step the market second by second from self._t + 1 to `end` inclusive."""
        rng = self._rng
        gauss = rng.gauss
        rand = rng.random
        window = self._window
        xi_sq = self._xi * _SQRT_DT_DAY
        kappa_dt = _KAPPA_PER_DAY * _DT_DAY
        theta = self._theta
        jump_p = self._jump_p
        jump_sd = self._jump_sd
        ln_s = self._ln_s
        v = self._v
        for s in range(self._t + 1, end + 1):
            sigma = math.exp(0.5 * v)
            ln_s += -0.5 * sigma * sigma * _DT + sigma * _SQRT_DT * gauss(0.0, 1.0)
            if rand() < jump_p:
                ln_s += gauss(0.0, jump_sd)
                v += _JUMP_VARIANCE_KICK
            v += kappa_dt * (theta - v) + xi_sq * gauss(0.0, 1.0)
            if v < _V_MIN:
                v = _V_MIN
            elif v > _V_MAX:
                v = _V_MAX
            spot = math.exp(ln_s)
            window.append((s, spot))
            self._t = s
            self._ln_s = ln_s
            self._v = v
            if not silent:
                out.append(SpotEvent(float(s), SYMBOL, spot))
            elif s % 60 == 0 or s == end:
                self.gap_closes.append((float(s), spot))
            if s >= self._close:
                self._settle(s, out)
                self._list_ladder(s, announce=not silent, out=out)
            if not silent:
                self._emit_quotes(s, out)

    def _settle(self, s: int, out: list[MarketEvent]) -> None:
        prices = [p for t, p in self._window if t > s - SETTLE_WINDOW_SECONDS]
        avg = sum(prices) / len(prices)
        if self._announced:
            ts = float(s)
            for c in self._contracts:
                k = c.strike if c.strike is not None else 0.0
                out.append(SettleEvent(ts, c.id, 1.0 if avg > k else 0.0))

    def _list_ladder(self, s: int, announce: bool, out: list[MarketEvent]) -> None:
        cfg = self._cfg
        close = (s // HOUR + 1) * HOUR
        event_id = event_id_for(close)
        strikes = ladder_strikes(math.exp(self._ln_s), cfg.strikes, cfg.strike_spacing)
        self._set_ladder(close, event_id, strikes, [0.0] * len(strikes), [None] * len(strikes))
        self._announced = announce
        if announce:
            ts = float(s)
            out.extend(ContractEvent(ts, c) for c in self._contracts)

    def _set_ladder(
        self,
        close: int,
        event_id: str,
        strikes: list[float],
        volume: list[float],
        last: list[float | None],
    ) -> None:
        self._close = close
        self._event_id = event_id
        self._contracts = [
            Contract(
                id=contract_id_for(event_id, k),
                underlying=SYMBOL,
                type="binary_above",
                strike=k,
                close_ts=float(close),
                event_id=event_id,
            )
            for k in strikes
        ]
        self._ln_k = [math.log(k) for k in strikes]
        self._volume = volume
        self._last = last
        self._quotes = []

    def _emit_quotes(self, s: int, out: list[MarketEvent]) -> None:
        """One YES quote per listed contract at second s (the ladder closes after s)."""
        remaining = self._close - s
        if remaining <= 0:
            return
        sd = math.exp(0.5 * self._v) * math.sqrt(remaining * _DT)
        a = 1.0 / (sd * _SQRT2)
        b = (self._ln_s - 0.5 * sd * sd) * a
        bits = self._qrng.getrandbits
        erf = math.erf
        normals = _NORMALS
        noise = self._noise_c
        half = self._half_c
        ln_k = self._ln_k
        volume = self._volume
        last = self._last
        ts = float(s)
        quotes: list[Quote] = []
        append = quotes.append
        for i, c in enumerate(self._contracts):
            # One 48-bit draw per quote: noise (12 bits), sizes (9 bits each), a trade (18 bits).
            r = bits(48)
            fv = 50.0 + 50.0 * erf(b - ln_k[i] * a)  # fair value, cents
            mid = fv + noise * normals[r & 4095]
            bid_c = int(mid - half + 0.5)  # truncation only differs below 0, clamped anyway
            ask_c = int(mid + half + 0.5)
            if bid_c < 1:
                bid_c = 1
            elif bid_c > 98:
                bid_c = 98
            if ask_c <= bid_c:
                ask_c = bid_c + 1
            elif ask_c > 99:
                ask_c = 99
            # A trade prints with a probability that peaks at the money (0.32 at 50 c, 0.02 far).
            if (r >> 30) < (0.02 + 0.00012 * fv * (100.0 - fv)) * 262144.0:
                volume[i] += 1 + (r >> 12) % 25
                last[i] = (bid_c if r & 4096 else ask_c) / 100.0
            append(
                Quote(
                    c.id,
                    bid_c / 100.0,
                    ask_c / 100.0,
                    ts,
                    float(10 + ((r >> 12) & 511)),
                    float(10 + ((r >> 21) & 511)),
                    last[i],
                    volume[i],
                    float(int(volume[i] * 0.6)),
                )
            )
        self._quotes = quotes
        out.extend([QuoteEvent(ts, q) for q in quotes])

    def _load(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported sim state version {state.get('version')!r}")
        self._t = int(state["t"])
        self._ln_s = float(state["log_spot"])
        self._v = float(state["log_var"])
        _set_rng_state(self._rng, state["rng"])
        _set_rng_state(self._qrng, state["book_rng"])
        self._window.extend((int(t), float(p)) for t, p in state["window"])
        lad = state["ladder"]
        self._set_ladder(
            int(lad["close_ts"]),
            str(lad["event_id"]),
            [float(k) for k in lad["strikes"]],
            [float(x) for x in lad["volume"]],
            [None if x is None else float(x) for x in lad["last"]],
        )
        self._announced = bool(lad["announced"])


def _cents(bid: float, ask: float) -> tuple[int, int]:
    """Round a bid/ask in cents to whole cents with 1 ≤ bid < ask ≤ 99."""
    bid_c = min(max(math.floor(bid + 0.5), 1), 98)
    ask_c = min(max(math.floor(ask + 0.5), bid_c + 1), 99)
    return bid_c, ask_c
