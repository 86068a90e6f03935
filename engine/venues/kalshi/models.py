"""Kalshi's answers as frozen dataclasses with `Decimal` prices and counts.

Each `from_json` reads one object of the venue's JSON; a missing or malformed fixed-point field
raises `FixedPointError` (the client turns it into `KalshiBadResponse`). `raw` keeps the whole
object for fields not modelled here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from engine.venues.kalshi.fixed import (
    FixedPointError,
    parse_count,
    parse_dollars,
    parse_optional,
    require,
)

__all__ = ["Cancelled", "Event", "Fill", "Market", "Order", "Orderbook", "Position"]

ONE = Decimal(1)


def _str(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise FixedPointError(name, value, "expected a non-empty string")
    return value


def _opt_str(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    return value if isinstance(value, str) else None


@dataclass(frozen=True, slots=True)
class Market:
    ticker: str
    event_ticker: str
    status: str
    yes_bid: Decimal | None
    yes_ask: Decimal | None
    no_bid: Decimal | None
    no_ask: Decimal | None
    last_price: Decimal | None
    volume: Decimal | None
    open_interest: Decimal | None
    strike_type: str | None
    floor_strike: Decimal | None
    cap_strike: Decimal | None
    close_time: str | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Market:
        return cls(
            ticker=_str(d, "ticker"),
            event_ticker=d.get("event_ticker") or "",
            status=d.get("status") or "",
            yes_bid=parse_optional(d, "yes_bid_dollars"),
            yes_ask=parse_optional(d, "yes_ask_dollars"),
            no_bid=parse_optional(d, "no_bid_dollars"),
            no_ask=parse_optional(d, "no_ask_dollars"),
            last_price=parse_optional(d, "last_price_dollars"),
            volume=parse_optional(d, "volume_fp"),
            open_interest=parse_optional(d, "open_interest_fp"),
            strike_type=_opt_str(d, "strike_type"),
            floor_strike=parse_optional(d, "floor_strike"),
            cap_strike=parse_optional(d, "cap_strike"),
            close_time=_opt_str(d, "close_time"),
            raw=d,
        )


@dataclass(frozen=True, slots=True)
class Event:
    event_ticker: str
    series_ticker: str
    title: str
    markets: tuple[Market, ...]
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Event:
        return cls(
            event_ticker=_str(d, "event_ticker"),
            series_ticker=d.get("series_ticker") or "",
            title=d.get("title") or "",
            markets=tuple(Market.from_json(m) for m in d.get("markets") or ()),
            raw=d,
        )


Level = tuple[Decimal, Decimal]  # (price in dollars, size in contracts)


@dataclass(frozen=True, slots=True)
class Orderbook:
    """Bids only, on both sides, best (highest) first. YES ask = 1 − best NO bid."""

    yes_bids: tuple[Level, ...]
    no_bids: tuple[Level, ...]

    @property
    def best_yes_bid(self) -> Decimal | None:
        return self.yes_bids[0][0] if self.yes_bids else None

    @property
    def best_yes_ask(self) -> Decimal | None:
        return ONE - self.no_bids[0][0] if self.no_bids else None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Orderbook:
        book = d.get("orderbook_fp")
        if not isinstance(book, dict):
            raise FixedPointError("orderbook_fp", book, "expected an object")

        def side(name: str) -> tuple[Level, ...]:
            levels = book.get(name) or []
            out = []
            for i, level in enumerate(levels):
                where = f"orderbook_fp.{name}[{i}]"
                if not isinstance(level, list) or len(level) != 2:
                    raise FixedPointError(where, level, "expected [price, size]")
                out.append((parse_dollars(level[0], where), parse_count(level[1], where)))
            out.sort(key=lambda lv: lv[0], reverse=True)
            return tuple(out)

        return cls(yes_bids=side("yes_dollars"), no_bids=side("no_dollars"))


@dataclass(frozen=True, slots=True)
class Position:
    ticker: str
    position: Decimal  # signed: positive = YES contracts, negative = NO
    market_exposure: Decimal | None
    realized_pnl: Decimal | None
    fees_paid: Decimal | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Position:
        return cls(
            ticker=_str(d, "ticker"),
            position=parse_count(d.get("position_fp"), "position_fp", signed=True),
            market_exposure=parse_optional(d, "market_exposure_dollars"),
            realized_pnl=parse_optional(d, "realized_pnl_dollars"),
            fees_paid=parse_optional(d, "fees_paid_dollars"),
            raw=d,
        )


@dataclass(frozen=True, slots=True)
class Fill:
    fill_id: str
    order_id: str
    ticker: str
    outcome_side: str | None
    book_side: str | None
    count: Decimal
    yes_price: Decimal | None
    no_price: Decimal | None
    fee_cost: Decimal | None
    created_time: str | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Fill:
        return cls(
            fill_id=_str(d, "fill_id"),
            order_id=_str(d, "order_id"),
            ticker=_str(d, "ticker"),
            outcome_side=_opt_str(d, "outcome_side"),
            book_side=_opt_str(d, "book_side"),
            count=parse_count(d.get("count_fp"), "count_fp"),
            yes_price=parse_optional(d, "yes_price_dollars"),
            no_price=parse_optional(d, "no_price_dollars"),
            fee_cost=parse_optional(d, "fee_cost", "fee_cost_dollars"),
            created_time=_opt_str(d, "created_time"),
            raw=d,
        )


@dataclass(frozen=True, slots=True)
class Order:
    """An order as listed, fetched or just created.

    The create answer (V2) names its counts `fill_count` / `remaining_count` (strings) and
    gives `average_fill_price` when something filled, in YES terms (the V2 endpoint quotes
    everything from the YES side). Order listings use `*_fp` and give fill costs instead
    (`taker_fill_cost_dollars` + `maker_fill_cost_dollars`: `fill_cost`), which are what the
    order's outcome side cost: a sell of YES is `outcome_side` "no" and its fill cost is the NO
    price, count × (1 − YES). No average is made of a fill cost here, because its terms depend
    on the order's direction; `KalshiVenue` converts it (and every other price) to the held
    side in one place.
    """

    order_id: str
    client_order_id: str | None
    ticker: str | None
    status: str | None
    fill_count: Decimal
    remaining_count: Decimal
    average_fill_price: Decimal | None  # the create answer's, YES terms; None in listings
    fill_cost: Decimal | None  # listings: taker + maker fill cost, in the outcome side's terms
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Order:
        fill_count = require(d, "fill_count_fp", "fill_count")
        taker = parse_optional(d, "taker_fill_cost_dollars")
        maker = parse_optional(d, "maker_fill_cost_dollars")
        cost = (taker or 0) + (maker or 0) if taker is not None or maker is not None else None
        return cls(
            order_id=_str(d, "order_id"),
            client_order_id=_opt_str(d, "client_order_id"),
            ticker=_opt_str(d, "ticker"),
            status=_opt_str(d, "status"),
            fill_count=fill_count,
            remaining_count=require(d, "remaining_count_fp", "remaining_count"),
            average_fill_price=parse_optional(d, "average_fill_price"),
            fill_cost=cost,
            raw=d,
        )


@dataclass(frozen=True, slots=True)
class Cancelled:
    """The answer to a V2 cancel: how many contracts were taken off the book."""

    order_id: str
    client_order_id: str | None
    reduced_by: Decimal

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Cancelled:
        return cls(
            order_id=_str(d, "order_id"),
            client_order_id=_opt_str(d, "client_order_id"),
            reduced_by=require(d, "reduced_by", "reduced_by_fp"),
        )
