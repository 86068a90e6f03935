"""Engine contract ids for IB instruments, and engine `Contract`s made from IB contracts.

Ids are readable, stable across restarts and parse back into an IB contract (docs/ibkr.md):

- stock `AAPL` (USD) or `SHOP.CAD`;
- option `AAPL 20260116 150C` (symbol, expiry YYYYMMDD, strike `%g`, right), followed by its
  trading class when that is not the symbol (`SPX 20260116 5000C SPXW`, an adjusted
  `AAPL 20260116 150C AAPL1`) and by its multiplier when that is not 100
  (`XSP 20260116 500C x10`): two contracts IB tells apart never share an id;
- combo `AAPL ic-1` (symbol and group name; its legs are on the engine `Contract`).

The expiry's closing time comes from `close_of(expiry)`; the default is 16:00 New York time on
that day (`engine.market_hours` knows holidays and early closes and is what the runtime passes).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from engine.models import Contract, Leg

__all__ = [
    "ParsedId",
    "contract_from_ib",
    "default_close_of",
    "engine_id",
    "option_id",
    "parse_id",
    "stock_id",
]

NEW_YORK = ZoneInfo("America/New_York")
_OPTION = re.compile(
    r"^(?P<sym>[A-Z0-9.\-/ ]+?) (?P<exp>\d{8}) (?P<strike>\d+(?:\.\d+)?)(?P<right>[CP])"
    r"(?: (?P<tc>[A-Z0-9][A-Z0-9.\-/]*))?(?: x(?P<mult>\d+(?:\.\d+)?))?$"
)
STANDARD_MULTIPLIER = 100.0
_STOCK = re.compile(r"^(?P<sym>[A-Z0-9.\-/]+?)(?:\.(?P<ccy>[A-Z]{3}))?$")


def default_close_of(expiry: str) -> float:
    """16:00 New York time on `expiry` (YYYYMMDD) as a UTC timestamp (no holiday calendar)."""
    d = datetime.strptime(expiry[:8], "%Y%m%d")
    return d.replace(hour=16, tzinfo=NEW_YORK).timestamp()


def stock_id(symbol: str, currency: str = "USD") -> str:
    return symbol if currency in ("", "USD") else f"{symbol}.{currency}"


def option_id(
    symbol: str,
    expiry: str,
    strike: float,
    right: str,
    trading_class: str = "",
    multiplier: float | str | None = None,
) -> str:
    """`AAPL 20260116 150C`; the trading class follows when it is not the symbol (SPXW,
    an adjusted AAPL1), the multiplier (`x10`) when it is not 100."""
    r = right[:1].upper()
    if r not in ("C", "P"):
        raise ValueError(f"option right {right!r} is not C or P")
    out = f"{symbol} {expiry[:8]} {float(strike):g}{r}"
    tc = (trading_class or "").strip()
    if tc and tc != symbol:
        out += f" {tc}"
    mult = _multiplier(multiplier)
    if mult is not None and mult != STANDARD_MULTIPLIER:
        out += f" x{mult:g}"
    return out


def _multiplier(value: float | str | None) -> float | None:
    try:
        mult = float(value) if value not in (None, "") else None  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return mult if mult is not None and math.isfinite(mult) and mult > 0 else None


@dataclass(frozen=True, slots=True)
class ParsedId:
    """What an engine id says about the IB contract it names."""

    sec_type: str  # "STK" or "OPT"
    symbol: str
    currency: str = "USD"
    expiry: str = ""
    strike: float = 0.0
    right: str = ""
    trading_class: str = ""  # "" : the symbol's own class
    multiplier: float = 0.0  # 0: the standard one (100 for options)


def parse_id(contract_id: str) -> ParsedId | None:
    """The IB fields of a stock or option id; None for anything else (a combo, a binary)."""
    m = _OPTION.match(contract_id)
    if m:
        return ParsedId(
            "OPT",
            m["sym"],
            "USD",
            m["exp"],
            float(m["strike"]),
            m["right"],
            m["tc"] or "",
            float(m["mult"]) if m["mult"] else 0.0,
        )
    m = _STOCK.match(contract_id)
    if m:
        return ParsedId("STK", m["sym"], m["ccy"] or "USD")
    return None


def engine_id(ib_contract: object) -> str | None:
    """The engine id of an IB contract (`ib_async.Contract` or anything with its fields)."""
    sec = getattr(ib_contract, "secType", "")
    symbol = getattr(ib_contract, "symbol", "")
    if not symbol:
        return None
    if sec == "STK":
        return stock_id(symbol, getattr(ib_contract, "currency", "USD") or "USD")
    if sec in ("OPT", "FOP"):
        expiry = getattr(ib_contract, "lastTradeDateOrContractMonth", "")
        right = getattr(ib_contract, "right", "")
        strike = getattr(ib_contract, "strike", 0.0)
        if not expiry or not right:
            return None
        return option_id(
            symbol,
            expiry,
            strike,
            right,
            getattr(ib_contract, "tradingClass", "") or "",
            getattr(ib_contract, "multiplier", "") or None,
        )
    return None


def contract_from_ib(
    ib_contract: object, close_of: Callable[[str], float] = default_close_of
) -> Contract | None:
    """The engine `Contract` of a stock or option; None for other security types."""
    cid = engine_id(ib_contract)
    if cid is None:
        return None
    sec = getattr(ib_contract, "secType", "")
    symbol = getattr(ib_contract, "symbol", "")
    if sec == "STK":
        return Contract(cid, symbol, "stock", None, math.inf, multiplier=1.0)
    right = str(getattr(ib_contract, "right", "")).upper()[:1]
    try:
        mult = float(getattr(ib_contract, "multiplier", "") or 100)
    except ValueError:
        mult = 100.0
    expiry = str(getattr(ib_contract, "lastTradeDateOrContractMonth", ""))
    return Contract(
        cid,
        symbol,
        "option_call" if right == "C" else "option_put",
        float(getattr(ib_contract, "strike", 0.0)),
        close_of(expiry),
        multiplier=mult,
        event_id=f"{symbol} {expiry[:8]}",
    )


def combo_contract(
    symbol: str, group: str, legs: tuple[Leg, ...], close_ts: float, multiplier: float
) -> Contract:
    """A multi-leg trade's contract: `legs` as the combo is defined (see docs/ibkr.md)."""
    return Contract(
        f"{symbol} {group}", symbol, "combo", None, close_ts, multiplier=multiplier, legs=legs
    )
