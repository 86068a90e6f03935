"""Marks, P&L and moneyness of a position: the numbers every rule and pane reads.

A binary NO position is treated as a long position in the NO instrument, whose prices are derived
from the YES quote: NO bid = 1 − YES ask, NO ask = 1 − YES bid. Only `short` positions (options,
stocks) are short their instrument.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

from engine.models import Contract, Quote, Trade, TradeState, quote_problem

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

    YES "above K" and long calls/stock gain on a rise; YES "below K", NO "above K", long puts and
    shorts of calls/stock gain on a fall (NO "below K" and short puts on a rise). A range binary
    has no single direction (0).
    """
    if contract.type in ("binary_range", "combo"):
        return 0  # (a combo's direction comes from its delta, where the venue gives one)
    base = -1 if contract.type in ("option_put", "binary_below") else 1
    if trade.side in ("no", "short"):
        base = -base
    return base


def in_the_money(trade: Trade, contract: Contract, spot: float) -> bool | None:
    """Whether the position would pay out at spot `spot` now; None when it does not apply.

    Binaries: YES "above K" pays when spot > K, YES "below K" when spot < K, YES range when
    K <= spot < cap; NO pays exactly when YES does not (so a spot at K is out of the money for
    both YES above and YES below).
    """
    k = contract.strike
    if k is None:
        return None
    if contract.type == "binary_above":
        above = spot > k
        return above if trade.side == "yes" else not above
    if contract.type == "binary_below":
        below = spot < k
        return below if trade.side == "yes" else not below
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


def combo_quote(contract: Contract, quotes: Mapping[str, Quote]) -> Quote | None:
    """A combo's quote from its legs' (docs/ibkr.md): None until every leg has one.

    bid = Σ ratio × (ratio > 0: leg bid, else leg ask) — what selling the combo brings — and ask
    the other way round; a bid below 0 (wide legs on a nearly worthless spread) is 0. The time
    is the oldest leg's, so the data guard sees the combo as old as its stalest leg. A leg with
    an invalid quote makes the combo's one-sided (None sides), which the data guard refuses.
    Delta is Σ ratio × delta when every leg has one; `und_price` the first leg's.
    """
    bid = ask = 0.0
    ts = math.inf
    delta: float | None = 0.0
    und: float | None = None
    for leg in contract.legs:
        q = quotes.get(leg.contract_id)
        if q is None:
            return None
        ts = min(ts, q.ts)
        if quote_problem(q, False) is not None:
            bid = ask = math.nan
            continue
        assert q.bid is not None and q.ask is not None
        r = leg.ratio
        bid += r * (q.bid if r > 0 else q.ask)
        ask += r * (q.ask if r > 0 else q.bid)
        delta = None if delta is None or q.delta is None else delta + r * q.delta
        if und is None:
            und = q.und_price
    if not contract.legs or not math.isfinite(ts):
        return None
    if not (math.isfinite(bid) and math.isfinite(ask)):
        return Quote(contract.id, None, None, ts)
    return Quote(contract.id, max(bid, 0.0), max(ask, 0.0), ts, delta=delta, und_price=und)


def time_value(
    contract: Contract,
    quote: Quote,
    spot: float | None,
    contracts: Mapping[str, Contract],
    quotes: Mapping[str, Quote],
) -> float | None:
    """Price beyond intrinsic value, per unit (mid − intrinsic): an option's at its quote's
    `und_price` (the venue model's underlying price), else at `spot`; a combo's is Σ ratio × its
    legs' time values. None for other instruments or when a number is missing."""
    if contract.type in ("option_call", "option_put"):
        if quote.bid is None or quote.ask is None:
            return None
        und = quote.und_price if quote.und_price and quote.und_price > 0 else spot
        intrinsic = intrinsic_value(contract, und) if und is not None else None
        return None if intrinsic is None else (quote.bid + quote.ask) / 2.0 - intrinsic
    if contract.type == "combo":
        total = 0.0
        for leg in contract.legs:
            c, q = contracts.get(leg.contract_id), quotes.get(leg.contract_id)
            tv = time_value(c, q, spot, contracts, quotes) if c and q and not c.legs else None
            if tv is None:
                return None
            total += leg.ratio * tv
        return total
    return None


def position_pnl(trade: Trade, mark: float, multiplier: float = 1.0) -> float:
    """Whole-trade P&L in dollars: realised on closed parts (net of all fees) + unrealised on the rest.

    `trade.realized_pnl` is None until a part is closed; until then the fees paid count against it.
    """
    sign = -1.0 if trade.side == "short" else 1.0
    base = trade.realized_pnl if trade.realized_pnl is not None else -trade.fees
    return base + sign * abs(trade.qty) * (mark - trade.entry_price) * multiplier


def exit_value(trade: Trade, mark: float, multiplier: float = 1.0) -> float:
    """What closing the open quantity at `mark` brings before fees (negative: a short pays)."""
    sign = -1.0 if trade.side == "short" else 1.0
    return sign * abs(trade.qty) * mark * multiplier


def original_cost_basis(trade: Trade, multiplier: float = 1.0) -> float:
    """Cost basis of the whole position as opened (open and closed parts), dollars."""
    return (abs(trade.qty) + trade.closed_qty) * trade.entry_price * multiplier


def apply_fill(
    trade: Trade, qty: float, price: float, fees: float, multiplier: float = 1.0
) -> None:
    """Book an exit fill of `qty` at `price` (dollars) into the trade, in place.

    Moves quantity from open to closed, adds the fill's gross P&L and subtracts its fees in
    `realized_pnl` (net of every fee paid), and keeps `exit_price` as the average fill price.
    """
    qty = min(qty, abs(trade.qty))
    sign = -1.0 if trade.side == "short" else 1.0
    base = trade.realized_pnl if trade.realized_pnl is not None else -trade.fees
    trade.realized_pnl = base + sign * qty * (price - trade.entry_price) * multiplier - fees
    trade.fees += fees
    closed = trade.closed_qty
    trade.exit_price = (
        price
        if trade.exit_price is None or closed <= 0
        else (trade.exit_price * closed + price * qty) / (closed + qty)
    )
    trade.closed_qty = closed + qty
    trade.qty = max(abs(trade.qty) - qty, 0.0)


def close_record(
    trade: Trade, price: float | None, reason: str, now: float, multiplier: float = 1.0
) -> None:
    """Mark a trade closed without an order (settled, closed elsewhere, external), in place.

    With a price the rest of the position is booked as filled there; without one the realised
    P&L of the unfilled rest stays unknown. `qty` ends as the size the trade was opened with.
    """
    if price is not None and trade.qty > 0:
        apply_fill(trade, trade.qty, price, 0.0, multiplier)
    trade.closed_qty = trade.closed_qty + trade.qty if price is None else trade.closed_qty
    trade.qty = trade.closed_qty
    trade.state = TradeState.CLOSED
    trade.closed_ts = now
    trade.exit_reason = reason
