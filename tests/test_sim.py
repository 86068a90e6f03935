"""The simulated market: reproducible, one spot per second, hourly ladders, settlement, resume."""

from __future__ import annotations

import itertools
import json
import math
from datetime import UTC, datetime

import pytest

from engine.config import SimConfig
from engine.models import ContractEvent, QuoteEvent, SettleEvent, SpotEvent
from engine.sim import SimMarket, contract_id_for, event_id_for, ladder_strikes

# 2025-11-21 13:20:34 UTC: the first ladder closes at 14:00.
T0 = datetime(2025, 11, 21, 13, 0, tzinfo=UTC).timestamp() + 1234
CLOSE1 = datetime(2025, 11, 21, 14, 0, tzinfo=UTC).timestamp()


def kinds(events, cls):
    return [e for e in events if isinstance(e, cls)]


def test_same_seed_same_events_different_seed_different() -> None:
    cfg = SimConfig(seed=3, strikes=5)
    a = SimMarket(cfg, T0).advance_to(T0 + 3600)
    b = SimMarket(cfg, T0).advance_to(T0 + 3600)
    c = SimMarket(SimConfig(seed=4, strikes=5), T0).advance_to(T0 + 3600)
    assert a == b
    assert [e.price for e in kinds(a, SpotEvent)] != [e.price for e in kinds(c, SpotEvent)]


def test_chunking_does_not_change_the_events() -> None:
    cfg = SimConfig(seed=5, strikes=5)
    whole = SimMarket(cfg, T0).advance_to(T0 + 900)
    m = SimMarket(cfg, T0)
    pieces = []
    t = T0
    while t < T0 + 900:
        t += 0.37
        pieces.extend(m.advance_to(min(t, T0 + 900)))
    assert pieces == whole


def test_a_spot_every_second_in_time_order() -> None:
    m = SimMarket(SimConfig(strikes=3), T0)
    events = m.advance_to(T0 + 3 * 3600 + 0.5)
    ts = [e.ts for e in events]
    assert ts == sorted(ts)
    spots = kinds(events, SpotEvent)
    assert [s.ts for s in spots] == [float(t) for t in range(int(T0), int(T0) + 3 * 3600 + 1)]
    assert all(s.symbol == "BTC-USD" and s.price > 0 for s in spots)
    assert m.spot() == spots[-1].price
    assert m.advance_to(T0 + 3 * 3600 + 0.9) == []  # no new whole second yet


def test_first_call_lists_the_current_hour_centred_on_spot() -> None:
    cfg = SimConfig(strikes=21, strike_spacing=250.0, start_price=97_040.0)
    m = SimMarket(cfg, T0)
    events = m.advance_to(T0)
    listed = [e.contract for e in kinds(events, ContractEvent)]
    assert len(listed) == 21
    strikes = [c.strike for c in listed]
    assert strikes == [94_500.0 + 250.0 * i for i in range(21)]  # centre 97 000
    assert strikes[10] == 97_000.0
    c = listed[10]
    assert c.id == "KXBTCD-25NOV2114-T97000"
    assert c.event_id == "KXBTCD-25NOV2114"
    assert c.type == "binary_above" and c.underlying == "BTC-USD"
    assert c.close_ts == CLOSE1
    assert m.contracts() == listed
    assert len(kinds(events, QuoteEvent)) == 21


def test_ids() -> None:
    close = datetime(2026, 1, 5, 9, tzinfo=UTC).timestamp()
    assert event_id_for(close) == "KXBTCD-26JAN0509"
    assert contract_id_for("KXBTCD-26JAN0509", 97_062.5) == "KXBTCD-26JAN0509-T97062.5"


def test_ladder_never_lists_non_positive_strikes() -> None:
    ks = ladder_strikes(97_000.0, 1000, 250.0)
    assert len(ks) == 1000 and ks[0] == 250.0 and ks[1] - ks[0] == 250.0
    even = ladder_strikes(97_100.0, 4, 100.0)
    assert even == [96_900.0, 97_000.0, 97_100.0, 97_200.0]


def test_roll_at_the_top_of_the_hour_settles_on_the_last_minute_average() -> None:
    cfg = SimConfig(seed=9, strikes=21, strike_spacing=100.0)
    m = SimMarket(cfg, T0)
    events = m.advance_to(CLOSE1 + 3600 + 10)
    spot_at = {e.ts: e.price for e in kinds(events, SpotEvent)}
    for close in (CLOSE1, CLOSE1 + 3600):
        avg = sum(spot_at[close - k] for k in range(60)) / 60
        settles = [e for e in kinds(events, SettleEvent) if e.ts == close]
        assert len(settles) == 21
        listed = {e.contract.id: e.contract for e in kinds(events, ContractEvent)}
        for s in settles:
            k = listed[s.contract_id].strike
            assert s.value == (1.0 if avg > k else 0.0)
            assert listed[s.contract_id].close_ts == close
        assert {s.value for s in settles} == {0.0, 1.0}  # the ladder straddles the average
        new = [e.contract for e in kinds(events, ContractEvent) if e.ts == close]
        assert len(new) == 21
        assert all(c.close_ts == close + 3600 for c in new)
        centre = round(spot_at[close] / 100.0) * 100.0
        assert new[10].strike == centre
        # Nothing quotes a contract at or after its close.
        closing = {s.contract_id for s in settles}
        assert not [e for e in kinds(events, QuoteEvent) if e.quote.id in closing and e.ts >= close]
    assert [c.close_ts for c in m.contracts()] == [CLOSE1 + 7200] * 21
    # Settlement follows the listing of the settled contract, and precedes the next listing.
    order = [type(e).__name__ for e in events if e.ts == CLOSE1]
    assert order[0] == "SpotEvent"
    assert order.index("ContractEvent") > max(i for i, k in enumerate(order) if k == "SettleEvent")


def test_quotes_valid_every_second_for_every_contract() -> None:
    cfg = SimConfig(seed=2, strikes=15, quote_noise=0.05, spread=0.0)
    m = SimMarket(cfg, T0)
    events = m.advance_to(T0 + 1200)
    quotes = kinds(events, QuoteEvent)
    assert len(quotes) == 15 * 1201
    for e in quotes:
        q = e.quote
        assert q.ts == e.ts and q.ts.is_integer()
        assert 0.0 < q.bid < q.ask < 1.0
        assert round(q.bid * 100) == pytest.approx(q.bid * 100, abs=1e-9)
        assert round(q.ask * 100) == pytest.approx(q.ask * 100, abs=1e-9)
        assert q.bid_size > 0 and q.ask_size > 0
    by_id: dict[str, list] = {}
    for e in quotes:
        by_id.setdefault(e.quote.id, []).append(e.quote)
    for qs in by_id.values():
        vols = [q.volume for q in qs]
        assert vols == sorted(vols)
        assert all(q.open_interest <= q.volume for q in qs)
    assert max(q.volume for qs in by_id.values() for q in qs) > 0


def test_quotes_track_fair_value() -> None:
    """Deep in the money near 0.99, far out near 0.01, at the money in between."""
    m = SimMarket(SimConfig(seed=1, strikes=81, strike_spacing=100.0), T0)
    last = {e.quote.id: e.quote for e in kinds(m.advance_to(T0 + 60), QuoteEvent)}
    cs = m.contracts()
    assert last[cs[0].id].bid >= 0.95
    assert last[cs[-1].id].ask <= 0.05
    atm = min(cs, key=lambda c: abs(c.strike - m.spot()))
    assert 0.2 < last[atm.id].bid < 0.8


def test_sigma_and_realised_volatility() -> None:
    cfg = SimConfig(seed=4, strikes=1, vol_of_vol=0.0, jumps_per_day=0.0, annual_vol=0.5)
    m = SimMarket(cfg, T0)
    spots = [e.price for e in kinds(m.advance_to(T0 + 6 * 3600), SpotEvent)]
    rets = [math.log(b / a) for a, b in itertools.pairwise(spots)]
    realised = math.sqrt(sum(r * r for r in rets) / len(rets) * 31_536_000)
    assert m.sigma == pytest.approx(0.5)
    assert realised == pytest.approx(0.5, rel=0.05)


def test_stochastic_volatility_moves_and_jumps_happen() -> None:
    cfg = SimConfig(seed=8, strikes=1, jumps_per_day=200.0, jump_size_percent=1.0)
    m = SimMarket(cfg, T0)
    sigmas = []
    spots = []
    for h in range(1, 7):
        spots += [e.price for e in kinds(m.advance_to(T0 + h * 3600), SpotEvent)]
        sigmas.append(m.sigma)
    assert len({round(s, 6) for s in sigmas}) > 1
    moves = [abs(math.log(b / a)) for a, b in itertools.pairwise(spots)]
    assert max(moves) > 0.003  # a one-second move only a jump makes at ~50 % a year


def test_state_resume_continues_exactly() -> None:
    cfg = SimConfig(seed=12, strikes=5)
    m1 = SimMarket(cfg, T0)
    m1.advance_to(T0 + 1800.4)
    saved = json.loads(json.dumps(m1.state()))
    assert saved["ts"] == math.floor(T0 + 1800.4)
    m2 = SimMarket(cfg, T0 + 1800.4, saved)
    listed = m1.contracts()
    assert m2.spot() == m1.spot() and m2.contracts() == listed
    e1 = m1.advance_to(T0 + 3 * 3600)
    e2 = m2.advance_to(T0 + 3 * 3600)
    # The resumed market first re-announces its ladder, then continues exactly where m1 goes.
    announced = e2[: len(listed)]
    assert [e.contract for e in kinds(announced, ContractEvent)] == listed
    assert all(e.ts == math.floor(T0 + 1800.4) for e in announced)
    assert e2[len(listed) :] == e1
    assert m1.state() == m2.state()


def test_resume_after_a_gap_reports_settlements_and_keeps_the_path() -> None:
    cfg = SimConfig(seed=13, strikes=7)
    ref = SimMarket(cfg, T0)
    m1 = SimMarket(cfg, T0)
    m1.advance_to(T0 + 60)
    saved = json.loads(json.dumps(m1.state()))
    old_ids = {c.id for c in m1.contracts()}
    later = CLOSE1 + 2 * 3600 + 100  # two hours past the first close
    m2 = SimMarket(cfg, later, saved)
    events = m2.advance_to(later + 5)
    ref_events = ref.advance_to(later + 5)
    settles = kinds(events, SettleEvent)
    # Only the ladder the consumer knew settles; ladders born and dead in the gap stay silent.
    assert {s.contract_id for s in settles} == old_ids
    assert settles == [s for s in kinds(ref_events, SettleEvent) if s.contract_id in old_ids]
    assert [e.ts for e in kinds(events, SpotEvent)] == [later + k for k in range(1, 6)]
    assert [e.contract for e in kinds(events, ContractEvent)] == m2.contracts()
    assert kinds(events, ContractEvent)[0].ts == math.floor(later)
    assert m2.spot() == ref.spot()
    assert m2.contracts() == ref.contracts()


def test_demo_trades() -> None:
    cfg = SimConfig(seed=21)
    m = SimMarket(cfg, T0)
    quotes = {e.quote.id: e.quote for e in kinds(m.advance_to(T0 + 30), QuoteEvent)}
    trades = m.demo_trades(T0 + 30, 10)
    twin = SimMarket(cfg, T0)
    twin.advance_to(T0 + 30)
    assert twin.demo_trades(T0 + 30, 10) == trades
    assert m.demo_trades(T0 + 30, 0) == []
    assert [t.trade_id for t in trades] == [f"demo-{i}" for i in range(1, 11)]
    listed = {c.id: c for c in m.contracts()}
    spot = m.spot()
    near = sorted(listed.values(), key=lambda c: abs(c.strike - spot))[:10]
    assert {t.side for t in trades} == {"yes", "no"}
    for t in trades:
        assert t.contract_id in {c.id for c in near}
        assert 5 <= t.qty <= 50 and t.qty.is_integer()
        assert t.strategy in {"scalp", "swing", "momentum", "fade"}
        assert t.ts == T0 + 30
        q = quotes[t.contract_id]
        # near the money (YES mid 0.2..0.8), entered around the held side's mid
        yes_mid = (q.bid + q.ask) / 2
        assert 0.2 <= yes_mid <= 0.8
        held_mid = yes_mid if t.side == "yes" else 1.0 - yes_mid
        assert abs(t.price - held_mid) <= 0.0150001
        assert 0.01 <= t.price <= 0.99
    other = SimMarket(SimConfig(seed=22), T0)
    other.advance_to(T0 + 30)
    assert other.demo_trades(T0 + 30, 10) != trades


def test_many_strikes_one_second_is_cheap() -> None:
    m = SimMarket(SimConfig(strikes=1000), T0)
    m.advance_to(T0)
    events = m.advance_to(T0 + 1)
    assert len(kinds(events, QuoteEvent)) == 1000
    assert all(c.strike > 0 for c in m.contracts())
