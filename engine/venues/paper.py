"""Paper execution: exits filled in-process against live (or simulated) quotes.

Fill price of an exit, in dollars of the held instrument:

- `fill_at="quote"` (default): sell YES at the YES bid; sell NO at the NO bid = 1 − YES ask;
  sell long at the bid; buy-to-close short at the ask.
- `fill_at="reference"`: the request's `reference_price` (the engine's mark); when a request
  carries none, the quote rule above is used.

Then slippage makes the price worse (lower for a sell, higher for a buy): `none`; `fixed`
(`slippage_fixed` dollars); `size` (`slippage_per_contract` × filled quantity dollars). The price is
clamped to ≥ 0, and to ≤ 1 for binaries, which are told apart by the side: yes/no positions are
binaries, long/short positions are options or stocks (no upper clamp). Prices are rounded to 1e-6
to keep float noise out of the records.

A limit price the fill would be worse than leaves the order "unfilled". Fees are
`fee_per_contract` × filled quantity. Rejections (`reject_probability`) and partial fills
(`partial_fill_probability`: a random part fills, the rest is cancelled) are drawn from
`random.Random(seed)`. A position is never sold below zero: an order for more than is held fills
what is held (status "partial"). Every result is kept by client order id: a repeated id returns the
original result and never fills twice.

With `state_path`, positions and order results are written to that JSON file after every change
(temp file + fsync + os.replace, so a crash leaves the old or the new file, never half of one) and
read back at construction, so a restarted process sees what the venue had.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

from engine.config import PaperConfig
from engine.models import Quote, Side, quote_problem
from engine.venues.base import OrderRequest, OrderResult, VenuePosition

STATE_VERSION = 1
_EPS = 1e-9
_CLOSING_ACTION = {"yes": "sell", "no": "sell", "long": "sell", "short": "buy"}


class PaperVenue:
    """A simulated broker that implements `Venue`, plus `open_position` and `settle`."""

    def __init__(
        self,
        cfg: PaperConfig,
        quotes: Callable[[str], Quote | None],
        state_path: Path | None = None,
        fill_at: Literal["quote", "reference"] = "quote",
        name: str = "paper",
    ) -> None:
        self.name = name
        self._cfg = cfg
        self._quotes = quotes
        self._state_path = Path(state_path) if state_path is not None else None
        self._fill_at = fill_at
        self._rng = random.Random(cfg.seed)
        self._positions: dict[tuple[str, str], VenuePosition] = {}
        self._orders: dict[str, OrderResult] = {}
        self._seq = 0
        if self._state_path is not None and self._state_path.exists():
            self._load(self._state_path)

    # --- Venue ------------------------------------------------------------------------------

    async def submit(self, req: OrderRequest) -> OrderResult:
        return self.execute(req)

    async def lookup(self, client_order_id: str) -> OrderResult | None:
        return self._orders.get(client_order_id)

    async def positions(self) -> list[VenuePosition]:
        return list(self._positions.values())

    # --- paper-only -------------------------------------------------------------------------

    def execute(self, req: OrderRequest) -> OrderResult:
        """`submit` without the coroutine (the paper venue never waits)."""
        done = self._orders.get(req.client_order_id)
        if done is not None:
            return done
        self._seq += 1
        result = self._fill(req, f"{self.name}-{self._seq}")
        self._orders[req.client_order_id] = result
        self._save()
        return result

    def open_position(
        self, contract_id: str, side: Side, qty: float, price: float
    ) -> VenuePosition:
        """Add `qty` at `price` (dollars) to the position, creating it if needed."""
        if qty <= 0:
            raise ValueError(f"qty must be > 0 (got {qty})")
        if price < 0:
            raise ValueError(f"price must be >= 0 (got {price})")
        key = (contract_id, side)
        old = self._positions.get(key)
        if old is None:
            pos = VenuePosition(contract_id, side, qty, price)
        else:
            total = old.qty + qty
            pos = VenuePosition(
                contract_id, side, total, (old.qty * old.avg_price + qty * price) / total
            )
        self._positions[key] = pos
        self._save()
        return pos

    def close_position(self, contract_id: str, side: Side, qty: float) -> None:
        """Remove up to `qty` from a position without an order: the trader closed it outside
        the supervisor (the simulated account follows the journal)."""
        key = (contract_id, side)
        old = self._positions.get(key)
        if old is None or qty <= 0:
            return
        left = old.qty - qty
        if left <= _EPS:
            del self._positions[key]
        else:
            self._positions[key] = VenuePosition(contract_id, side, left, old.avg_price)
        self._save()

    def settle(self, contract_id: str, value: float) -> list[VenuePosition]:
        """Remove every position in a settled contract; returns the removed positions.

        `value` is the YES settlement (1.0 / 0.0); the paper venue keeps no cash balance, so it is
        only accepted for the interface's sake.
        """
        removed = [p for (cid, _), p in self._positions.items() if cid == contract_id]
        if removed:
            for p in removed:
                del self._positions[(p.contract_id, p.side)]
            self._save()
        return removed

    # --- internals --------------------------------------------------------------------------

    def _fill(self, req: OrderRequest, venue_id: str) -> OrderResult:
        def reject(reason: str) -> OrderResult:
            return OrderResult(req.client_order_id, "rejected", 0.0, None, 0.0, venue_id, reason)

        if not req.qty > 0:
            return reject(f"qty must be > 0 (got {req.qty})")
        expected = _CLOSING_ACTION.get(req.side)
        if expected is None:
            return reject(f"unknown side {req.side!r}")
        if req.action != expected:
            return reject(f"{req.action} does not close a {req.side} position (use {expected})")
        pos = self._positions.get((req.contract_id, req.side))
        if pos is None or pos.qty <= _EPS:
            return reject(f"no open {req.side} position in {req.contract_id}")
        if self._rng.random() < self._cfg.reject_probability:
            return reject("simulated rejection")

        binary = req.side in ("yes", "no")
        if self._fill_at == "reference" and req.reference_price is not None:
            base = req.reference_price
        else:
            q = self._quotes(req.contract_id)
            problem = quote_problem(q, binary)
            if problem is not None or q is None:
                return reject(problem or "no quote")
            assert q.bid is not None and q.ask is not None
            if req.side == "no":
                base = 1.0 - q.ask
            elif req.side == "short":
                base = q.ask
            else:
                base = q.bid

        want = min(req.qty, pos.qty)
        note = ""
        if want < req.qty - _EPS:
            note = f"only {pos.qty:g} held; the rest cancelled"
        qty = want
        if self._rng.random() < self._cfg.partial_fill_probability:
            part = self._partial(want)
            if part < want - _EPS:
                qty = part
                note = "simulated partial fill; the rest cancelled"

        slip = 0.0
        if self._cfg.slippage == "fixed":
            slip = self._cfg.slippage_fixed
        elif self._cfg.slippage == "size":
            slip = self._cfg.slippage_per_contract * qty
        price = base - slip if req.action == "sell" else base + slip
        price = max(price, 0.0)
        if binary:
            price = min(price, 1.0)
        price = round(price, 6)

        if req.limit_price is not None and (
            (req.action == "sell" and price < req.limit_price - _EPS)
            or (req.action == "buy" and price > req.limit_price + _EPS)
        ):
            return OrderResult(
                req.client_order_id,
                "unfilled",
                0.0,
                None,
                0.0,
                venue_id,
                f"fill price {price:g} is worse than the limit {req.limit_price:g}",
            )

        left = pos.qty - qty
        if left <= _EPS:
            del self._positions[(req.contract_id, req.side)]
        else:
            self._positions[(req.contract_id, req.side)] = VenuePosition(
                pos.contract_id, pos.side, left, pos.avg_price
            )
        status = "filled" if qty >= req.qty - _EPS else "partial"
        fees = round(self._cfg.fee_per_contract * qty, 6)
        return OrderResult(req.client_order_id, status, qty, price, fees, venue_id, note)

    def _partial(self, want: float) -> float:
        """A random part of `want` (whole contracts if `want` is whole), else `want` itself."""
        if float(want).is_integer():
            if want < 2:
                return want
            return float(self._rng.randint(1, int(want) - 1))
        return round(want * self._rng.uniform(0.1, 0.9), 6)

    def _save(self) -> None:
        path = self._state_path
        if path is None:
            return
        data: dict[str, Any] = {
            "version": STATE_VERSION,
            "name": self.name,
            "seq": self._seq,
            "positions": [asdict(p) for p in self._positions.values()],
            "orders": {k: asdict(r) for k, r in self._orders.items()},
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, separators=(",", ":"))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _load(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("version") != STATE_VERSION:
                raise ValueError(f"unsupported version {data.get('version')!r}")
            self._seq = int(data.get("seq", 0))
            for p in data.get("positions", []):
                pos = VenuePosition(**p)
                self._positions[(pos.contract_id, pos.side)] = pos
            for k, r in data.get("orders", {}).items():
                self._orders[k] = OrderResult(**r)
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
            raise ValueError(f"{path}: cannot read the paper venue state ({e})") from None
