"""Marks, P&L and moneyness of a position: the numbers every rule and pane reads.

A binary NO position is treated as a long position in the NO instrument, whose prices are derived
from the YES quote: NO bid = 1 − YES ask, NO ask = 1 − YES bid. Only `short` positions (options,
stocks) are short their instrument.
"""

from __future__ import annotations

from typing import Literal

from engine.models import Contract, Quote, Trade

MarkMethod = Literal["bid", "mid", "last"]


def held_bid_ask(trade: Trade, quote: Quote) -> tuple[float, float]:
    """Bid and ask (dollars) of the instrument the trade holds."""
    assert quote.bid is not None and quote.ask is not None
    if trade.side == "no":
        return 1.0 - quote.ask, 1.0 - quote.bid
    return quote.bid, quote.ask


def mark_price(trade: Trade, quote: Quote, method: MarkMethod = "bid") -> float:
    """The price the position could be closed at (dollars per contract).

    `bid` (default): the held instrument's bid for a long/yes/no position, its ask for a short one.
    `mid`: the mid of the held instrument. `last`: the last trade (YES terms converted for NO),
    falling back to the bid/ask rule when the venue reports none.
    """
    bid, ask = held_bid_ask(trade, quote)
    if method == "mid":
        return (bid + ask) / 2.0
    if method == "last" and quote.last is not None:
        return 1.0 - quote.last if trade.side == "no" else quote.last
    return ask if trade.side == "short" else bid


def pnl_dollars(trade: Trade, mark: float, multiplier: float = 1.0) -> float:
    """P&L in dollars = quantity × (mark − entry) × multiplier − fees (sign flipped for shorts)."""
    sign = -1.0 if trade.side == "short" else 1.0
    return sign * abs(trade.qty) * (mark - trade.entry_price) * multiplier - trade.fees


def pnl_percent(trade: Trade, pnl: float, multiplier: float = 1.0) -> float:
    """P&L as a percentage of the cost basis (|qty| × entry × multiplier); 0 when the basis is 0."""
    basis = abs(trade.qty) * trade.entry_price * multiplier
    return 100.0 * pnl / basis if basis > 0 else 0.0


def underlying_direction(trade: Trade, contract: Contract) -> int:
    """+1 when the position gains as the underlying rises, −1 when it gains as it falls, 0 unknown.

    YES "above K" and long calls/stock gain on a rise; NO, long puts and shorts of the former gain
    on a fall. A range binary has no single direction (0).
    """
    if contract.type == "binary_range":
        return 0
    base = -1 if contract.type == "option_put" else 1
    if trade.side in ("no", "short"):
        base = -base
    return base


def in_the_money(trade: Trade, contract: Contract, spot: float) -> bool | None:
    """Whether the position would pay out at spot `spot` now; None when it does not apply."""
    k = contract.strike
    if k is None:
        return None
    if contract.type == "binary_above":
        above = spot > k
        return above if trade.side == "yes" else not above
    if contract.type == "binary_range":
        cap = contract.cap if contract.cap is not None else float("inf")
        inside = k <= spot < cap
        return inside if trade.side == "yes" else not inside
    if contract.type == "option_call":
        itm = spot > k
    elif contract.type == "option_put":
        itm = spot < k
    else:
        return None
    return itm if trade.side == "long" else not itm


def intrinsic_value(contract: Contract, spot: float) -> float | None:
    """Intrinsic value of an option per unit of underlying (dollars); None for non-options."""
    if contract.strike is None:
        return None
    if contract.type == "option_call":
        return max(spot - contract.strike, 0.0)
    if contract.type == "option_put":
        return max(contract.strike - spot, 0.0)
    return None
