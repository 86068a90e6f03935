"""engine/venues/ibkr/ids.py: readable engine ids of IB contracts, distinct for every contract IB
tells apart (SPX and SPXW, adjusted options), and parsed back into the same IB fields."""

from __future__ import annotations

import pytest

from engine.venues.ibkr.ib import Option
from engine.venues.ibkr.ids import contract_from_ib, default_close_of, engine_id, parse_id


def _option(symbol: str, trading_class: str, multiplier: str = "100", con_id: int = 1) -> Option:
    return Option(
        symbol,
        "20260116",
        5000.0,
        "C",
        "SMART",
        multiplier=multiplier,
        currency="USD",
        tradingClass=trading_class,
        conId=con_id,
    )


def test_spx_and_spxw_of_one_expiry_strike_and_right_have_distinct_ids() -> None:
    spx = engine_id(_option("SPX", "SPX", con_id=1))
    spxw = engine_id(_option("SPX", "SPXW", con_id=2))
    assert spx == "SPX 20260116 5000C"  # the standard class: the id as before
    assert spxw == "SPX 20260116 5000C SPXW"
    assert spx != spxw


@pytest.mark.parametrize(
    ("symbol", "trading_class", "multiplier", "expected"),
    [
        ("AAPL", "AAPL", "100", "AAPL 20260116 5000C"),
        ("AAPL", "AAPL1", "100", "AAPL 20260116 5000C AAPL1"),  # adjusted (a corporate action)
        ("XSP", "XSP", "10", "XSP 20260116 5000C x10"),
        ("AAPL", "AAPL2", "150", "AAPL 20260116 5000C AAPL2 x150"),
        ("BRK B", "BRKB", "100", "BRK B 20260116 5000C BRKB"),
    ],
)
def test_ids_parse_back_into_the_same_contract(
    symbol: str, trading_class: str, multiplier: str, expected: str
) -> None:
    cid = engine_id(_option(symbol, trading_class, multiplier))
    assert cid == expected
    p = parse_id(cid)
    assert p is not None and p.sec_type == "OPT"
    assert (p.symbol, p.expiry, p.strike, p.right) == (symbol, "20260116", 5000.0, "C")
    assert p.trading_class == (trading_class if trading_class != symbol else "")
    assert p.multiplier == (float(multiplier) if multiplier != "100" else 0.0)


def test_the_engine_contract_keeps_the_multiplier_and_the_underlying() -> None:
    c = contract_from_ib(_option("XSP", "XSP", "10"), default_close_of)
    assert c is not None
    assert (c.id, c.underlying, c.multiplier, c.strike) == (
        "XSP 20260116 5000C x10",
        "XSP",
        10,
        5000,
    )
