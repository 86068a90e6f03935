"""The venue interface the engine uses to close positions and read what the venue holds.

Prices are dollars per contract of the *held* instrument (a NO position's price is the NO price,
not the YES price). Quantities are contract counts. Every order carries the engine's client order
id, which the venue must honour: the same id never executes twice, and `lookup` finds it after a
crash so the journal and the venue can be reconciled.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from engine.models import Mode, Side

OrderStatus = Literal["filled", "partial", "unfilled", "rejected"]


@dataclass(frozen=True, slots=True)
class OrderRequest:
    """A closing order. `action` is "sell" to close yes/no/long, "buy" to close short."""

    client_order_id: str
    contract_id: str
    side: Side  # the side held: yes/no/long/short
    action: Literal["sell", "buy"]
    qty: float
    limit_price: float | None  # held-instrument price in dollars; None = marketable (IOC)
    reference_price: float | None = None  # the engine's mark at decision time


@dataclass(frozen=True, slots=True)
class OrderResult:
    """What happened to an order. `partial`: `filled_qty` filled, the rest was cancelled."""

    client_order_id: str
    status: OrderStatus
    filled_qty: float
    avg_price: float | None  # held-instrument dollars; None when nothing filled
    fees: float  # dollars, total for this order
    venue_order_id: str = ""
    reason: str = ""  # rejection reason / note


@dataclass(frozen=True, slots=True)
class VenuePosition:
    contract_id: str
    side: Side
    qty: float
    avg_price: float  # held-instrument dollars per contract


class VenueError(Exception):
    """The venue could not be reached or did not answer in time: the order's outcome is unknown
    and must be reconciled with `lookup` before anything is sent again."""


@runtime_checkable
class Venue(Protocol):
    """A venue may also have `sending_blocked() -> str | None`: why no order can be sent now
    (IB's read-only API session); the engine then neither starts nor retries an exit."""

    name: str

    async def submit(self, req: OrderRequest) -> OrderResult:
        """Send an order. Raises VenueError when the outcome is unknown."""
        ...

    async def lookup(self, client_order_id: str) -> OrderResult | None:
        """The result of an order by client order id; None when the venue never saw the id."""
        ...

    async def positions(self) -> list[VenuePosition]:
        """Every open position the venue holds."""
        ...


class LiveOnly:
    """Mixin for a real venue: orders are sent only while the engine's mode is live.

    The engine itself does not stop dry_run orders (its other venues are paper brokers);
    `parse_config` refuses dry_run with a real venue, and this covers a mode changed at run time
    (a reload that also changed [engine], which needs a restart, could still apply it). Put it
    before the venue class: `class _LiveOnly(LiveOnly, KalshiVenue)`; set `engine_mode` and
    `label`.
    """

    engine_mode: Callable[[], Mode | None]  # the engine's mode now (None before it exists)
    label: str  # the venue's name in the refusal

    async def submit(self, req: OrderRequest) -> OrderResult:
        mode = self.engine_mode()
        if mode is not Mode.LIVE:
            return OrderResult(
                req.client_order_id,
                "rejected",
                0.0,
                None,
                0.0,
                reason=f"not sent to {self.label}: mode is "
                f"{mode.value if mode else 'unknown'}, not live",
            )
        submit: Any = super().submit  # type: ignore[misc]
        result: OrderResult = await submit(req)
        return result
