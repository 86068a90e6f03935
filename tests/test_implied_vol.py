"""[signals] sigma_source = "implied": the strike probabilities use Deribit's DVOL while it is
fresh and fall back to realised volatility, visibly, when it is missing or stale; the market pane
says which sigma the model uses. The volatility score and regime stay realised."""

from __future__ import annotations

import functools
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from engine import signals
from engine.feeds.deribit import DeribitDvol
from engine.feeds.spot_feed import SpotFeed
from engine.snapshot import MarketView
from engine.supervisor import Engine
from tests.engine_harness import CID, T0, Harness, config
from tests.spot_servers import DeribitServer
from tests.tui_harness import running_app, settle, ui_config
from tui.panes import MarketPane, sigma_text

SPOT = 97_100.0
STRIKE = 97_000.0  # the harness's contract, closing at T0 + 3600
MAX_AGE = 300.0  # implied_vol_max_age_seconds
DVOL = 0.80  # far from the realised sigma and from fallback_sigma, so the choice shows
FALLBACK = 0.50  # [signals] fallback_sigma's default


def _prob(sigma: float, now: float) -> float:
    return signals.prob_above(SPOT, STRIKE, sigma, signals.tau_years(T0 + 3600.0, now))


def _seed_history(h: Harness) -> None:
    """An hour of 1-minute closes, alternating 0.04 %: a realised sigma near 30 %."""
    closes = [(T0 - 60.0 * (60 - k), SPOT * (1.0004 if k % 2 else 1.0)) for k in range(60)]
    h.engine.seed_spot_history(closes)


def _realized(m: MarketView) -> float:
    """The realised sigma the market view shows, checked to be far from DVOL."""
    assert m.sigma is not None and abs(m.sigma - DVOL) > 0.2
    return m.sigma


@asynccontextmanager
async def market(tmp: Path, source: str, history: bool = True) -> AsyncIterator[Harness]:
    """An engine with the harness's contract quoted and spot at SPOT, sigma_source `source`;
    with `history`, an hour of spot history before (so a realised sigma)."""
    cfg = config(signals={"sigma_source": source, "implied_vol_max_age_seconds": MAX_AGE})
    h = await Harness(tmp, cfg).open()
    try:
        await h.contract()
        if history:
            _seed_history(h)
        await h.spot(SPOT)
        await h.quote(0.50, 0.52)
        await h.start()
        yield h
    finally:
        await h.close()


def _snap(h: Harness) -> tuple[MarketView, float]:
    """The market view and the model probability of the harness's strike, built now."""
    h.engine._dirty = True
    s = h.engine.snapshot()
    assert s.market is not None
    return s.market, next(r.prob for r in s.strikes if r.contract_id == CID)


async def _later(h: Harness, dt: float) -> float:
    """Move the clock to T0 + dt with a fresh spot and quote; return the time."""
    now = h.at(dt)
    await h.spot(SPOT)
    await h.quote(0.50, 0.52)
    return now


# --- the engine's choice --------------------------------------------------------------------------


async def test_fresh_dvol_drives_the_strike_probabilities(tmp_path: Path) -> None:
    async with market(tmp_path, "implied") as h:
        h.engine.implied_vol, h.engine.implied_vol_ts = DVOL, T0 - 90.0  # read 90 s ago
        m, prob = _snap(h)
        assert (m.sigma_used, m.sigma_source, m.sigma_wanted) == (DVOL, "implied", "implied")
        assert prob == pytest.approx(_prob(DVOL, T0))
        # Not what the realised sigma (still in the view, for the pane) gives.
        assert abs(prob - _prob(_realized(m), T0)) > 0.005
        assert m.implied_vol == DVOL and m.implied_vol_age == pytest.approx(90.0)


async def test_dvol_at_the_maximum_age_is_still_used(tmp_path: Path) -> None:
    async with market(tmp_path, "implied") as h:
        h.engine.implied_vol, h.engine.implied_vol_ts = DVOL, T0 - MAX_AGE
        m, prob = _snap(h)
        assert m.sigma_source == "implied" and prob == pytest.approx(_prob(DVOL, T0))


async def test_stale_dvol_falls_back_to_realized(tmp_path: Path) -> None:
    async with market(tmp_path, "implied") as h:
        h.engine.implied_vol, h.engine.implied_vol_ts = DVOL, T0
        now = await _later(h, MAX_AGE + 1.0)  # the reading is now past the maximum age
        m, prob = _snap(h)
        realized = _realized(m)
        assert (m.sigma_source, m.sigma_wanted, m.sigma_used) == ("realized", "implied", realized)
        assert prob == pytest.approx(_prob(realized, now))
        assert m.implied_vol == DVOL and m.implied_vol_age == pytest.approx(MAX_AGE + 1.0)


async def test_missing_dvol_falls_back_to_realized(tmp_path: Path) -> None:
    async with market(tmp_path, "implied") as h:
        m, prob = _snap(h)  # DVOL never read
        realized = _realized(m)
        assert (m.sigma_source, m.sigma_used, m.implied_vol) == ("realized", realized, None)
        assert prob == pytest.approx(_prob(realized, T0))


async def test_missing_dvol_and_no_history_use_the_fallback_sigma(tmp_path: Path) -> None:
    async with market(tmp_path, "implied", history=False) as h:
        m, prob = _snap(h)
        assert (m.sigma_source, m.sigma_used, m.sigma) == ("fallback", FALLBACK, None)
        assert prob == pytest.approx(_prob(FALLBACK, T0))


async def test_realized_source_ignores_a_fresh_dvol(tmp_path: Path) -> None:
    async with market(tmp_path, "realized") as h:
        h.engine.implied_vol, h.engine.implied_vol_ts = DVOL, T0
        m, prob = _snap(h)
        realized = _realized(m)
        assert (m.sigma_source, m.sigma_wanted, m.sigma_used) == ("realized", "realized", realized)
        assert prob == pytest.approx(_prob(realized, T0))
        assert m.implied_vol == DVOL  # still shown, for comparison


async def test_the_regime_stays_realized_with_implied_sigma(tmp_path: Path) -> None:
    async with market(tmp_path, "implied") as h:
        before = h.engine.vol.state
        assert before.regime is not None
        h.engine.implied_vol, h.engine.implied_vol_ts = DVOL, T0
        m, _ = _snap(h)
        assert m.sigma_source == "implied"
        assert (m.sigma, m.vol_score, m.regime) == (before.sigma, before.score, before.regime)


@pytest.mark.parametrize("bad", [math.nan, 0.0, -0.5, math.inf])
def test_an_implied_sigma_that_is_not_a_positive_number_is_not_used(bad: float) -> None:
    c = signals.choose_sigma("implied", 0.40, FALLBACK, bad, T0, T0, MAX_AGE)
    assert (c.sigma, c.source, c.implied_fresh) == (0.40, "realized", False)


# --- through the spot feed, from Deribit on loopback ----------------------------------------------


class _NoSpot:
    """A spot selector with no source: only the feed's DVOL reading matters here."""

    def __init__(self) -> None:
        self.switches: list[Any] = []
        self.active = None

    async def poll(self) -> None:
        return None

    def evaluate(self) -> None:
        return None


async def test_dvol_from_the_spot_feed_goes_stale_when_deribit_stops_updating(
    tmp_path: Path,
) -> None:
    async with market(tmp_path, "implied") as h:
        server = await DeribitServer().start()
        assert isinstance(server, DeribitServer)
        server.rows = [[int(T0 - 60) * 1000, 80.0, 80.0, 80.0, 80.0]]  # the bar before T0
        dvol = DeribitDvol(h.clock, base_url=server.url, timeout_seconds=1.0)
        feed = SpotFeed(_NoSpot(), h.clock, dvol=dvol, dvol_seconds=60.0)  # type: ignore[arg-type]
        try:
            await feed.step(h.engine)
            assert (h.engine.implied_vol, h.engine.implied_vol_ts) == (DVOL, T0 - 60)
            m, prob = _snap(h)
            assert m.sigma_source == "implied" and prob == pytest.approx(_prob(DVOL, T0))
            # Deribit answers again, with the same old bar: read, but stamped 5½ minutes ago.
            now = await _later(h, MAX_AGE - 30.0)
            await feed.step(h.engine)
            assert len(server.requests) == 2
            m, prob = _snap(h)
            realized = _realized(m)
            assert (m.sigma_source, m.sigma_used) == ("realized", realized)
            assert m.implied_vol_age == pytest.approx(MAX_AGE + 30.0)
            assert prob == pytest.approx(_prob(realized, now))
        finally:
            await dvol.aclose()
            await server.close()


# --- the market pane ------------------------------------------------------------------------------


def _view(**kw: Any) -> MarketView:
    base: dict[str, Any] = {
        "symbol": "BTC-USD",
        "spot": SPOT,
        "spot_ts": T0,
        "change_30m_pct": None,
        "sparkline": (),
        "momentum_pct": (),
        "momentum_bps": None,
        "sigma": 0.48,
        "sigma_used": 0.48,
        "vol_score": 0.5,
        "regime": "medium",
        "event_id": "E",
        "close_ts": T0 + 3600,
        "ttc_seconds": 3600.0,
    }
    base.update(kw)
    return MarketView(**base)


@pytest.mark.parametrize(
    ("kw", "shown", "warns"),
    [
        ({}, "σ 48% (realized)", False),
        ({"implied_vol": 0.52, "implied_vol_age": 30.0}, "σ 48% (realized)  DVOL 52%", False),
        (
            {"sigma_wanted": "implied", "sigma_source": "implied", "sigma_used": 0.52},
            "σ 52% (DVOL)  realized 48%",
            False,
        ),
        (
            {"sigma_wanted": "implied", "implied_vol": 0.52, "implied_vol_age": 420.0},
            "σ 48% (realized)  DVOL 52% stale 7m00s",
            True,
        ),
        ({"sigma_wanted": "implied"}, "σ 48% (realized)  no DVOL", True),
        ({"sigma": None, "sigma_used": 0.5, "sigma_source": "fallback"}, "σ 50% (fallback)", False),
    ],
)
def test_the_sigma_line_names_the_source(kw: dict[str, Any], shown: str, warns: bool) -> None:
    t = sigma_text(_view(**kw))
    assert t.plain == "\n" + shown
    assert any("yellow" in str(span.style) for span in t.spans) is warns


async def _set_dvol(sigma: float, ts: float, e: Engine) -> None:
    e.implied_vol, e.implied_vol_ts = sigma, ts


async def test_the_market_pane_shows_dvol_then_the_fallback(tmp_path: Path) -> None:
    cfg = ui_config(tmp_path, signals={"sigma_source": "implied"})
    async with running_app(tmp_path, config=cfg) as (app, pilot, host):
        lines = app.main.query_one(MarketPane).query_one("#market-lines")
        assert "no DVOL" in str(lines.render())
        now = T0 + 5.0  # running_app warmed up 5 s
        await host.call(functools.partial(_set_dvol, 0.83, now))
        await host.advance(1)
        await settle(pilot)
        assert "σ 83% (DVOL)" in str(lines.render())
        await host.advance(MAX_AGE + 1)
        await settle(pilot)
        text = str(lines.render())
        assert "(DVOL)" not in text and "DVOL 83% stale 5m02s" in text
