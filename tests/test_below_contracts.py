"""Binary "below K" contracts (ContractType "binary_below", Kalshi strike_type "less"): YES pays
when the underlying settles under the strike. Moneyness, direction, probability, the strike
table, the time-decay exit and the contract's title."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine import pricing, signals
from engine.models import Contract, ContractEvent, Trade
from engine.replay_format import parse_line
from tests.engine_harness import T0, Harness, config
from tui.format import Palette
from tui.rows import strike_row

K = 97_000.0
BELOW = Contract("KXBTC-T97000", "BTC-USD", "binary_below", K, T0 + 3600.0, event_id="KXBTC")
ABOVE = Contract("KXBTC-T97000A", "BTC-USD", "binary_above", K, T0 + 3600.0, event_id="KXBTC")
ONE_HOUR = 1 / 24 / 365


def _trade(side: str, contract: Contract = BELOW) -> Trade:
    return Trade("t1", contract.id, side, 10, 0.50, T0)  # type: ignore[arg-type]


# --- moneyness and direction ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("side", "spot", "itm"),
    [
        ("yes", 96_900.0, True),
        ("yes", 97_100.0, False),
        ("yes", K, False),  # at the strike: not below
        ("no", 96_900.0, False),
        ("no", 97_100.0, True),
        ("no", K, True),
    ],
)
def test_a_below_contract_pays_yes_under_the_strike(side: str, spot: float, itm: bool) -> None:
    assert pricing.in_the_money(_trade(side), BELOW, spot) is itm


def test_a_yes_below_gains_as_the_price_falls() -> None:
    assert pricing.underlying_direction(_trade("yes"), BELOW) == -1
    assert pricing.underlying_direction(_trade("no"), BELOW) == 1
    assert pricing.underlying_direction(_trade("yes", ABOVE), ABOVE) == 1  # unchanged
    assert pricing.intrinsic_value(BELOW, 96_000.0) is None  # not an option


# --- probability and strike metrics ---------------------------------------------------------------


@pytest.mark.parametrize("spot", [95_000.0, 96_990.0, 97_000.0, 97_500.0])
def test_below_and_above_probabilities_add_up_to_one(spot: float) -> None:
    below = signals.prob_below(spot, K, 0.5, ONE_HOUR)
    assert below + signals.prob_above(spot, K, 0.5, ONE_HOUR) == pytest.approx(1.0)
    assert 0.0 < below < 1.0


def test_below_probability_falls_as_the_spot_rises() -> None:
    probs = [signals.prob_below(s, K, 0.5, ONE_HOUR) for s in (96_000.0, 97_000.0, 98_000.0)]
    assert probs[0] > 0.9 and probs[2] < 0.1 and probs == sorted(probs, reverse=True)


@pytest.mark.parametrize(("spot", "p"), [(96_999.0, 1.0), (K, 0.0), (97_001.0, 0.0)])
def test_below_probability_at_the_close_is_the_outcome(spot: float, p: float) -> None:
    assert signals.prob_below(spot, K, 0.5, 0.0) == p


def test_strike_metrics_of_a_below_contract() -> None:
    spot = 96_700.0
    m = signals.strike_metrics(spot, K, None, 0.5, ONE_HOUR, 0.70, 0.74, below=True)
    above = signals.strike_metrics(spot, K, None, 0.5, ONE_HOUR, 0.26, 0.30)
    assert m.buffer == pytest.approx(300.0)  # K − S: positive, YES is in the money
    assert m.buffer_pct == pytest.approx(300.0 / spot * 100)
    assert m.prob == pytest.approx(1.0 - above.prob) and m.prob > 0.5
    assert m.expected_move == above.expected_move and m.bm == above.bm
    assert m.diff_yes == pytest.approx(m.prob - 0.74)
    assert m.diff_no == pytest.approx((1 - m.prob) - (1 - 0.70))


# --- the engine: strike table, time decay, title --------------------------------------------------


async def _engine_with_below(tmp: Path, spot: float) -> Harness:
    """An engine with an above and a below contract at K in one event, quoted, spot `spot`."""
    cfg = config(auto_stop={"criteria": {"ttc_cutoff_seconds": 120, "max_loss_percent": None}})
    h = await Harness(tmp, cfg).open()
    for c in (ABOVE, BELOW):
        await h.engine.handle(ContractEvent(h.clock.now(), c))
    await h.spot(spot)
    await h.quote(0.40, 0.42, cid=ABOVE.id)
    await h.quote(0.56, 0.58, cid=BELOW.id)
    await h.start()
    return h


async def test_the_strike_table_shows_a_below_contract(tmp_path: Path) -> None:
    h = await _engine_with_below(tmp_path, 96_900.0)
    try:
        rows = {r.contract_id: r for r in h.engine.snapshot().strikes}
        below, above = rows[BELOW.id], rows[ABOVE.id]
        assert below.below and not above.below
        assert below.prob == pytest.approx(1.0 - above.prob) and below.prob > 0.5
        assert (below.buffer, above.buffer) == (pytest.approx(100.0), pytest.approx(-100.0))
        assert below.diff_yes == pytest.approx(below.prob - 0.58)
        cells = strike_row(below, Palette())
        assert cells.cells[1][0] == "<97,000"
        assert strike_row(above, Palette()).cells[1][0] == "97,000"
    finally:
        await h.close()


@pytest.mark.parametrize(("spot", "exits"), [(97_100.0, True), (96_900.0, False)])
async def test_time_decay_closes_a_yes_below_only_when_out_of_the_money(
    tmp_path: Path, spot: float, exits: bool
) -> None:
    h = await _engine_with_below(tmp_path, spot)
    try:
        await h.open_trade("t1", "yes", cid=BELOW.id)
        h.at(3600.0 - 100.0)  # 100 s to the close: inside the 120 s cut-off
        await h.spot(spot)
        await h.quote(0.56, 0.58, cid=BELOW.id)
        await h.tick()
        assert [e["rule"] for e in h.exits] == (["ttc_cutoff"] if exits else [])
    finally:
        await h.close()


async def test_a_below_trade_is_titled_below_the_strike(tmp_path: Path) -> None:
    h = await _engine_with_below(tmp_path, 96_900.0)
    try:
        await h.open_trade("t1", "yes", cid=BELOW.id)
        detail = await h.engine.trade_detail("t1")
        assert detail is not None
        assert detail.contract == "BTC-USD below $97,000 at 17:00 UTC"
    finally:
        await h.close()


def test_replay_files_accept_below_contracts() -> None:
    line = (
        '{"ts": 1764000000, "kind": "contract", "id": "X", "underlying": "BTC-USD", '
        '"type": "binary_below", "strike": 97000, "close_ts": 1764003600}'
    )
    ev = parse_line(line)
    assert isinstance(ev, ContractEvent) and ev.contract.type == "binary_below"
