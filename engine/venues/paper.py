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

With `state_path`, the venue keeps an append-only JSON-lines log there, so a restarted process sees
what the venue had (positions, every order result by client order id, the order counter). Line 1 is
a header, `{"version": 2, "name": ..., "seq": ...}`; every later line is one change, appended (write,
flush, fsync) as it happens, so a change costs the same however many positions are held:

- `{"op": "set", "contract_id", "side", "qty", "avg_price"}`: the position is now this;
- `{"op": "del", "contract_id", "sides": [...]}`: those positions are gone (a settlement removes
  every side of a contract in one record);
- `{"op": "order", "seq", "result": {...}, "then": <a set or del record>}`: an order result, the
  counter value its venue order id got, and the position change its fill made (no `then` when
  nothing filled) in the same line, so a crash never keeps a fill without its effect or the reverse.

At construction the log is replayed. A damaged last line (the process died while writing it) is
dropped with a warning; a damaged line before it, or a header of another version, is an error. The
file is then compacted: rewritten (temp file + fsync + os.replace, so a crash leaves the old or the
new file, never half of one) as the header, which carries the counter, plus one `set` per position
and one `order` per result (without `seq` or `then`), and appended to from there. A version-1 file (one JSON object holding everything) is read and compacted
the same way. `close()` closes the log; a change after it, or after a failed write, rewrites the
file whole and appends again from there.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import tempfile
import weakref
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any, Literal

from engine import private_files
from engine.config import PaperConfig
from engine.models import Quote, Side, quote_problem
from engine.venues.base import OrderRequest, OrderResult, VenuePosition

STATE_VERSION = 2  # the JSON-lines log; version 1 (one JSON object) is still read
_EPS = 1e-9
_CLOSING_ACTION = {"yes": "sell", "no": "sell", "long": "sell", "short": "buy"}

log = logging.getLogger(__name__)

# A replayed change: ("set", VenuePosition) / ("del", [(contract_id, side), ...]) /
# ("order", (seq or None, OrderResult)).
_Change = tuple[str, Any]


class PaperVenue:
    """A simulated broker that implements `Venue`, plus `open_position` and `settle`."""

    # It fills or refuses in-process, at once: the engine awaits it on the exit path instead of
    # running it in a task (`Engine._orders_in_tasks`).
    answers_inline = True

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
        self._log: IO[str] | None = None  # the state log, open for appending
        self._log_closer: weakref.finalize | None = None
        if self._state_path is not None:
            if self._state_path.exists():
                self._load(self._state_path)
            self._compact()

    def close(self) -> None:
        """Close the state log. Safe to call twice; a later change reopens it."""
        closer, self._log_closer, self._log = self._log_closer, None, None
        if closer is not None:
            closer()

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
        key = (req.contract_id, req.side)
        before = self._positions.get(key)
        result = self._fill(req, f"{self.name}-{self._seq}")
        self._orders[req.client_order_id] = result
        if self._state_path is not None:
            rec: dict[str, Any] = {"op": "order", "seq": self._seq, "result": asdict(result)}
            after = self._positions.get(key)
            if after is None and before is not None:
                rec["then"] = _del_record(req.contract_id, [req.side])
            elif after is not None and after != before:
                rec["then"] = _set_record(after)
            self._append(rec)
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
        self._append(_set_record(pos))
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
            self._append(_del_record(contract_id, [side]))
        else:
            pos = VenuePosition(contract_id, side, left, old.avg_price)
            self._positions[key] = pos
            self._append(_set_record(pos))

    def settle(self, contract_id: str, value: float) -> list[VenuePosition]:
        """Remove every position in a settled contract; returns the removed positions.

        `value` is the YES settlement (1.0 / 0.0); the paper venue keeps no cash balance, so it is
        only accepted for the interface's sake.
        """
        removed = [p for (cid, _), p in self._positions.items() if cid == contract_id]
        if removed:
            for p in removed:
                del self._positions[(p.contract_id, p.side)]
            self._append(_del_record(contract_id, [p.side for p in removed]))
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

    # --- the state log --------------------------------------------------------------------

    def _append(self, rec: dict[str, Any]) -> None:
        """Append one change to the log (write, flush, fsync): one line, whatever the state's size."""
        if self._state_path is None:
            return
        if self._log is None:
            # Closed, or a write failed (the file may end in part of a line): write the whole
            # state, which already holds this change, to a fresh file and append from there.
            self._compact()
            return
        line = json.dumps(rec, separators=(",", ":"))
        try:
            self._log.write(line + "\n")
            self._log.flush()
            os.fsync(self._log.fileno())
        except BaseException:
            closer, self._log_closer, self._log = self._log_closer, None, None
            if closer is not None:
                with contextlib.suppress(OSError, ValueError):
                    closer()
            raise

    def _compact(self) -> None:
        """Rewrite the log atomically as the current state and keep it open for appending."""
        path = self._state_path
        assert path is not None
        self.close()
        head = {"version": STATE_VERSION, "name": self.name, "seq": self._seq}
        lines = [json.dumps(head, separators=(",", ":"))]
        lines += [
            json.dumps(_set_record(p), separators=(",", ":")) for p in self._positions.values()
        ]
        lines += [
            json.dumps({"op": "order", "result": asdict(r)}, separators=(",", ":"))
            for r in self._orders.values()
        ]
        private_files.make_dir(path.parent)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
                f.write("\n".join(lines) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _fsync_dir(path.parent)  # the rename itself survives a power cut
        f = private_files.open_append(path, encoding="utf-8", newline="\n")  # kept open
        self._log = f
        # A venue that is never closed still closes its file when collected or at exit.
        self._log_closer = weakref.finalize(self, f.close)

    def _load(self, path: Path) -> None:
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ValueError(f"{path}: cannot read the paper venue state ({e})") from None
        try:
            whole = json.loads(data)
        except ValueError:
            whole = None  # a log of several lines (or a damaged file: the replay says where)
        if isinstance(whole, dict) and whole.get("version") == 1:
            self._load_v1(path, whole)
            return
        # Split as bytes and decode line by line, so stray bytes are blamed on their line.
        lines = data.split(b"\n")
        if lines[-1] == b"":
            lines.pop()  # the newline that ends the last record
        for n, line in enumerate(lines, 1):
            try:
                if n == 1:
                    self._seq = _parse_header(line)
                    continue
                changes = _parse_change(json.loads(line))
            except (ValueError, TypeError, KeyError, AttributeError) as e:
                if n == 1 or n < len(lines):
                    raise ValueError(
                        f"{path}, line {n}: cannot read the paper venue state ({e})"
                    ) from None
                log.warning(
                    "%s, line %d: ignoring a damaged last record, most likely cut short by a "
                    "crash while it was written (%s)",
                    path,
                    n,
                    e,
                )
                break
            for kind, what in changes:
                if kind == "set":
                    self._positions[(what.contract_id, what.side)] = what
                elif kind == "del":
                    for key in what:
                        self._positions.pop(key, None)
                else:
                    seq, result = what
                    self._orders[result.client_order_id] = result
                    if seq is not None:
                        self._seq = max(self._seq, seq)

    def _load_v1(self, path: Path, data: dict[str, Any]) -> None:
        """Version 1: one JSON object with every position and order result."""
        try:
            self._seq = int(data.get("seq", 0))
            for p in data.get("positions", []):
                pos = VenuePosition(**p)
                self._positions[(pos.contract_id, pos.side)] = pos
            for k, r in data.get("orders", {}).items():
                self._orders[k] = OrderResult(**r)
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise ValueError(f"{path}: cannot read the paper venue state ({e})") from None


def _set_record(p: VenuePosition) -> dict[str, Any]:
    return {
        "op": "set",
        "contract_id": p.contract_id,
        "side": p.side,
        "qty": p.qty,
        "avg_price": p.avg_price,
    }


def _del_record(contract_id: str, sides: list[Side]) -> dict[str, Any]:
    return {"op": "del", "contract_id": contract_id, "sides": sides}


def _parse_header(line: bytes) -> int:
    head = json.loads(line)
    if not isinstance(head, dict) or "version" not in head:
        raise ValueError("the first line is not a paper venue state header")
    if head["version"] != STATE_VERSION:
        raise ValueError(f"unsupported version {head['version']!r}")
    return int(head.get("seq", 0))


def _parse_change(rec: Any, nested: bool = False) -> list[_Change]:
    """The changes one log record makes, all checked before any is applied."""
    if not isinstance(rec, dict):
        raise ValueError("a record is not a JSON object")
    op = rec.get("op")
    if op == "set":
        side = _side(rec["side"])
        pos = VenuePosition(rec["contract_id"], side, float(rec["qty"]), float(rec["avg_price"]))
        return [("set", pos)]
    if op == "del":
        sides = rec["sides"]
        if not isinstance(sides, list):
            raise ValueError("'sides' is not a list")
        return [("del", [(rec["contract_id"], _side(s)) for s in sides])]
    if op == "order" and not nested:
        seq = rec.get("seq")
        result = OrderResult(**rec["result"])
        changes: list[_Change] = [("order", (None if seq is None else int(seq), result))]
        if rec.get("then") is not None:
            changes += _parse_change(rec["then"], nested=True)
        return changes
    raise ValueError(f"unknown record {op!r}")


def _side(side: Any) -> Side:
    if side not in _CLOSING_ACTION:
        raise ValueError(f"unknown side {side!r}")
    return side


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # not possible here (Windows): the file's own fsync is what there is
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
