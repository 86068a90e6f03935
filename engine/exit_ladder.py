"""The limit-price ladder of an exit: which price each closing attempt asks for.

A closing order is immediate-or-cancel, so its limit is the worst price the engine accepts for
that attempt. The first attempt asks for the held side's bid (what a close "should" get); each
later attempt steps `ladder_tick` dollars further, every `ladder_step_seconds`, so a thin book is
walked down rather than crossed at any price:

    sell (long, yes, no):  limit_n = max(bid_now − (n − 1)·tick, floor)
    buy  (short):          limit_n = ask_now + (n − 1)·tick

`bid_now` / `ask_now` are read at each attempt, not at the first: when the market moves away, the
ladder follows it (a trader closing by hand re-reads the book too). `ladder_floor` is the lowest
price a sell is ever sent at; a bid below it leaves the order at the floor, where it fills only if
the book comes back (the engine's alerts say MID_TOO_LOW when the held side's mid is under the
floor), and after `ladder_max_attempts` the engine gives up with a critical `execution_failure`
alert (LIMIT_REACHED). A buy to close a short has no ceiling besides the attempt count.

What happens then is `[auto_stop.ladder] on_exhausted`: "retry" starts a new ladder after
`retry_after_seconds` if the rule still fires; "cross" first sends one last order at the most
aggressive price the venue accepts (`cross_limit`, freqtrade's emergency exit), with a critical
alert naming the price. The floor applies to the ladder's ordinary steps, not to that order:

    binary (Kalshi, the sim):  sell at 0.01, buy at 0.99 (the worst tick a binary trades at)
    other (IB options, combos): sell at the floor (IB's min_price: a marketable limit that fills
                                at the best bid), buy at ask + 2 x max(ask - bid, tick)
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.models import Quote, Trade
from engine.pricing import held_bid_ask

__all__ = ["BINARY_MAX_PRICE", "BINARY_MIN_PRICE", "LadderStep", "cross_limit", "exit_limit"]

BINARY_MIN_PRICE = 0.01  # the lowest (and highest, 0.99) price a binary contract trades at
BINARY_MAX_PRICE = 0.99

_DIGITS = 6  # prices on every venue we speak have at most six decimals


@dataclass(frozen=True, slots=True)
class LadderStep:
    """The limit of one attempt, and what it was derived from (for alerts and the audit)."""

    limit: float
    start: float  # the held side's bid (sell) or ask (buy) when the attempt was priced
    at_floor: bool  # the step would have gone below the floor (or the bid already is below it)


def exit_limit(trade: Trade, quote: Quote, attempt: int, tick: float, floor: float) -> LadderStep:
    """The limit of closing attempt `attempt` (1 = first) for `trade` on `quote`."""
    bid, ask = held_bid_ask(trade, quote)
    steps = max(attempt - 1, 0) * tick
    if trade.side == "short":
        return LadderStep(round(ask + steps, _DIGITS), ask, False)
    want = round(bid - steps, _DIGITS)
    if want < floor:
        return LadderStep(round(floor, _DIGITS), bid, True)
    return LadderStep(want, bid, False)


def cross_limit(trade: Trade, quote: Quote, binary: bool, tick: float, floor: float) -> float:
    """The limit of the one crossing order after an exhausted ladder ("cross"): the most
    aggressive price the venue accepts, so that it fills at whatever the book offers."""
    if binary:
        return BINARY_MAX_PRICE if trade.side == "short" else BINARY_MIN_PRICE
    bid, ask = held_bid_ask(trade, quote)
    if trade.side == "short":
        return round(ask + 2 * max(ask - bid, tick), _DIGITS)
    return round(floor, _DIGITS)
