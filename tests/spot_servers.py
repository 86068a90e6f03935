"""Loopback stand-ins for the spot venues' public REST APIs (aiohttp on 127.0.0.1, ephemeral port).

The paths and JSON shapes are the real ones (Coinbase Exchange, Kraken, Deribit); the data is
whatever the test sets. A test queues faults that the next requests get, in order:

- "500", "429": an HTTP error with the venue's usual error body;
- "slow": the answer is held longer than any client timeout (released when the server closes);
- "truncated": the good JSON cut in half, HTTP 200;
- "html": an HTML error page (a proxy or CDN in front of the venue), HTTP 502;
- "html200": the same page with HTTP 200;
- "venue_error": the venue's own error report (Kraken: HTTP 200 with an `error` list;
  Deribit: a JSON-RPC `error` object, HTTP 400; Coinbase: `{"message": ...}`, HTTP 400).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from typing import Any

from aiohttp import web

HTML_PAGE = (
    "<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head>"
    "<body><h1>502 Bad Gateway</h1><p>cloudflare</p></body></html>"
)
FAULTS = ("500", "429", "slow", "truncated", "html", "html200", "venue_error")


class FakeVenue:
    """One venue: routes, queued faults, a log of the query strings it was sent."""

    def __init__(self) -> None:
        self.app = web.Application()
        self.faults: deque[str] = deque()
        self.requests: list[tuple[str, dict[str, str]]] = []
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
        fault = self.faults.popleft() if self.faults else None
        if fault is None:
            return web.json_response(payload)
        if fault == "500":
            return web.json_response({"message": "Internal server error"}, status=500)
        if fault == "429":
            return web.json_response({"message": "Too many requests"}, status=429)
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
