"""`KalshiStream`: Kalshi's market-data websocket → typed, `Decimal` updates.

What the venue does (docs.kalshi.com, asyncapi.yaml and the websocket quick start):

- One signed connection: the handshake carries the three KALSHI-ACCESS-* headers, signed like a
  REST request over `timestamp + "GET" + "/trade-api/ws/v2"`. A refused handshake is an HTTP
  401, here a `KalshiAuthError`, which ends the stream (retrying a bad key only hammers it).
- Commands are `{"id", "cmd", "params"}`. `subscribe` with `channels` and `market_tickers`
  answers one `{"id", "type": "subscribed", "msg": {"channel", "sid"}}` per channel.
  `update_subscription` (`sids`: exactly one, `action`: `add_markets` | `delete_markets`,
  `market_tickers`) answers `{"id", "sid", "seq", "type": "ok", "msg": {"market_tickers"}}`;
  `unsubscribe` (`sids`) answers `{"id", "sid", "seq", "type": "unsubscribed"}`. A failed
  command answers `{"id", "type": "error", "msg": {"code", "msg", "market_ticker"?}}`.
- `orderbook_delta` sends an `orderbook_snapshot` per market, then deltas (see `book.py`); both
  carry `sid` and `seq`, and `seq` counts every message of that subscription (the `ok` of an
  update too). A `seq` that is not the previous + 1 means a lost message: the books of that
  subscription are dropped, the subscription is replaced (unsubscribe, subscribe: a fresh
  snapshot), and one `SequenceGap` is reported.
- `ticker` messages carry no `seq`: `{"type": "ticker", "sid", "msg": {"market_ticker",
  "price_dollars", "yes_bid_dollars", "yes_ask_dollars", "yes_bid_size_fp"?,
  "yes_ask_size_fp"?, "volume_fp", "open_interest_fp", "ts" (s), "ts_ms"? (ms), "time"}}`.
- Keep-alive: Kalshi sends a Ping frame every 10 s and expects a Pong. The `websockets` library
  answers Pings itself and also sends its own (`ping_interval`); a Pong missing for
  `ping_timeout` closes the connection, which this class treats like any drop. No JSON heartbeat
  exists, so nothing here sends one.

A dropped connection is reopened with exponential backoff and jitter (up to `backoff_max`,
`[engine] backoff_max_seconds`: 2 s by default), every subscription is made again (so every book
restarts from a snapshot), and `Disconnected` / `Connected` are reported. A handshake answered
429 or 503 with `Retry-After` waits that long first (at most `retry_after_max`; read by
`engine.http_retry`, dates against the injected clock).

Usage::

    stream = KalshiStream(signer, ["KXBTCD-26NOV2117-T97000"], url=WS_URLS["demo"])
    async with stream:
        async for update in stream:
            match update:
                case KalshiQuote(): ...
                case SequenceGap() | MalformedMessage() | StreamError(): ...  # data_quality

The time of each update (`received`) comes from the injected clock; backoff waits go through the
injected `sleep`, so tests run without real waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from engine.clock import Clock, RealClock
from engine.http_retry import (
    DEFAULT_BACKOFF_MAX_SECONDS,
    DEFAULT_RETRY_AFTER_MAX_SECONDS,
    retry_after,
)
from engine.venues.kalshi.auth import KalshiSigner
from engine.venues.kalshi.book import (
    BookInconsistent,
    MarketBook,
    TopOfBook,
    parse_delta,
    parse_rfc3339,
    parse_snapshot,
)
from engine.venues.kalshi.errors import KalshiAuthError, KalshiError
from engine.venues.kalshi.fixed import FixedPointError, parse_count, parse_dollars

__all__ = [
    "CHANNELS",
    "WS_URLS",
    "Connected",
    "Disconnected",
    "KalshiQuote",
    "KalshiStream",
    "KalshiStreamError",
    "MalformedMessage",
    "SequenceGap",
    "StreamError",
    "StreamUpdate",
]

log = logging.getLogger("engine.venues.kalshi.stream")

WS_URLS = {
    "prod": "wss://external-api-ws.kalshi.com/trade-api/ws/v2",
    # The demo URL of venues.md and of the official quick start; secondary sources also name
    # wss://external-api-ws.demo.kalshi.co/trade-api/ws/v2 (unverified here).
    "demo": "wss://demo-api.kalshi.co/trade-api/ws/v2",
}
TICKER = "ticker"
ORDERBOOK = "orderbook_delta"
CHANNELS = (TICKER, ORDERBOOK)
# Channels whose messages carry `seq`; a `ticker` message has none (asyncapi: required type,
# sid, msg), so a gap can only be seen on the book.
SEQUENCED = frozenset({ORDERBOOK})


class KalshiStreamError(KalshiError):
    """The stream cannot go on (a refused handshake is the `KalshiAuthError` subclass)."""


# ---- what the stream yields -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KalshiQuote:
    """Top of book for one market, YES terms. `source` says where it came from:

    - "book": derived from the order book (YES ask = 1 − best NO bid); `ts` is the delta's
      venue time, None after a snapshot (snapshots carry no time).
    - "ticker": the venue's `ticker` message; `ts` from `ts_ms` (or `ts`, seconds).

    `received` is the injected clock's time on arrival. Sides are None when empty.
    """

    ticker: str
    yes_bid: Decimal | None
    yes_bid_size: Decimal | None
    yes_ask: Decimal | None
    yes_ask_size: Decimal | None
    ts: float | None
    received: float
    source: Literal["book", "ticker"]
    last_price: Decimal | None = None


@dataclass(frozen=True, slots=True)
class SequenceGap:
    """A lost message on subscription `sid`: its books were dropped and it is being replaced.

    `reason` is "seq gap" (`got` is not `expected`), or why a delta did not fit the book (a
    level below zero, a delta before its snapshot), which also means a message was lost.
    """

    sid: int
    channel: str
    expected: int
    got: int
    tickers: tuple[str, ...]
    received: float
    reason: str = "seq gap"


@dataclass(frozen=True, slots=True)
class StreamError:
    """A venue `error` answer to a command (`code` per the asyncapi table, e.g. 16 not found)."""

    code: int | None
    message: str
    cmd_id: int | None
    market_ticker: str | None
    received: float


@dataclass(frozen=True, slots=True)
class MalformedMessage:
    """A message refused as unreadable (bad JSON, a bad decimal string...); the stream goes on.

    `field` names the offending field when known. A refused book message also replaces its
    subscription, since the book can no longer be trusted.
    """

    kind: str
    field: str | None
    error: str
    received: float


@dataclass(frozen=True, slots=True)
class Connected:
    url: str
    reconnect: bool  # False for the first connection, True after a drop
    received: float


@dataclass(frozen=True, slots=True)
class Disconnected:
    reason: str
    retry_in: float  # seconds until the next attempt
    attempt: int  # consecutive failed attempts so far
    received: float


StreamUpdate = KalshiQuote | SequenceGap | StreamError | MalformedMessage | Connected | Disconnected


# ---- subscription bookkeeping -----------------------------------------------------------


@dataclass
class _Sub:
    channel: str
    tickers: set[str]
    last_seq: int | None = None


@dataclass
class _Pending:
    cmd: str
    channels: tuple[str, ...] = ()
    sid: int | None = None
    action: str | None = None
    tickers: tuple[str, ...] = ()
    answered: set[str] = field(default_factory=set)


class _Failed:
    """Queue marker: the stream ended with `error`."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


_END = object()


async def _real_sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)


class KalshiStream:
    """Market data for a set of Kalshi markets: quotes from the book and the ticker channel.

    Start it with `async with stream` (or `start()` / `aclose()`), read it with `async for`.
    `add_tickers` / `remove_tickers` change the markets while it runs.
    """

    def __init__(
        self,
        signer: KalshiSigner,
        tickers: Iterable[str] = (),
        *,
        url: str = WS_URLS["prod"],
        clock: Clock | None = None,
        sleep: Callable[[float], Awaitable[None]] = _real_sleep,
        rng: random.Random | None = None,
        backoff_base: float = 0.5,
        backoff_max: float = DEFAULT_BACKOFF_MAX_SECONDS,
        retry_after_max: float = DEFAULT_RETRY_AFTER_MAX_SECONDS,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        open_timeout: float = 10.0,
        proxy: str | bool | None = True,
        max_queue: int = 10_000,
    ) -> None:
        self._signer = signer
        self._url = url
        self._path = urlsplit(url).path or "/trade-api/ws/v2"
        self._clock: Clock = clock or RealClock()
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._retry_after_max = retry_after_max
        self._retry_after = 0.0  # the last refused handshake's Retry-After, bounded
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._open_timeout = open_timeout
        self._proxy = proxy
        self._queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=max_queue)
        self._tickers: dict[str, None] = dict.fromkeys(tickers)  # ordered set
        self._books: dict[str, MarketBook] = {}
        self._last_top: dict[str, TopOfBook] = {}
        self._ws: ClientConnection | None = None
        self._subs: dict[int, _Sub] = {}
        self._pending: dict[int, _Pending] = {}
        self._next_id = 1
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._opened = False  # the current attempt got a connection
        self._ever_connected = False

    # ---- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="kalshi-stream")

    async def aclose(self) -> None:
        """Close the connection (a proper close frame), then stop the task."""
        self._closed = True
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def __aenter__(self) -> KalshiStream:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __aiter__(self) -> KalshiStream:
        return self

    async def __anext__(self) -> StreamUpdate:
        item = await self._queue.get()
        if item is _END:
            raise StopAsyncIteration
        if isinstance(item, _Failed):
            raise item.error
        return item  # type: ignore[no-any-return]

    # ---- what the engine may ask ------------------------------------------------------------

    @property
    def tickers(self) -> tuple[str, ...]:
        return tuple(self._tickers)

    def book(self, ticker: str) -> MarketBook | None:
        """The live book of `ticker`, None until its snapshot arrived (or after a gap)."""
        return self._books.get(ticker)

    async def add_tickers(self, tickers: Iterable[str]) -> None:
        """Watch more markets: `update_subscription` / `add_markets` on each live subscription."""
        for t in tickers:
            self._tickers.setdefault(t, None)
        await self._reconcile()

    async def remove_tickers(self, tickers: Iterable[str]) -> None:
        """Stop watching markets (`delete_markets`); their books are dropped at once."""
        for t in tickers:
            self._tickers.pop(t, None)
            self._drop_book(t)
        await self._reconcile()

    # ---- connection loop --------------------------------------------------------------------

    def _backoff(self, attempt: int) -> float:
        """Exponential with "equal jitter": half the step fixed, half random, so never zero."""
        step = min(self._backoff_max, self._backoff_base * (2 ** max(0, attempt - 1)))
        return step / 2 + self._rng.uniform(0, step / 2)

    async def _run(self) -> None:
        attempt = 0
        try:
            while not self._closed:
                self._opened = False
                reason = await self._connect_and_read()
                if reason is None:  # closed by us
                    break
                if self._opened:  # a connection that worked: the backoff starts over
                    attempt = 0
                attempt += 1
                delay = max(self._backoff(attempt), self._retry_after)
                self._retry_after = 0.0
                log.warning("Kalshi stream: %s; reconnecting in %.1f s", reason, delay)
                await self._put(Disconnected(reason, delay, attempt, self._clock.now()))
                await self._sleep(delay)
            await self._put(_END)
        except KalshiAuthError as exc:
            await self._put(_Failed(exc))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must end the stream loudly, not hang the reader
            log.exception("Kalshi stream failed")
            await self._put(_Failed(KalshiStreamError(f"stream failed: {exc!r}")))

    async def _connect_and_read(self) -> str | None:
        """One connection: open, subscribe, read until it drops. Returns why it ended."""
        headers = self._signer.headers("GET", self._path)
        try:
            ws = await connect(
                self._url,
                additional_headers=headers,
                open_timeout=self._open_timeout,
                ping_interval=self._ping_interval,
                ping_timeout=self._ping_timeout,
                proxy=self._proxy,  # type: ignore[arg-type]
                max_size=None,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in (401, 403):
                raise KalshiAuthError(
                    "websocket handshake refused (key id, key or clock)",
                    status=status,
                    method="GET",
                    path=self._path,
                ) from None
            ra = retry_after(status, exc.response.headers, self._clock.now(), self._retry_after_max)
            if ra is not None:
                self._retry_after = ra.wait
                more = (
                    f" (asked {ra.asked:.0f} s, waiting at most {ra.wait:.0f})" if ra.capped else ""
                )
                return f"handshake answered HTTP {status}, Retry-After {ra.wait:.0f} s{more}"
            return f"handshake answered HTTP {status}"
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            return f"cannot connect: {exc!r}"

        self._ws = ws
        self._opened = True
        self._subs.clear()
        self._pending.clear()
        self._books.clear()
        self._last_top.clear()
        reconnect = self._ever_connected
        self._ever_connected = True
        await self._put(Connected(self._url, reconnect, self._clock.now()))
        try:
            await self._reconcile()
            async for raw in ws:
                await self._handle(raw)
        except ConnectionClosed as exc:
            return f"connection closed: {exc}"
        finally:
            self._ws = None
            self._subs.clear()
            self._pending.clear()
            self._books.clear()
            self._last_top.clear()
        if self._closed:
            return None
        close = ws.close_rcvd
        return f"connection closed by the venue ({close})" if close else "connection closed"

    async def _put(self, item: Any) -> None:
        await self._queue.put(item)

    # ---- commands ---------------------------------------------------------------------------

    async def _send(self, cmd: str, params: dict[str, Any], pending: _Pending) -> None:
        if self._ws is None:
            return
        cmd_id = self._next_id
        self._next_id += 1
        self._pending[cmd_id] = pending
        # On a drop the read loop sees it too; the next connection subscribes everything.
        with contextlib.suppress(ConnectionClosed):
            await self._ws.send(json.dumps({"id": cmd_id, "cmd": cmd, "params": params}))

    def _busy(self, sid: int | None = None, channel: str | None = None) -> bool:
        for p in self._pending.values():
            if sid is not None and p.sid == sid:
                return True
            if (
                channel is not None
                and p.cmd == "subscribe"
                and channel in p.channels
                and channel not in p.answered
            ):
                return True
        return False

    async def _reconcile(self) -> None:
        """Bring the live subscriptions to the wanted markets (after any change or answer).

        Channels without a subscription are subscribed (one command for all of them); a live
        subscription whose markets differ gets `update_subscription` (one per sid, as the API
        requires); with no markets left it is unsubscribed. Nothing is sent while a command on
        the same subscription is unanswered: its answer calls this again.
        """
        if self._ws is None:
            return
        wanted = set(self._tickers)
        live = {sub.channel: sid for sid, sub in self._subs.items()}
        missing = tuple(c for c in CHANNELS if c not in live and not self._busy(channel=c))
        if missing and wanted:
            tickers = tuple(self._tickers)
            await self._send(
                "subscribe",
                {"channels": list(missing), "market_tickers": list(tickers)},
                _Pending("subscribe", channels=missing, tickers=tickers),
            )
        for sid in list(live.values()):
            sub = self._subs.get(sid)  # another task may have replaced it meanwhile
            if sub is None or self._busy(sid=sid):
                continue
            if not wanted:
                await self._send("unsubscribe", {"sids": [sid]}, _Pending("unsubscribe", sid=sid))
                del self._subs[sid]
                continue
            add = tuple(t for t in self._tickers if t not in sub.tickers)
            remove = tuple(sorted(sub.tickers - wanted))
            for action, tickers in (("add_markets", add), ("delete_markets", remove)):
                if tickers:
                    await self._send(
                        "update_subscription",
                        {"sids": [sid], "action": action, "market_tickers": list(tickers)},
                        _Pending("update_subscription", sid=sid, action=action, tickers=tickers),
                    )
                    break  # one command in flight per sid; the answer reconciles again

    async def _replace(self, sid: int) -> None:
        """Drop subscription `sid` and its books; `_reconcile` subscribes the channel afresh."""
        sub = self._subs.pop(sid, None)
        if sub is None:
            return
        if sub.channel == ORDERBOOK:
            for t in sub.tickers:
                self._drop_book(t)
        await self._send("unsubscribe", {"sids": [sid]}, _Pending("unsubscribe", sid=sid))
        await self._reconcile()

    def _drop_book(self, ticker: str) -> None:
        self._books.pop(ticker, None)
        self._last_top.pop(ticker, None)

    # ---- messages ---------------------------------------------------------------------------

    async def _handle(self, raw: str | bytes) -> None:
        now = self._clock.now()
        try:
            message = json.loads(raw)
        except ValueError as exc:
            await self._put(MalformedMessage("?", None, f"not JSON: {exc}", now))
            return
        if not isinstance(message, dict):
            await self._put(MalformedMessage("?", None, "not a JSON object", now))
            return
        kind = message.get("type")
        sid = message.get("sid")
        seq = message.get("seq")
        if kind == "subscribed":
            await self._on_subscribed(message, now)
            return
        if kind == "error":
            await self._on_error(message, now)
            return
        if kind == "unsubscribed":
            self._pending.pop(message.get("id"), None)  # type: ignore[arg-type]
            return
        sub = self._subs.get(sid) if isinstance(sid, int) else None
        if sub is None:
            # An old subscription's tail (after a gap or removal) or an unknown sid: ignore.
            if kind == "ok":
                self._pending.pop(message.get("id"), None)  # type: ignore[arg-type]
            return
        if sub.channel in SEQUENCED and not await self._check_seq(sid, sub, seq, now):
            return
        if kind == "ok":
            await self._on_ok(sid, sub, message)
        elif kind == "orderbook_snapshot":
            await self._on_snapshot(sid, sub, message, now)
        elif kind == "orderbook_delta":
            await self._on_delta(sid, sub, message, now)
        elif kind == "ticker":
            await self._on_ticker(message, now)

    async def _check_seq(self, sid: int, sub: _Sub, seq: Any, now: float) -> bool:
        """True when `seq` follows the previous one; on a gap, report it and resubscribe."""
        if not isinstance(seq, int) or isinstance(seq, bool):
            await self._put(MalformedMessage(sub.channel, "seq", f"bad seq {seq!r}", now))
            await self._replace(sid)
            return False
        if sub.last_seq is not None and seq != sub.last_seq + 1:
            tickers = tuple(sorted(sub.tickers))
            expected = sub.last_seq + 1
            log.warning("Kalshi sid %d: seq %d after %d; resubscribing", sid, seq, sub.last_seq)
            await self._put(SequenceGap(sid, sub.channel, expected, seq, tickers, now))
            await self._replace(sid)
            return False
        sub.last_seq = seq
        return True

    async def _on_subscribed(self, message: dict[str, Any], now: float) -> None:
        msg = message.get("msg")
        cmd_id = message.get("id")
        pending = self._pending.get(cmd_id)  # type: ignore[arg-type]
        if not isinstance(msg, dict) or not isinstance(msg.get("sid"), int):
            await self._put(MalformedMessage("subscribed", "sid", f"bad answer {msg!r}", now))
            return
        channel = msg.get("channel")
        if pending is None or channel not in pending.channels:
            return
        pending.answered.add(channel)
        if pending.answered >= set(pending.channels):
            self._pending.pop(cmd_id, None)  # type: ignore[arg-type]
        self._subs[msg["sid"]] = _Sub(channel, set(pending.tickers))
        await self._reconcile()

    async def _on_ok(self, sid: int, sub: _Sub, message: dict[str, Any]) -> None:
        pending = self._pending.pop(message.get("id"), None)  # type: ignore[arg-type]
        msg = message.get("msg")
        listed = msg.get("market_tickers") if isinstance(msg, dict) else None
        if isinstance(listed, list):
            sub.tickers = {t for t in listed if isinstance(t, str)}
        elif pending is not None and pending.action == "add_markets":
            sub.tickers |= set(pending.tickers)
        elif pending is not None and pending.action == "delete_markets":
            sub.tickers -= set(pending.tickers)
        await self._reconcile()

    async def _on_error(self, message: dict[str, Any], now: float) -> None:
        msg = message.get("msg") if isinstance(message.get("msg"), dict) else {}
        cmd_id = message.get("id")
        code = msg.get("code")
        error = StreamError(
            code if isinstance(code, int) else None,
            str(msg.get("msg", "")),
            cmd_id if isinstance(cmd_id, int) else None,
            msg.get("market_ticker") if isinstance(msg.get("market_ticker"), str) else None,
            now,
        )
        log.warning("Kalshi stream error %s: %s (command %s)", error.code, error.message, cmd_id)
        # The failed command is not retried by itself (a missing market would fail forever);
        # the next change of markets or a reconnect tries again.
        self._pending.pop(cmd_id, None)  # type: ignore[arg-type]
        await self._put(error)

    async def _on_snapshot(self, sid: int, sub: _Sub, message: dict[str, Any], now: float) -> None:
        try:
            snapshot = parse_snapshot(message.get("msg"))
        except FixedPointError as exc:
            await self._put(MalformedMessage("orderbook_snapshot", exc.field, str(exc), now))
            await self._replace(sid)
            return
        if snapshot.ticker not in self._tickers:
            return
        book = MarketBook(snapshot)
        self._books[snapshot.ticker] = book
        await self._emit_top(book, None, now, force=True)

    async def _on_delta(self, sid: int, sub: _Sub, message: dict[str, Any], now: float) -> None:
        try:
            delta = parse_delta(message.get("msg"))
        except FixedPointError as exc:
            await self._put(MalformedMessage("orderbook_delta", exc.field, str(exc), now))
            await self._replace(sid)  # the book missed a change: rebuild it
            return
        if delta.ticker not in self._tickers:
            return
        book = self._books.get(delta.ticker)
        try:
            if book is None:
                raise BookInconsistent(f"{delta.ticker}: a delta before its snapshot")
            book.apply(delta)
        except BookInconsistent as exc:
            seq = sub.last_seq or 0
            await self._put(
                SequenceGap(sid, sub.channel, seq, seq, (delta.ticker,), now, reason=str(exc))
            )
            log.warning("Kalshi book inconsistent (%s); resubscribing", exc)
            await self._replace(sid)
            return
        await self._emit_top(book, delta.ts, now)

    async def _emit_top(
        self, book: MarketBook, ts: float | None, now: float, *, force: bool = False
    ) -> None:
        top = book.top()
        if not force and self._last_top.get(book.ticker) == top:
            return
        self._last_top[book.ticker] = top
        await self._put(
            KalshiQuote(
                book.ticker,
                top.yes_bid,
                top.yes_bid_size,
                top.yes_ask,
                top.yes_ask_size,
                ts,
                now,
                "book",
            )
        )

    async def _on_ticker(self, message: dict[str, Any], now: float) -> None:
        msg = message.get("msg")
        try:
            quote = _parse_ticker(msg, now)
        except FixedPointError as exc:
            await self._put(MalformedMessage("ticker", exc.field, str(exc), now))
            return
        if quote.ticker in self._tickers:
            await self._put(quote)


def _optional(
    msg: dict[str, Any], name: str, parse: Callable[[Any, str], Decimal]
) -> Decimal | None:
    value = msg.get(name)
    return None if value is None else parse(value, name)


def _parse_ticker(msg: Any, now: float) -> KalshiQuote:
    """A `ticker` message's `msg` as a quote; raises `FixedPointError` naming a bad field."""
    if not isinstance(msg, dict):
        raise FixedPointError("msg", msg, "expected an object")
    ticker = msg.get("market_ticker")
    if not isinstance(ticker, str) or not ticker:
        raise FixedPointError("market_ticker", ticker, "expected a market ticker")
    ts: float | None = None
    if isinstance(msg.get("ts_ms"), int):
        ts = msg["ts_ms"] / 1000
    elif isinstance(msg.get("ts"), int):
        ts = float(msg["ts"])
    elif msg.get("time") is not None:
        ts = parse_rfc3339(msg["time"], "time")
    return KalshiQuote(
        ticker=ticker,
        yes_bid=_optional(msg, "yes_bid_dollars", parse_dollars),
        yes_bid_size=_optional(msg, "yes_bid_size_fp", parse_count),
        yes_ask=_optional(msg, "yes_ask_dollars", parse_dollars),
        yes_ask_size=_optional(msg, "yes_ask_size_fp", parse_count),
        ts=ts,
        received=now,
        source="ticker",
        last_price=_optional(msg, "price_dollars", parse_dollars),
    )
