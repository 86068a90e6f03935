"""Feeds Kalshi's hourly BTC ladder into the engine over REST, as the sim feed does its own.

The sequence mirrors `engine/sim.py`: the ladder of the event closing next is announced with one
`ContractEvent` per market, then `QuoteEvent`s follow, and every market of an event that closed
reports one `SettleEvent` when Kalshi has determined its result. When the current event closes,
the feed rolls to the next one and keeps polling the closed one until all its markets settled.

Choices worth knowing:

- Quote timestamps are the clock's time at receipt: Kalshi's market objects carry no quote time
  (`updated_time`, where present, is the market record's, not the book's).
- A quote is handed over when it changed, and again every `refresh_seconds` while it did not:
  the engine's data guard treats a quote older than `max_quote_age_seconds` as stale, and a quiet
  market is not a stale one. Set `refresh_seconds` below that limit.
- A YES bid of zero or a YES ask of one dollar (or more) is "no order on that side": None.
- Bounds come from `floor_strike` / `cap_strike`, never from the ticker: `greater` →
  `binary_above` at the floor, `between` → `binary_range`, `less` / `less_or_equal` →
  `binary_below` at the cap. A market whose bounds are missing is skipped and logged once.
- Settlement: `result` "yes"/"no" while the status is determined, amended, finalized (or
  settled). `disputed` is not final, so it waits. One `SettleEvent` per market, ever.
- Errors: a `KalshiError` from a poll is logged and that part of the poll skipped; the engine's
  data guard notices the quotes aging and alerts. After repeated failures the feed waits longer
  between polls (doubling up to `max_backoff_seconds`, `[engine] backoff_max_seconds`: 2 s by
  default, jittered), so quotes flow again within that of Kalshi answering again. While Kalshi's
  `Retry-After` runs (the client's `retry_gate`) the next poll waits for it instead; one longer
  than `[engine] retry_after_max_seconds` is said in one alert (`source_problem`, "kalshi
  Retry-After") until Kalshi answers normally again. A `KalshiAuthError` stops the feed: a
  refused key or signature does not fix itself, and polling on would only hide the fault behind
  staleness alerts. Market data needs no key, so this means a proxy or the venue refuses us.
- Held markets outside the current event (a position in a later event, or in one that closed
  while the engine was stopped) are followed too, when the engine says what it holds
  (`held_contract_ids`): each is looked up once (`GET /markets/{ticker}`), announced, quoted
  over REST while its event is open and settled like the current event's once it closed, so no
  position sits unprotected as "no contract details" or is closed as external at a stale mark.
  A market of another series gets that series as its underlying: the BTC spot rules and the
  probability model do not apply to it, the price rules do.
- With a `stream` (a `KalshiStream`), prices and sizes come from its `KalshiQuote`s as they
  arrive; REST still finds events, settles, and adds volume, open interest and the last trade.
  A market the stream has no live book for (before its snapshot, after a drop or a gap) is
  quoted from REST meanwhile. The stream's own end (e.g. a refused handshake) ends `run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Protocol

from engine.clock import Clock
from engine.http_retry import DEFAULT_BACKOFF_MAX_SECONDS, RetryGate, backoff_delay
from engine.models import Contract, ContractEvent, MarketEvent, Quote, QuoteEvent, SettleEvent
from engine.venues.kalshi.errors import KalshiAuthError, KalshiError, KalshiNotFound
from engine.venues.kalshi.fixed import FixedPointError, parse_optional
from engine.venues.kalshi.stream import Disconnected, KalshiQuote, SequenceGap

if TYPE_CHECKING:
    from engine.venues.kalshi.client import KalshiClient
    from engine.venues.kalshi.models import Event, Market

__all__ = ["KalshiMarketFeed", "contract_for", "quote_for", "rfc3339_to_unix", "settle_value"]

log = logging.getLogger("engine.feeds.kalshi")

SETTLED_STATUSES = frozenset({"determined", "amended", "finalized", "settled"})
_ABOVE = frozenset({"greater", "greater_or_equal"})
_BELOW = frozenset({"less", "less_or_equal"})
_ONE = Decimal(1)


class _Sink(Protocol):
    async def handle_safely(self, event: MarketEvent) -> object: ...


HELD_RETRY_SECONDS = 60.0  # a held ticker Kalshi did not know (or skipped) is asked again after


class QuoteStream(Protocol):
    """What the feed needs of a `KalshiStream` (engine/venues/kalshi/stream.py)."""

    async def start(self) -> None: ...

    def __aiter__(self) -> AsyncIterator[object]: ...

    async def add_tickers(self, tickers: Iterable[str]) -> None: ...

    async def remove_tickers(self, tickers: Iterable[str]) -> None: ...


def rfc3339_to_unix(text: str) -> float:
    """'2026-11-21T17:00:00Z' (or with an offset / fractional seconds) → Unix seconds."""
    dt = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if dt.tzinfo is None:
        raise ValueError(f"timestamp {text!r} has no time zone")
    return dt.timestamp()


def contract_for(market: Market, underlying: str) -> tuple[Contract | None, str]:
    """The engine's contract for one Kalshi market, or (None, why it is skipped)."""
    if not market.close_time:
        return None, "no close_time"
    try:
        close_ts = rfc3339_to_unix(market.close_time)
    except ValueError:
        return None, f"unreadable close_time {market.close_time!r}"
    kind = market.strike_type or ""
    floor, cap = market.floor_strike, market.cap_strike
    if kind in _ABOVE:
        if floor is None:
            return None, f"strike_type {kind!r} without floor_strike"
        return Contract(
            id=market.ticker,
            underlying=underlying,
            type="binary_above",
            strike=float(floor),
            close_ts=close_ts,
            event_id=market.event_ticker,
        ), ""
    if kind == "between":
        if floor is None or cap is None:
            return None, "strike_type 'between' without floor_strike and cap_strike"
        return Contract(
            id=market.ticker,
            underlying=underlying,
            type="binary_range",
            strike=float(floor),
            cap=float(cap),
            close_ts=close_ts,
            event_id=market.event_ticker,
        ), ""
    if kind in _BELOW:
        if cap is None:
            return None, f"strike_type {kind!r} without cap_strike"
        return Contract(
            id=market.ticker,
            underlying=underlying,
            type="binary_below",
            strike=float(cap),
            close_ts=close_ts,
            event_id=market.event_ticker,
        ), ""
    return None, f"unsupported strike_type {kind!r}"


def _price(value: Decimal | None, *, no_order_at: Decimal | None = None) -> float | None:
    if value is None or value <= 0:
        return None
    if no_order_at is not None and value >= no_order_at:
        return None
    return float(value)


def quote_for(market: Market, ts: float) -> Quote:
    """The YES top of book of one market as the engine's `Quote` (floats from decimals).

    Raises `FixedPointError` when a size field is malformed.
    """
    raw = market.raw
    bid_size = parse_optional(raw, "yes_bid_size_fp")
    ask_size = parse_optional(raw, "yes_ask_size_fp")
    bid = _price(market.yes_bid)
    ask = _price(market.yes_ask, no_order_at=_ONE)
    return Quote(
        id=market.ticker,
        bid=bid,
        ask=ask,
        ts=ts,
        bid_size=float(bid_size) if bid_size is not None and bid is not None else 0.0,
        ask_size=float(ask_size) if ask_size is not None and ask is not None else 0.0,
        last=_price(market.last_price),
        volume=float(market.volume or 0),
        open_interest=float(market.open_interest or 0),
    )


def settle_value(market: Market) -> float | None:
    """1.0 / 0.0 once Kalshi has determined the market's result, else None."""
    result = (market.raw.get("result") or "").lower()
    if market.status in SETTLED_STATUSES and result in ("yes", "no"):
        return 1.0 if result == "yes" else 0.0
    return None


def _quote_key(q: Quote) -> tuple[object, ...]:
    return (q.bid, q.ask, q.bid_size, q.ask_size, q.last, q.volume, q.open_interest)


@dataclass
class _Tracked:
    """An announced event: its contracts, the ones settled, its close time."""

    ticker: str
    close_ts: float
    contracts: set[str] = field(default_factory=set)
    settled: set[str] = field(default_factory=set)

    @property
    def done(self) -> bool:
        return self.contracts <= self.settled


class KalshiMarketFeed:
    """Polls Kalshi for the series' next-closing event: contracts, quotes, settlements.

    `run(engine)` loops forever; `poll_once(engine)` is one round of it (tests drive that).
    Waits go through `clock.sleep`, so a `ManualClock` drives the feed without real time.
    """

    name = "kalshi"

    def __init__(
        self,
        client: KalshiClient,
        clock: Clock,
        *,
        series_ticker: str = "KXBTCD",
        poll_seconds: float = 1.0,
        underlying: str = "BTC-USD",
        refresh_seconds: float = 2.0,
        max_backoff_seconds: float = DEFAULT_BACKOFF_MAX_SECONDS,
        settle_give_up_seconds: float = 86_400.0,
        stream: QuoteStream | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if poll_seconds <= 0:
            raise ValueError("poll_seconds must be > 0")
        self.client = client
        self.clock = clock
        self.series_ticker = series_ticker
        self.poll_seconds = poll_seconds
        self.underlying = underlying
        self.refresh_seconds = refresh_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self._rng = rng or random.Random()
        self._retry_after_alerted = False
        self.settle_give_up_seconds = settle_give_up_seconds
        self.current: _Tracked | None = None
        self.closed: dict[str, _Tracked] = {}  # closed events still waiting for settlement
        self.failures = 0  # consecutive polls with an error
        self._last: dict[str, tuple[tuple[object, ...], float]] = {}  # id -> (key, emitted ts)
        self._skipped: set[str] = set()  # markets whose skip reason was logged
        self._no_event_logged = False
        self.stream = stream
        self._streamed: dict[str, KalshiQuote] = {}  # latest stream quote per ticker
        self._rest: dict[str, Market] = {}  # latest REST record per ticker (current event)
        self._retired: _Tracked | None = None  # the event just closed, until the next is found
        # Open events other than the current one, followed for the markets held in them.
        self.held: dict[str, _Tracked] = {}
        # Held tickers not to look up before a time: unknown to Kalshi or unusable (a minute),
        # settled (`settle_give_up_seconds`), given up on unsettled (an hour).
        self._held_retry: dict[str, float] = {}

    # --- the loop -------------------------------------------------------------------------

    async def run(self, engine: _Sink) -> None:
        """Poll until cancelled. With a stream, also read it (started here, closed by its owner).

        Ends with `KalshiAuthError` from REST, or with whatever ends the stream's iteration.
        """
        reader: asyncio.Task[None] | None = None
        if self.stream is not None:
            await self.stream.start()
            reader = asyncio.create_task(self._read_stream(engine), name="kalshi-feed-stream")
        try:
            while True:
                if reader is not None and reader.done():
                    reader.result()  # raises what stopped the stream
                    raise RuntimeError("the Kalshi stream ended")
                await self.poll_once(engine)
                await self.clock.sleep(self.next_delay())
        finally:
            if reader is not None and not reader.done():
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader

    def next_delay(self) -> float:
        """`poll_seconds`, doubled per consecutive failed poll up to `max_backoff_seconds`
        (jittered: between half and all of the step, never under `poll_seconds`); or longer
        while Kalshi's `Retry-After` runs."""
        delay = backoff_delay(
            self.failures, base=self.poll_seconds, cap=self.max_backoff_seconds, rng=self._rng
        )
        gate = self._gate()
        return max(delay, gate.remaining()) if gate is not None else delay

    def _gate(self) -> RetryGate | None:
        gate = getattr(self.client, "retry_gate", None)
        return gate if isinstance(gate, RetryGate) else None

    async def _report_retry_after(self, engine: _Sink) -> None:
        """One alert while Kalshi asks for a longer wait than we give it; its end when it
        answers normally again."""
        gate = self._gate()
        problem = getattr(engine, "source_problem", None)
        ok = getattr(engine, "source_ok", None)
        if gate is None or problem is None or ok is None:
            return
        if gate.excess is not None and not self._retry_after_alerted:
            self._retry_after_alerted = True
            await problem("kalshi Retry-After", gate.describe())
        elif gate.excess is None and self._retry_after_alerted:
            self._retry_after_alerted = False
            await ok("kalshi Retry-After")

    async def poll_once(self, engine: _Sink) -> None:
        """One round: roll to the next event if needed, quote it, settle closed ones.

        Raises `KalshiAuthError` (the feed stops); any other `KalshiError` is logged and counted.
        """
        ok = True
        now = self.clock.now()
        if self.current is None or self.current.close_ts <= now:
            ok &= await self._guard("finding the next event", self._roll(engine, now))
        if self.current is not None and self.current.close_ts > now:
            ok &= await self._guard(
                f"quotes of {self.current.ticker}", self._poll_current(engine, self.current)
            )
        ok &= await self._guard("held markets", self._follow_held(engine, now))
        for tracked in list(self.closed.values()):
            ok &= await self._guard(
                f"settlement of {tracked.ticker}", self._poll_closed(engine, tracked)
            )
        if ok:
            if self.failures:
                log.info("Kalshi feed: polling recovered after %d failed poll(s)", self.failures)
            self.failures = 0
        else:
            self.failures += 1
        await self._report_retry_after(engine)

    async def _guard(self, what: str, work: Awaitable[None]) -> bool:
        try:
            await work
        except KalshiAuthError as exc:
            log.critical(
                "Kalshi feed stops: the venue refused us while %s (%s). Check the API key, its "
                "permissions and the host clock; a refused key does not fix itself.",
                what,
                exc,
            )
            raise
        except KalshiError as exc:
            log.warning("Kalshi feed: %s failed, poll skipped: %s", what, exc)
            return False
        return True

    # --- events ---------------------------------------------------------------------------

    async def _roll(self, engine: _Sink, now: float) -> None:
        """Retire a closed current event and announce the open event closing next."""
        if self.current is not None and self.current.close_ts <= now:
            old = self.current
            self._retired = old
            self.current = None
            if not old.done:
                self.closed[old.ticker] = old
            log.info("Kalshi feed: %s closed; waiting for its settlement", old.ticker)
        events = await self.client.get_events(
            series_ticker=self.series_ticker, status="open", with_nested_markets=True
        )
        best: tuple[float, Event] | None = None
        for event in events:
            if event.event_ticker in self.closed:
                continue
            closes = [c for c in (self._close_of(m) for m in event.markets) if c is not None]
            if not closes:
                continue
            close = min(closes)
            if close > now and (best is None or close < best[0]):
                best = (close, event)
        if best is None:
            if not self._no_event_logged:
                log.warning(
                    "Kalshi feed: no open %s event closes in the future", self.series_ticker
                )
                self._no_event_logged = True
            return
        self._no_event_logged = False
        close, event = best
        self.held.pop(event.event_ticker, None)  # followed for a held market: now the whole ladder
        tracked = _Tracked(event.event_ticker, close)
        out: list[MarketEvent] = []
        for market in event.markets:
            contract, why = contract_for(market, self.underlying)
            if contract is None:
                if market.ticker not in self._skipped:
                    self._skipped.add(market.ticker)
                    log.info("Kalshi feed: skipping %s: %s", market.ticker, why)
                continue
            tracked.contracts.add(contract.id)
            out.append(ContractEvent(now, contract))
        previous, self._retired = self._retired, None
        self.current = tracked
        await self._follow(previous, tracked)
        log.info(
            "Kalshi feed: %s (%d contracts) closes at %s",
            event.event_ticker,
            len(tracked.contracts),
            datetime.fromtimestamp(close, UTC).isoformat(),
        )
        for ev in out:
            await engine.handle_safely(ev)

    @staticmethod
    def _close_of(market: Market) -> float | None:
        if not market.close_time:
            return None
        try:
            return rfc3339_to_unix(market.close_time)
        except ValueError:
            return None

    # --- quotes and settlements -----------------------------------------------------------

    async def _markets(self, event_ticker: str) -> list[Market]:
        return await self.client.get_markets(event_ticker=event_ticker)

    async def _poll_current(self, engine: _Sink, tracked: _Tracked) -> None:
        markets = await self._markets(tracked.ticker)
        for market in markets:
            if market.ticker not in tracked.contracts:
                continue
            # Read the time and hand over per market: with a stream, its reader may hand over
            # a quote while we await, and ours must never be older than that one.
            now = self.clock.now()
            self._rest[market.ticker] = market
            streamed = self._streamed.get(market.ticker)
            if streamed is not None:
                # Prices come from the stream; REST adds volume, open interest, last trade.
                quote = self._stream_quote(streamed, now)
            else:
                # No stream, or it has no live book for this market (not yet, or it dropped).
                try:
                    quote = quote_for(market, now)
                except FixedPointError as exc:
                    # One malformed market must not silence the others; it goes stale instead.
                    log.warning("Kalshi feed: %s: unreadable quote: %s", market.ticker, exc)
                    continue
            events: list[MarketEvent] = []
            if (ev := self._if_due(quote, now)) is not None:
                events.append(ev)
            events.extend(self._settlements(tracked, market, now))
            for event in events:
                await engine.handle_safely(event)

    def _if_due(self, quote: Quote, now: float) -> QuoteEvent | None:
        """The quote's event when it changed or was last handed over `refresh_seconds` ago."""
        key = _quote_key(quote)
        last = self._last.get(quote.id)
        if last is not None and last[0] == key and now - last[1] < self.refresh_seconds:
            return None
        self._last[quote.id] = (key, now)
        return QuoteEvent(now, quote)

    # --- the stream (optional) ------------------------------------------------------------

    def _stream_quote(self, sq: KalshiQuote, now: float) -> Quote:
        rest = self._rest.get(sq.ticker)
        bid = _price(sq.yes_bid)
        ask = _price(sq.yes_ask, no_order_at=_ONE)
        last = sq.last_price
        if last is None and rest is not None:
            last = rest.last_price
        return Quote(
            id=sq.ticker,
            bid=bid,
            ask=ask,
            ts=now,
            bid_size=float(sq.yes_bid_size or 0) if bid is not None else 0.0,
            ask_size=float(sq.yes_ask_size or 0) if ask is not None else 0.0,
            last=_price(last),
            volume=float(rest.volume or 0) if rest is not None else 0.0,
            open_interest=float(rest.open_interest or 0) if rest is not None else 0.0,
        )

    async def _read_stream(self, engine: _Sink) -> None:
        """Hand over each streamed quote of the current event at once (when it changed)."""
        assert self.stream is not None
        async for update in self.stream:
            if not isinstance(update, KalshiQuote):
                # After a drop or a lost message the books restart from a snapshot; until then
                # REST quotes those markets (a cached stream quote must not be re-stamped).
                if isinstance(update, Disconnected):
                    self._streamed.clear()
                elif isinstance(update, SequenceGap):
                    for ticker in update.tickers:
                        self._streamed.pop(ticker, None)
                log.info("Kalshi feed: stream: %s", update)
                continue
            now = self.clock.now()
            cur = self.current
            if cur is None or update.ticker not in cur.contracts or cur.close_ts <= now:
                continue  # kept only for the current event: an old one must not be re-stamped
            self._streamed[update.ticker] = update
            ev = self._if_due(self._stream_quote(update, now), now)
            if ev is not None:
                await engine.handle_safely(ev)

    async def _follow(self, old: _Tracked | None, new: _Tracked) -> None:
        """Forget the closed event's quotes; point the stream at the new event's markets."""
        if old is not None:
            for cid in old.contracts - new.contracts:
                self._streamed.pop(cid, None)
                self._rest.pop(cid, None)
                self._last.pop(cid, None)
        if self.stream is None:
            return
        try:
            await self.stream.add_tickers(sorted(new.contracts))
            if old is not None:
                await self.stream.remove_tickers(sorted(old.contracts - new.contracts))
        except KalshiAuthError:
            raise
        except KalshiError as exc:
            log.warning("Kalshi feed: could not change the stream's markets: %s", exc)

    # --- held markets outside the current event -------------------------------------------

    def _followed(self) -> set[str]:
        out = set(self.current.contracts) if self.current is not None else set()
        for tracked in (*self.closed.values(), *self.held.values()):
            out |= tracked.contracts
        return out

    async def _follow_held(self, engine: _Sink, now: float) -> None:
        """Announce, quote and (via `closed`) settle the held markets the ladder does not cover."""
        held_ids = getattr(engine, "held_contract_ids", None)
        if held_ids is None:
            return
        held = set(held_ids())
        for ticker in [t for t, until in self._held_retry.items() if until <= now]:
            del self._held_retry[ticker]
        for ticker in sorted(held - self._followed()):
            if ticker in self._held_retry:
                continue
            await self._adopt_market(engine, ticker, now)
        for key, tracked in list(self.held.items()):
            gone = tracked.contracts - held
            tracked.contracts -= gone
            for cid in gone:
                self._rest.pop(cid, None)
                self._last.pop(cid, None)
            if not tracked.contracts:
                del self.held[key]
            elif tracked.close_ts <= now:
                del self.held[key]
                self.closed.setdefault(key, tracked).contracts |= tracked.contracts
                log.info("Kalshi feed: %s closed; waiting for its settlement", key)
            else:
                await self._poll_current(engine, tracked)

    async def _adopt_market(self, engine: _Sink, ticker: str, now: float) -> None:
        try:
            market = await self.client.get_market(ticker)
        except KalshiNotFound:
            self._held_retry[ticker] = now + HELD_RETRY_SECONDS
            log.warning("Kalshi feed: held market %s is unknown to Kalshi", ticker)
            return
        series = market.event_ticker.split("-", 1)[0]
        underlying = self.underlying if series == self.series_ticker else series
        contract, why = contract_for(market, underlying)
        if contract is None:
            self._held_retry[ticker] = now + HELD_RETRY_SECONDS
            log.warning("Kalshi feed: cannot follow held market %s: %s", ticker, why)
            return
        self._held_retry.pop(ticker, None)
        key = market.event_ticker or ticker
        closed = contract.close_ts <= now
        group = self.closed if closed else self.held
        tracked = group.setdefault(key, _Tracked(key, contract.close_ts))
        tracked.contracts.add(contract.id)
        log.info(
            "Kalshi feed: following held market %s (%s)",
            ticker,
            "closed, awaiting its settlement" if closed else "outside the current event",
        )
        events: list[MarketEvent] = [ContractEvent(now, contract)]
        if closed:
            events.extend(self._settlements(tracked, market, now))
            if tracked.done:
                del self.closed[key]
        for ev in events:
            await engine.handle_safely(ev)

    async def _poll_closed(self, engine: _Sink, tracked: _Tracked) -> None:
        markets = await self._markets(tracked.ticker)
        now = self.clock.now()
        out: list[MarketEvent] = []
        for market in markets:
            out.extend(self._settlements(tracked, market, now))
        if tracked.done:
            del self.closed[tracked.ticker]
            log.info("Kalshi feed: %s fully settled", tracked.ticker)
        elif now - tracked.close_ts > self.settle_give_up_seconds:
            del self.closed[tracked.ticker]
            for cid in tracked.contracts - tracked.settled:
                # Held still: ask about it again now and then, not every poll.
                self._held_retry[cid] = now + 60 * HELD_RETRY_SECONDS
            log.error(
                "Kalshi feed: %s still unsettled %.0f s after close; giving up on %s",
                tracked.ticker,
                now - tracked.close_ts,
                sorted(tracked.contracts - tracked.settled),
            )
        for ev in out:
            await engine.handle_safely(ev)

    def _settlements(self, tracked: _Tracked, market: Market, now: float) -> list[SettleEvent]:
        if market.ticker not in tracked.contracts or market.ticker in tracked.settled:
            return []
        value = settle_value(market)
        if value is None:
            return []
        tracked.settled.add(market.ticker)
        # Settled once, ever: a position the engine still holds for a moment (an exit in flight
        # books first) must not make `_follow_held` look the market up and settle it again.
        self._held_retry[market.ticker] = now + self.settle_give_up_seconds
        log.info("Kalshi feed: %s settled %s", market.ticker, market.raw.get("result"))
        return [SettleEvent(now, market.ticker, value)]
