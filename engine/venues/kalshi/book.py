"""Kalshi's order book as the websocket sends it: bids only, on the YES side and the NO side.

A market's book arrives as one `orderbook_snapshot`, then `orderbook_delta`s (docs.kalshi.com
asyncapi.yaml, channel `orderbook_delta`):

    {"type": "orderbook_snapshot", "sid": 2, "seq": 2, "msg": {"market_ticker": "...",
     "market_id": "...", "yes_dollars_fp": [["0.0800", "300.00"], ...],
     "no_dollars_fp": [["0.5400", "20.00"], ...]}}
    {"type": "orderbook_delta", "sid": 2, "seq": 3, "msg": {"market_ticker": "...",
     "market_id": "...", "price_dollars": "0.960", "delta_fp": "-54.00", "side": "yes",
     "ts": "2022-11-22T20:44:01Z"}}

`yes_dollars_fp` / `no_dollars_fp` are left out when a side is empty; `ts` (RFC 3339) is optional.
A delta adds `delta_fp` to the size at `price_dollars` on `side`; a level whose size reaches 0 is
gone. Both sides are bids, so the YES ask is 1 − the best NO bid (its size is that NO bid's size).

Everything is `Decimal`, parsed by `fixed.py`: a malformed value raises `FixedPointError` naming
the field, so a changed venue format is loud, never a wrong number.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from engine.venues.kalshi.fixed import FixedPointError, parse_count, parse_dollars

__all__ = [
    "BookInconsistent",
    "Delta",
    "MarketBook",
    "Snapshot",
    "TopOfBook",
    "parse_delta",
    "parse_rfc3339",
    "parse_snapshot",
]

ONE = Decimal(1)
Side = Literal["yes", "no"]


class BookInconsistent(Exception):
    """A delta does not fit the book (a level would go negative): a message was missed."""


@dataclass(frozen=True, slots=True)
class TopOfBook:
    """Best YES bid and the YES ask implied by the best NO bid, with sizes; None when empty."""

    yes_bid: Decimal | None
    yes_bid_size: Decimal | None
    yes_ask: Decimal | None
    yes_ask_size: Decimal | None


@dataclass(frozen=True, slots=True)
class Snapshot:
    ticker: str
    yes: dict[Decimal, Decimal]
    no: dict[Decimal, Decimal]


@dataclass(frozen=True, slots=True)
class Delta:
    ticker: str
    side: Side
    price: Decimal
    delta: Decimal
    ts: float | None  # venue time, Unix seconds, when the message carries `ts`


def _ticker(msg: Any) -> str:
    if not isinstance(msg, dict):
        raise FixedPointError("msg", msg, "expected an object")
    ticker = msg.get("market_ticker")
    if not isinstance(ticker, str) or not ticker:
        raise FixedPointError("market_ticker", ticker, "expected a market ticker")
    return ticker


def _levels(msg: dict[str, Any], name: str) -> dict[Decimal, Decimal]:
    raw = msg.get(name)
    if raw is None:  # the side is empty: the key is left out
        return {}
    if not isinstance(raw, list):
        raise FixedPointError(name, raw, "expected a list of [price, size] levels")
    levels: dict[Decimal, Decimal] = {}
    for i, level in enumerate(raw):
        if not isinstance(level, list | tuple) or len(level) != 2:
            raise FixedPointError(f"{name}[{i}]", level, "expected [price_dollars, count_fp]")
        price = parse_dollars(level[0], f"{name}[{i}][0]")
        if price > ONE:
            raise FixedPointError(f"{name}[{i}][0]", level[0], "a price cannot exceed 1")
        size = parse_count(level[1], f"{name}[{i}][1]")
        if size > 0:
            levels[price] = levels.get(price, Decimal(0)) + size
    return levels


def parse_snapshot(msg: Any) -> Snapshot:
    """The `msg` of an `orderbook_snapshot`; raises `FixedPointError` naming a bad field."""
    ticker = _ticker(msg)
    return Snapshot(ticker, _levels(msg, "yes_dollars_fp"), _levels(msg, "no_dollars_fp"))


def parse_rfc3339(value: Any, field: str) -> float:
    """An RFC 3339 timestamp ("2022-11-22T20:44:01Z") as Unix seconds."""
    if not isinstance(value, str):
        raise FixedPointError(field, value, "expected an RFC 3339 timestamp")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise FixedPointError(field, value, "expected an RFC 3339 timestamp") from None
    if parsed.tzinfo is None:
        raise FixedPointError(field, value, "timestamp without a time zone")
    return parsed.timestamp()


def parse_delta(msg: Any) -> Delta:
    """The `msg` of an `orderbook_delta`; raises `FixedPointError` naming a bad field."""
    ticker = _ticker(msg)
    side = msg.get("side")
    if side not in ("yes", "no"):
        raise FixedPointError("side", side, 'expected "yes" or "no"')
    price = parse_dollars(msg.get("price_dollars"), "price_dollars")
    if price > ONE:
        raise FixedPointError("price_dollars", msg.get("price_dollars"), "a price cannot exceed 1")
    delta = parse_count(msg.get("delta_fp"), "delta_fp", signed=True)
    ts = parse_rfc3339(msg["ts"], "ts") if msg.get("ts") is not None else None
    return Delta(ticker, side, price, delta, ts)


class MarketBook:
    """One market's aggregated bid levels on both sides, price → size."""

    __slots__ = ("no", "ticker", "yes")

    def __init__(self, snapshot: Snapshot) -> None:
        self.ticker = snapshot.ticker
        self.yes: dict[Decimal, Decimal] = dict(snapshot.yes)
        self.no: dict[Decimal, Decimal] = dict(snapshot.no)

    def apply(self, delta: Delta) -> None:
        """Add `delta.delta` at `delta.price`; raises `BookInconsistent` if a size goes below 0."""
        levels = self.yes if delta.side == "yes" else self.no
        size = levels.get(delta.price, Decimal(0)) + delta.delta
        if size < 0:
            raise BookInconsistent(
                f"{self.ticker}: {delta.side} level {delta.price} would hold {size} contracts"
            )
        if size == 0:
            levels.pop(delta.price, None)
        else:
            levels[delta.price] = size

    def top(self) -> TopOfBook:
        """YES bid = best YES bid; YES ask = 1 − best NO bid (NO bids are YES offers)."""
        yes_bid = max(self.yes) if self.yes else None
        no_bid = max(self.no) if self.no else None
        return TopOfBook(
            yes_bid=yes_bid,
            yes_bid_size=self.yes[yes_bid] if yes_bid is not None else None,
            yes_ask=ONE - no_bid if no_bid is not None else None,
            yes_ask_size=self.no[no_bid] if no_bid is not None else None,
        )
