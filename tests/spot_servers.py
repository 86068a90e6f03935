"""Loopback stand-ins for the spot venues' public REST APIs (aiohttp on 127.0.0.1, ephemeral port).

The paths and JSON shapes are the real ones (Coinbase Exchange, Kraken, Deribit); the data is
whatever the test sets. A test queues faults that the next requests get, in order (or sets
`down` to a fault that every request gets until it is set back to None: a long outage):

- "500", "429", "503": an HTTP error with the venue's usual error body; a 429 or 503 carries
  `retry_after` (the venue's attribute, a `Retry-After` value as given: "120" or an HTTP
  date) when it is set;
- "slow": the answer is held longer than any client timeout (released when the server closes);
- "truncated": the good JSON cut in half, HTTP 200;
- "html": an HTML error page (a proxy or CDN in front of the venue), HTTP 502;
- "html200": the same page with HTTP 200;
- "venue_error": the venue's own error report (Kraken: HTTP 200 with an `error` list;
  Deribit: a JSON-RPC `error` object, HTTP 400; Coinbase: `{"message": ...}`, HTTP 400).

The websocket tickers (`CoinbaseWsServer`, `KrakenWsServer`, below) speak the venues' real
subscribe/acknowledge protocol and message shapes; the test pushes ticks, heartbeats or garbage,
can make a server go silent, or reset its connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from datetime import UTC, datetime
from typing import Any

from aiohttp import WSMsgType, web

from engine.clock import ManualClock

HTML_PAGE = (
    "<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head>"
    "<body><h1>502 Bad Gateway</h1><p>cloudflare</p></body></html>"
)
FAULTS = ("500", "429", "503", "slow", "truncated", "html", "html200", "venue_error")


class FakeVenue:
    """One venue: routes, queued faults, a log of the query strings it was sent."""

    def __init__(self) -> None:
        self.app = web.Application()
        self.faults: deque[str] = deque()
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.retry_after: str | None = None  # the Retry-After of a 429 / 503 answer
        self.down: str | None = None  # a fault answering every request (an outage)
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fail(self, *faults: str) -> None:
        """Queue faults for the next requests (one request each)."""
        for f in faults:
            if f not in FAULTS:
                raise ValueError(f"unknown fault {f!r}")
        self.faults.extend(faults)

    async def start(self) -> FakeVenue:
        self._runner = web.AppRunner(self.app, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def close(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def venue_error(self) -> web.Response:
        return web.json_response({"message": "Invalid request"}, status=400)

    async def respond(self, request: web.Request, payload: Any) -> web.Response:
        """The good answer, unless a fault is queued."""
        self.requests.append((request.path, dict(request.query)))
        fault = self.faults.popleft() if self.faults else self.down
        if fault is None:
            return web.json_response(payload)
        if fault == "500":
            return web.json_response({"message": "Internal server error"}, status=500)
        if fault in ("429", "503"):
            text = "Too many requests" if fault == "429" else "Service unavailable"
            answer = web.json_response({"message": text}, status=int(fault))
            if self.retry_after is not None:
                answer.headers["Retry-After"] = self.retry_after
            return answer
        if fault == "slow":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._release.wait(), 30)
            return web.json_response(payload)
        if fault == "truncated":
            text = json.dumps(payload)
            return web.Response(
                text=text[: len(text) // 2], content_type="application/json", status=200
            )
        if fault in ("html", "html200"):
            return web.Response(
                text=HTML_PAGE, content_type="text/html", status=502 if fault == "html" else 200
            )
        return self.venue_error()


class CoinbaseServer(FakeVenue):
    """`GET /products/{product_id}/ticker` and `/products/{product_id}/candles`."""

    def __init__(self) -> None:
        super().__init__()
        self.ticker: dict[str, Any] = {}
        self.candles: list[list[Any]] = []  # [time, low, high, open, close, volume], any order
        self.app.router.add_get("/products/{product_id}/ticker", self._ticker)
        self.app.router.add_get("/products/{product_id}/candles", self._candles)

    async def _ticker(self, request: web.Request) -> web.Response:
        if request.match_info["product_id"] != "BTC-USD":
            return web.json_response({"message": "NotFound"}, status=404)
        return await self.respond(request, self.ticker)

    async def _candles(self, request: web.Request) -> web.Response:
        # Newest first, as the venue sends them.
        rows = sorted(self.candles, key=lambda r: r[0], reverse=True)
        return await self.respond(request, rows)


class KrakenServer(FakeVenue):
    """`GET /0/public/Ticker?pair=` and `/0/public/OHLC?pair=&interval=&since=`.

    The result is keyed by `result_key` (Kraken's own name, XXBTZUSD for XBTUSD).
    """

    def __init__(self, result_key: str = "XXBTZUSD") -> None:
        super().__init__()
        self.result_key = result_key
        self.ticker: dict[str, Any] = {}
        self.ohlc: list[list[Any]] = []  # [time, open, high, low, close, vwap, volume, count]
        self.errors = ["EService:Unavailable"]
        self.app.router.add_get("/0/public/Ticker", self._ticker)
        self.app.router.add_get("/0/public/OHLC", self._ohlc)

    def venue_error(self) -> web.Response:
        return web.json_response({"error": self.errors})  # HTTP 200, as Kraken does

    async def _ticker(self, request: web.Request) -> web.Response:
        return await self.respond(request, {"error": [], "result": {self.result_key: self.ticker}})

    async def _ohlc(self, request: web.Request) -> web.Response:
        since = int(request.query.get("since", "0"))
        rows = sorted((r for r in self.ohlc if r[0] > since), key=lambda r: r[0])
        last = rows[-1][0] if rows else since
        return await self.respond(
            request, {"error": [], "result": {self.result_key: rows, "last": last}}
        )


class DeribitServer(FakeVenue):
    """`GET /api/v2/public/get_volatility_index_data?currency=&start_timestamp=&end_timestamp=&resolution=`."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[Any]] = []  # [ts_ms, open, high, low, close]
        self.app.router.add_get("/api/v2/public/get_volatility_index_data", self._dvol)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v2"

    def venue_error(self) -> web.Response:
        return web.json_response(
            {"jsonrpc": "2.0", "error": {"code": 10009, "message": "too_many_requests"}},
            status=400,
        )

    async def _dvol(self, request: web.Request) -> web.Response:
        start = int(request.query["start_timestamp"])
        end = int(request.query["end_timestamp"])
        rows = sorted((r for r in self.rows if start <= r[0] <= end), key=lambda r: r[0])
        return await self.respond(
            request,
            {"jsonrpc": "2.0", "result": {"data": rows, "continuation": None}, "usIn": 0},
        )


# --- websocket tickers ----------------------------------------------------------------------------


def iso_z(ts: float) -> str:
    """RFC 3339 with microseconds and Z, as both venues write times."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class WsConn:
    """One client connection, seen from the server."""

    def __init__(self, ws: web.WebSocketResponse, request: web.Request) -> None:
        self.ws = ws
        self.request = request
        self.subscribed = False

    def abort(self) -> None:
        """Drop the TCP connection without a close frame (a network failure)."""
        transport = self.request.transport
        if transport is not None:
            transport.abort()


class WsVenue:
    """A loopback websocket ticker (aiohttp, 127.0.0.1, an ephemeral port).

    The test pushes messages with `ticker(...)`, `heartbeat()`, `send_raw(...)` (garbage); every
    message goes to each connection that subscribed. `silent = True` makes the server answer
    nothing and push nothing (the connection stays open); `abort()` resets every connection.
    `busy` holds answers (status, Retry-After or None) for the next handshakes, one each, given
    instead of the upgrade (a venue under load: 429 / 503).
    `next_connection()` / `next_subscribe()` wait for the client (with a deadline).
    """

    path = "/"

    def __init__(self) -> None:
        self.app = web.Application()
        self.app.router.add_get(self.path, self._endpoint)
        self.connections: list[WsConn] = []
        self.subscribes: list[dict[str, Any]] = []
        self.silent = False
        self.busy: list[tuple[int, str | None]] = []
        self._new_connections: asyncio.Queue[WsConn] = asyncio.Queue()
        self._new_subscribes: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{self.path}"

    async def start(self) -> WsVenue:
        self._runner = web.AppRunner(self.app, shutdown_timeout=0.1, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def close(self) -> None:
        for conn in self.connections:
            conn.abort()
        if self._runner is not None:
            await self._runner.cleanup()

    async def next_connection(self, timeout: float = 5.0) -> WsConn:
        return await asyncio.wait_for(self._new_connections.get(), timeout)

    async def next_subscribe(self, timeout: float = 5.0) -> dict[str, Any]:
        return await asyncio.wait_for(self._new_subscribes.get(), timeout)

    def abort(self) -> None:
        for conn in self.connections:
            conn.abort()

    async def send_raw(self, payload: Any) -> None:
        """Push to every subscribed connection (text as is, anything else as JSON)."""
        if self.silent:
            return
        text = payload if isinstance(payload, str) else json.dumps(payload)
        for conn in self.connections:
            if conn.subscribed and not conn.ws.closed:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await conn.ws.send_str(text)

    async def _answer(self, conn: WsConn, payload: Any) -> None:
        if not self.silent:
            await conn.ws.send_str(json.dumps(payload))

    async def _endpoint(self, request: web.Request) -> web.StreamResponse:
        if self.busy:
            status, retry_after = self.busy.pop(0)
            answer = web.json_response({"message": "try later"}, status=status)
            if retry_after is not None:
                answer.headers["Retry-After"] = retry_after
            return answer
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        conn = WsConn(ws, request)
        self.connections.append(conn)
        self._new_connections.put_nowait(conn)
        await self.on_connect(conn)
        async for frame in ws:
            if frame.type != WSMsgType.TEXT:
                continue
            try:
                message = json.loads(frame.data)
            except ValueError:
                continue
            await self.on_message(conn, message)
        return ws

    async def on_connect(self, conn: WsConn) -> None:
        return None

    async def on_message(self, conn: WsConn, message: dict[str, Any]) -> None:
        raise NotImplementedError


class CoinbaseWsServer(WsVenue):
    """Coinbase Exchange's feed (`wss://ws-feed.exchange.coinbase.com`): `subscribe` with
    `product_ids` and `channels` answers `subscriptions` (or an `error` for an unknown product);
    `ticker` and `heartbeat` messages in the documented shapes."""

    path = "/"
    PRODUCTS = ("BTC-USD", "ETH-USD")

    def __init__(self) -> None:
        super().__init__()
        self.sequence = 1_000
        self.trade_id = 500

    async def on_message(self, conn: WsConn, message: dict[str, Any]) -> None:
        if message.get("type") != "subscribe":
            await self._answer(conn, {"type": "error", "message": "Failed to subscribe"})
            return
        try:
            await self._coinbase_subscribe(conn, message)
        finally:  # told once answered (and pushes reach this connection)
            self.subscribes.append(message)
            self._new_subscribes.put_nowait(message)

    async def _coinbase_subscribe(self, conn: WsConn, message: dict[str, Any]) -> None:
        products = list(message.get("product_ids") or [])
        unknown = [p for p in products if p not in self.PRODUCTS]
        if unknown or not products:
            await self._answer(
                conn,
                {
                    "type": "error",
                    "message": "Failed to subscribe",
                    "reason": f"{','.join(unknown) or 'no product'} is not a valid product",
                },
            )
            return
        channels = [
            {"name": c if isinstance(c, str) else c.get("name"), "product_ids": products}
            for c in message.get("channels") or []
        ]
        await self._answer(conn, {"type": "subscriptions", "channels": channels})
        conn.subscribed = True

    async def ticker(
        self, price: float, ts: float, *, bid: float | None = None, ask: float | None = None
    ) -> None:
        await self.send_raw(self.ticker_message(price, ts, bid=bid, ask=ask))

    def ticker_message(
        self, price: float, ts: float, *, bid: float | None = None, ask: float | None = None
    ) -> dict[str, Any]:
        """A `ticker` message as the venue sends it (a test may spoil a copy)."""
        self.sequence += 1
        self.trade_id += 1
        return {
            "type": "ticker",
            "sequence": self.sequence,
            "product_id": "BTC-USD",
            "price": f"{price:.2f}",
            "open_24h": "96000.00",
            "volume_24h": "12345.67890123",
            "low_24h": "95000.00",
            "high_24h": "99000.00",
            "volume_30d": "345678.12345678",
            "best_bid": f"{price if bid is None else bid:.2f}",
            "best_bid_size": "0.51000000",
            "best_ask": f"{price + 0.01 if ask is None else ask:.2f}",
            "best_ask_size": "0.12000000",
            "side": "buy",
            "time": iso_z(ts),
            "trade_id": self.trade_id,
            "last_size": "0.00100000",
        }

    async def heartbeat(self, ts: float) -> None:
        self.sequence += 1
        await self.send_raw(
            {
                "type": "heartbeat",
                "sequence": self.sequence,
                "last_trade_id": self.trade_id,
                "product_id": "BTC-USD",
                "time": iso_z(ts),
            }
        )


class KrakenWsServer(WsVenue):
    """Kraken's websocket v2 (`wss://ws.kraken.com/v2`): a `status` message on connect;
    `subscribe` to `ticker` answers the acknowledgement (`success`, `result`), then a `snapshot`
    when the server has a ticker; `update`s and `heartbeat`s as pushed."""

    path = "/v2"
    SYMBOLS = ("BTC/USD", "ETH/USD")

    def __init__(self) -> None:
        super().__init__()
        self.last: dict[str, Any] | None = None  # the current ticker entry, sent as the snapshot

    async def on_connect(self, conn: WsConn) -> None:
        await self._answer(
            conn,
            {
                "channel": "status",
                "type": "update",
                "data": [
                    {
                        "version": "2.0.10",
                        "system": "online",
                        "api_version": "v2",
                        "connection_id": 12_393_906_104_898_154_000 + len(self.connections),
                    }
                ],
            },
        )

    async def on_message(self, conn: WsConn, message: dict[str, Any]) -> None:
        now = iso_z(time.time())
        method = message.get("method")
        if method == "ping":
            await self._answer(conn, {"method": "pong", "req_id": message.get("req_id")})
            return
        if method != "subscribe":
            return
        try:
            await self._kraken_subscribe(conn, message, now)
        finally:  # told once answered (and pushes reach this connection)
            self.subscribes.append(message)
            self._new_subscribes.put_nowait(message)

    async def _kraken_subscribe(self, conn: WsConn, message: dict[str, Any], now: str) -> None:
        params = message.get("params") or {}
        symbols = list(params.get("symbol") or [])
        if params.get("channel") != "ticker" or not symbols:
            await self._answer(
                conn,
                {
                    "error": "Invalid request",
                    "method": "subscribe",
                    "success": False,
                    "time_in": now,
                    "time_out": now,
                },
            )
            return
        for symbol in symbols:
            if symbol not in self.SYMBOLS:
                await self._answer(
                    conn,
                    {
                        "error": f"Currency pair not supported {symbol}",
                        "method": "subscribe",
                        "success": False,
                        "symbol": symbol,
                        "time_in": now,
                        "time_out": now,
                    },
                )
                return
            await self._answer(
                conn,
                {
                    "method": "subscribe",
                    "req_id": message.get("req_id"),
                    "result": {
                        "channel": "ticker",
                        "event_trigger": "trades",
                        "snapshot": True,
                        "symbol": symbol,
                    },
                    "success": True,
                    "time_in": now,
                    "time_out": now,
                },
            )
        conn.subscribed = True
        if self.last is not None and not self.silent:
            await conn.ws.send_str(
                json.dumps({"channel": "ticker", "type": "snapshot", "data": [self.last]})
            )

    def entry(self, last: float, ts: float | None, bid: float, ask: float) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "symbol": "BTC/USD",
            "bid": bid,
            "bid_qty": 0.5,
            "ask": ask,
            "ask_qty": 1.25,
            "last": last,
            "volume": 1234.56789,
            "vwap": 97_123.4,
            "low": 95_000.0,
            "high": 99_000.0,
            "change": 512.3,
            "change_pct": 0.53,
        }
        if ts is not None:
            entry["timestamp"] = iso_z(ts)
        return entry

    async def ticker(
        self,
        last: float,
        ts: float | None,
        *,
        bid: float | None = None,
        ask: float | None = None,
    ) -> None:
        """An `update` on a trade (and the snapshot a later subscriber gets)."""
        b = last if bid is None else bid
        self.last = self.entry(last, ts, b, last + 0.1 if ask is None else ask)
        await self.send_raw({"channel": "ticker", "type": "update", "data": [self.last]})

    async def heartbeat(self) -> None:
        await self.send_raw({"channel": "heartbeat"})


class ParkedClock(ManualClock):
    """A `ManualClock` whose `sleep` returns only once the test has moved the clock past its end.

    For a feed run as a task (`SpotFeed.run`, `KalshiMarketFeed.run`): between pushes it waits,
    instead of spinning as `ManualClock.sleep` (which only yields) would.
    """

    def __init__(self, start: float = 0.0) -> None:
        super().__init__(start)
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def set(self, ts: float) -> None:
        super().set(ts)
        self._wake()

    def advance(self, seconds: float) -> None:
        super().advance(seconds)
        self._wake()

    def _wake(self) -> None:
        now = self.now()
        for end, fut in self._sleepers:
            if end <= now and not fut.done():
                fut.set_result(None)

    def sleep(self, seconds: float) -> asyncio.Future[None]:  # type: ignore[override]
        """Registered at the call, not when first awaited: a move of the clock between the
        call and the await still ends it (awaiting it, or cancelling it, works as usual)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        end = self.now() + max(0.0, seconds)
        if end <= self.now():
            fut.set_result(None)
            return fut
        entry = (end, fut)
        self._sleepers.append(entry)
        fut.add_done_callback(lambda _f: self._sleepers.remove(entry))
        return fut
