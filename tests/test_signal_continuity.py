"""Signals a trader can trust around outages and restarts (issue 19): an outage is not a price
gap, regimes do not flap on constant volatility, and a restart does not blind momentum and
volatility. All on the manual clock (tests/engine_harness.py)."""

from __future__ import annotations

import math
import random
import tomllib
from pathlib import Path

import pytest

from engine.config import ConfigError, parse_config
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


# --- a restart does not blind the signals ---------------------------------------------------------

MOMENTUM = {"auto_stop": {"criteria": {"momentum_threshold_bps": 15.0}}}


async def _falling_spot(h: Harness, start: int, seconds: int, s: float) -> float:
    """One spot a second, falling 1 % over 30 minutes: a momentum score of about -22 bps once
    the 30-minute window has data (-13 bps without it)."""
    per_second = (1.0 - 0.01) ** (1.0 / 1800.0)
    for i in range(start, start + seconds):
        h.at(i)
        s *= per_second
        await h.spot(s)
    return s


async def _restarted_with_a_trade(tmp_path: Path, at: int, s: float) -> Harness:
    """A new engine process on the journal in `tmp_path` at T0 + `at`: trade t1 (YES above
    97,000) opened on a fresh quote, then one spot tick continuing the fall."""
    h = await Harness(tmp_path, config(**MOMENTUM)).open()
    h.at(at)
    await h.contract(close_in=6 * 3600)
    await h.start()
    await h.quote(0.50, 0.52)
    await h.open_trade()
    assert h.exits == []  # the journaled spot is 5 s old at most: nothing fired on the quote
    h.at(at + 2)
    await h.quote(0.50, 0.52)
    await h.spot(s * 0.99999)
    return h


async def test_momentum_fires_in_the_first_seconds_after_a_restart(tmp_path):
    # The engine watched the spot fall for 30 minutes, then stopped; it starts again 3 s later
    # with trade t1 and a momentum rule of 15 bps, which needs the 15- and 30-minute windows.
    h = await Harness(tmp_path, config(**MOMENTUM)).open()
    await h.start()
    s = await _falling_spot(h, 0, 1810, 97_500.0)
    assert h.engine.momentum_bps is not None and h.engine.momentum_bps < -15.0
    await h.close()
    h = await _restarted_with_a_trade(tmp_path, 1812, s)
    assert h.engine.vol.state.regime is not None  # volatility and regime are back too
    assert [e["rule"] for e in h.exits] == ["momentum"]
    assert h.exits[0]["ts"] == T0 + 1814  # the first spot tick, 2 s after the start
    await h.close()


async def test_without_any_history_momentum_warms_up(tmp_path):
    # The same first tick on a fresh journal: no history at all, so no momentum yet.
    (tmp_path / "fresh").mkdir()
    h = await _restarted_with_a_trade(tmp_path / "fresh", 1812, 95_000.0)
    assert h.engine.momentum_bps is None
    assert h.exits == []
    await h.close()


async def test_the_journaled_spot_history_is_bounded(tmp_path):
    # Every tick of the last 31 minutes, one close a minute before that, nothing older than the
    # volatility lookback and its longest window (1440 + 60 + 1 minutes by default).
    h = await Harness(tmp_path).open()
    await h.start()
    for i in range(0, 40 * 60, 5):  # 40 minutes of ticks, one each 5 s
        h.at(i)
        await h.spot(97_000.0 + i)
    h.at(40 * 60)
    await h.spot(98_000.0)
    rows = await h.store.spot_samples("BTC-USD")
    recent = [ts for ts, _ in rows if ts >= T0 + 40 * 60 - 31 * 60]
    older = [ts for ts, _ in rows if ts < T0 + 40 * 60 - 31 * 60]
    assert len(recent) == 31 * 12 + 1  # every 5 s tick of the last 31 minutes, and the last
    assert len(older) == len({int(ts // 60) for ts in older})  # one per clock minute
    assert rows[-1] == (T0 + 40 * 60, 98_000.0)
    await h.store.add_spot_samples("BTC-USD", [], T0 + 40 * 60, T0 + 39 * 60)
    assert min(ts for ts, _ in await h.store.spot_samples("BTC-USD")) >= T0 + 39 * 60
    assert await h.store.spot_samples("ETH-USD") == []
    await h.close()


def test_the_regime_keys_are_checked_with_their_range():
    text = (
        "[signals]\nregime_margin = 0.7\nregime_dwell_seconds = -1\n"
        "regime_min_sigma_change_percent = -5\n"
    )
    with pytest.raises(ConfigError) as info:
        parse_config(tomllib.loads(text), text, "c.toml")
    lines = info.value.lines
    assert lines == [
        "c.toml, line 2: signals.regime_margin: expected a number from 0 to 0.5, got 0.7",
        "c.toml, line 3: signals.regime_dwell_seconds: expected a number of at least 0, got -1",
        "c.toml, line 4: signals.regime_min_sigma_change_percent: "
        "expected a number of at least 0, got -5",
    ]
    cfg = parse_config(tomllib.loads("[signals]\nregime_dwell_seconds = 0\n"))
    assert cfg.signals.regime_dwell_seconds == 0 and cfg.signals.regime_margin == 0.05


async def test_a_v3_journal_migrates_to_the_spot_history_keeping_its_data(tmp_path, monkeypatch):
    import sqlite3

    from engine import store as store_mod
    from engine.models import Trade

    path = tmp_path / "trades.db"
    monkeypatch.setattr(store_mod, "MIGRATIONS", store_mod.MIGRATIONS[:3])
    monkeypatch.setattr(store_mod, "SCHEMA_VERSION", 3)
    async with store_mod.Store(path) as s:
        await s.add_trade(Trade("A", "C1", "yes", 10, 0.40, T0))
    monkeypatch.undo()
    async with store_mod.Store(path) as s:
        assert (await s.get_trade("A")) is not None
        await s.add_spot_samples("BTC-USD", [(T0, 97_000.0)], T0, T0 - 60)
        assert await s.spot_samples("BTC-USD") == [(T0, 97_000.0)]
    with sqlite3.connect(path) as c:
        assert c.execute("PRAGMA user_version").fetchone()[0] == store_mod.SCHEMA_VERSION >= 4
