"""Spot prices pushed by the venues' websocket tickers: Coinbase Exchange and Kraken (v2).

What the venues do (their public docs):

- Coinbase Exchange, `wss://ws-feed.exchange.coinbase.com`, no authentication. A `subscribe`
  must arrive within 5 s: `{"type": "subscribe", "product_ids": ["BTC-USD"], "channels":
  ["ticker", "heartbeat"]}`; the answer is `{"type": "subscriptions", "channels": [...]}`, or
  `{"type": "error", "message", "reason"}`. The `ticker` channel sends one message per match
  (cascades batched): `{"type": "ticker", "sequence", "product_id", "price", "open_24h",
  "volume_24h", "low_24h", "high_24h", "volume_30d", "best_bid", "best_bid_size", "best_ask",
  "best_ask_size", "side", "time", "trade_id", "last_size"}` (decimals as strings, `time` ISO
  8601 UTC: the trade's). `heartbeat` sends `{"type": "heartbeat", "sequence", "last_trade_id",
  "product_id", "time"}` every second. New message types may appear: unknown ones are ignored.
- Kraken, `wss://ws.kraken.com/v2`: on connect a `{"channel": "status", ...}` message; then
  `{"method": "subscribe", "params": {"channel": "ticker", "symbol": ["BTC/USD"]}}` answers
  `{"method": "subscribe", "result": {"channel": "ticker", "symbol": "BTC/USD", ...},
  "success": true, "time_in", "time_out"}` (or `"success": false, "error": "..."`), then
  `{"channel": "ticker", "type": "snapshot" | "update", "data": [{"symbol", "bid", "bid_qty",
  "ask", "ask_qty", "last", "volume", "vwap", "low", "high", "change", "change_pct",
  "timestamp"?}]}` (numbers as JSON numbers, `timestamp` RFC 3339; updates on every trade).
  `{"channel": "heartbeat"}` comes about once a second while subscribed.

Each stream is a `SpotSource` (`name`, `latest`, `backfill`, `aclose`): `latest()` is the newest
pushed tick, `backfill()` asks the venue's REST client (the 30-minute history at start). Ticks
are handed to `on_tick` as they arrive (the `SpotFeed` records them in the primary/fallback
selector and wakes up); a connection attempt that fails goes to `on_failure` (the selector's
`record_failure`). A drop that reconnects at once is not a failure: if it lasts, the price goes
stale and the selector moves to the fallback as for a quiet venue.

Robustness:
- A dropped connection (close frame or not), a failed handshake, a venue `error` answer, or no
  message at all for `idle_timeout` seconds (both venues send heartbeats, so silence means a
  dead link or a stuck server) closes the connection; it is reopened after an exponential
  backoff with jitter (half fixed, half random) up to `backoff_max` (`[engine]
  backoff_max_seconds`, 2 s by default), which starts over once a connection delivered. A
  handshake answered 429 or 503 with `Retry-After` waits that long first (at most
  `retry_after_max`; read by `engine.http_retry`, dates against the injected clock).
- A malformed message (not JSON, a missing or unreadable field, a crossed book, a time in the
  future) is logged with the field and the value and skipped; the stream goes on. It is not a
  failure of the source by itself: if nothing good comes, the price goes stale.

Backoff waits go through the injected `sleep`, times through the injected clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from engine.clock import Clock
from engine.feeds.spot_sources import (
    MinuteClose,
    SourceBadData,
    SourceUnavailable,
    SpotSource,
    SpotSourceError,
    SpotTick,
    check_book,
    parse_iso,
    parse_price,
    short,
)
from engine.http_retry import (
    DEFAULT_BACKOFF_MAX_SECONDS,
    DEFAULT_RETRY_AFTER_MAX_SECONDS,
    retry_after,
)

__all__ = [
    "COINBASE_WS_URL",
    "KRAKEN_WS_URL",
    "CoinbaseStream",
    "KrakenStream",
    "SpotStream",
]

log = logging.getLogger(__name__)

COINBASE_WS_URL = "wss://ws-feed.exchange.coinbase.com"
KRAKEN_WS_URL = "wss://ws.kraken.com/v2"
MALFORMED_LOGGED = 20
"""Malformed messages logged one by one; after that one in a thousand (a changed format must
not flood the log)."""


async def _real_sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)


class _VenueRefused(Exception):
    """The venue answered the subscription with an error: drop the connection, retry later."""


class SpotStream:
    """One venue's websocket ticker for one product (subclasses say what to send and read)."""

    name = "stream"

    def __init__(
        self,
        clock: Clock,
        rest: SpotSource,
        *,
        url: str,
        sleep: Callable[[float], Awaitable[None]] = _real_sleep,
        rng: random.Random | None = None,
        backoff_base: float = 0.5,
        backoff_max: float = DEFAULT_BACKOFF_MAX_SECONDS,
        retry_after_max: float = DEFAULT_RETRY_AFTER_MAX_SECONDS,
        idle_timeout: float = 15.0,
        open_timeout: float = 10.0,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        proxy: str | bool | None = True,
    ) -> None:
        self.clock = clock
        self.rest = rest
        self.url = url
        self._sleep = sleep
        self._rng = rng or random.Random()
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.retry_after_max = retry_after_max
        self._retry_after = 0.0  # the last refused handshake's Retry-After, bounded
        self.idle_timeout = idle_timeout
        self._open_timeout = open_timeout
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._proxy = proxy
        self._on_tick: Callable[[SpotTick], None] | None = None
        self._on_failure: Callable[[str, SpotSourceError], None] | None = None
        self._ws: ClientConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._delivered = False  # the current connection delivered a tick
        self.last_tick: SpotTick | None = None
        self.listeners: list[Callable[[SpotTick], None]] = []  # also told of each good tick
        self.connections = 0  # connections opened so far
        self.malformed = 0  # messages skipped as malformed
        self.last_error: str | None = None  # why the last connection ended

    # ---- SpotSource ---------------------------------------------------------------------------

    async def latest(self) -> SpotTick:
        """The newest pushed tick (the selector judges its age)."""
        if self.last_tick is None:
            why = f" ({self.last_error})" if self.last_error else ""
            raise SourceUnavailable(self.name, f"no price from the stream yet{why}")
        return self.last_tick

    async def backfill(self, minutes: int = 30) -> list[MinuteClose]:
        return await self.rest.backfill(minutes)

    # ---- life cycle ---------------------------------------------------------------------------

    async def start(
        self,
        on_tick: Callable[[SpotTick], None],
        on_failure: Callable[[str, SpotSourceError], None],
    ) -> None:
        """Connect (and keep reconnecting) in a task; ticks go to `on_tick`."""
        self._on_tick = on_tick
        self._on_failure = on_failure
        if self._task is None and not self._closed:
            self._task = asyncio.create_task(self._run(), name=f"{self.name}-stream")

    async def aclose(self) -> None:
        """Close the connection and stop the task (the REST client is closed by its owner)."""
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

    def backoff(self, attempt: int) -> float:
        """Exponential with "equal jitter": half the step fixed, half random, never zero."""
        step = min(self.backoff_max, self.backoff_base * (2 ** max(0, attempt - 1)))
        return step / 2 + self._rng.uniform(0, step / 2)

    async def _run(self) -> None:
        attempt = 0
        while not self._closed:
            self._delivered = False
            try:
                failed, reason = await self._connect_and_read()
            except Exception as exc:  # a bug must not end the stream quietly: log, reconnect
                log.exception("%s stream failed", self.name)
                failed, reason = True, f"internal error: {exc!r}"
            if self._closed:
                return
            self.last_error = reason
            if self._delivered:
                attempt = 0  # a connection that worked: the backoff starts over
            attempt += 1
            delay = max(self.backoff(attempt), self._retry_after)
            self._retry_after = 0.0
            if failed:
                self._failure(SourceUnavailable(self.name, f"stream {reason}"))
            log.warning("%s stream: %s; reconnecting in %.1f s", self.name, reason, delay)
            await self._sleep(delay)

    async def _connect_and_read(self) -> tuple[bool, str]:
        """One connection. Returns (whether it counts as a failure, why it ended)."""
        try:
            ws = await connect(
                self.url,
                open_timeout=self._open_timeout,
                ping_interval=self._ping_interval,
                ping_timeout=self._ping_timeout,
                proxy=self._proxy,  # type: ignore[arg-type]
                max_size=2**20,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            ra = retry_after(status, exc.response.headers, self.clock.now(), self.retry_after_max)
            if ra is not None:
                self._retry_after = ra.wait
                more = (
                    f" (asked {ra.asked:.0f} s, waiting at most {ra.wait:.0f})" if ra.capped else ""
                )
                return True, f"handshake answered HTTP {status}, Retry-After {ra.wait:.0f} s{more}"
            return True, f"handshake answered HTTP {status}"
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            return True, f"cannot connect: {exc!r}"
        self._ws = ws
        self.connections += 1
        try:
            for message in self.subscribe_messages():
                await ws.send(json.dumps(message))
            while True:
                try:
                    async with asyncio.timeout(self.idle_timeout):
                        raw = await ws.recv()
                except TimeoutError:
                    return False, f"silent for {self.idle_timeout:g} s"
                self._handle(raw)
        except ConnectionClosed as exc:
            return False, f"connection closed ({exc})"
        except _VenueRefused as exc:
            return True, f"refused by the venue: {exc}"
        finally:
            self._ws = None
            with contextlib.suppress(Exception):
                await ws.close()

    # ---- messages -----------------------------------------------------------------------------

    def _handle(self, raw: str | bytes) -> None:
        now = self.clock.now()
        try:
            try:
                message = json.loads(raw)
            except ValueError:
                raise SourceBadData(self.name, "message", raw, "not JSON") from None
            if not isinstance(message, dict):
                raise SourceBadData(self.name, "message", message, "not a JSON object")
            tick = self.parse(message, now)
        except SourceBadData as exc:
            self.malformed += 1
            if self.malformed <= MALFORMED_LOGGED or self.malformed % 1000 == 0:
                log.warning(
                    "%s stream: malformed message skipped (%d so far): %s",
                    self.name,
                    self.malformed,
                    exc.detail,
                )
            return
        if tick is None:
            return
        self.last_tick = tick
        self._delivered = True
        if self._on_tick is not None:
            self._on_tick(tick)
        for listener in self.listeners:
            listener(tick)

    def _failure(self, error: SpotSourceError) -> None:
        if self._on_failure is not None:
            self._on_failure(self.name, error)

    # ---- what a venue says ----------------------------------------------------------------------

    def subscribe_messages(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def parse(self, message: dict[str, Any], now: float) -> SpotTick | None:
        """A tick from a ticker message; None for anything else; `SourceBadData` when
        malformed; `_VenueRefused` for the venue's error answer."""
        raise NotImplementedError

    def _get(self, obj: dict[str, Any], key: str, where: str) -> Any:
        if key not in obj:
            raise SourceBadData(self.name, f"{where}.{key}", short(obj), "missing")
        return obj[key]


class CoinbaseStream(SpotStream):
    """Coinbase Exchange's public feed: the `ticker` (and `heartbeat`) channels of one product."""

    name = "coinbase"

    def __init__(
        self, clock: Clock, rest: SpotSource, *, url: str = COINBASE_WS_URL, **kw: Any
    ) -> None:
        super().__init__(clock, rest, url=url, **kw)
        self.product = getattr(rest, "product", "BTC-USD")

    def subscribe_messages(self) -> list[dict[str, Any]]:
        return [
            {
                "type": "subscribe",
                "product_ids": [self.product],
                "channels": ["ticker", "heartbeat"],
            }
        ]

    def parse(self, message: dict[str, Any], now: float) -> SpotTick | None:
        kind = message.get("type")
        if kind == "error":
            reason = message.get("reason")
            raise _VenueRefused(
                f"{message.get('message', 'error')}{': ' + str(reason) if reason else ''}"
            )
        if kind != "ticker" or message.get("product_id") != self.product:
            return None  # subscriptions, heartbeat, other products, new message types
        price = parse_price(self.name, "price", self._get(message, "price", "ticker"))
        bid = parse_price(self.name, "best_bid", self._get(message, "best_bid", "ticker"))
        ask = parse_price(self.name, "best_ask", self._get(message, "best_ask", "ticker"))
        check_book(self.name, bid, ask)
        ts = parse_iso(self.name, "time", self._get(message, "time", "ticker"), now)
        return SpotTick(self.name, ts, price, bid, ask)


class KrakenStream(SpotStream):
    """Kraken's websocket v2: the `ticker` channel of one symbol (`BTC/USD`)."""

    name = "kraken"

    def __init__(
        self,
        clock: Clock,
        rest: SpotSource,
        *,
        url: str = KRAKEN_WS_URL,
        symbol: str = "BTC/USD",
        **kw: Any,
    ) -> None:
        super().__init__(clock, rest, url=url, **kw)
        self.symbol = symbol

    def subscribe_messages(self) -> list[dict[str, Any]]:
        return [
            {
                "method": "subscribe",
                "params": {"channel": "ticker", "symbol": [self.symbol]},
                "req_id": 1,
            }
        ]

    def parse(self, message: dict[str, Any], now: float) -> SpotTick | None:
        if message.get("method") == "subscribe" and message.get("success") is False:
            raise _VenueRefused(str(message.get("error", "subscription refused")))
        if message.get("channel") != "ticker" or message.get("type") not in (
            "snapshot",
            "update",
        ):
            return None  # status, heartbeat, acknowledgements, pong
        data = self._get(message, "data", "ticker")
        if not isinstance(data, list):
            raise SourceBadData(self.name, "ticker.data", data, "expected a list")
        tick: SpotTick | None = None
        for i, entry in enumerate(data):
            where = f"data[{i}]"
            if not isinstance(entry, dict):
                raise SourceBadData(self.name, where, entry, "expected an object")
            if entry.get("symbol") != self.symbol:
                continue
            last = parse_price(self.name, f"{where}.last", self._get(entry, "last", where))
            bid = parse_price(self.name, f"{where}.bid", self._get(entry, "bid", where))
            ask = parse_price(self.name, f"{where}.ask", self._get(entry, "ask", where))
            check_book(self.name, bid, ask)
            raw_ts = entry.get("timestamp")
            # Older messages carry no time: stamped on arrival, as the REST ticker is.
            ts = now if raw_ts is None else parse_iso(self.name, f"{where}.timestamp", raw_ts, now)
            tick = SpotTick(self.name, ts, last, bid, ask)
        return tick
