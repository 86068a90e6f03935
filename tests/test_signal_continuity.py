"""Signals a trader can trust around outages and restarts (issue 19): an outage is not a price
gap, regimes do not flap on constant volatility, and a restart does not blind momentum and
volatility. All on the manual clock (tests/engine_harness.py)."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from engine.signals import regime_past_margin
from tests.engine_harness import T0, Harness, config, standard
from tests.test_replay import run_scenario

# --- an outage is not a price gap -----------------------------------------------------------------

GAP = {"auto_stop": {"criteria": {"price_gap_threshold_percent": 1.0}}}


async def test_spot_back_after_an_outage_3pct_away_is_not_a_price_gap(tmp_path):
    h = await standard(tmp_path, config(**GAP))  # spot 97,100 at T0; YES above 97,000
    h.at(1)
    await h.spot(97100.0)
    h.at(61)  # a minute without spot: stale (limit 10 s)
    await h.quote(0.50, 0.52)
    await h.tick()
    assert any("spot" in a.message and "old" in a.message for a in h.of_kind("data_quality"))
    await h.spot(97100.0 * 0.97)  # back, 3 % lower: an outage, not a gap between two fresh prices
    assert h.exits == []
    assert h.venue.submitted == []
    await h.quote(0.50, 0.52)
    await h.tick()
    assert h.exits == []  # nor on the next evaluation of the same prices
    h.at(62)
    await h.spot(97100.0 * 0.97 * 0.99)  # -1 % between two fresh prices: a real gap
    assert [e["rule"] for e in h.exits] == ["price_gap"]
    await h.close()


async def test_a_gap_between_two_fresh_prices_fires(tmp_path):
    h = await standard(tmp_path, config(**GAP))
    h.at(1)
    await h.spot(97100.0 * 0.985)  # -1.5 % one second later
    assert [e["rule"] for e in h.exits] == ["price_gap"]
    await h.close()


async def test_an_invalid_spot_episode_restarts_the_gap_baseline(tmp_path):
    h = await standard(tmp_path, config(**GAP))
    h.at(1)
    await h.spot(float("nan"))  # a broken feed: the spot is in a data-quality episode
    h.at(2)
    await h.spot(97100.0 * 0.98)  # the first good price after it: a new baseline
    assert h.exits == []
    await h.close()


async def test_replay_outage_then_gap(tmp_path: Path) -> None:
    # price_gap_outage.jsonl: YES "above 97,000" 10 @ 0.50, gap threshold 1 %. The spot is quiet
    # from 1001 to 1061 (stale from tick 1012 on, limit 10 s) and comes back 3 % lower: no exit
    # (the baseline starts over). One second later it drops another 1 % between two fresh
    # prices: price_gap fires then, at the bid 0.48.
    toml = """
        [auto_stop.criteria]
        price_gap_threshold_percent = 1.0
    """
    run = await run_scenario("price_gap_outage.jsonl", toml, tmp_path)
    (row,) = run.exits
    assert (row["ts"], row["rule"], row["trade_id"]) == (1062.0, "price_gap", "t1")
    assert row["mark"] == 0.48
    assert any("spot" in a["message"] for a in run.alerts("data_quality"))


# --- regimes do not flap --------------------------------------------------------------------------


async def _gbm(h: Harness, start: int, seconds: int, sigma: float, rng: random.Random, s: float):
    """One spot a second from `start` for `seconds`: a lognormal path of constant `sigma`."""
    dt = 1.0 / (525_600 * 60)
    for i in range(start, start + seconds):
        h.at(i)
        s *= math.exp(-0.5 * sigma * sigma * dt + sigma * math.sqrt(dt) * rng.gauss(0.0, 1.0))
        await h.spot(s)
    return s


@pytest.mark.parametrize("seed", [0, 1, 2])
async def test_no_regime_change_alert_on_two_hours_of_constant_volatility(tmp_path, seed):
    # Seed 0 raised 18 regime-change warnings in these two hours before the margin, dwell and
    # sigma-change requirements (the percentile score wanders over 0..1 on constant volatility).
    h = await Harness(tmp_path).open()
    await h.start()
    await _gbm(h, 0, 2 * 3600, 0.5, random.Random(seed), 97000.0)
    assert h.engine.vol.state.regime is not None
    assert h.of_kind("regime_change") == []
    await h.close()


async def test_a_real_volatility_change_is_alerted_once(tmp_path):
    h = await Harness(tmp_path).open()
    await h.start()
    rng = random.Random(0)
    s = await _gbm(h, 0, 2 * 3600, 0.5, rng, 97000.0)
    await _gbm(h, 2 * 3600, 1800, 1.5, rng, s)  # volatility triples for half an hour
    [alert] = h.of_kind("regime_change")
    assert alert.data["from"] == "medium" and alert.data["to"] in ("high", "extreme")
    assert alert.ts - T0 >= 2 * 3600 + 600  # held past the boundary for the dwell time
    await h.close()


def test_regime_past_margin_holds_inside_the_widened_band():
    thr = [0.2, 0.4, 0.6, 0.8]
    assert regime_past_margin("medium", 0.62, thr, 0.05) == "medium"  # past 0.6, not by 0.05
    assert regime_past_margin("medium", 0.65, thr, 0.05) == "high"
    assert regime_past_margin("medium", 0.36, thr, 0.05) == "medium"
    assert regime_past_margin("medium", 0.34, thr, 0.05) == "low"
    assert regime_past_margin("medium", 0.95, thr, 0.05) == "extreme"
    assert regime_past_margin(None, 0.62, thr, 0.05) == "high"
    assert regime_past_margin("medium", 0.62, thr, 0.0) == "high"
