"""Market data from Interactive Brokers into the engine: `IbkrMarketFeed`.

What it sends (through `engine.handle_safely`), each stamped with the clock's time at which IB's
last price or size tick of that contract arrived (never the time of our own hand-over):

- a `ContractEvent` for each held contract (`held()`, from the venue: stocks, options, combos),
  for each leg of a held combo, and for each option of the strike table;
- `QuoteEvent`s for every subscribed stock and option: bid/ask/last and sizes; for options the
  model greeks of the ticker (`modelGreeks`: `iv`, `delta`, `und_price`). A combo has no quote of
  its own: the engine derives it from its legs (docs/ibkr.md), so the feed subscribes the LEGS;
- the underlying's price (`[venues.ibkr] underlying`) as a `SpotEvent` (last, else mid);
- VIX (`Index("VIX", "CBOE")`, with `vix = true`) through `engine.vix_update(value, ts)` when
  the engine has that method.
- the underlying's last 30 minutes (or the longest volatility window) of 1-minute bars
  (`reqHistoricalData`, TRADES, outside regular hours too) once, through
  `engine.seed_spot_history`, so momentum and volatility are ready at once; in a task, so held
  contracts' quotes never wait for it; asked again after a minute, 3 times at most.

Choices worth knowing:

- A price IB reports as nan or -1, or with a size of 0, is "no quote on that side": None, never a
  number. A ticker is quoted only once it has received data since it was (re)subscribed: after a
  reconnect or a 1101 the client's old values are not re-stamped as new.
- Freshness is IB's, not ours. A quote's `ts` is the time the last price/size tick of its
  ticker arrived (a new price, or IB repeating one: a confirmation); model greeks alone do not
  refresh it (IB recomputes them from the underlying, whatever the option's own line does). A
  quote is handed over when its values or that time changed, never re-stamped: a quiet or
  silently dead line ages, and the engine's staleness check (`max_quote_age_seconds`) sees it.
  The spot and VIX carry their tick's time the same way.
- Holds. When IB says its market data is not flowing (2103 a market data farm broken, 1100
  TWS lost IB, the socket lost) every quote of this feed is marked unusable at once
  (`engine.hold_quotes`, the data guard refuses them; one `source_problem("ibkr-data", …)`
  alert). After the farm is back (2104 once no farm is broken) or 1102 (restored, data kept)
  the lines are requested again (a fresh snapshot of every field) and each contract is
  released (`engine.release_quotes`) only on its first tick of the new subscription, so
  pre-outage values are never acted on. 2105 (HMDS, historical data) and 2157 (sec-def) do
  not stop live quotes: they are alerted for what they do stop (the backfill, new contract
  lookups).
- One contract never stops the others: an error while qualifying, announcing or quoting one
  contract (an expiry the market calendar cannot place, a venue contract that cannot be
  converted) is caught at that contract, alerted once naming it
  (`source_problem("ibkr:<id>", …)`), and the step goes on with the rest.
- Lines (`max_market_data_lines`, shared through `IbConnection.lines`) go to the held contracts
  first, then the underlying, VIX, and the strike table, nearest strikes first: the strike table
  is trimmed first, and a log line (no alert) says so. Contracts no longer held and not in the
  strike table give their line back.
- The strike table: `reqSecDefOptParams` of the underlying, the SMART chain of its own trading
  class when there is one; the nearest expiry that has not closed (`close_of(expiry)` > now);
  the `strikes` strikes nearest the underlying's price, calls and puts, each qualified (strikes
  the expiry does not list are skipped). It is centred again when the price leaves the middle
  half of the table, and rolls to the next expiry when the current one closes.
- The connection: one `source_problem("ibkr", "GATEWAY_UNREACHABLE: …")` per episode of the
  connection being down (however short, however many reconnect attempts) and one
  `source_ok("ibkr")` when it is back. The connection requests every line again after a
  reconnect or a 1101 and tells the feed (`on_resubscribe`); after a 1102 nothing changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import inspect
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from engine.clock import Clock
from engine.config import IbkrConfig
from engine.models import Contract, ContractEvent, MarketEvent, Quote, QuoteEvent, SpotEvent
from engine.venues.ibkr.connection import IbConnection, IbError
from engine.venues.ibkr.ib import Contract as IbContract
from engine.venues.ibkr.ib import Index, Option, Stock, Ticker
from engine.venues.ibkr.ids import (
    contract_from_ib,
    default_close_of,
    option_id,
    parse_id,
    stock_id,
)

__all__ = ["DATA_SOURCE", "SOURCE", "IbkrMarketFeed", "quote_from_ticker", "spot_from_ticker"]

log = logging.getLogger("engine.feeds.ibkr")

SOURCE = "ibkr"
DATA_SOURCE = "ibkr-data"  # the alert episode of IB's market data not flowing (farms, 1100)
# 2103: a market data farm is broken (live quotes stop); 2105 HMDS and 2157 sec-def farms do not
# carry live quotes: alerted for what they stop. 2104/2106/2158: that farm is OK again.
FARM_BROKEN = {
    2103: "live quotes held",
    2105: "historical data (the backfill) unavailable",
    2157: "new contracts cannot be looked up",
}
FARM_OK = frozenset({2104, 2106, 2158})
FROZEN_TYPES = frozenset({2, 4})  # reqMarketDataType's frozen and delayed-frozen
VIX_KEY = "index:VIX"
RETRY_SECONDS = 60.0  # a contract that could not be qualified is asked about again after this
BACKFILL_MINUTES = 30  # at least: the longest momentum window (and the config's volatility ones)
BACKFILL_ATTEMPTS = 3  # then the underlying's momentum and volatility warm up from live prices
_OPTION_TYPES = frozenset({"OPT", "FOP"})


class _Sink(Protocol):
    async def handle_safely(self, event: MarketEvent) -> object: ...

    async def source_problem(self, source: str, text: str) -> None: ...

    async def source_ok(self, source: str) -> None: ...


def _bar_start(date: Any) -> float | None:
    """A bar's start in Unix seconds: ib_async gives a UTC datetime for formatDate 2."""
    if isinstance(date, dt.datetime):
        return date.timestamp() if date.tzinfo is not None else None
    return None


def _num(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _price(value: Any) -> float | None:
    v = _num(value)
    return v if v is not None and v > 0 else None


def _side(price: Any, size: Any) -> tuple[float | None, float]:
    """(price, size) of one side of the book; (None, 0) when IB says there is none."""
    p = _price(price)
    s = _num(size)
    if p is None or (s is not None and s <= 0):
        return None, 0.0
    return p, s or 0.0


def quote_from_ticker(contract_id: str, ticker: Ticker, ts: float) -> Quote | None:
    """The engine's quote of one ticker; None while the ticker has no price at all."""
    bid, bid_size = _side(ticker.bid, ticker.bidSize)
    ask, ask_size = _side(ticker.ask, ticker.askSize)
    last = _price(ticker.last)
    if bid is None and ask is None and last is None:
        return None
    iv = delta = und = None
    greeks = ticker.modelGreeks
    if greeks is not None and getattr(ticker.contract, "secType", "") in _OPTION_TYPES:
        iv = _num(greeks.impliedVol)
        iv = iv if iv is not None and iv >= 0 else None
        delta = _num(greeks.delta)
        delta = delta if delta is not None and -1.0 <= delta <= 1.0 else None
        und = _price(greeks.undPrice)
    return Quote(
        id=contract_id,
        bid=bid,
        ask=ask,
        ts=ts,
        bid_size=bid_size,
        ask_size=ask_size,
        last=last,
        volume=_num(ticker.volume) or 0.0,
        iv=iv,
        delta=delta,
        und_price=und,
    )


def spot_from_ticker(ticker: Ticker) -> float | None:
    """The last trade, else the mid of a two-sided quote, else the previous close."""
    last = _price(ticker.last)
    if last is not None:
        return last
    bid, _ = _side(ticker.bid, ticker.bidSize)
    ask, _ = _side(ticker.ask, ticker.askSize)
    if bid is not None and ask is not None and bid <= ask:
        return (bid + ask) / 2
    return _price(ticker.close)


def _quote_key(q: Quote) -> tuple[object, ...]:
    return (q.bid, q.ask, q.bid_size, q.ask_size, q.last, q.volume, q.iv, q.delta, q.und_price)


def _ib_contract(contract_id: str) -> IbContract | None:
    """The (unqualified) IB contract an engine stock/option id names."""
    p = parse_id(contract_id)
    if p is None:
        return None
    if p.sec_type == "STK":
        return Stock(p.symbol, "SMART", p.currency)
    return Option(
        p.symbol,
        p.expiry,
        p.strike,
        p.right,
        "SMART",
        multiplier=f"{p.multiplier:g}" if p.multiplier else "",
        currency=p.currency,
        tradingClass=p.trading_class,
    )


def _stop_if_cancelled() -> None:
    """Raise CancelledError if this task was asked to stop. On Python 3.11 a cancellation that
    lands as an inner `asyncio.wait_for` times out comes back as TimeoutError (fixed in 3.12);
    the client library's requests use wait_for, and the loop above goes on after a TimeoutError,
    so without this a stopped engine could wait for its feed forever."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class IbkrMarketFeed:
    """Market data of the held contracts, the underlying, VIX and the strike table (module doc).

    `run(engine)` loops until cancelled; the connection's own `run()` is its owner's task."""

    name = SOURCE

    def __init__(
        self,
        conn: IbConnection,
        clock: Clock,
        config: IbkrConfig,
        held: Callable[[], Iterable[Contract]],
        close_of: Callable[[str], float] = default_close_of,
        *,
        held_ib: Callable[[], Mapping[str, IbContract]] | None = None,
        poll_seconds: float = 1.0,
    ) -> None:
        self.conn = conn
        self.clock = clock
        self.config = config
        self.held = held
        self.close_of = close_of
        # engine id -> the IB contract of a held position (its conId, trading class, multiplier):
        # held contracts are qualified by conId, never re-guessed from their readable id
        self.held_ib = held_ib
        self.poll_seconds = poll_seconds
        self.underlying_id = stock_id(config.underlying, config.underlying_currency)
        self.chain_expiry: str | None = None
        self.chain_strikes: list[float] = []
        self.chain_ids: list[str] = []  # the strike table, nearest the money first
        self.trimmed = 0  # contracts left without a line at the last sync
        self._qualified: dict[str, IbContract] = {}  # engine id (or VIX_KEY) → IB contract
        self._retry: dict[str, float] = {}  # ids that failed qualification → when to retry
        self._announced: dict[str, Contract] = {}
        self._mine: dict[int, str] = {}  # conId → engine id, lines this feed holds
        self._live: set[int] = set()  # conIds with data since (re)subscription
        self._dirty: set[int] = set()  # conIds updated since the last step
        self._last: dict[str, tuple[tuple[object, ...], float]] = {}
        self._next_pass = -math.inf
        self._chain_params: list[Any] | None = None
        self._chain_retry = -math.inf
        self._wake = asyncio.Event()
        self._down: str | None = None  # the reason of a down episode not yet over
        self._reported = False
        self._logged: set[str] = set()
        self._remove_error_listener: Callable[[], None] | None = None
        self.backfilled = 0  # minute closes of the underlying the engine took from the backfill
        self._backfill_done = False
        self._backfill_task: asyncio.Task[None] | None = None
        self._backfill_failures = 0
        self._backfill_retry = -math.inf
        self._tick_ts: dict[int, float] = {}  # conId -> when its last price/size tick came
        self._farms: dict[str, str] = {}  # broken market data farms -> IB's message
        self._conn_down: str | None = None  # why the data is not flowing (1100, socket lost)
        self._refresh_due = False  # request every line again (a fresh snapshot) next step
        self._held_ids: set[str] = set()  # ids held at the engine (hold_quotes)
        self._hold_alerted: str | None = None  # the hold reason alerted (source "ibkr-data")
        self._hold_applied: str | None = None  # the hold reason the engine was last told
        self._other_farms: dict[str, str] = {}  # broken HMDS / sec-def farms -> alert text
        self._other_alerted: set[str] = set()
        self._failing: dict[str, str] = {}  # ids whose handling failed -> the error alerted
        self._held_last: set[str] = set()  # the held ids of the last step
        self.delayed: set[int] = set()  # conIds IB answers with delayed data (10167, type 3/4)
        self._delayed_held: set[str] = set()  # ids held because their data is delayed
        self._frozen_held: set[str] = set()  # ids held because IB sends frozen (closing) prices
        self._live_tick: set[int] = set()  # conIds whose last tick was not a frozen one

    # --- the loop ---------------------------------------------------------------------------

    def _attach(self) -> None:
        """Listen to the connection and the client's tickers (once). Before the first line is
        requested: IB answers a subscription with the current values at once, and a quiet
        contract may send nothing more for a long time."""
        if self._remove_error_listener is not None:
            return
        self.conn.add_listener(self)
        self.conn.ib.pendingTickersEvent += self._on_pending
        self._remove_error_listener = self.conn.add_error_listener(self._on_error)

    def _detach(self) -> None:
        self.conn.remove_listener(self)
        self.conn.ib.pendingTickersEvent -= self._on_pending
        if self._remove_error_listener is not None:
            self._remove_error_listener()
            self._remove_error_listener = None

    async def run(self, engine: _Sink) -> None:
        self._attach()
        try:
            while True:
                self._wake.clear()
                try:
                    await self.step(engine)
                except (ConnectionError, OSError, TimeoutError) as exc:
                    log.warning("IB feed: %s; trying again", exc or type(exc).__name__)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("IB feed: step failed; going on")
                _stop_if_cancelled()
                await self._wait()
        finally:
            self._detach()
            if self._backfill_task is not None:
                self._backfill_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._backfill_task
            for con_id in list(self._mine):
                self.conn.lines.release(con_id)
            self._mine.clear()

    async def _wait(self) -> None:
        if self._wake.is_set():
            return
        waits = [
            asyncio.ensure_future(self.clock.sleep(self.poll_seconds)),
            asyncio.ensure_future(self._wake.wait()),
        ]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def step(self, engine: _Sink) -> None:
        """One round: the connection's episode, holds, then (when connected) subscriptions and
        data."""
        self._attach()
        await self._report_connection(engine)
        await self._apply_hold(engine)
        if not self.conn.connected:
            return
        if self._refresh_due and self.hold_reason is None:
            self._refresh_due = False
            n = self.conn.lines.refresh(list(self._mine))
            self._fresh_start()
            log.info("IB feed: %d market data lines requested again (fresh snapshot)", n)
        await self._sync(engine)
        await self._emit(engine)

    @property
    def hold_reason(self) -> str | None:
        """Why IB's market data cannot be trusted now, or None."""
        if self._conn_down is not None:
            return f"IB market data not flowing ({self._conn_down})"
        if self._farms:
            farms = ", ".join(f"{msg}" for msg in self._farms.values())
            return f"IB market data farm broken ({farms})"
        return None

    def _fresh_start(self) -> None:
        """Values held so far are pre-outage: nothing is handed over until a tick comes."""
        self._live.clear()
        self._dirty.clear()
        self._last.clear()
        self._tick_ts.clear()

    def _known_ids(self) -> set[str]:
        return {*self._announced, *self._mine.values()}

    async def _apply_hold(self, engine: _Sink) -> None:
        """While the data is not flowing: every quote held at the engine at once (its data
        guard re-checks every trade on them at its next tick), one alert."""
        for farm, text in list(self._other_farms.items()):  # alerted, nothing held
            if farm not in self._other_alerted:
                self._other_alerted.add(farm)
                await engine.source_problem(f"{DATA_SOURCE}:{farm}", text)
        for farm in sorted(self._other_alerted - set(self._other_farms)):
            self._other_alerted.discard(farm)
            await engine.source_ok(f"{DATA_SOURCE}:{farm}")
        reason = self.hold_reason
        hold = getattr(engine, "hold_quotes", None)
        if reason is None:
            self._hold_applied = None
            if self._hold_alerted is not None:  # (each contract stays held until its data)
                self._hold_alerted = None
                await engine.source_ok(DATA_SOURCE)
            return
        ids = self._known_ids()
        if hold is not None and (ids - self._held_ids or reason != self._hold_applied):
            self._hold_applied = reason
            hold(sorted(ids), reason)
            self._held_ids |= ids
        if reason != self._hold_alerted and self._conn_down is None:
            # (a lost connection or 1100 has its own GATEWAY_UNREACHABLE alert)
            self._hold_alerted = reason
            await engine.source_problem(
                DATA_SOURCE,
                f"{reason}: every IB quote is held (no rule acts, no order is sent on it) until "
                "fresh data arrives",
            )

    # --- connection events (called synchronously by the connection / the client) --------------

    def on_state(self, connected: bool, reason: str) -> None:
        if not connected:
            if not self.conn.ib.isConnected():
                self._farms.clear()  # a new session reports its farms anew (2103 / 2104)
                self._other_farms.clear()
            if self._down is None:
                self._down = reason or "disconnected"
            if self._conn_down is None:
                self._conn_down = reason or "disconnected"
                self._fresh_start()
        elif self._conn_down is not None:
            self._conn_down = None
            # back (a reconnect, 1101 or 1102): the lines are requested again and only data
            # that arrives after that releases a contract
            self._refresh_due = True
        self._wake.set()

    def on_resubscribe(self) -> None:
        self._fresh_start()
        self._refresh_due = False  # the connection has just requested every line again
        self._wake.set()

    def _on_pending(self, tickers: Iterable[Ticker]) -> None:
        woke = False
        now = self.clock.now()
        for t in tickers:
            con_id = getattr(t.contract, "conId", 0)
            if con_id in self._mine:
                if t.ticks:  # a price or size tick (a new value or IB repeating one)
                    self._tick_ts[con_id] = now
                    self._live.add(con_id)
                    if getattr(t, "marketDataType", 1) in FROZEN_TYPES:
                        self._live_tick.discard(con_id)
                    else:
                        self._live_tick.add(con_id)
                self._dirty.add(con_id)
                woke = True
        if woke:
            self._wake.set()

    def _on_error(self, error: IbError) -> None:
        code = error.code
        if code in FARM_BROKEN:
            farm = error.message.rsplit(":", 1)[-1].strip() or str(code)
            if code == 2103:
                if farm not in self._farms:
                    self._farms[farm] = f"{code} {error.message}"
                    self._fresh_start()
            elif farm not in self._other_farms:
                text = f"{code} {error.message}: {FARM_BROKEN[code]}; live quotes go on"
                self._other_farms[farm] = text
                log.warning("IB feed: %s", text)
            self._wake.set()
            return
        if code in FARM_OK:
            farm = error.message.rsplit(":", 1)[-1].strip()
            self._other_farms.pop(farm, None)
            if self._farms.pop(farm, None) is not None and not self._farms:
                self._refresh_due = True  # values from before the outage: a fresh snapshot
            self._wake.set()
            return
        if code == 1102:
            self._refresh_due = True
            self._wake.set()
            return
        if code in (10167, 10168):
            con_id = getattr(error.contract, "conId", 0)
            if con_id:
                self.delayed.add(con_id)
        if code not in (354, 10167, 10168, 10089, 10090):
            return
        con_id = getattr(error.contract, "conId", 0)
        what = self._mine.get(con_id, str(error.contract or error.req_id))
        key = f"md:{error.code}:{what}"
        if key not in self._logged:
            self._logged.add(key)
            level = logging.INFO if error.code == 10167 else logging.WARNING
            log.log(level, "IB feed: %s: %d %s", what, error.code, error.message)

    async def _report_connection(self, engine: _Sink) -> None:
        state = self.conn.state
        if not state.connected and state.reason and self._down is None:
            self._down = state.reason
        if self._down is not None and not self._reported:
            await engine.source_problem(SOURCE, f"GATEWAY_UNREACHABLE: {self._down}")
            self._reported = True
        if self.conn.connected and self._reported:
            await engine.source_ok(SOURCE)
            self._reported = False
            self._down = None

    # --- subscriptions ----------------------------------------------------------------------

    async def _sync(self, engine: _Sink) -> None:
        now = self.clock.now()
        try:
            held = list(self.held())
        except Exception as exc:  # the venue could not say: keep quoting what was held
            await self._contract_failed(engine, "held positions", "listed", exc)
            held = [c for c in self._announced.values() if c.id in self._held_last]
        else:
            await self._contract_ok(engine, "held positions")
        self._held_last = {c.id for c in held}
        wanted: list[str] = []  # engine ids to quote, in order
        for c in held:
            await self._announce(engine, c, now)
            ids = [leg.contract_id for leg in c.legs] if c.type == "combo" else [c.id]
            for cid in ids:
                if cid not in wanted:
                    wanted.append(cid)
        held_ids = {c.id for c in held}
        await self._qualify([cid for cid in wanted if cid not in self._qualified], now)
        for cid in wanted:  # legs of combos: their own contract for the engine
            q = self._qualified.get(cid)
            if q is not None and cid not in held_ids and cid not in self._announced:
                try:
                    leg = contract_from_ib(q, self.close_of)
                except Exception as exc:
                    await self._contract_failed(engine, cid, "announced", exc)
                    continue
                if leg is not None:
                    await self._announce(engine, leg, now)
                    await self._contract_ok(engine, cid)
        await self._sync_underlying(now)
        self._maybe_backfill(engine, now)
        await self._sync_chain(engine, now)

        desired: list[tuple[str, IbContract]] = []
        seen: set[int] = set()
        extra = [self.underlying_id]
        if self.config.vix:
            extra.append(VIX_KEY)
        for cid in [*wanted, *extra, *self.chain_ids]:
            q = self._qualified.get(cid)
            if q is None or q.conId in seen:
                continue
            seen.add(q.conId)
            desired.append((cid, q))
        self._allocate(desired, n_held=len(wanted))

    async def _announce(self, engine: _Sink, contract: Contract, now: float) -> None:
        if self._announced.get(contract.id) != contract:
            self._announced[contract.id] = contract
            await engine.handle_safely(ContractEvent(now, contract))

    async def _qualify(self, ids: list[str], now: float) -> None:
        """Qualify (conId and all) the contracts of engine ids not known yet."""
        todo: list[tuple[str, IbContract]] = []
        held_ib: Mapping[str, IbContract] = {}
        if self.held_ib is not None:
            try:
                held_ib = self.held_ib()
            except Exception as exc:
                self._log_once(f"held_ib:{exc}", "IB feed: held IB contracts unknown: %s", exc)
        for cid in ids:
            if self._retry.get(cid, -math.inf) > now:
                continue
            pos = held_ib.get(cid)
            # a held contract by its conId: trading class, multiplier and all, never ambiguous
            c = (
                IbContract(conId=pos.conId, exchange="SMART")
                if pos is not None and getattr(pos, "conId", 0)
                else _ib_contract(cid)
            )
            if c is None:
                self._log_once(f"unparsed:{cid}", "IB feed: %s is not a stock or option id", cid)
                self._retry[cid] = math.inf
                continue
            todo.append((cid, c))
        if not todo:
            return
        results = await self._qualify_contracts([c for _, c in todo])
        for (cid, _), q in zip(todo, results, strict=True):
            if q is None:
                self._retry[cid] = now + RETRY_SECONDS
                self._log_once(f"unknown:{cid}", "IB feed: IB does not know %s", cid)
            else:
                self._retry.pop(cid, None)
                self._qualified[cid] = q

    async def _qualify_contracts(self, contracts: list[IbContract]) -> list[IbContract | None]:
        ib = self.conn.ib
        timeout = self.config.connect_timeout_seconds + len(contracts) / max(
            self.config.max_messages_per_second, 1.0
        )
        async with asyncio.timeout(timeout):
            found = await ib.qualifyContractsAsync(*contracts)
        return [c if isinstance(c, IbContract) and c.conId else None for c in found]

    async def _sync_underlying(self, now: float) -> None:
        extra = [self.underlying_id] if self.underlying_id not in self._qualified else []
        await self._qualify(extra, now)
        if self.config.vix and VIX_KEY not in self._qualified:
            if self._retry.get(VIX_KEY, -math.inf) > now:
                return
            [vix] = await self._qualify_contracts([Index("VIX", "CBOE")])
            if vix is None:
                self._retry[VIX_KEY] = now + RETRY_SECONDS
                self._log_once("unknown:VIX", "IB feed: IB does not know Index VIX CBOE")
            else:
                self._qualified[VIX_KEY] = vix

    def _maybe_backfill(self, engine: _Sink, now: float) -> None:
        """Once the underlying is known, fetch its last minutes of 1-minute bars in a task (the
        quotes of held contracts never wait for it) to seed the engine's spot history, so
        momentum and volatility are ready at once, as the BTC feeds' backfill does."""
        seed = getattr(engine, "seed_spot_history", None)
        under = self._qualified.get(self.underlying_id)
        if seed is None or under is None or self._backfill_done:
            return
        if self._backfill_task is not None and not self._backfill_task.done():
            return
        if self._backfill_failures >= BACKFILL_ATTEMPTS or now < self._backfill_retry:
            return
        config = getattr(engine, "config", None)
        windows = config.signals.volatility_windows_minutes if config is not None else []
        minutes = max([BACKFILL_MINUTES, *windows])
        self._backfill_task = asyncio.create_task(
            self._backfill(seed, under, minutes), name="ibkr-backfill"
        )

    async def _backfill(
        self, seed: Callable[[list[tuple[float, float]]], int], under: IbContract, minutes: int
    ) -> None:
        what = self.config.underlying
        try:
            async with asyncio.timeout(self.config.connect_timeout_seconds + 10.0):
                bars = await self.conn.ib.reqHistoricalDataAsync(
                    under,
                    endDateTime="",
                    durationStr=f"{minutes * 60} S",
                    barSizeSetting="1 min",
                    whatToShow="TRADES",
                    useRTH=False,
                    formatDate=2,
                )
        except Exception as exc:  # a refusal IB raises, a timeout, a lost connection: try later
            bars, why = [], f"{exc or type(exc).__name__}"
        else:
            why = "IB sent no bars"
        now = self.clock.now()
        closes: list[tuple[float, float]] = []
        for bar in bars or []:
            start = _bar_start(bar.date)
            close = _price(bar.close)
            if start is not None and close is not None:
                closes.append((min(start + 60.0, now), close))  # a bar's close, at its end
        if not closes:
            self._backfill_failures += 1
            self._backfill_retry = now + RETRY_SECONDS
            gave_up = self._backfill_failures >= BACKFILL_ATTEMPTS
            log.warning(
                "IB feed: no minute bars of %s (%s); %s",
                what,
                why,
                "momentum and volatility warm up from live prices"
                if gave_up
                else f"asking again in {RETRY_SECONDS:g} s",
            )
            return
        self._backfill_done = True
        self.backfilled = seed(closes)
        log.info("IB feed: %d minute closes of %s seeded the spot history", self.backfilled, what)

    def _underlying_price(self) -> float | None:
        under = self._qualified.get(self.underlying_id)
        if under is None or under.conId not in self._live:
            return None
        ticker = self.conn.ib.ticker(under)
        return spot_from_ticker(ticker) if ticker is not None else None

    def _close(self, expiry: str) -> float:
        """`close_of(expiry)`, or -inf (treated as closed) for an expiry it cannot place,
        logged once: one odd expiry in a chain never stops the strike table."""
        try:
            return self.close_of(expiry)
        except Exception as exc:
            self._log_once(f"close:{expiry}", "IB feed: expiry %s left out: %s", expiry, exc)
            return -math.inf

    async def _sync_chain(self, engine: _Sink, now: float) -> None:
        spot = self._underlying_price()
        if spot is None:
            return
        expired = self.chain_expiry is not None and self._close(self.chain_expiry) <= now
        if not expired and self.chain_strikes:
            sel = self.chain_strikes
            q = len(sel) // 4
            if sel[q] <= spot <= sel[len(sel) - 1 - q]:
                return  # still near the middle of the table
        chain = await self._option_chain(now)
        if chain is None:
            return
        expiries = sorted(e for e in chain.expirations if self._close(e) > now)
        if not expiries:
            self._log_once("no-expiry", "IB feed: %s has no open expiry", self.config.underlying)
            return
        expiry = expiries[0]
        strikes = sorted(float(k) for k in chain.strikes)
        near = sorted(strikes, key=lambda k: (abs(k - spot), k))[: self.config.strikes]
        if expiry == self.chain_expiry and sorted(near) == self.chain_strikes:
            return
        options: list[tuple[str, IbContract]] = []
        for k in near:  # nearest first: the order in which lines are given
            for right in ("C", "P"):
                cid = option_id(
                    self.config.underlying, expiry, k, right, chain.tradingClass, chain.multiplier
                )
                if cid not in self._qualified and self._retry.get(cid, -math.inf) <= now:
                    options.append(
                        (
                            cid,
                            Option(
                                self.config.underlying,
                                expiry,
                                k,
                                right,
                                "SMART",
                                multiplier=chain.multiplier,
                                currency=self.config.underlying_currency,
                                tradingClass=chain.tradingClass,
                            ),
                        )
                    )
        if options:
            found = await self._qualify_contracts([c for _, c in options])
            for (cid, _), q in zip(options, found, strict=True):
                if q is None:
                    self._retry[cid] = math.inf  # not listed for this expiry
                else:
                    self._qualified[cid] = q
        ids: list[str] = []
        for k in near:
            for right in ("C", "P"):
                cid = option_id(
                    self.config.underlying, expiry, k, right, chain.tradingClass, chain.multiplier
                )
                q = self._qualified.get(cid)
                if q is None:
                    continue
                if cid not in self._announced:
                    try:
                        c = contract_from_ib(q, self.close_of)
                    except Exception as exc:
                        await self._contract_failed(engine, cid, "announced", exc)
                        continue
                    if c is not None:
                        await self._announce(engine, c, now)
                ids.append(cid)
        if expiry != self.chain_expiry:
            log.info(
                "IB feed: strike table %s %s, %d strikes around %.2f",
                self.config.underlying,
                expiry,
                len(near),
                spot,
            )
        self.chain_expiry = expiry
        self.chain_strikes = sorted(near)
        self.chain_ids = ids

    async def _option_chain(self, now: float) -> Any:
        """The chain parameters of the underlying (asked once, again when the expiries ran out)."""
        under = self._qualified.get(self.underlying_id)
        if under is None:
            return None
        params = self._chain_params
        if params is not None and not any(
            self._close(e) > now for p in params for e in p.expirations
        ):
            params = None
        if params is None:
            if self._chain_retry > now:
                return None
            async with asyncio.timeout(self.config.connect_timeout_seconds):
                params = await self.conn.ib.reqSecDefOptParamsAsync(
                    under.symbol, "", "STK", under.conId
                )
            if not params:
                self._chain_retry = now + RETRY_SECONDS
                self._log_once("no-chain", "IB feed: no option chain for %s", under.symbol)
                return None
            self._chain_params = params
        sym = self.config.underlying

        def rank(p: Any) -> tuple[int, int]:
            return (p.exchange != "SMART", p.tradingClass != sym)

        return sorted(params, key=rank)[0]

    def _allocate(self, desired: list[tuple[str, IbContract]], n_held: int) -> None:
        lines = self.conn.lines
        budget = lines.limit - (len(lines) - len(self._mine))
        keep = desired[: max(budget, 0)]
        cut = len(desired) - len(keep)
        if cut != self.trimmed:
            self.trimmed = cut
            if cut:
                held_cut = max(0, n_held - len(keep))
                log.log(
                    logging.WARNING if held_cut else logging.INFO,
                    "IB feed: %d of %d contracts get no market data line "
                    "(max_market_data_lines = %d%s)",
                    cut,
                    len(desired),
                    lines.limit,
                    f"; {held_cut} of them HELD" if held_cut else "; the strike table is trimmed",
                )
        keep_ids = {q.conId for _, q in keep}
        for con_id in list(self._mine):
            if con_id not in keep_ids:
                lines.release(con_id)
                del self._mine[con_id]
                self._live.discard(con_id)
                self._dirty.discard(con_id)
        for cid, q in keep:
            if q.conId in self._mine or lines.acquire(q):
                self._mine[q.conId] = cid

    # --- data -------------------------------------------------------------------------------

    async def _emit(self, engine: _Sink) -> None:
        if self.hold_reason is not None:
            return  # nothing is handed over while the data is not flowing
        now = self.clock.now()
        if now >= self._next_pass:
            self._next_pass = now + self.poll_seconds
            con_ids = [c for c in self._mine if c in self._live]
        else:
            con_ids = [c for c in self._mine if c in self._dirty and c in self._live]
        self._dirty.clear()
        ib = self.conn.ib
        under = self._qualified.get(self.underlying_id)
        vix = self._qualified.get(VIX_KEY)
        batch: list[Quote] = []  # handed over together: a combo's legs move as one
        spot: tuple[float, float] | None = None
        fresh: list[str] = []
        for con_id in con_ids:
            cid = self._mine.get(con_id)
            q_contract = self._qualified.get(cid) if cid is not None else None
            if cid is None or q_contract is None:
                continue
            ticker = ib.ticker(q_contract)
            if ticker is None:
                continue
            ts = self._tick_ts.get(con_id)
            if ts is None:
                continue
            if getattr(ticker, "marketDataType", 1) in (3, 4):
                self.delayed.add(con_id)
            if con_id in self.delayed and await self._delayed(engine, cid):
                continue  # delayed data not allowed: held, never handed over
            if self._frozen(engine, cid, con_id, ticker):
                pass  # frozen: handed over (the screen shows the closing prices), held
            else:
                fresh.append(cid)
            try:
                if vix is not None and con_id == vix.conId:
                    await self._vix(engine, ticker, ts)
                    continue
                quote = quote_from_ticker(cid, ticker, ts)
                if quote is not None and self._due(cid, (*_quote_key(quote), ts)):
                    batch.append(quote)
                if under is not None and con_id == under.conId:
                    price = spot_from_ticker(ticker)
                    if price is not None and self._due("spot:", (price, ts)):
                        spot = (price, ts)
            except Exception as exc:  # one contract's data never stops the others
                await self._contract_failed(engine, cid, "quoted", exc)
        self._release(engine, fresh)
        handle_quotes = getattr(engine, "handle_quotes", None)
        if batch and handle_quotes is not None:
            await handle_quotes(batch)
        else:
            for quote in batch:
                await engine.handle_safely(QuoteEvent(quote.ts, quote))
        if spot is not None:
            await engine.handle_safely(SpotEvent(spot[1], self.config.underlying, spot[0]))

    def _frozen(self, engine: _Sink, cid: str, con_id: int, ticker: Ticker) -> bool:
        """IB sends frozen prices (market data type 2 or 4: the last ones before the close,
        re-sent as they are): held at the engine until a tick of live data comes. True while
        held."""
        if getattr(ticker, "marketDataType", 1) in FROZEN_TYPES or (
            cid in self._frozen_held and con_id not in self._live_tick
        ):
            if cid not in self._frozen_held:
                self._frozen_held.add(cid)
                hold = getattr(engine, "hold_quotes", None)
                if hold is not None:
                    hold([cid], "IB sends frozen prices (the last before the close), not live ones")
            return True
        if cid in self._frozen_held:
            self._frozen_held.discard(cid)
            release = getattr(engine, "release_quotes", None)
            if release is not None and cid not in self._held_ids:
                release([cid])
        return False

    async def _delayed(self, engine: _Sink, cid: str) -> bool:
        """IB sends delayed (15-20 min old) data for `cid`. Not allowed: its quotes are held
        (one alert naming the key to set); True. Allowed: the engine's data note says so."""
        if self.config.allow_delayed_data:
            if getattr(engine, "data_note", None) == "":
                engine.data_note = "delayed data"  # type: ignore[attr-defined]
            return False
        if cid not in self._delayed_held:
            self._delayed_held.add(cid)
            reason = (
                "IB sends delayed (15-20 min old) market data for it; set [venues.ibkr] "
                "allow_delayed_data = true to act on delayed data"
            )
            hold = getattr(engine, "hold_quotes", None)
            if hold is not None:
                hold([cid], reason)
            await engine.source_problem(f"{SOURCE}-delayed", f"{cid}: {reason}")
        return True

    def _release(self, engine: _Sink, fresh: list[str]) -> None:
        """Contracts with a tick since the hold ended are usable again; a combo once all its
        legs are."""
        if not self._held_ids:
            return
        release = getattr(engine, "release_quotes", None)
        done = [cid for cid in fresh if cid in self._held_ids]
        self._held_ids.difference_update(done)
        for c in self._announced.values():
            legs_held = any(leg.contract_id in self._held_ids for leg in c.legs)
            if c.id in self._held_ids and c.legs and not legs_held:
                self._held_ids.discard(c.id)
                done.append(c.id)
        # ids no longer quoted by this feed (a position closed meanwhile) are let go too
        quoted = set(self._mine.values()) | {c.id for c in self._announced.values() if c.legs}
        gone = [cid for cid in self._held_ids if cid not in quoted]
        self._held_ids.difference_update(gone)
        done += gone
        if done and release is not None:
            release(done)

    async def _vix(self, engine: _Sink, ticker: Ticker, ts: float) -> None:
        update = getattr(engine, "vix_update", None)
        value = spot_from_ticker(ticker)
        if update is None or value is None or not self._due("vix:", (value, ts)):
            return
        result = update(value, ts)
        if inspect.isawaitable(result):
            await result

    def _due(self, key: str, value: tuple[object, ...]) -> bool:
        """True when `value` (the values and their tick time) changed since last handed over."""
        last = self._last.get(key)
        if last is not None and last[0] == value:
            return False
        self._last[key] = (value, 0.0)
        return True

    async def _contract_failed(
        self, engine: _Sink, cid: str, doing: str, exc: BaseException
    ) -> None:
        """One contract could not be handled: one alert naming it (per distinct error), the
        step goes on with the others."""
        text = f"{type(exc).__name__}: {exc}"
        if self._failing.get(cid) == text:
            return
        self._failing[cid] = text
        log.warning("IB feed: %s failed while %s: %s", cid, doing, text, exc_info=exc)
        await engine.source_problem(
            f"{SOURCE}:{cid}",
            f"IB feed: {cid} cannot be {doing} ({text}); its trades are not supervised until "
            "this is fixed, the other contracts go on",
        )

    async def _contract_ok(self, engine: _Sink, cid: str) -> None:
        if self._failing.pop(cid, None) is not None:
            await engine.source_ok(f"{SOURCE}:{cid}")

    def _log_once(self, key: str, msg: str, *args: object) -> None:
        if key not in self._logged:
            self._logged.add(key)
            log.warning(msg, *args)

    # --- for tests and the market pane --------------------------------------------------------

    @property
    def subscribed(self) -> dict[int, str]:
        """conId → engine id of the lines this feed holds."""
        return dict(self._mine)
