"""A loopback Kalshi market-data websocket for tests (aiohttp, 127.0.0.1, an ephemeral port).

It speaks the protocol of docs.kalshi.com's asyncapi.yaml: the endpoint `/trade-api/ws/v2`
checks the signed handshake (KALSHI-ACCESS-* headers, RSA-PSS over `ts + "GET" + path`; a bad
one is HTTP 401 before the upgrade), `subscribe` answers one `subscribed` (`msg.channel`,
`msg.sid`) per channel, `update_subscription` answers `ok` (with `sid`, `seq`,
`msg.market_tickers`), `unsubscribe` answers `unsubscribed`. Subscribing to `orderbook_delta`
sends an `orderbook_snapshot` per market from the server's book (`state.books`), with `seq`
counted per subscription.

The test drives it: `conn = await server.state.next_connection()`, `await
server.state.next_command()`; then `conn.delta(...)` (changes the book, sends the delta),
`conn.ticker(...)`, `conn.lose_delta(...)` (changes the book, skips a seq: a gap),
`conn.error(...)`, `conn.send_raw(...)`, `conn.abort()` (TCP reset, no close frame).
Every command is recorded in `state.commands`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from aiohttp import WSMsgType, web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.loopback import serve

WS_PATH = "/trade-api/ws/v2"


def _fmt_price(value: Decimal) -> str:
    return f"{value:.4f}"


def _fmt_count(value: Decimal) -> str:
    return f"{value:.2f}"


@dataclass
class ServerSub:
    sid: int
    channel: str
    tickers: list[str]
    seq: int = 0

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq


class Conn:
    """One client connection, seen from the server."""

    def __init__(self, state: WsState, ws: web.WebSocketResponse, request: web.Request) -> None:
        self.state = state
        self.ws = ws
        self.request = request
        self.subs: dict[int, ServerSub] = {}

    def sub_for(self, channel: str, ticker: str | None = None) -> ServerSub:
        for sub in self.subs.values():
            if sub.channel == channel and (ticker is None or ticker in sub.tickers):
                return sub
        raise LookupError(f"no {channel} subscription for {ticker}")

    async def send_raw(self, payload: Any) -> None:
        text = payload if isinstance(payload, str) else json.dumps(payload)
        await self.ws.send_str(text)

    async def snapshot(self, sub: ServerSub, ticker: str) -> None:
        book = self.state.books.get(ticker, {"yes": {}, "no": {}})
        msg: dict[str, Any] = {"market_ticker": ticker, "market_id": f"id-{ticker}"}
        for side in ("yes", "no"):
            levels = sorted(book[side].items())
            if levels:  # an empty side is left out, as the venue does
                msg[f"{side}_dollars_fp"] = [[_fmt_price(p), _fmt_count(s)] for p, s in levels]
        await self.send_raw(
            {"type": "orderbook_snapshot", "sid": sub.sid, "seq": sub.next_seq(), "msg": msg}
        )

    async def delta(
        self,
        ticker: str,
        side: str,
        price: str,
        delta: str,
        *,
        ts: str | None = "2026-11-21T13:00:00Z",
        raw_fields: dict[str, Any] | None = None,
    ) -> None:
        """Change the server's book by `delta` at `price` and send the `orderbook_delta`."""
        self.state.change_book(ticker, side, Decimal(price), Decimal(delta))
        sub = self.sub_for("orderbook_delta", ticker)
        msg: dict[str, Any] = {
            "market_ticker": ticker,
            "market_id": f"id-{ticker}",
            "price_dollars": price,
            "delta_fp": delta,
            "side": side,
        }
        if ts is not None:
            msg["ts"] = ts
        msg.update(raw_fields or {})
        await self.send_raw(
            {"type": "orderbook_delta", "sid": sub.sid, "seq": sub.next_seq(), "msg": msg}
        )

    def lose_delta(self, ticker: str, side: str, price: str, delta: str) -> None:
        """A delta the client never gets: the book changes and a seq number is skipped."""
        self.state.change_book(ticker, side, Decimal(price), Decimal(delta))
        self.sub_for("orderbook_delta", ticker).next_seq()

    async def ticker(self, ticker: str, **fields: Any) -> None:
        sub = self.sub_for("ticker", ticker)
        msg = {
            "market_ticker": ticker,
            "market_id": f"id-{ticker}",
            "price_dollars": "0.5000",
            "yes_bid_dollars": "0.4800",
            "yes_ask_dollars": "0.5200",
            "yes_bid_size_fp": "10.00",
            "yes_ask_size_fp": "20.00",
            "volume_fp": "100.00",
            "open_interest_fp": "50.00",
            "dollar_volume": 50,
            "dollar_open_interest": 25,
            "ts": 1_795_000_000,
            "ts_ms": 1_795_000_000_250,
            "time": "2026-11-19T07:06:40.250Z",
        }
        msg.update(fields)
        await self.send_raw({"type": "ticker", "sid": sub.sid, "msg": msg})

    async def error(self, code: int, message: str, cmd_id: int | None = None, **extra: Any) -> None:
        payload: dict[str, Any] = {"type": "error", "msg": {"code": code, "msg": message, **extra}}
        if cmd_id is not None:
            payload["id"] = cmd_id
        await self.send_raw(payload)

    def abort(self) -> None:
        """Drop the TCP connection without a close frame (a network failure)."""
        transport = self.request.transport
        if transport is not None:
            transport.abort()

    # ---- commands from the client -----------------------------------------------------------

    async def handle(self, command: dict[str, Any]) -> None:
        cmd_id = command.get("id")
        params = command.get("params") or {}
        cmd = command.get("cmd")
        if cmd == "subscribe":
            tickers = list(params.get("market_tickers") or [])
            if params.get("market_ticker"):
                tickers.append(params["market_ticker"])
            for channel in params.get("channels") or []:
                sid = self.state.new_sid()
                sub = ServerSub(sid, channel, tickers)
                self.subs[sid] = sub
                await self.send_raw(
                    {"id": cmd_id, "type": "subscribed", "msg": {"channel": channel, "sid": sid}}
                )
                if channel == "orderbook_delta":
                    for ticker in tickers:
                        await self.snapshot(sub, ticker)
        elif cmd == "update_subscription":
            sids = params.get("sids") or ([params["sid"]] if "sid" in params else [])
            if len(sids) != 1 or sids[0] not in self.subs:
                await self.error(12, "Exactly one subscription ID is required", cmd_id)
                return
            sub = self.subs[sids[0]]
            changed = list(params.get("market_tickers") or [])
            if params.get("action") == "add_markets":
                sub.tickers += [t for t in changed if t not in sub.tickers]
            elif params.get("action") == "delete_markets":
                sub.tickers = [t for t in sub.tickers if t not in changed]
            else:
                await self.error(13, "Unsupported action", cmd_id)
                return
            await self.send_raw(
                {
                    "id": cmd_id,
                    "sid": sub.sid,
                    "seq": sub.next_seq(),
                    "type": "ok",
                    "msg": {"market_tickers": sub.tickers},
                }
            )
            if sub.channel == "orderbook_delta" and params.get("action") == "add_markets":
                for ticker in changed:
                    await self.snapshot(sub, ticker)
        elif cmd == "unsubscribe":
            for sid in params.get("sids") or []:
                sub = self.subs.pop(sid, None)
                if sub is None:
                    await self.error(7, "Unknown subscription ID", cmd_id)
                    continue
                await self.send_raw(
                    {"id": cmd_id, "sid": sid, "seq": sub.next_seq(), "type": "unsubscribed"}
                )
        else:
            await self.error(5, "Unknown command", cmd_id)


@dataclass
class WsState:
    key_id: str
    public_key: rsa.RSAPublicKey
    timestamp_window_ms: int = 30_000
    books: dict[str, dict[str, dict[Decimal, Decimal]]] = field(default_factory=dict)
    commands: list[dict[str, Any]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # why each refused handshake was refused
    # The next handshakes answered (status, Retry-After or None) before any upgrade: Kalshi's
    # gateway under load or in maintenance (429 / 503), one entry per handshake.
    busy: list[tuple[int, str | None]] = field(default_factory=list)
    connections: list[Conn] = field(default_factory=list)
    _sid: int = 0
    _new_connections: asyncio.Queue[Conn] = field(default_factory=asyncio.Queue)
    _new_commands: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)

    def new_sid(self) -> int:
        self._sid += 1
        return self._sid

    def set_book(
        self, ticker: str, yes: dict[str, str] | None = None, no: dict[str, str] | None = None
    ) -> None:
        """The true book of `ticker` (price → size strings), sent as the snapshot on subscribe."""
        self.books[ticker] = {
            "yes": {Decimal(p): Decimal(s) for p, s in (yes or {}).items()},
            "no": {Decimal(p): Decimal(s) for p, s in (no or {}).items()},
        }

    def change_book(self, ticker: str, side: str, price: Decimal, delta: Decimal) -> None:
        levels = self.books.setdefault(ticker, {"yes": {}, "no": {}})[side]
        size = levels.get(price, Decimal(0)) + delta
        if size <= 0:
            levels.pop(price, None)
        else:
            levels[price] = size

    async def next_connection(self, timeout: float = 5.0) -> Conn:
        return await asyncio.wait_for(self._new_connections.get(), timeout)

    async def next_command(self, timeout: float = 5.0) -> dict[str, Any]:
        return await asyncio.wait_for(self._new_commands.get(), timeout)

    def check_auth(self, request: web.Request) -> str | None:
        """Why the handshake is refused, or None when it is signed right."""
        key = request.headers.get("KALSHI-ACCESS-KEY")
        ts = request.headers.get("KALSHI-ACCESS-TIMESTAMP")
        sig = request.headers.get("KALSHI-ACCESS-SIGNATURE")
        if not key or not ts or not sig:
            return "missing authentication headers"
        if key != self.key_id:
            return "unknown API key"
        try:
            ts_ms = int(ts)
        except ValueError:
            return "malformed timestamp"
        if abs(time.time() * 1000 - ts_ms) > self.timestamp_window_ms:
            return "timestamp outside the allowed window"
        message = (ts + request.method + request.rel_url.raw_path).encode()
        try:
            self.public_key.verify(
                base64.b64decode(sig, validate=True),
                message,
                padding.PSS(
                    mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH
                ),
                hashes.SHA256(),
            )
        except (InvalidSignature, ValueError):
            return "invalid signature"
        return None


def build_app(state: WsState) -> web.Application:
    async def endpoint(request: web.Request) -> web.StreamResponse:
        if state.busy:
            status, retry_after = state.busy.pop(0)
            state.refused.append(f"HTTP {status}")
            busy = web.json_response({"code": "busy", "message": "try later"}, status=status)
            if retry_after is not None:
                busy.headers["Retry-After"] = retry_after
            return busy
        problem = state.check_auth(request)
        if problem is not None:
            state.refused.append(problem)
            return web.json_response(
                {"code": "authentication_error", "message": problem, "details": ""}, status=401
            )
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        conn = Conn(state, ws, request)
        state.connections.append(conn)
        state._new_connections.put_nowait(conn)
        async for frame in ws:
            if frame.type != WSMsgType.TEXT:
                continue
            try:
                command = json.loads(frame.data)
            except ValueError:
                await conn.error(1, "Unable to process message")
                continue
            state.commands.append(command)
            state._new_commands.put_nowait(command)
            await conn.handle(command)
        return ws

    app = web.Application()
    app.router.add_get(WS_PATH, endpoint)
    return app


@dataclass
class RunningWsServer:
    state: WsState
    url: str  # ws://127.0.0.1:PORT/trade-api/ws/v2


@asynccontextmanager
async def kalshi_ws_server(
    key_id: str, public_key: rsa.RSAPublicKey, **state_kwargs: Any
) -> AsyncIterator[RunningWsServer]:
    """Run the loopback websocket for the duration of the block."""
    state = WsState(key_id=key_id, public_key=public_key, **state_kwargs)
    async with serve(build_app(state)) as port:
        yield RunningWsServer(state, f"ws://127.0.0.1:{port}{WS_PATH}")
