"""Market data from Interactive Brokers into the engine: `IbkrMarketFeed`.

What it sends (through `engine.handle_safely`), all stamped with the clock's time at receipt:

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
- A quote is handed over when it changed, and again every `refresh_seconds` while it did not
  (as the Kalshi feed does): IB sends changes only, and a quiet market is not a stale one. The
  spot and VIX are refreshed the same way. Nothing is sent while the connection is down (or TWS
  has lost IB, 1100), so the engine's staleness check notices.
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
from collections.abc import Callable, Iterable
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

__all__ = ["SOURCE", "IbkrMarketFeed", "quote_from_ticker", "spot_from_ticker"]

log = logging.getLogger("engine.feeds.ibkr")

SOURCE = "ibkr"
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
    return Option(p.symbol, p.expiry, p.strike, p.right, "SMART", currency=p.currency)


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
        refresh_seconds: float = 2.0,
        poll_seconds: float = 1.0,
    ) -> None:
        self.conn = conn
        self.clock = clock
        self.config = config
        self.held = held
        self.close_of = close_of
        self.refresh_seconds = refresh_seconds
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
        """One round: the connection's episode, then (when connected) subscriptions and data."""
        self._attach()
        await self._report_connection(engine)
        if not self.conn.connected:
            return
        await self._sync(engine)
        await self._emit(engine)

    # --- connection events (called synchronously by the connection / the client) --------------

    def on_state(self, connected: bool, reason: str) -> None:
        if not connected and self._down is None:
            self._down = reason or "disconnected"
        self._wake.set()

    def on_resubscribe(self) -> None:
        self._live.clear()
        self._dirty.clear()
        self._last.clear()
        self._wake.set()

    def _on_pending(self, tickers: Iterable[Ticker]) -> None:
        woke = False
        for t in tickers:
            con_id = getattr(t.contract, "conId", 0)
            if con_id in self._mine:
                self._live.add(con_id)
                self._dirty.add(con_id)
                woke = True
        if woke:
            self._wake.set()

    def _on_error(self, error: IbError) -> None:
        if error.code not in (354, 10167, 10168, 10089, 10090):
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
        held = list(self.held())
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
                leg = contract_from_ib(q, self.close_of)
                if leg is not None:
                    await self._announce(engine, leg, now)
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
        for cid in ids:
            if self._retry.get(cid, -math.inf) > now:
                continue
            c = _ib_contract(cid)
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

    async def _sync_chain(self, engine: _Sink, now: float) -> None:
        spot = self._underlying_price()
        if spot is None:
            return
        expired = self.chain_expiry is not None and self.close_of(self.chain_expiry) <= now
        if not expired and self.chain_strikes:
            sel = self.chain_strikes
            q = len(sel) // 4
            if sel[q] <= spot <= sel[len(sel) - 1 - q]:
                return  # still near the middle of the table
        chain = await self._option_chain(now)
        if chain is None:
            return
        expiries = sorted(e for e in chain.expirations if self.close_of(e) > now)
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
                cid = option_id(self.config.underlying, expiry, k, right)
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
                cid = option_id(self.config.underlying, expiry, k, right)
                q = self._qualified.get(cid)
                if q is None:
                    continue
                ids.append(cid)
                c = contract_from_ib(q, self.close_of)
                if c is not None and cid not in self._announced:
                    await self._announce(engine, c, now)
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
            self.close_of(e) > now for p in params for e in p.expirations
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
        spot: float | None = None
        for con_id in con_ids:
            cid = self._mine.get(con_id)
            q_contract = self._qualified.get(cid) if cid is not None else None
            if cid is None or q_contract is None:
                continue
            ticker = ib.ticker(q_contract)
            if ticker is None:
                continue
            if vix is not None and con_id == vix.conId:
                await self._vix(engine, ticker, now)
                continue
            quote = quote_from_ticker(cid, ticker, now)
            if quote is not None and self._due(cid, _quote_key(quote), now):
                batch.append(quote)
            if under is not None and con_id == under.conId:
                price = spot_from_ticker(ticker)
                if price is not None and self._due("spot:", (price,), now):
                    spot = price
        handle_quotes = getattr(engine, "handle_quotes", None)
        if batch and handle_quotes is not None:
            await handle_quotes(batch)
        else:
            for quote in batch:
                await engine.handle_safely(QuoteEvent(now, quote))
        if spot is not None:
            await engine.handle_safely(SpotEvent(now, self.config.underlying, spot))

    async def _vix(self, engine: _Sink, ticker: Ticker, now: float) -> None:
        update = getattr(engine, "vix_update", None)
        value = spot_from_ticker(ticker)
        if update is None or value is None or not self._due("vix:", (value,), now):
            return
        result = update(value, now)
        if inspect.isawaitable(result):
            await result

    def _due(self, key: str, value: tuple[object, ...], now: float) -> bool:
        """True when `value` changed or was last handed over `refresh_seconds` ago."""
        last = self._last.get(key)
        if last is not None and last[0] == value and now - last[1] < self.refresh_seconds:
            return False
        self._last[key] = (value, now)
        return True

    def _log_once(self, key: str, msg: str, *args: object) -> None:
        if key not in self._logged:
            self._logged.add(key)
            log.warning(msg, *args)

    # --- for tests and the market pane --------------------------------------------------------

    @property
    def subscribed(self) -> dict[int, str]:
        """conId → engine id of the lines this feed holds."""
        return dict(self._mine)
