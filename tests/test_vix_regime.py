"""VIX drives the volatility regime while its values arrive fresh ([signals]
vix_regime_thresholds); stale, the regime falls back to realised volatility; invalid values are
ignored with one data_quality alert. The market pane names the source."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from engine import signals
from engine.snapshot import MarketView
from tests.engine_harness import T0, Harness, config
from tui.panes import regime_text

MAX_AGE = 120.0
SPOT = 97_100.0


@asynccontextmanager
async def engine(tmp: Path, history: bool = False) -> AsyncIterator[Harness]:
    cfg = config(signals={"vix_max_age_seconds": MAX_AGE})
    h = await Harness(tmp, cfg).open()
    try:
        await h.contract()
        if history:
            # An hour of quiet 1-minute closes, then a spot: a realised regime exists.
            closes = [(T0 - 60.0 * (60 - k), SPOT * (1.0004 if k % 2 else 1.0)) for k in range(60)]
            h.engine.seed_spot_history(closes)
        await h.spot(SPOT)
        await h.start()
        yield h
    finally:
        await h.close()


def view(h: Harness) -> MarketView:
    h.engine._dirty = True
    m = h.engine.snapshot().market
    assert m is not None
    return m


@pytest.mark.parametrize(
    ("vix", "regime"),
    [
        (9.0, "very_low"),
        (12.0, "low"),
        (15.99, "low"),
        (16.0, "medium"),
        (18.4, "medium"),
        (20.0, "high"),
        (29.9, "high"),
        (30.0, "extreme"),
        (80.0, "extreme"),
    ],
)
def test_vix_levels_map_to_regimes(vix: float, regime: str) -> None:
    assert signals.vix_regime(vix, [12, 16, 20, 30]) == regime


@pytest.mark.parametrize("bad", [math.nan, math.inf, 0.0, -1.0])
def test_a_vix_that_is_not_a_positive_number_has_no_regime(bad: float) -> None:
    assert signals.vix_regime(bad, [12, 16, 20, 30]) is None


async def test_vix_drives_the_regime_and_its_change_alert(tmp_path: Path) -> None:
    async with engine(tmp_path) as h:
        assert h.engine.regime_now(T0) == (None, "realized")  # no history, no VIX
        await h.engine.vix_update(18.4, T0)
        m = view(h)
        assert (m.regime, m.regime_source, m.vix, m.vix_age) == ("medium", "vix", 18.4, 0.0)
        assert h.of_kind("regime_change") == []  # the first regime is not a change
        # VIX jumps above 20: "high" must hold for two values and a minute before the alert.
        h.at(10)
        await h.engine.vix_update(22.0, T0 + 10)
        h.at(40)
        await h.engine.vix_update(22.5, T0 + 40)
        assert h.of_kind("regime_change") == []
        assert view(h).regime == "high"  # shown at once; alerted once confirmed
        h.at(71)
        await h.engine.vix_update(23.1, T0 + 71)
        [alert] = h.of_kind("regime_change")
        assert alert.message == "volatility regime medium → high (VIX 23.1)"
        assert alert.data["source"] == "vix" and alert.data["to"] == "high"
        # Back to medium for one value only, then high again: no alert (no flapping).
        h.at(80)
        await h.engine.vix_update(19.0, T0 + 80)
        h.at(150)
        await h.engine.vix_update(21.0, T0 + 150)
        assert len(h.of_kind("regime_change")) == 1


async def test_stale_vix_falls_back_to_the_realised_regime(tmp_path: Path) -> None:
    async with engine(tmp_path, history=True) as h:
        # The seeded hour is quiet: its realised regime (the score rebuilt over that hour) is
        # not VIX's "extreme".
        assert h.engine.vol.state.regime not in (None, "extreme")
        await h.engine.vix_update(35.0, T0)  # extreme
        assert (view(h).regime, view(h).regime_source) == ("extreme", "vix")
        h.at(MAX_AGE)
        assert view(h).regime_source == "vix"  # at the maximum age: still fresh
        h.at(MAX_AGE + 1)
        await h.spot(SPOT)
        m = view(h)
        assert h.engine.vol.state.regime is not None
        assert (m.regime, m.regime_source, m.vix) == (h.engine.vol.state.regime, "realized", 35.0)
        assert m.vix_age == pytest.approx(MAX_AGE + 1)
        [stale] = [a for a in h.of_kind("data_quality") if "VIX stale" in a.message]
        assert "regime comes from realised volatility" in stale.message
        h.at(MAX_AGE + 5)
        await h.spot(SPOT)  # still stale: no second alert
        assert len([a for a in h.of_kind("data_quality") if "VIX" in a.message]) == 1
        # VIX again: its regime is back, and the recovery is said.
        await h.engine.vix_update(17.0, T0 + MAX_AGE + 5)
        assert (view(h).regime, view(h).regime_source) == ("medium", "vix")
        assert any("data recovered: vix" in a.message for a in h.of_kind("data_quality"))


async def test_invalid_vix_is_ignored_with_one_alert(tmp_path: Path) -> None:
    async with engine(tmp_path) as h:
        await h.engine.vix_update(18.0, T0)
        for bad in (math.nan, 0.0, -3.0, math.inf):
            await h.engine.vix_update(bad, T0 + 1)
        assert (h.engine.vix, h.engine.vix_ts) == (18.0, T0)
        assert view(h).regime == "medium"
        [alert] = h.of_kind("data_quality")
        assert alert.severity.value == "warning" and "invalid VIX value nan" in alert.message
        # From the future or out of order: ignored as well.
        await h.engine.vix_update(40.0, T0 + 3600)
        await h.engine.vix_update(40.0, T0 - 10)
        assert h.engine.vix == 18.0


def _view(**kw: Any) -> MarketView:
    base: dict[str, Any] = {
        "symbol": "SPY",
        "spot": 600.0,
        "spot_ts": T0,
        "change_30m_pct": None,
        "sparkline": (),
        "momentum_pct": (),
        "momentum_bps": None,
        "sigma": 0.18,
        "sigma_used": 0.18,
        "vol_score": 0.5,
        "regime": "medium",
        "event_id": "SPY 20251124",
        "close_ts": T0 + 5 * 3600,
        "ttc_seconds": 5 * 3600.0,
    }
    base.update(kw)
    return MarketView(**base)


@pytest.mark.parametrize(
    ("kw", "shown", "warns"),
    [
        ({"vix": 18.4, "vix_age": 3.0, "regime_source": "vix"}, " MEDIUM   VIX 18.4", False),
        (
            {"vix": 18.4, "vix_age": 420.0, "regime_source": "realized"},
            " MEDIUM   realized · VIX 18.4 stale 7m00s",
            True,
        ),
        ({}, " MEDIUM ", False),  # no VIX at all: as before (BTC, sim, Kalshi)
    ],
)
def test_the_regime_line_names_vix(kw: dict[str, Any], shown: str, warns: bool) -> None:
    t = regime_text(_view(**kw))
    assert t.plain == "\nRegime " + shown
    assert any("yellow" in str(span.style) for span in t.spans) is warns


async def test_an_ibkr_underlying_shows_its_volatility_over_trading_minutes(tmp_path: Path) -> None:
    """The same hour of SPY minute closes: with the engine on IBKR the market pane's σ is
    annualised over 98,280 trading minutes (comparable with the options' IV), not 525,600."""
    closes = [(T0 - 60.0 * (60 - k), 550.0 * (1.0004 if k % 2 else 1.0)) for k in range(60)]
    sigmas: dict[str, float] = {}
    for venue, mode in (("sim", "dry_run"), ("ibkr", "alert_only")):
        cfg = config(engine={"venue": venue}, auto_stop={"mode": mode})
        h = await Harness(tmp_path / venue, cfg).open()
        try:
            h.engine.seed_spot_history(closes)
            await h.spot(550.0)
            sigma = view(h).sigma
            assert sigma is not None
            sigmas[venue] = sigma
        finally:
            await h.close()
    # Minute moves of ±0.04 % are about 0.04 % · √98,280 ≈ 12.5 % a year for a stock (a quiet
    # SPY day), and 2.31 times that if the year had 525,600 trading minutes.
    assert 0.11 < sigmas["ibkr"] < 0.14
    assert sigmas["sim"] / sigmas["ibkr"] == pytest.approx(math.sqrt(525_600 / 98_280))
