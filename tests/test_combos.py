"""Multi-leg trades (a vertical, an iron condor) as one combo contract: its quote follows its
legs', rules see the combined P&L and time value, and the exit closes the combo."""

from __future__ import annotations

import pytest

from engine.models import Contract, ContractEvent, Leg, Quote, QuoteEvent, SpotEvent, TradeState
from engine.pricing import combo_quote, time_value
from tests.engine_harness import T0, Harness, config

CLOSE = T0 + 5 * 86400.0
C150 = "SPY 20261218 150C"
C155 = "SPY 20261218 155C"
VERTICAL = Contract(
    "SPY v-1", "SPY", "combo", None, CLOSE, multiplier=100.0, legs=(Leg(C150, 1), Leg(C155, -1))
)
OPTIONS = {
    C150: Contract(C150, "SPY", "option_call", 150.0, CLOSE, multiplier=100.0),
    C155: Contract(C155, "SPY", "option_call", 155.0, CLOSE, multiplier=100.0),
}


def q(cid: str, bid: float | None, ask: float | None, ts: float = T0, **kw) -> Quote:
    return Quote(cid, bid, ask, ts, **kw)


def test_a_combo_sells_its_long_legs_at_the_bid_and_buys_back_its_short_legs_at_the_ask():
    quotes = {
        C150: q(C150, 4.00, 4.20, T0 + 2, delta=0.55, und_price=151.0),
        C155: q(C155, 1.50, 1.60, T0 + 1, delta=0.30, und_price=151.0),
    }
    cq = combo_quote(VERTICAL, quotes)
    assert cq is not None
    assert (cq.bid, cq.ask) == (pytest.approx(2.40), pytest.approx(2.70))  # 4.00-1.60, 4.20-1.50
    assert cq.ts == T0 + 1  # as old as its stalest leg
    assert cq.delta == pytest.approx(0.25) and cq.und_price == 151.0


def test_a_combo_quote_waits_for_every_leg_and_refuses_a_bad_one():
    assert combo_quote(VERTICAL, {C150: q(C150, 4.0, 4.2)}) is None
    bad = combo_quote(VERTICAL, {C150: q(C150, 4.0, 4.2), C155: q(C155, 1.7, 1.6)})  # crossed
    assert bad is not None and (bad.bid, bad.ask) == (None, None)
    # Wide legs on a nearly worthless spread: a bid below zero is zero.
    cheap = combo_quote(VERTICAL, {C150: q(C150, 0.05, 0.10), C155: q(C155, 0.01, 0.08)})
    assert cheap is not None and cheap.bid == 0.0 and cheap.ask == pytest.approx(0.09)


def test_time_value_of_options_at_the_models_underlying_price_and_of_a_combo():
    quotes = {
        C150: q(C150, 4.00, 4.20, und_price=151.0),  # intrinsic 1.00: time value 3.10
        C155: q(C155, 1.50, 1.60),  # no und_price: at spot 151 -> intrinsic 0: 1.55
    }
    assert time_value(OPTIONS[C150], quotes[C150], None, OPTIONS, quotes) == pytest.approx(3.10)
    assert time_value(OPTIONS[C155], quotes[C155], 151.0, OPTIONS, quotes) == pytest.approx(1.55)
    cq = combo_quote(VERTICAL, quotes)
    assert cq is not None
    assert time_value(VERTICAL, cq, 151.0, OPTIONS, quotes) == pytest.approx(3.10 - 1.55)
    assert time_value(VERTICAL, cq, None, OPTIONS, quotes) is None  # a leg's price is unknown


async def _vertical(tmp_path, **criteria) -> Harness:
    h = Harness(tmp_path, config(auto_stop={"criteria": criteria}))
    await h.open()
    for c in (*OPTIONS.values(), VERTICAL):
        await h.engine.handle(ContractEvent(T0, c))
    await h.spot(151.0)
    await h.leg_quotes(4.00, 4.20, 1.50, 1.60)
    await h.start()
    await h.open_trade("v1", side="long", qty=2, price=2.50, cid=VERTICAL.id)
    return h


async def _leg_quotes(h: Harness, b1: float, a1: float, b2: float, a2: float) -> None:
    # The short leg first: in between, the combo is only ever worth more than before or after.
    ts = h.clock.now()
    await h.engine.handle(QuoteEvent(ts, q(C155, b2, a2, ts, und_price=151.0)))
    await h.engine.handle(QuoteEvent(ts, q(C150, b1, a1, ts, und_price=151.0)))


Harness.leg_quotes = _leg_quotes  # type: ignore[attr-defined]


async def test_the_combined_pnl_fires_and_the_combo_is_closed_as_one(tmp_path):
    h = await _vertical(tmp_path, max_loss_percent=40)
    row = h.engine.status["v1"]
    assert row.mark == pytest.approx(2.40)  # the combo's bid
    assert row.pnl == pytest.approx(2 * (2.40 - 2.50) * 100)
    assert h.venue.submitted == []
    await h.leg_quotes(2.00, 2.10, 0.60, 0.70)  # combo bid 1.30: -48 %
    [req] = h.venue.submitted
    assert (req.contract_id, req.action, req.qty) == (VERTICAL.id, "sell", 2)
    assert req.limit_price == pytest.approx(1.30)  # the ladder starts at the combo's bid
    t = await h.store.get_trade("v1")
    assert t is not None and t.state == TradeState.CLOSED and t.exit_reason == "max_loss"
    await h.close()


async def test_the_time_value_rule_sees_the_combos_time_value(tmp_path):
    h = await _vertical(tmp_path, min_time_value=1.00)
    assert h.venue.submitted == []  # time value 3.10 - 1.55 = 1.55
    await h.leg_quotes(1.80, 1.90, 0.70, 0.80)  # 0.85 - 0.75 = 0.10 <= 1.00
    [req] = h.venue.submitted
    assert req.contract_id == VERTICAL.id
    [fired] = [e for e in h.exits if e["trade_id"] == "v1"]
    assert fired["rule"] == "min_time_value"
    await h.close()


async def test_a_stale_leg_makes_the_combo_stale(tmp_path):
    h = await _vertical(tmp_path, max_loss_percent=40)
    ts = h.clock.now()
    h.at(30)  # quotes are 30 s old; only one leg is refreshed
    await h.engine.handle(QuoteEvent(T0 + 30, q(C150, 2.00, 2.10, T0 + 30)))
    assert h.engine.quotes[VERTICAL.id].ts == ts  # as old as the leg that was not refreshed
    assert h.venue.submitted == []  # never act on the stale combo
    assert any("quote" in a.message for a in h.of_kind("data_quality"))
    await h.close()


async def test_legs_quoted_together_are_applied_together(tmp_path):
    """One batch of ticks moves both legs: the long leg down, the short leg further down. Each
    on its own (long leg first) would price the spread at 0.40 for an instant (-84 %) and fire
    max_loss; applied together the spread is at 1.95 (-22 %) and nothing fires."""
    h = await _vertical(tmp_path, max_loss_percent=40)
    ts = h.clock.now()
    await h.engine.handle_quotes(
        [q(C150, 2.00, 2.10, ts, und_price=151.0), q(C155, 0.01, 0.05, ts, und_price=151.0)]
    )
    assert h.engine.quotes[VERTICAL.id].bid == pytest.approx(1.95)
    assert h.venue.submitted == [] and h.exits == []
    # The same ticks one by one, long leg first: the instant in between fires.
    await h.engine.handle(QuoteEvent(ts, q(C150, 4.00, 4.20, ts)))
    await h.engine.handle(QuoteEvent(ts, q(C155, 1.50, 1.60, ts)))
    await h.engine.handle(QuoteEvent(ts, q(C150, 2.00, 2.10, ts)))
    assert [e["rule"] for e in h.exits] == ["max_loss"]
    await h.close()


async def test_options_record_their_value_at_expiry_for_the_metrics(tmp_path):
    """The spread is closed by a rule; at its expiry the engine records what it was worth then
    (intrinsic at the underlying's price at the close), as binaries record their settlement, so
    `metrics` can say what holding would have made."""
    h = await _vertical(tmp_path, max_loss_percent=40)
    await h.leg_quotes(2.00, 2.10, 0.60, 0.70)  # max_loss closes it
    assert (await h.store.get_trade("v1")).state == TradeState.CLOSED
    h.at(CLOSE - T0 - 60)
    await h.engine.handle(SpotEvent(h.clock.now(), "SPY", 157.0))  # SPY's last price
    await h.tick()
    assert await h.store.settlements() == {}  # not expired yet
    h.at(CLOSE - T0 + 1)
    await h.tick()
    # 150C worth 7, 155C worth 2: the spread (+1, -1) worth 5 per unit
    assert await h.store.settlements() == {VERTICAL.id: (pytest.approx(5.0), CLOSE)}
    await h.close()
