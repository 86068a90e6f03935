"""`IbkrVenue`: the engine's `Venue` protocol over an ib_async `IB` client (docs/ibkr.md).

Positions: `ib.positions(account)` (the client's live copy), legs grouped into combos by
`groups.py`; prices per share (IB `avgCost` / multiplier), quantities in contracts or combo
units, sides long/short with positive quantities. A remembered combo seen partly held (IB's leg
updates of a closed combo arrive one at a time; our own closing BAG order's too) is reported
neither as the combo nor as single legs for up to `PARTIAL_GRACE_SECONDS` on the injected time
function `now` (groups.py), so the engine never adopts a leg of a combo being closed.

Closing orders: one DAY limit order per attempt with `orderRef` = the engine's client order id,
on the held contract (conId from the positions, exchange SMART), or one BAG order for a combo
(its legs' conIds, ratios and actions as the combo is defined; a held long combo is sold, a held
short one bought back). The limit is the engine's ladder price; below `min_price` the order is
not sent (`MID_TOO_LOW`). `submit` waits up to `attempt_timeout_seconds` for the order to fill
(on the client's events), cancels what is left and waits for the cancel to be confirmed, then
returns filled / partial / unfilled with the average fill price per share (per combo unit) and
the commissions of the commission reports.

Outcomes:

- TWS refuses the order: `rejected`, reason `REJECTED_201: <IB's text>` (`NO_MARGIN: …` when
  the text is about margin, equity or buying power), `READ_ONLY: …` for the read-only API
  (321), `REJECTED_<code>: …` for any other refusal;
- not connected, the connection lost while the order works, a cancel never confirmed, a request
  unanswered: `VenueError("GATEWAY_UNREACHABLE: …")`, the outcome is unknown and the engine
  reconciles with `lookup`;
- idempotency: an orderRef the client already knows (an order of this session, or one loaded
  from TWS at connect) is never placed again: `submit` reports that order instead.

Before sending: `exit_hold(contract)` (also asked by the engine before it starts or retries an
exit) says MARKET_CLOSED outside the exchange's session (`hours`, engine/market_hours.py, at
`now()`; a stock's extended hours too with `exit_outside_rth`, sent `outsideRth`), or
FOREIGN_ORDERS while other clients' working orders hold the position back. Every close first
reads `reqAllOpenOrders`: our own other working orders on the contract are cancelled; other
clients' closing orders as `on_foreign_orders` says (warn: at most the position net of them;
cancel: cancelled where IB lets this client, else as warn; hold: nothing sent). A close never
flips the position. The same read at each positions poll keeps `exit_hold` current.

`lookup` asks TWS for all open orders, completed orders and today's executions, cancels the
order if it is still working (the engine wants a final answer), and returns its result, or None
when IB has never seen the orderRef.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from engine.config import IbkrConfig
from engine.models import Contract
from engine.venues.base import OrderRequest, OrderResult, OrderStatus, VenueError, VenuePosition
from engine.venues.ibkr.groups import (
    GROUPS_FILE,
    PARTIAL_GRACE_SECONDS,
    Combo,
    Grouping,
    GroupStore,
    HeldLeg,
    OpeningFill,
    PartialHold,
    group_legs,
)
from engine.venues.ibkr.ib import IB, ComboLeg, LimitOrder, Trade
from engine.venues.ibkr.ib import Contract as IbContract
from engine.venues.ibkr.ids import contract_from_ib, default_close_of, engine_id

__all__ = ["IbkrVenue"]

log = logging.getLogger("engine.venues.ibkr")

T = TypeVar("T")
EPS = 1e-9
UNREACHABLE = "GATEWAY_UNREACHABLE"
_UNSET = 1e300  # IB's unset double is 1.797e308
_DIGITS = 9
_LOG_PREFIX = re.compile(r"^(?:Error|Warning) -?\d+, reqId -?\d+: ")
_MARGIN = re.compile(r"margin|equity with loan|buying power|insufficient (?:funds|equity)", re.I)
_READ_ONLY = re.compile(r"read[- ]only", re.I)
# Error codes on an order that are not a refusal: our own cancel (202), notices and warnings
# after which the order keeps working.
_NOT_REFUSALS = frozenset({202, 399, 404, 10167, 10148})
# Warnings ib_async leaves an order active after, that still mean a NEW order was refused.
_REFUSING_WARNINGS = frozenset({321})


class _Lost(Exception):
    """The connection dropped while waiting."""


class _Waker:
    """Wakes a waiting coroutine on every packet the client processed and on a disconnect."""

    def __init__(self, venue: IbkrVenue, ib: IB) -> None:
        self._venue = venue
        self._ib = ib
        self._event = asyncio.Event()

    def _set(self, *_: Any) -> None:
        self._event.set()

    def __enter__(self) -> _Waker:
        self._ib.updateEvent += self._set
        self._ib.disconnectedEvent += self._set
        return self

    def __exit__(self, *_: object) -> None:
        self._ib.updateEvent -= self._set
        self._ib.disconnectedEvent -= self._set

    async def until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until `predicate()` (True) or `timeout` seconds (False); `_Lost` on a drop."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout, 0.0)
        while True:
            if predicate():
                return True
            if not self._venue._connected(self._ib):
                raise _Lost
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            self._event.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._event.wait()


class IbkrVenue:
    """The `Venue` for Interactive Brokers.

    `ib_provider()` gives the client (the connection's current `IB`, or None while there is
    none); `is_ready()` (optional) says whether it is connected AND synchronised (positions
    loaded): without it `ib.isConnected()` is used. `data_dir` holds the groups file.
    `confirm_timeout_seconds` bounds the wait for a cancel's confirmation and for commission
    reports; `request_timeout_seconds` each request of `lookup`. `now()` (seconds; default
    `time.monotonic`, tests pass a manual clock's `now`) times how long a remembered group has
    been partly held, against `partial_grace_seconds`.
    """

    name = "ibkr"
    # `submit` waits up to `attempt_timeout_seconds` for a resting DAY order to fill: the engine
    # runs the submit of such a venue in a task (`Engine._resting_orders`) instead of awaiting it
    # on the exit path.
    resting_orders = True

    def __init__(
        self,
        ib_provider: Callable[[], IB | None],
        config: IbkrConfig,
        data_dir: Path | str,
        close_of: Callable[[str], float] = default_close_of,
        *,
        is_ready: Callable[[], bool] | None = None,
        confirm_timeout_seconds: float = 5.0,
        request_timeout_seconds: float = 10.0,
        now: Callable[[], float] | None = None,
        partial_grace_seconds: float = PARTIAL_GRACE_SECONDS,
        hours: Any | None = None,
    ) -> None:
        self._provider = ib_provider
        self._config = config
        self._close_of = close_of
        self._is_ready = is_ready
        self._confirm_timeout = confirm_timeout_seconds
        self._request_timeout = request_timeout_seconds
        self._store = GroupStore(Path(data_dir) / GROUPS_FILE)
        self._now = now or time.monotonic
        self._partial = PartialHold(partial_grace_seconds)
        self._formed: dict[str, Combo] = {}  # combo contract id → as last held in full
        self._closing: dict[str, str] = {}  # combo contract id → our closing BAG's orderRef
        self._partial_told: set[str] = set()  # held-back groups already logged
        self._last: Grouping = Grouping((), ())
        self._warned: set[str] = set()
        self._exec_seen: set[int] = set()  # legs whose executions were asked for
        self._asked: dict[str, float] = {}  # client order id → quantity sent (this process)
        self._done: dict[str, OrderResult] = {}  # client order id → the final answer given
        # The API session refused an order as read-only (321): nothing more is sent until a
        # new connection (`on_session`). `on_alert(text)` raises the one alert of that episode.
        self._read_only: str | None = None
        self.on_alert: Callable[[str], object] | None = None
        # The exchange's hours (engine.market_hours.MarketHours, asked at `now()`): no exit
        # goes out while the contract cannot trade (`exit_hold`). None: always open.
        self._hours = hours
        # Exits that wait for other clients' working orders: contract id -> why (`exit_hold`);
        # re-checked at every positions poll until they are gone.
        self._foreign_block: dict[str, str] = {}
        self._noticed: set[str] = set()
        # `on_notice(subject, severity, text)`: an alert about other clients' orders, once per
        # subject ("warning" or "critical").
        self.on_notice: Callable[[str, str, str], object] | None = None
        self._orders_lock: asyncio.Lock | None = None  # one reqAllOpenOrders at a time

    # ---- connection --------------------------------------------------------------------------

    def _connected(self, ib: IB | None) -> bool:
        if ib is None or not ib.isConnected() or self._provider() is not ib:
            return False
        return self._is_ready() if self._is_ready is not None else True

    def _ib(self) -> IB:
        ib = self._provider()
        if not self._connected(ib):
            raise VenueError(f"{UNREACHABLE}: not connected to TWS / IB Gateway")
        assert ib is not None
        return ib

    def _account(self, ib: IB) -> str:
        if self._config.account:
            return self._config.account
        accounts = ib.managedAccounts()
        if len(accounts) == 1:
            return accounts[0]
        raise VenueError(
            f"ACCOUNT: {len(accounts)} managed accounts ({', '.join(accounts)}); "
            "set [venues.ibkr] account"
        )

    async def _request(self, aw: Awaitable[T], what: str) -> T:
        try:
            async with asyncio.timeout(self._request_timeout):
                return await aw
        except TimeoutError:
            raise VenueError(f"{UNREACHABLE}: no answer to {what}") from None
        except ConnectionError as exc:
            raise VenueError(f"{UNREACHABLE}: connection lost during {what} ({exc})") from exc

    # ---- positions ---------------------------------------------------------------------------

    async def positions(self) -> list[VenuePosition]:
        """What the account holds: single legs, and combos as one position each."""
        ib = self._ib()
        grouping = self._grouping(ib)
        if self._needs_executions(grouping):
            # legs that might belong together and whose executions were never read: ask once
            await self._request(ib.reqExecutionsAsync(), "reqExecutions")
            self._exec_seen.update(leg.con_id for leg in grouping.singles)
            grouping = self._grouping(ib)
        out = [
            VenuePosition(leg.contract_id, leg.side, abs(leg.position), leg.price)
            for leg in grouping.singles
        ]
        out += [VenuePosition(c.contract_id, c.side, c.qty, c.entry) for c in grouping.combos]
        try:  # other clients' working orders on what is held (`exit_hold`)
            await self._refresh_foreign(ib, grouping)
        except Exception:  # never the positions' failure
            log.exception("ibkr: reading other clients' working orders failed")
        # A combo held back while partly held, with no closing order of ours behind it, is
        # reported as last held in full: the engine would otherwise close its trade as external
        # on a transient state (legs updated one at a time) and adopt it again a moment later.
        # After our own closing order the engine has booked the close: nothing is reported.
        for back in grouping.held_back:
            formed = self._formed.get(back.contract_id)
            if formed is not None and back.contract_id not in self._closing:
                out.append(VenuePosition(formed.contract_id, formed.side, formed.qty, formed.entry))
        return out

    def held_contracts(self) -> list[Contract]:
        """The engine contracts of what is held: single legs, each combo and its legs, and a
        combo held back while partly held (as last held in full). From the client's copy of
        the positions (the last grouping while they cannot be read)."""
        ib = self._provider()
        grouping = self._last
        if ib is not None and self._connected(ib):
            with contextlib.suppress(VenueError):
                grouping = self._grouping(ib)
        out: dict[str, Contract] = {}
        for leg in grouping.singles:
            c = self._contract(leg)
            if c is not None:
                out[c.id] = c
        combos = list(grouping.combos)
        for back in grouping.held_back:
            formed = self._formed.get(back.contract_id)
            if formed is not None:
                combos.append(formed)
            for leg in back.legs:  # held, though not reported
                c = self._contract(leg)
                if c is not None:
                    out.setdefault(c.id, c)
        for combo in combos:
            try:
                out[combo.contract_id] = combo.contract(self._close_of)
            except Exception as exc:  # one combo never hides the others
                self._warn_once(
                    f"contract:{combo.contract_id}:{exc}",
                    f"ibkr {combo.contract_id}: no contract details ({type(exc).__name__}: {exc})",
                )
            for leg, _ in combo.legs:
                c = self._contract(leg)
                if c is not None:
                    out.setdefault(c.id, c)
        return list(out.values())

    def held_ib_contracts(self) -> dict[str, IbContract]:
        """Engine id -> the IB contract of each held leg, as the positions carry it (conId,
        trading class, multiplier): the market feed qualifies these by conId."""
        grouping = self._last
        out: dict[str, IbContract] = {}
        legs = [*grouping.singles, *(leg for b in grouping.held_back for leg in b.legs)]
        legs += [leg for combo in grouping.combos for leg, _ in combo.legs]
        for leg in legs:
            if leg.ib_contract is not None and leg.con_id:
                out.setdefault(leg.contract_id, leg.ib_contract)
        return out

    def _contract(self, leg: HeldLeg) -> Contract | None:
        """The engine contract of one held leg; None (warned once, naming it) when it cannot
        be made: one odd contract never hides the others."""
        try:
            return contract_from_ib(leg.ib_contract, self._close_of)
        except Exception as exc:
            self._warn_once(
                f"contract:{leg.contract_id}:{exc}",
                f"ibkr {leg.contract_id}: no contract details ({type(exc).__name__}: {exc})",
            )
            return None

    def _held(self, ib: IB) -> list[HeldLeg]:
        out: list[HeldLeg] = []
        for p in ib.positions(self._account(ib)):
            if not p.position:
                continue
            c = p.contract
            cid = engine_id(c)
            if cid is None:
                self._warn_once(
                    f"unsupported:{c.conId}",
                    f"ibkr position {c.localSymbol or c.symbol} ({c.secType}) is not supported; "
                    "left out",
                )
                continue
            try:
                mult = float(c.multiplier) if c.multiplier else (100.0 if c.secType != "STK" else 1)
            except ValueError:
                mult = 100.0 if c.secType != "STK" else 1.0
            out.append(
                HeldLeg(
                    c.conId,
                    cid,
                    c.symbol,
                    c.currency or "USD",
                    mult,
                    float(p.position),
                    float(p.avgCost),
                    c,
                )
            )
        return out

    def _opening_fills(self, ib: IB) -> list[OpeningFill]:
        return [
            OpeningFill(
                f.contract.conId,
                f.execution.orderRef or "",
                f.execution.permId,
                f.execution.side,
                str(f.execution.time),
            )
            for f in ib.fills()
            if f.contract.secType != "BAG"
        ]

    def _grouping(self, ib: IB) -> Grouping:
        grouping = group_legs(
            self._held(ib),
            self._config.groups,
            self._opening_fills(ib),
            self._store.groups,
            warn=self._warn_once,
            partial=self._partial,
            now=self._now(),
        )
        try:
            self._store.save(
                [
                    *(c.remembered() for c in grouping.combos),
                    *(b.group for b in grouping.held_back),  # still remembered meanwhile
                ]
            )
        except OSError as exc:
            self._warn_once(f"store:{exc}", f"ibkr groups file not written: {exc}")
        self._last = grouping
        for back in grouping.held_back:
            if back.contract_id not in self._partial_told:
                self._partial_told.add(back.contract_id)
                closing = self._closing.get(back.contract_id)
                log.info(
                    "ibkr group %s partly held (%s not held%s): %s for up to %gs",
                    back.contract_id,
                    ", ".join(back.missing),
                    f"; our closing order {closing} was sent" if closing else "",
                    "neither it nor its other legs are reported"
                    if closing
                    else "reported as last held in full, its other legs not as singles,",
                    self._partial.grace_seconds,
                )
        back_ids = {b.contract_id for b in grouping.held_back}
        self._partial_told &= back_ids
        for combo in grouping.combos:  # a group formed again may be dropped (and told) again
            self._warned.discard(f"dropped:{combo.contract_id}")
        self._formed = {
            **{k: v for k, v in self._formed.items() if k in back_ids},
            **{c.contract_id: c for c in grouping.combos},
        }
        self._closing = {k: v for k, v in self._closing.items() if k in self._formed}
        return grouping

    def _needs_executions(self, grouping: Grouping) -> bool:
        fresh = [leg for leg in grouping.singles if leg.con_id not in self._exec_seen]
        if not fresh:
            return False
        symbols = [leg.symbol for leg in grouping.singles]
        return any(symbols.count(leg.symbol) > 1 for leg in fresh)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning("%s", message)

    # ---- sending blocked ---------------------------------------------------------------------

    def sending_blocked(self) -> str | None:
        """Why no order can be sent now (the engine neither starts nor retries exits), or None."""
        return self._read_only

    def on_session(self) -> None:
        """`IbConnection` listener: a new API session may no longer be read-only (a 1100/1102
        blip within one session does not count)."""
        if self._read_only is not None:
            log.info("ibkr: connected again; orders will be tried again (was: %s)", self._read_only)
            self._read_only = None

    def _block_read_only(self, result: OrderResult, req: OrderRequest) -> None:
        if self._read_only is not None:
            return
        self._read_only = (
            "READ_ONLY: the TWS / IB Gateway API session is read-only (error 321 on order "
            f"{req.client_order_id} for {req.contract_id}); no order is sent. Fix: in TWS "
            "Configure → API → Settings untick 'Read-Only API' (IB Gateway: Configure → "
            "Settings → API), then restart the engine or reconnect"
        )
        log.error("ibkr: %s", self._read_only)
        if self.on_alert is not None:
            try:
                self.on_alert(self._read_only)
            except Exception:
                log.exception("ibkr: the read-only alert failed")

    # ---- trading hours and other clients' orders -------------------------------------------

    def exit_hold(self, contract_id: str) -> str | None:
        """Why an exit on `contract_id` must wait now, sending nothing (the engine keeps the
        rule fired or the exit waiting, counts no attempt, and asks again): MARKET_CLOSED
        outside the contract's trading hours; FOREIGN_ORDERS while other clients' working
        orders cover the position (with on_foreign_orders = "hold": while any works on it).
        None: an order may go out."""
        return self._market_closed(contract_id) or self._foreign_block.get(contract_id)

    def _is_stock(self, contract_id: str) -> bool:
        leg = self._last.single(contract_id)
        return leg is not None and leg.ib_contract is not None and leg.ib_contract.secType == "STK"

    def _market_closed(self, contract_id: str) -> str | None:
        """MARKET_CLOSED and when it opens, while the exchange's session (a stock's extended
        hours too with exit_outside_rth) is not on at `now()`; None when it is, or when the
        hours are unknown (never a reason to stop closing: logged once)."""
        hours = self._hours
        if hours is None:
            return None
        now = self._now()
        outside = self._config.exit_outside_rth and self._is_stock(contract_id)
        try:
            if hours.is_open(now) or (outside and hours.extended_open(now)):
                return None
            # with its weekday always ("Tue 09:30 ET"): the same words all night (one alert)
            when = hours.close_label(hours.next_open(now), math.nan)
        except ValueError as exc:
            self._warn_once(f"hours:{exc}", f"ibkr: trading hours not known ({exc}); exits go out")
            return None
        where = getattr(hours, "calendar", "the exchange")
        session = "outside its regular and extended hours" if outside else "closed"
        return f"MARKET_CLOSED: {where} is {session}; exit due at the open ({when})"

    async def _all_open_orders(self, ib: IB) -> list[Trade]:
        """Every working order of the account, whichever client placed it (TWS's own orders
        too, with orderId 0 until client 0 binds them): reqAllOpenOrders, one at a time
        (ib_async keeps one answer list for it)."""
        if self._orders_lock is None:
            self._orders_lock = asyncio.Lock()
        async with self._orders_lock:
            return list(await self._request(ib.reqAllOpenOrdersAsync(), "reqAllOpenOrders"))

    def _held_legs(
        self, grouping: Grouping, contract_id: str
    ) -> tuple[float, list[tuple[int, float, float]]] | None:
        """(units held, [(leg conId, leg position signed, ratio)]) of a held position."""
        combo = grouping.combo(contract_id)
        if combo is not None:
            return combo.qty, [(leg.con_id, leg.position, abs(r)) for leg, r in combo.legs]
        leg = grouping.single(contract_id)
        if leg is None:
            return None
        return abs(leg.position), [(leg.con_id, leg.position, 1.0)]

    def _working_on(
        self, ib: IB, opened: Iterable[Trade], legs: list[tuple[int, float, float]], coid: str
    ) -> tuple[list[Trade], list[Trade], list[Trade]]:
        """Working orders on these legs: (our own left over from before: to cancel; other
        clients' that would close part of them; our own of another exit this process is
        working right now: left alone, counted against the position). Ours: this client id
        with an API order id."""
        mine = ib.client.clientId
        con_ids = {c for c, _, _ in legs}
        stale: list[Trade] = []
        theirs: list[Trade] = []
        busy: list[Trade] = []
        for t in _unique_trades(opened):
            if t.isDone() or (coid and t.order.orderRef == coid) or not _touches(t, con_ids):
                continue
            if t.order.clientId == mine and t.order.orderId > 0:
                (busy if t.order.orderRef in self._asked else stale).append(t)
            elif any(_closing_qty(t, c, p) > EPS for c, p, _ in legs):
                theirs.append(t)
        return stale, theirs, busy

    async def _cancel_all(self, ib: IB, trades: list[Trade], what: str) -> list[Trade]:
        """Cancel working orders and wait for the confirmations; those still working."""
        if not trades:
            return []
        with _Waker(self, ib) as waker:
            for t in trades:
                log.info(
                    "ibkr: cancelling %s order %s (permId %s)",
                    what,
                    t.order.orderId,
                    t.order.permId,
                )
                ib.cancelOrder(t.order)
            try:
                await waker.until(lambda: all(t.isDone() for t in trades), self._confirm_timeout)
            except _Lost:
                raise VenueError(
                    f"{UNREACHABLE}: connection lost cancelling {what} orders"
                ) from None
        return [t for t in trades if not t.isDone()]

    async def _foreign_check(
        self, ib: IB, grouping: Grouping, req: OrderRequest, qty: int
    ) -> int | str:
        """Before a close: our own other working orders on the position are cancelled; other
        clients' orders that would also close it are handled as on_foreign_orders says. The
        quantity that may be sent (never more than the position net of the orders still
        working: a close never flips it), or why nothing is sent."""
        cid = req.contract_id
        held = self._held_legs(grouping, cid)
        if held is None:
            return qty
        units, legs = held
        opened = await self._all_open_orders(ib)
        ours, theirs, busy = self._working_on(ib, opened, legs, req.client_order_id)
        left = await self._cancel_all(ib, ours, "our own earlier")
        if left:
            ref = left[0].order.orderRef or left[0].order.orderId
            raise VenueError(
                f"{UNREACHABLE}: our working order {ref} on {cid} was not confirmed cancelled; "
                "nothing sent"
            )
        if not theirs:
            self._foreign_block.pop(cid, None)
            if not busy:
                return qty
            # another trade's exit on the same contract is working: together never more
            # than held
            send = min(qty, _net_allowed(units, legs, busy))
            if send > 0:
                return send
            return (
                f"POSITION_MISMATCH: {cid}: our own order {busy[0].order.orderRef} still works "
                "on all of it; not sent (it would open a position)"
            )
        mode = self._config.on_foreign_orders
        key = f"{cid}:" + ",".join(sorted(str(t.order.permId) for t in theirs))
        if mode == "hold":
            reason = _foreign_reason(cid, mode, theirs)
            self._foreign_block[cid] = reason
            self._notice(f"hold:{key}", "critical", reason)
            return reason
        if mode == "cancel":
            mine = ib.client.clientId
            theirs = await self._cancel_all(
                ib, [t for t in theirs if t.order.clientId == mine], "another client's"
            ) + [t for t in theirs if t.order.clientId != mine]
            if not theirs:
                self._foreign_block.pop(cid, None)
                return qty
            self._notice(
                f"cancel:{key}",
                "critical",
                f"ibkr {cid}: cannot cancel another client's working order from API client "
                f"{mine} ({_describe_all(theirs)}): IB lets only the client that placed an order "
                "cancel it (TWS's own orders: client_id 0). Closing at most the position net of "
                "it; cancel it in TWS",
            )
        send = min(qty, _net_allowed(units, legs, theirs + busy))
        if mode == "warn":
            self._notice(
                f"warn:{key}",
                "warning",
                f"ibkr {cid}: another client's working order would also close this position "
                f"({_describe_all(theirs)}); the supervisor closes at most {max(send, 0):g} of "
                f"{qty:g} so the account never ends the other way (on_foreign_orders = "
                '"warn")',
            )
        if send <= 0:
            reason = _foreign_reason(cid, mode, theirs)
            self._foreign_block[cid] = reason
            return reason
        self._foreign_block.pop(cid, None)
        return send

    async def _refresh_foreign(self, ib: IB, grouping: Grouping) -> None:
        """At each positions poll: which held positions other clients' working orders hold
        back (`exit_hold`: nothing is sent, no attempt counted): with "hold" any such order,
        else orders covering the whole position (with "cancel", those this client cannot
        cancel). An exit whose orders are gone (filled, cancelled) may go out again."""
        try:
            opened = await self._all_open_orders(ib)
        except VenueError as exc:
            log.info("ibkr: open orders not read (%s); exits held for them stay held", exc)
            return
        mine = ib.client.clientId
        mode = self._config.on_foreign_orders
        blocks: dict[str, str] = {}
        ids = [leg.contract_id for leg in grouping.singles]
        ids += [c.contract_id for c in grouping.combos]
        for cid in ids:
            held = self._held_legs(grouping, cid)
            if held is None:
                continue
            units, legs = held
            _, theirs, _ = self._working_on(ib, opened, legs, "")
            if mode == "cancel":
                theirs = [t for t in theirs if t.order.clientId != mine]
            if theirs and (mode == "hold" or _net_allowed(units, legs, theirs) <= 0):
                blocks[cid] = self._foreign_block.get(cid) or _foreign_reason(cid, mode, theirs)
                key = f"{cid}:" + ",".join(sorted(str(t.order.permId) for t in theirs))
                # once per set of orders: critical when nothing will close it ("hold", or
                # orders "cancel" cannot cancel), a warning when they close it themselves
                severity = "warning" if mode == "warn" else "critical"
                self._notice(f"{mode}:{key}", severity, blocks[cid])
        for cid in set(self._foreign_block) - set(blocks):
            log.info("ibkr %s: the other clients' working orders are gone; exits go out", cid)
        self._foreign_block = blocks

    def _notice(self, subject: str, severity: str, text: str) -> None:
        if subject in self._noticed:
            return
        self._noticed.add(subject)
        log.warning("ibkr: %s", text)
        if self.on_notice is not None:
            try:
                self.on_notice(f"ibkr:foreign:{subject}", severity, text)
            except Exception:
                log.exception("ibkr: the foreign-order alert failed")

    # ---- submit ------------------------------------------------------------------------------

    async def submit(self, req: OrderRequest) -> OrderResult:
        """Place one closing limit order and wait for its outcome (module docstring)."""
        ib = self._ib()
        coid = req.client_order_id
        known = self._known(ib, coid)
        if known is not None:
            log.warning("ibkr order %s is already at IB: reporting it, not placing another", coid)
            done = self._done.get(coid)
            if done is not None and isinstance(known, Trade) and known.isDone():
                return done  # the answer this process already gave, word for word
            return await self._report_known(ib, known, coid)
        if self._config.readonly:
            return _rejected(coid, "READ_ONLY: [venues.ibkr] readonly = true; nothing is sent")
        if self._read_only is not None:
            return _rejected(coid, self._read_only)
        if req.limit_price is None or not math.isfinite(req.limit_price):
            return _rejected(coid, "NO_LIMIT: IB exits are limit orders; no limit price given")
        limit = round(req.limit_price, 6)
        if limit < self._config.min_price - EPS:
            return _rejected(
                coid,
                f"MID_TOO_LOW: limit {limit:g} is below [venues.ibkr] min_price "
                f"{self._config.min_price:g}; not sent",
            )
        qty = round(req.qty)
        if qty <= 0 or abs(req.qty - qty) > EPS:
            return _rejected(coid, f"BAD_QTY: {req.qty:g} is not a whole number of contracts")
        grouping = self._grouping(ib)
        target = self._closing_target(grouping, req, qty)
        if isinstance(target, str):
            return _rejected(coid, target)
        contract, action = target
        closed = self._market_closed(req.contract_id)
        if closed is not None:
            return _rejected(coid, closed)
        allowed = await self._foreign_check(ib, grouping, req, qty)
        if isinstance(allowed, str):
            return _rejected(coid, allowed)
        qty = allowed
        order = LimitOrder(
            action,
            qty,
            limit,
            orderRef=coid,
            tif="DAY",
            account=self._account(ib),
            # a stock's exit may go out in extended hours (exit_outside_rth); options never
            outsideRth=self._config.exit_outside_rth and self._is_stock(req.contract_id),
        )
        self._asked[coid] = float(qty)
        if contract.secType == "BAG":
            # its legs' position updates will come one at a time: the group is then partly held
            self._closing[req.contract_id] = coid
        with _Waker(self, ib) as waker:
            trade = ib.placeOrder(contract, order)
            log.info(
                "ibkr order %s: %s %d %s @ %g (orderId %d)",
                coid,
                action,
                qty,
                req.contract_id,
                limit,
                trade.order.orderId,
            )
            result = await self._work(waker, ib, trade, coid, self._config.attempt_timeout_seconds)
        if result.status == "rejected" and result.reason.startswith("READ_ONLY"):
            self._block_read_only(result, req)
        return result

    def _closing_target(
        self, grouping: Grouping, req: OrderRequest, qty: int
    ) -> tuple[IbContract, str] | str:
        """(contract, action) of the order closing `req`, or why it cannot be sent."""
        combo = grouping.combo(req.contract_id)
        if combo is not None:
            held_side, held_qty = combo.side, combo.qty
        else:
            leg = grouping.single(req.contract_id)
            if leg is None:
                return f"NOT_HELD: {req.contract_id} is not held at IB; nothing to close"
            held_side, held_qty = leg.side, abs(leg.position)
        want = "sell" if held_side == "long" else "buy"
        if req.side != held_side or req.action != want:
            return (
                f"POSITION_MISMATCH: {req.contract_id} is held {held_side} at IB; "
                f"a {req.action} to close {req.side} is not sent"
            )
        if qty > held_qty + EPS:
            return (
                f"POSITION_MISMATCH: {req.contract_id}: {qty} asked, {held_qty:g} held at IB; "
                "not sent (it would open a position)"
            )
        action = "SELL" if held_side == "long" else "BUY"
        if combo is not None:
            return _bag(combo), action
        assert leg is not None
        contract = copy.copy(leg.ib_contract)  # positions carry no exchange: SMART routes
        contract.exchange = "SMART"
        return contract, action

    async def _work(
        self, waker: _Waker, ib: IB, trade: Trade, coid: str, timeout: float
    ) -> OrderResult:
        """Wait up to `timeout` for `trade` to finish, cancel the rest, wait for the
        confirmation and the commission reports; its result."""
        try:
            await waker.until(lambda: trade.isDone() or _refusal(trade) is not None, timeout)
            refused = _refusal(trade)
            if refused is not None and not trade.isDone() and _filled(trade)[0] <= EPS:
                return _rejected(coid, _reason(*refused), _venue_id(trade))
            note = ""
            if not trade.isDone():
                note = f"CANCELLED: not filled within {timeout:g}s, the rest cancelled"
                ib.cancelOrder(trade.order)
                if not await waker.until(trade.isDone, self._confirm_timeout):
                    raise VenueError(
                        f"{UNREACHABLE}: the cancel of order {coid} (orderId "
                        f"{trade.order.orderId}) was not confirmed"
                    )
            await waker.until(lambda: _complete(trade.contract, trade), self._confirm_timeout)
        except _Lost:
            raise VenueError(
                f"{UNREACHABLE}: connection lost while order {coid} was working"
            ) from None
        result = self._result(trade, coid, note=note)
        self._done[coid] = result
        return result

    def _known(self, ib: IB, coid: str) -> Trade | list[Any] | None:
        """The client's own record of an orderRef: its trade, else its executions."""
        # An order never acknowledged (no permId, still PendingSubmit) is one IB did not take:
        # `lookup` answered None for it, and the engine sends the same id again.
        trades = [t for t in ib.trades() if t.order.orderRef == coid and not (_unacknowledged(t))]
        if trades:
            active = [t for t in trades if not t.isDone()]
            return active[0] if active else max(trades, key=lambda t: _filled(t)[0])
        fills = [f for f in ib.fills() if f.execution.orderRef == coid]
        return fills or None

    async def _report_known(self, ib: IB, known: Trade | list[Any], coid: str) -> OrderResult:
        with _Waker(self, ib) as waker:
            if isinstance(known, Trade):
                return await self._work(
                    waker, ib, known, coid, self._config.attempt_timeout_seconds
                )
            try:
                await waker.until(lambda: _reports_in(known), self._confirm_timeout)
            except _Lost:
                raise VenueError(f"{UNREACHABLE}: connection lost reading {coid}") from None
            return self._from_fills(coid, known)

    # ---- lookup ------------------------------------------------------------------------------

    async def lookup(self, client_order_id: str) -> OrderResult | None:
        """The order with this orderRef at IB (open, completed, or by its executions); a still
        working one is cancelled first. None when IB has never seen it."""
        coid = client_order_id
        ib = self._ib()
        with _Waker(self, ib) as waker:
            try:
                opened = await self._all_open_orders(ib)
                # what IB lists as working (an order only this client remembers as pending,
                # that IB does not list, is not one IB has)
                working = [t for t in opened if t.order.orderRef == coid and not t.isDone()]
                for t in working:
                    if t.order.clientId != ib.client.clientId:
                        raise VenueError(
                            f"ORDER_WORKING: order {coid} works under API client "
                            f"{t.order.clientId} and cannot be cancelled from this one"
                        )
                    log.info("ibkr lookup %s: still working; cancelling it", coid)
                    ib.cancelOrder(t.order)
                if working and not await waker.until(
                    lambda: all(t.isDone() for t in working), self._confirm_timeout
                ):
                    raise VenueError(f"{UNREACHABLE}: the cancel of order {coid} was not confirmed")
                completed = await self._request(
                    ib.reqCompletedOrdersAsync(False), "reqCompletedOrders"
                )
                await self._request(ib.reqExecutionsAsync(), "reqExecutions")
                fills = [f for f in ib.fills() if f.execution.orderRef == coid]
                trades = _unique_trades(
                    [
                        *working,
                        *(
                            t
                            for t in ib.trades()
                            if t.order.orderRef == coid and t.isDone() and not _unacknowledged(t)
                        ),
                        *(t for t in completed if t.order.orderRef == coid),
                    ]
                )
                if not trades and not fills:
                    return None
                await waker.until(lambda: _reports_in(fills), self._confirm_timeout)
            except _Lost:
                raise VenueError(f"{UNREACHABLE}: connection lost looking up {coid}") from None
        if not trades:
            return self._from_fills(coid, fills)
        if len(trades) > 1:
            log.warning(
                "ibkr: %d orders carry orderRef %s; reporting the most filled", len(trades), coid
            )
        trade = max(trades, key=lambda t: _filled(t, ib.fills())[0])
        return self._result(trade, coid, ib.fills())

    # ---- results -----------------------------------------------------------------------------

    def _result(
        self, trade: Trade, coid: str, extra: Iterable[Any] = (), note: str = ""
    ) -> OrderResult:
        """The result of an order that is over. `note`: why it ended (our cancel), if known."""
        filled, avg, fills = _filled(trade, extra)
        fees = _fees(fills)
        total = float(trade.order.totalQuantity or 0) or self._asked.get(coid, 0.0)
        refused = _refusal(trade, final=True)
        if filled <= EPS and refused is not None:
            return _rejected(coid, _reason(*refused), _venue_id(trade))
        status: OrderStatus
        if filled <= EPS:
            status = "unfilled"
        elif total and filled >= total - EPS:
            status = "filled"
        else:
            status = "partial"
        reason = ""
        if status != "filled":
            if refused is not None:
                reason = _reason(*refused)
            elif note:
                reason = note
            elif trade.orderStatus.status in ("Cancelled", "ApiCancelled", "Inactive"):
                reason = f"CANCELLED: {trade.orderStatus.status} at IB"
        if filled > EPS and not _reports_in(fills):
            reason = (reason + "; " if reason else "") + "commission reports incomplete"
        return OrderResult(
            client_order_id=coid,
            status=status,
            filled_qty=filled,
            avg_price=avg if filled > EPS else None,
            fees=fees,
            venue_order_id=_venue_id(trade),
            reason=reason,
        )

    def _from_fills(self, coid: str, fills: Sequence[Any]) -> OrderResult:
        """A result from executions alone (no order record): partial unless this process knows
        the quantity it sent (the engine treats a partial of everything as closed)."""
        top = [f for f in fills if f.contract.secType == "BAG"] or list(fills)
        qty = sum(f.execution.shares for f in top)
        avg = _avg(top)
        asked = self._asked.get(coid)
        status: OrderStatus = "filled" if asked and qty >= asked - EPS else "partial"
        if qty <= EPS:
            status = "unfilled"
        perm = fills[0].execution.permId if fills else 0
        return OrderResult(coid, status, float(qty), avg, _fees(fills), str(perm or ""))


# ---- helpers -----------------------------------------------------------------------------------


def _bag(combo: Combo) -> IbContract:
    return IbContract(
        secType="BAG",
        symbol=combo.symbol,
        currency=combo.currency,
        exchange="SMART",
        comboLegs=[
            ComboLeg(
                conId=leg.con_id,
                ratio=abs(ratio),
                action="BUY" if ratio > 0 else "SELL",
                exchange="SMART",
            )
            for leg, ratio in combo.legs
        ],
    )


def _rejected(coid: str, reason: str, venue_order_id: str = "") -> OrderResult:
    return OrderResult(coid, "rejected", 0.0, None, 0.0, venue_order_id, reason)


def _venue_id(trade: Trade) -> str:
    perm = trade.order.permId or trade.orderStatus.permId
    return str(perm or trade.order.orderId or "")


def _reason(code: int, message: str) -> str:
    if code == 201:
        return f"{'NO_MARGIN' if _MARGIN.search(message) else 'REJECTED_201'}: {message}"
    if code == 321 and _READ_ONLY.search(message):
        return f"READ_ONLY: {message}"
    return f"REJECTED_{code}: {message}"


def _refusal(trade: Trade, final: bool = False) -> tuple[int, str] | None:
    """The (code, message) of the error that refused the order, from its log. While it works
    (`final` False) only a refusal ib_async leaves the order active after (321) counts; at the
    end any error but our own cancel and the notices."""
    for entry in trade.log:
        code = entry.errorCode
        if not code or code in _NOT_REFUSALS or 2100 <= code < 2200:
            continue
        if final or code in _REFUSING_WARNINGS:
            return code, _LOG_PREFIX.sub("", entry.message)
    return None


def _touches(trade: Trade, con_ids: set[int]) -> bool:
    c = trade.contract
    if c.secType == "BAG":
        return any(cl.conId in con_ids for cl in c.comboLegs or [])
    return c.conId in con_ids


def _working_qty(trade: Trade) -> float:
    """What is left of a working order (its orderStatus: an order of another client has no
    executions at this client)."""
    total = float(trade.order.totalQuantity or 0)
    filled = float(trade.orderStatus.filled or 0)
    return max(total - filled, 0.0)


def _closing_qty(trade: Trade, con_id: int, position: float) -> float:
    """How much of the held leg `con_id` (signed `position`) a working order would close."""
    rem = _working_qty(trade)
    if rem <= EPS or not position:
        return 0.0
    sells = trade.order.action.upper() == "SELL"
    c = trade.contract
    if c.secType != "BAG":
        return rem if c.conId == con_id and sells == (position > 0) else 0.0
    out = 0.0
    for cl in c.comboLegs or []:
        if cl.conId != con_id:
            continue
        leg_sells = (cl.action.upper() == "SELL") != sells  # a sold BAG reverses its legs
        if leg_sells == (position > 0):
            out += rem * cl.ratio
    return out


def _net_allowed(units: float, legs: list[tuple[int, float, float]], theirs: list[Trade]) -> int:
    """Units of the position that may be closed without the other orders flipping a leg."""
    allowed = units
    for con_id, position, ratio in legs:
        covered = sum(_closing_qty(t, con_id, position) for t in theirs)
        allowed = min(allowed, math.floor((abs(position) - covered) / ratio + EPS))
    return max(int(allowed), 0)


def _foreign_reason(cid: str, mode: str, theirs: list[Trade]) -> str:
    """Why an exit on `cid` is held for other clients' working orders (`exit_hold`)."""
    text = _describe_all(theirs)
    if mode == "hold":
        return (
            f"FOREIGN_ORDERS: {cid}: another client's working order would also close it "
            f'({text}); on_foreign_orders = "hold": nothing is sent while it works. Fix: '
            "cancel it in TWS (the exit then goes out), or set [venues.ibkr] on_foreign_orders"
        )
    why = (
        " that this API client may not cancel (IB lets only the client that placed an order "
        "cancel it; TWS's own orders: client_id 0)"
        if mode == "cancel"
        else ""
    )
    return (
        f"FOREIGN_ORDERS: {cid}: other clients' working orders{why} already cover the "
        f"position ({text}); nothing is sent (it would flip the position). Fix: cancel them in "
        "TWS, or let them fill"
    )


def _describe_all(trades: Iterable[Trade]) -> str:
    return "; ".join(_describe(t) for t in trades)


def _describe(trade: Trade) -> str:
    o = trade.order
    who = "TWS" if o.clientId == 0 else f"API client {o.clientId}"
    price = f" @ {o.lmtPrice:g}" if o.lmtPrice and abs(o.lmtPrice) < _UNSET else ""
    return f"{o.action} {_working_qty(trade):g} {o.orderType}{price} of {who}, permId {o.permId}"


def _unacknowledged(trade: Trade) -> bool:
    return not trade.order.permId and trade.orderStatus.status == "PendingSubmit"


def _unique_trades(trades: Iterable[Trade]) -> list[Trade]:
    out: list[Trade] = []
    seen: set[Any] = set()
    for t in trades:
        key = t.order.permId or (t.order.clientId, t.order.orderId)
        if key not in seen:
            seen.add(key)
            out.append(t)
    return out


def _exec_fills(trade: Trade, extra: Iterable[Any] = ()) -> list[Any]:
    """The trade's executions, with those of `extra` carrying its permId (or orderRef)."""
    by_id = {f.execution.execId: f for f in trade.fills}
    perm, ref = trade.order.permId, trade.order.orderRef
    for f in extra:
        e = f.execution
        if (perm and e.permId == perm) or (not perm and ref and e.orderRef == ref):
            by_id.setdefault(e.execId, f)
    return list(by_id.values())


def _filled(trade: Trade, extra: Iterable[Any] = ()) -> tuple[float, float | None, list[Any]]:
    """(filled quantity, average price per share / per combo unit, executions) of a trade."""
    fills = _exec_fills(trade, extra)
    qty_f, avg_f = _from_executions(trade.contract, fills)
    status = trade.orderStatus
    filled = max(qty_f, float(status.filled or 0.0))
    fq = trade.order.filledQuantity
    if isinstance(fq, (int, float)) and 0 < fq < _UNSET:
        filled = max(filled, float(fq))
    avg = avg_f if qty_f > EPS and qty_f >= filled - EPS else None
    if avg is None and status.avgFillPrice and filled > EPS:
        avg = round(float(status.avgFillPrice), _DIGITS)
    if avg is None:
        avg = avg_f
    return filled, avg, fills


def _from_executions(contract: Any, fills: Sequence[Any]) -> tuple[float, float | None]:
    """Filled quantity and average price from executions: an order's own (a BAG order's BAG
    executions), else, for a BAG, from its legs' executions and the combo's ratios."""
    is_bag = contract is not None and contract.secType == "BAG"
    top = [f for f in fills if f.contract.secType == "BAG"] if is_bag else list(fills)
    qty = sum(f.execution.shares for f in top)
    if qty > EPS:
        return qty, _avg(top)
    if not is_bag or not fills or not contract.comboLegs:
        return 0.0, None
    units: list[float] = []
    price = 0.0
    for cl in contract.comboLegs:
        mine = [f for f in fills if f.contract.conId == cl.conId]
        shares = sum(f.execution.shares for f in mine)
        if shares <= EPS or not cl.ratio:
            return 0.0, None
        units.append(shares / cl.ratio)
        leg_avg = sum(f.execution.shares * f.execution.price for f in mine) / shares
        price += (1 if cl.action == "BUY" else -1) * cl.ratio * leg_avg
    return min(units), round(price, _DIGITS)


def _avg(fills: Sequence[Any]) -> float | None:
    """The executions' average price (rounded at 9 decimals: float noise, not a tick)."""
    qty = sum(f.execution.shares for f in fills)
    if qty <= EPS:
        return None
    return round(sum(f.execution.shares * f.execution.price for f in fills) / qty, _DIGITS)


def _fees(fills: Sequence[Any]) -> float:
    """The commissions of the executions: a combo order's legs' when it has leg executions
    (the combo's own execution is not charged separately), else the order's own."""
    legs = [f for f in fills if f.contract.secType != "BAG"]
    total = 0.0
    for f in legs or fills:
        r = f.commissionReport
        if r.execId and r.commission is not None and abs(r.commission) < _UNSET:
            total += r.commission
    return round(total, 10)


def _reports_in(fills: Sequence[Any]) -> bool:
    """Every execution that is charged has its commission report (the legs' of a combo order
    when it has leg executions: the combo's own execution may have none)."""
    legs = [f for f in fills if f.contract.secType != "BAG"]
    charged = legs or list(fills)
    return all(f.commissionReport.execId for f in charged)


def _complete(contract: Any, trade: Trade) -> bool:
    """The executions cover the filled quantity and their commission reports are in."""
    filled = float(trade.orderStatus.filled or 0.0)
    qty, _ = _from_executions(contract, trade.fills)
    return qty >= filled - EPS and _reports_in(trade.fills)
