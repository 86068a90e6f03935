"""`KalshiVenue`: the engine's `Venue` protocol over `KalshiClient`.

The engine speaks float dollars of the *held* side (a NO position's price is the NO price);
Kalshi speaks `Decimal` YES terms (`bid` buys YES, `ask` sells YES). This module is the only
place the two meet:

- Closing a long YES: `ask` `qty` at YES price = limit.
- Closing a long NO: `bid` `qty` at YES price = 1 − NO limit (buying YES nets the NO away).
- Every exit is `immediate_or_cancel` + `reduce_only` with the engine's client order id, so it
  never rests, never opens a position, and Kalshi deduplicates a repeat of the same id.
- The engine prices every attempt from its exit ladder (engine/exit_ladder.py: the held side's
  bid, then a tick lower each step, never below `ladder_floor`). `limit_price=None`
  (marketable, kept for callers without a price) becomes the most aggressive whole-cent price,
  0.01 for selling YES and 0.99 for buying YES; Kalshi has no market orders. An IOC order trades
  at the resting orders' prices, not at its limit.

Booked numbers: every price that leaves this module is in the held side's dollars and comes
from the venue. `_in_held` is the one conversion: a price in the terms of one outcome (YES or
NO) as a price of the held side, identity or 1 − p. What is converted, by path:

- answered (the create answer): its `average_fill_price`, YES terms (V2 quotes from YES);
- found (a lookup, the 409 after an unclear attempt, the lookup after a restart): the order's
  fills, exact per fill (`yes_price_dollars` / `no_price_dollars`); when the fills listed do
  not add up to the order's filled count yet, the order's own fill cost, which is in the terms
  of the order's outcome side (`outcome_side`, `book_side` or legacy `action` + `side`: a sell
  of YES is `outcome_side` "no" and costs count × (1 − YES)), with a note saying so;
- filled with no readable price at all: `VenueError` (looked up again later), never a fill
  booked at a guessed price.

Outcomes: whatever leaves the order's fate unknown (timeouts, 5xx, dropped connections, an
unreadable answer, persistent 429) raises `VenueError`, so the engine reconciles with `lookup`
and never resends blindly; a clear refusal (400, 401, 404) is a `rejected` result with the
venue's code and message.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_EVEN, Decimal
from typing import Any, Literal

from engine.venues.base import OrderRequest, OrderResult, OrderStatus, VenueError, VenuePosition
from engine.venues.kalshi.client import KalshiClient
from engine.venues.kalshi.errors import (
    KalshiBadResponse,
    KalshiConflict,
    KalshiError,
    KalshiRateLimited,
    KalshiUnavailable,
)
from engine.venues.kalshi.fixed import FixedPointError, parse_optional
from engine.venues.kalshi.models import Fill, Order

__all__ = ["MARKETABLE_BUY_YES", "MARKETABLE_SELL_YES", "KalshiVenue"]

log = logging.getLogger("engine.venues.kalshi")

ONE = Decimal(1)
ZERO = Decimal(0)
MARKETABLE_SELL_YES = Decimal("0.01")  # the lowest whole-cent price: any bid crosses it
MARKETABLE_BUY_YES = Decimal("0.99")  # the highest whole-cent price: any ask crosses it
_COUNT_STEP = Decimal("0.01")  # Kalshi counts have two decimals
_PRICE_STEP = Decimal("0.000001")  # Kalshi prices have at most six decimals
_NOISE_STEP = Decimal("1e-10")  # far below any tick, far above float noise on [0, 1e6]
_FEES_UNKNOWN = "the venue reported no fees for this order; 0 assumed"

HeldSide = Literal["yes", "no"]


def _dec(value: float) -> Decimal:
    """A float from the engine as the Decimal it was meant to be: its shortest repr, with float
    arithmetic noise (0.4200000000000001) rounded away at 10 decimals."""
    return Decimal(repr(float(value))).quantize(_NOISE_STEP, ROUND_HALF_EVEN).normalize()


def _yes_direction(raw: dict[str, Any]) -> int:
    """+1 when an order/fill adds long-YES exposure (buy YES = sell NO), −1 for long-NO, 0 unknown.

    Kalshi's `outcome_side` (yes|no) and `book_side` (bid ≡ yes, ask ≡ no) carry the same bit;
    older answers have `action` (buy|sell) + `side` (yes|no) instead.
    """
    outcome = raw.get("outcome_side")
    if outcome in ("yes", "no"):
        return 1 if outcome == "yes" else -1
    book = raw.get("book_side")
    if book in ("bid", "ask"):
        return 1 if book == "bid" else -1
    action, side = raw.get("action"), raw.get("side")
    if action in ("buy", "sell") and side in ("yes", "no"):
        return 1 if (action == "buy") == (side == "yes") else -1
    return 0


def _in_held(price: Decimal, terms: HeldSide, held: HeldSide) -> Decimal:
    """THE conversion of this module: `price`, a price of the `terms` outcome, as a price of
    the `held` side (YES + NO = 1). Every booked price passes through here."""
    return price if terms == held else ONE - price


def _outcome_terms(raw: dict[str, Any]) -> HeldSide | None:
    """The outcome an order or fill made the user long ("yes" / "no"), None if unreadable."""
    direction = _yes_direction(raw)
    if direction == 0:
        return None
    return "yes" if direction > 0 else "no"


def _held_price(fill: Fill, held: HeldSide) -> Decimal | None:
    """The fill's price in dollars of the held side: the held side's own field when the venue
    gives it, else the other side's, converted."""
    if held == "yes":
        if fill.yes_price is not None:
            return _in_held(fill.yes_price, "yes", held)
        return _in_held(fill.no_price, "no", held) if fill.no_price is not None else None
    if fill.no_price is not None:
        return _in_held(fill.no_price, "no", held)
    return _in_held(fill.yes_price, "yes", held) if fill.yes_price is not None else None


def _order_price(order: Order, held: HeldSide) -> Decimal | None:
    """An order's average fill price in held-side dollars from its own fields: the create
    answer's `average_fill_price` (YES terms), else its fill cost over its filled count, in the
    terms of its outcome side. A closing order without a readable direction is taken to be
    the opposite of the held side (closing YES sells YES: long NO). None if neither is there."""
    if order.fill_count <= 0:
        return None
    if order.average_fill_price is not None:
        return _in_held(order.average_fill_price, "yes", held)
    if order.fill_cost is None:
        return None
    terms = _outcome_terms(order.raw) or ("no" if held == "yes" else "yes")
    return _in_held(order.fill_cost / order.fill_count, terms, held)


def _order_fees(order: Order) -> Decimal | None:
    """Fees of an order from its own fields: listings give `taker_fees_dollars` +
    `maker_fees_dollars`, the create answer `average_fee_paid` (per contract). None if absent."""
    if order.fill_count <= 0:
        return ZERO  # nothing traded, nothing charged
    try:
        taker = parse_optional(order.raw, "taker_fees_dollars")
        maker = parse_optional(order.raw, "maker_fees_dollars")
        if taker is not None or maker is not None:
            return (taker or ZERO) + (maker or ZERO)
        per_contract = parse_optional(order.raw, "average_fee_paid")
    except FixedPointError:
        return None
    return per_contract * order.fill_count if per_contract is not None else None


def _status(filled: Decimal, asked: Decimal | None, venue_status: str | None) -> OrderStatus:
    if filled <= 0:
        return "unfilled"
    if asked is not None:
        return "filled" if filled >= asked else "partial"
    return "filled" if venue_status == "executed" else "partial"


@dataclass(frozen=True, slots=True)
class _Sent:
    """What this process sent for a client order id: lets `lookup` scan one market only."""

    ticker: str
    held: HeldSide


class KalshiVenue:
    """The `Venue` for Kalshi. The caller owns (and closes) the client.

    `page_size` is the `limit` of every list request (orders, fills, positions).
    """

    name = "kalshi"

    def __init__(self, client: KalshiClient, *, page_size: int = 200) -> None:
        self._client = client
        self._page_size = page_size
        self._sent: dict[str, _Sent] = {}
        # ticker -> (signed position, entry price) as last read: fills are fetched again only
        # for a position that changed (one GET per position would hold the engine's tick for
        # seconds at the read rate limit with a hundred positions).
        self._entry: dict[str, tuple[Decimal, Decimal]] = {}

    # --- submit ---------------------------------------------------------------------------------

    async def submit(self, req: OrderRequest) -> OrderResult:
        """Send a closing IOC order. Raises `VenueError` when its outcome is unknown."""
        if req.side not in ("yes", "no") or req.action != "sell":
            return self._rejected(req, f"kalshi closes yes/no positions only, not {req.side}")
        count = _dec(req.qty).quantize(_COUNT_STEP, ROUND_HALF_EVEN)
        if count <= 0:
            return self._rejected(req, f"quantity {req.qty!r} rounds to no contracts")
        held: HeldSide = req.side
        side, price = self._yes_terms(held, req.limit_price)
        self._sent[req.client_order_id] = _Sent(req.contract_id, held)
        try:
            order = await self._client.create_order(
                req.contract_id,
                client_order_id=req.client_order_id,
                side=side,
                count=count,
                price=price,
                time_in_force="immediate_or_cancel",
                reduce_only=True,
            )
        except KalshiConflict:
            # The id exists at the venue (an earlier attempt of ours): report that order.
            found = await self._find(req.client_order_id, req.contract_id)
            if found is None:
                raise VenueError(
                    f"kalshi says order {req.client_order_id} exists but it cannot be found"
                ) from None
            return await self._result(found, held, req.client_order_id)
        except (KalshiUnavailable, KalshiRateLimited, KalshiBadResponse) as exc:
            # Unavailable covers KalshiOrderOutcomeUnknown. A persistent 429 was not processed,
            # but "try later" is what VenueError means to the engine: lookup, then resend.
            raise VenueError(str(exc)) from exc
        except KalshiError as exc:
            return self._rejected(req, f"[{exc.code or exc.status}] {exc.message}")
        if order.fill_count > 0 and order.average_fill_price is None:
            # Filled, and not a create answer with its price: an order found after an unclear
            # attempt (409, then looked up), or an answer without a price. Its fills say.
            return await self._result(order, held, req.client_order_id, asked=count)
        return self._from_create(req.client_order_id, order, held, count)

    @staticmethod
    def _yes_terms(held: HeldSide, limit: float | None) -> tuple[Literal["bid", "ask"], Decimal]:
        """(side, YES price) of the order that closes `held` at held-side `limit`.

        The price is rounded to Kalshi's six decimals in the direction that never trades worse
        than the limit. A limit more permissive than the marketable price is raised to it (a
        sell below 0.01, a buy above 0.99: a cent market trades no further out, and Kalshi
        refuses prices outside (0, 1)); a limit stricter than any price can be (a sell at 1.00)
        is sent as it is, and the venue's refusal comes back as `rejected`.
        """
        if held == "yes":
            if limit is None:
                return "ask", MARKETABLE_SELL_YES
            yes = _dec(limit).quantize(_PRICE_STEP, ROUND_CEILING)
            return "ask", max(yes, MARKETABLE_SELL_YES)
        if limit is None:
            return "bid", MARKETABLE_BUY_YES
        yes = (ONE - _dec(limit)).quantize(_PRICE_STEP, ROUND_FLOOR)
        return "bid", min(yes, MARKETABLE_BUY_YES)

    @staticmethod
    def _rejected(req: OrderRequest, reason: str) -> OrderResult:
        return OrderResult(req.client_order_id, "rejected", 0.0, None, 0.0, reason=reason)

    def _from_create(
        self, client_order_id: str, order: Order, held: HeldSide, asked: Decimal
    ) -> OrderResult:
        """The result from the create answer alone: no extra round trip before the engine books.

        Its `average_fill_price` is rounded by the venue (four decimals), so `lookup`, which
        averages the fills, may differ from it in the fifth decimal.
        """
        avg = _order_price(order, held)
        fees = _order_fees(order)
        return OrderResult(
            client_order_id=client_order_id,
            status=_status(order.fill_count, asked, None),
            filled_qty=float(order.fill_count),
            avg_price=float(avg) if avg is not None else None,
            fees=float(fees) if fees is not None else 0.0,
            venue_order_id=order.order_id,
            reason="" if fees is not None else _FEES_UNKNOWN,
        )

    # --- lookup ---------------------------------------------------------------------------------

    async def lookup(self, client_order_id: str) -> OrderResult | None:
        """The order with this client order id, from the venue's order list and its fills.

        Without a ticker from this process's own submits, every order of the account is
        scanned (newest first at Kalshi, so a recent exit is on the first page); an id the
        venue never saw costs a full pass. Raises `VenueError` when the venue cannot be read,
        or when the order is still resting (an IOC exit never should: look again later).
        """
        sent = self._sent.get(client_order_id)
        try:
            order = await self._find(client_order_id, sent.ticker if sent else None)
            if order is None:
                return None
            if order.status == "resting":
                raise VenueError(f"kalshi order {client_order_id} is still resting")
            held = sent.held if sent else self._held_of(order)
            return await self._result(order, held, client_order_id)
        except KalshiError as exc:
            raise VenueError(str(exc)) from exc

    async def _find(self, client_order_id: str, ticker: str | None) -> Order | None:
        try:
            async for order in self._client.iter_orders(ticker=ticker, page_size=self._page_size):
                if order.client_order_id == client_order_id:
                    return order
        except KalshiError as exc:
            raise VenueError(str(exc)) from exc
        return None

    @staticmethod
    def _held_of(order: Order) -> HeldSide:
        """The side a closing order closed: buying YES closes NO, selling YES closes YES."""
        direction = _yes_direction(order.raw)
        if direction == 0:
            raise VenueError(f"kalshi order {order.order_id} has no readable direction")
        return "no" if direction > 0 else "yes"

    async def _result(
        self,
        order: Order,
        held: HeldSide,
        client_order_id: str,
        *,
        asked: Decimal | None = None,
    ) -> OrderResult:
        """An order's result with its average price and fees from its fills when they add up to
        its filled count (exact per fill), else from the order's own fields (`_order_price`,
        with a note). `asked` (the count sent) defaults to the order's `initial_count_fp`;
        without either, the venue's status decides between filled and partial. Raises
        `VenueError` when something filled and no price can be read: look again later."""
        try:
            fills = await self._client.get_fills(order_id=order.order_id, page_size=self._page_size)
        except KalshiError as exc:
            raise VenueError(str(exc)) from exc
        qty = sum((f.count for f in fills), ZERO)
        avg: Decimal | None = None
        fees: Decimal | None = None
        notes: list[str] = []
        if qty > 0 and qty == order.fill_count:
            prices = [(f.count, _held_price(f, held)) for f in fills]
            if all(p is not None for _, p in prices):
                avg = sum((c * p for c, p in prices if p is not None), ZERO) / qty
            fee_list = [f.fee_cost for f in fills]
            if all(fee is not None for fee in fee_list):
                fees = sum((fee for fee in fee_list if fee is not None), ZERO)
        if avg is None and order.fill_count > 0:
            avg = _order_price(order, held)
            if avg is None:
                raise VenueError(
                    f"kalshi order {client_order_id} filled {order.fill_count} but neither its "
                    f"fills ({qty} listed) nor the order give a price yet; look again later"
                )
            notes.append(
                f"price from the order's fill cost: its fills list {qty} of {order.fill_count}"
            )
        if fees is None:
            fees = _order_fees(order)
        if fees is None:
            notes.append(_FEES_UNKNOWN)
        if asked is None:
            try:
                asked = parse_optional(order.raw, "initial_count_fp", "initial_count")
            except FixedPointError:
                asked = None
        return OrderResult(
            client_order_id=client_order_id,
            status=_status(order.fill_count, asked, order.status),
            filled_qty=float(order.fill_count),
            avg_price=float(avg) if avg is not None else None,
            fees=float(fees) if fees is not None else 0.0,
            venue_order_id=order.order_id,
            reason="; ".join(notes),
        )

    # --- positions ------------------------------------------------------------------------------

    async def positions(self) -> list[VenuePosition]:
        """Every unsettled position: `position_fp` > 0 is YES, < 0 is NO (|position|), 0 skipped.

        `avg_price` (the entry price of a trade the engine adopts) is, per ticker, the FIFO
        cost of what is held: contracts sold were the oldest, so the ones held are the most
        recent buys on the held side (a YES buy is a fill with YES direction, a NO buy one with
        NO direction; a fill that flipped the position counts at its price). It is taken from
        `/portfolio/fills` for the ticker, newest first, until the held quantity is covered.
        Limits: fills older than the venue's fills window, or a position changed other than by
        fills, leave it uncovered; then, and when no fill is found at all, the average is
        `market_exposure_dollars / qty` (the venue's cost of the position), and 0.0 when that is
        missing too (logged). A position unchanged since the last call keeps its entry price
        without asking for its fills again.
        """
        try:
            raw_positions = await self._client.get_positions(page_size=self._page_size)
            out: list[VenuePosition] = []
            seen: set[str] = set()
            for pos in raw_positions:
                if pos.position == 0:
                    continue
                held: HeldSide = "yes" if pos.position > 0 else "no"
                qty = abs(pos.position)
                seen.add(pos.ticker)
                known = self._entry.get(pos.ticker)
                if known is not None and known[0] == pos.position:
                    avg = known[1]
                else:
                    fills = await self._client.get_fills(
                        ticker=pos.ticker, page_size=self._page_size
                    )
                    avg = _fifo_cost(fills, held, qty)
                    if avg is None:
                        avg = self._exposure_price(pos.ticker, pos.market_exposure, qty)
                    self._entry[pos.ticker] = (pos.position, avg)
                out.append(VenuePosition(pos.ticker, held, float(qty), float(avg)))
            for gone in self._entry.keys() - seen:
                del self._entry[gone]
            return out
        except KalshiError as exc:
            raise VenueError(str(exc)) from exc

    @staticmethod
    def _exposure_price(ticker: str, exposure: Decimal | None, qty: Decimal) -> Decimal:
        if exposure is None:
            log.warning("kalshi position %s: no fills and no exposure; avg price 0", ticker)
            return ZERO
        return abs(exposure) / qty


def _fifo_cost(fills: Iterable[Fill], held: HeldSide, qty: Decimal) -> Decimal | None:
    """The average held-side price of the newest buys covering `qty`; None if they fall short."""
    want = 1 if held == "yes" else -1
    # Newest first: the listing order reversed, then a stable sort on created_time, so it does
    # not matter which way the venue lists them.
    ordered = sorted(reversed(list(fills)), key=_fill_time, reverse=True)
    left, cost = qty, ZERO
    for fill in ordered:
        if _yes_direction(fill.raw) != want:
            continue
        price = _held_price(fill, held)
        if price is None:
            return None
        take = min(fill.count, left)
        cost += take * price
        left -= take
        if left <= 0:
            return cost / qty
    return None


_NO_TIME = datetime.min.replace(tzinfo=UTC)


def _fill_time(fill: Fill) -> datetime:
    """A fill's `created_time` (ISO 8601); a missing or unreadable one sorts as the oldest."""
    try:
        when = datetime.fromisoformat(fill.created_time or "")
    except ValueError:
        return _NO_TIME
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)
