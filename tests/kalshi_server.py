"""A loopback Kalshi Trade API v2 server for tests (aiohttp on 127.0.0.1, an ephemeral port).

It speaks the real protocol as `shared/reference/venues.md` describes it: the real paths under
`/trade-api/v2`, the real JSON shapes (fixed-point strings), RSA-PSS signature and timestamp
checks on `/portfolio/*` (401 with {"code", "message", "details"} when they fail), cursor
pagination on the list endpoints, V2 order creation that fills IOC/FOK orders against a book the
test sets, 409 on a repeated client_order_id.

Orders and fills carry direction the way Kalshi writes it (docs.kalshi.com, "Order direction"):
`outcome_side` (yes|no: the outcome the trade makes the user long) and `book_side` (bid ≡ yes,
ask ≡ no), beside the legacy `side` + `action`. A V2 `ask` (sell YES) is `outcome_side` "no": its
listed `taker_fill_cost_dollars` is what the NO side cost, count × (1 − YES price), not the YES
proceeds (seen at the venue: a sell of YES at 0.25 lists a fill cost of 0.75 a contract). The
create answer's `average_fill_price` is in YES terms (the V2 endpoint quotes from the YES side).
Fills carry both `yes_price_dollars` and `no_price_dollars`. `fee_per_contract` charges each fill
(`fee_cost`) and the order (`taker_fees_dollars`, the answer's `average_fee_paid`).

A test sets up the world through `server.state` (markets, events, books, positions, fills),
queues faults with `server.state.queue_fault(...)`, and reads `server.state.requests` (each with
the monotonic time it arrived) and `server.state.orders`.

    async with kalshi_server(key_id, public_key) as server:
        server.state.add_market("KXBTCD-26NOV2117-T97000", yes_bid="0.40", yes_ask="0.42")
        client = KalshiClient(base_url=server.base_url, signer=...)
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.loopback import serve

PREFIX = "/trade-api/v2"
ONE = Decimal(1)

FaultKind = Literal["429", "503", "500", "delay", "truncated", "cutoff", "html", "refuse"]


@dataclass
class Fault:
    """One injected misbehaviour, used once by the first request it matches.

    - "429": rate limited, nothing processed; with `retry_after` the answer carries that
      `Retry-After` header as given (delta-seconds "120" or an HTTP date), as Kalshi's
      gateway may.
    - "503": service unavailable (maintenance, an overloaded gateway), nothing processed; with
      `retry_after` as for 429.
    - "500": an internal error; with `after_processing` the request took effect first.
    - "delay": processed normally, the answer held back `seconds` (longer than the timeout).
    - "truncated": processed, the JSON answer cut in half (status 200/201).
    - "cutoff": processed, then the connection dropped mid-answer: the status line, the headers
      (with the whole body's Content-Length) and half the body are sent, and the socket closed.
    - "html": an HTML error page with `status` (a proxy's 502), nothing processed.
    - "refuse": the venue's own refusal, `status` (use e.g. 400) with `code` and `message`,
      nothing processed.

    A `persistent` fault is not used up: it answers every request it matches until
    `KalshiState.clear_faults()` (an outage that lasts, not one bad answer).
    """

    kind: FaultKind
    method: str | None = None
    path: str | None = None  # a prefix of the path after /trade-api/v2; None matches any
    seconds: float = 0.0
    status: int = 502
    after_processing: bool = False
    code: str = "invalid_order"
    message: str = "order refused"
    persistent: bool = False
    # "delay" only: hold the answer until this event is set (instead of `seconds`), so a test
    # can keep one order waiting as long as it needs without waiting itself.
    release: asyncio.Event | None = None
    retry_after: str | None = None

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and (
            self.path is None or path.startswith(self.path)
        )


@dataclass(frozen=True)
class Recorded:
    at: float  # time.monotonic() on arrival
    method: str
    path: str  # after /trade-api/v2
    query: dict[str, str]
    body: Any
    fault: str | None


def _d(value: Any) -> Decimal:
    return Decimal(str(value))


def _dollars(value: Decimal) -> str:
    return f"{value:.4f}"


def _fp(value: Decimal) -> str:
    return f"{value:.2f}"


def _now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"code": code, "message": message, "details": ""}, status=status)


@dataclass
class KalshiState:
    key_id: str
    public_key: rsa.RSAPublicKey
    timestamp_window_ms: int = 30_000
    markets: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: dict[str, dict[str, Any]] = field(default_factory=dict)
    books: dict[str, dict[str, list[list[Decimal]]]] = field(default_factory=dict)
    positions: dict[str, dict[str, Any]] = field(default_factory=dict)
    fills: list[dict[str, Any]] = field(default_factory=list)
    orders: dict[str, dict[str, Any]] = field(default_factory=dict)
    faults: deque[Fault] = field(default_factory=deque)
    requests: list[Recorded] = field(default_factory=list)
    fee_per_contract: Decimal = Decimal(0)
    # Order ids whose fills /portfolio/fills does not list yet (the venue's fills lag its
    # orders); with `fills_listed` False every new order's id is added.
    unlisted_fills: set[str] = field(default_factory=set)
    fills_listed: bool = True

    # ---- set-up -------------------------------------------------------------------------

    def add_event(
        self,
        event_ticker: str,
        series_ticker: str = "KXBTCD",
        title: str = "",
        status: str = "open",
    ) -> dict[str, Any]:
        event = {
            "event_ticker": event_ticker,
            "series_ticker": series_ticker,
            "title": title or event_ticker,
            "sub_title": "",
            "mutually_exclusive": False,
            "_status": status,
        }
        self.events[event_ticker] = event
        return event

    def add_market(self, ticker: str, *, event_ticker: str | None = None, **fields: Any) -> dict:
        """A market with the real fields; `fields` override (strings for prices and counts)."""
        event_ticker = event_ticker or ticker.rsplit("-", 1)[0]
        if event_ticker not in self.events:
            self.add_event(event_ticker)
        market: dict[str, Any] = {
            "ticker": ticker,
            "event_ticker": event_ticker,
            "market_type": "binary",
            "status": "active",
            "open_time": "2026-11-21T16:00:00Z",
            "close_time": "2026-11-21T17:00:00Z",
            "expected_expiration_time": "2026-11-21T17:05:00Z",
            "yes_bid_dollars": "0.4000",
            "yes_ask_dollars": "0.4200",
            "no_bid_dollars": "0.5800",
            "no_ask_dollars": "0.6000",
            "last_price_dollars": "0.4100",
            "yes_bid_size_fp": "100.00",
            "yes_ask_size_fp": "100.00",
            "volume_fp": "1234.00",
            "volume_24h_fp": "1234.00",
            "open_interest_fp": "500.00",
            "strike_type": "greater",
            "floor_strike": 97000,
            "cap_strike": None,
            "result": "",
            "rules_primary": "If the BRTI 60-second average before close is above the strike...",
        }
        market.update(fields)
        self.markets[ticker] = market
        return market

    def set_book(
        self,
        ticker: str,
        *,
        yes: Sequence[tuple[str, str]] = (),
        no: Sequence[tuple[str, str]] = (),
    ) -> None:
        """Resting bids, (price, size) strings in dollars and contracts, on each side."""
        self.books[ticker] = {
            "yes": [[_d(p), _d(s)] for p, s in yes],
            "no": [[_d(p), _d(s)] for p, s in no],
        }

    def set_position(self, ticker: str, position: str, exposure: str = "0.0000") -> None:
        self.positions[ticker] = {
            "ticker": ticker,
            "position_fp": position,
            "market_exposure_dollars": exposure,
            "realized_pnl_dollars": "0.0000",
            "fees_paid_dollars": "0.0000",
            "last_updated_ts": _now_iso(),
        }

    def add_fill(self, **fields: Any) -> dict[str, Any]:
        fill = {
            "fill_id": str(uuid.uuid4()),
            "order_id": str(uuid.uuid4()),
            "ticker": "KXBTCD-26NOV2117-T97000",
            "outcome_side": "yes",
            "book_side": "bid",
            "count_fp": "1.00",
            "yes_price_dollars": "0.4200",
            "no_price_dollars": "0.5800",
            "fee_cost": "0.0100",
            "created_time": _now_iso(),
        }
        fill.update(fields)
        self.fills.append(fill)
        return fill

    def fills_of(self, order_id: str) -> list[dict[str, Any]]:
        """The fills of one order, as the venue keeps them (listed or not yet)."""
        return [f for f in self.fills if f["order_id"] == order_id]

    def order_by_client_id(self, client_order_id: str) -> dict[str, Any]:
        [order] = [o for o in self.orders.values() if o["client_order_id"] == client_order_id]
        return order

    def queue_fault(self, kind: FaultKind, *, times: int = 1, **kwargs: Any) -> None:
        for _ in range(times):
            self.faults.append(Fault(kind, **kwargs))

    # ---- views for assertions -------------------------------------------------------------

    def clear_faults(self) -> None:
        """The outage is over: drop every queued and persistent fault."""
        self.faults.clear()

    def faulted(self, method: str, path: str) -> list[Recorded]:
        """Requests to `method` `path` (a prefix) that were answered with a fault."""
        return [
            r for r in self.requests if r.fault and r.method == method and r.path.startswith(path)
        ]

    def order_posts(self) -> list[Recorded]:
        return [
            r for r in self.requests if r.method == "POST" and r.path == "/portfolio/events/orders"
        ]

    def _take_fault(self, method: str, path: str) -> Fault | None:
        for fault in self.faults:
            if fault.matches(method, path):
                if not fault.persistent:
                    self.faults.remove(fault)
                return fault
        return None

    # ---- auth ---------------------------------------------------------------------------

    def check_auth(self, request: web.Request) -> web.Response | None:
        key = request.headers.get("KALSHI-ACCESS-KEY")
        ts = request.headers.get("KALSHI-ACCESS-TIMESTAMP")
        sig = request.headers.get("KALSHI-ACCESS-SIGNATURE")
        if not key or not ts or not sig:
            return _error(401, "authentication_error", "missing authentication headers")
        if key != self.key_id:
            return _error(401, "authentication_error", "unknown API key")
        try:
            ts_ms = int(ts)
        except ValueError:
            return _error(401, "authentication_error", "malformed timestamp")
        if abs(time.time() * 1000 - ts_ms) > self.timestamp_window_ms:
            return _error(401, "authentication_error", "timestamp outside the allowed window")
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
            return _error(401, "authentication_error", "invalid signature")
        return None


def _page(request: web.Request, items: list[Any], key: str, max_limit: int) -> web.Response:
    """Cursor pagination: the cursor is opaque to clients (here an encoded offset)."""
    try:
        limit = int(request.query.get("limit", "100"))
    except ValueError:
        return _error(400, "invalid_parameters", "limit must be an integer")
    if not 1 <= limit <= max_limit:
        return _error(400, "invalid_parameters", f"limit must be in 1..{max_limit}")
    cursor = request.query.get("cursor", "")
    start = int(base64.urlsafe_b64decode(cursor).decode()) if cursor else 0
    chunk = items[start : start + limit]
    nxt = start + limit
    next_cursor = base64.urlsafe_b64encode(str(nxt).encode()).decode() if nxt < len(items) else ""
    return web.json_response({key: chunk, "cursor": next_cursor})


def _public(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if not k.startswith("_")}


def _market_matches_status(market: dict[str, Any], status: str | None) -> bool:
    if not status:
        return True
    wanted = {"open": {"active"}, "closed": {"closed"}, "settled": {"finalized", "determined"}}
    return market["status"] in wanted.get(status, {status})


class _Handlers:
    def __init__(self, state: KalshiState) -> None:
        self.s = state

    async def events(self, request: web.Request) -> web.Response:
        q = request.query
        nested = q.get("with_nested_markets") == "true"
        out = []
        for event in self.s.events.values():
            if q.get("series_ticker") and event["series_ticker"] != q["series_ticker"]:
                continue
            if q.get("status") and event["_status"] != q["status"]:
                continue
            item = _public(event)
            if nested:
                item["markets"] = [
                    m for m in self.s.markets.values() if m["event_ticker"] == event["event_ticker"]
                ]
            out.append(item)
        return _page(request, out, "events", 200)

    async def markets(self, request: web.Request) -> web.Response:
        q = request.query
        tickers = set(q["tickers"].split(",")) if q.get("tickers") else None
        out = []
        for m in self.s.markets.values():
            if tickers is not None and m["ticker"] not in tickers:
                continue
            if q.get("event_ticker") and m["event_ticker"] != q["event_ticker"]:
                continue
            if q.get("series_ticker"):
                event = self.s.events.get(m["event_ticker"], {})
                if event.get("series_ticker") != q["series_ticker"]:
                    continue
            if not _market_matches_status(m, q.get("status")):
                continue
            out.append(m)
        return _page(request, out, "markets", 1000)

    async def market(self, request: web.Request) -> web.Response:
        market = self.s.markets.get(request.match_info["ticker"])
        if market is None:
            return _error(404, "not_found", "market not found")
        return web.json_response({"market": market})

    async def orderbook(self, request: web.Request) -> web.Response:
        ticker = request.match_info["ticker"]
        if ticker not in self.s.markets:
            return _error(404, "not_found", "market not found")
        book = self.s.books.get(ticker, {"yes": [], "no": []})
        depth = int(request.query.get("depth", "0") or 0)

        def side(levels: list[list[Decimal]]) -> list[list[str]]:
            # Ascending by price, best bid last (as we understand Kalshi; the client sorts anyway).
            rows = sorted(
                ([_dollars(p), _fp(s)] for p, s in levels if s > 0), key=lambda r: _d(r[0])
            )
            return rows[-depth:] if depth else rows

        return web.json_response(
            {"orderbook_fp": {"yes_dollars": side(book["yes"]), "no_dollars": side(book["no"])}}
        )

    async def positions(self, request: web.Request) -> web.Response:
        out = [
            p
            for p in self.s.positions.values()
            if not request.query.get("ticker") or p["ticker"] == request.query["ticker"]
        ]
        return _page_multi(request, out)

    async def fills(self, request: web.Request) -> web.Response:
        q = request.query
        out = [
            f
            for f in self.s.fills
            if (not q.get("ticker") or f["ticker"] == q["ticker"])
            and (not q.get("order_id") or f["order_id"] == q["order_id"])
            and f["order_id"] not in self.s.unlisted_fills
        ]
        return _page(request, out, "fills", 1000)

    async def orders(self, request: web.Request) -> web.Response:
        q = request.query
        out = [
            o
            for o in self.s.orders.values()
            if (not q.get("ticker") or o["ticker"] == q["ticker"])
            and (not q.get("status") or o["status"] == q["status"])
        ]
        return _page(request, out, "orders", 200)

    async def order(self, request: web.Request) -> web.Response:
        order = self.s.orders.get(request.match_info["order_id"])
        if order is None:
            return _error(404, "not_found", "order not found")
        return web.json_response({"order": order})

    async def cancel(self, request: web.Request) -> web.Response:
        order = self.s.orders.get(request.match_info["order_id"])
        if order is None:
            return _error(404, "not_found", "order not found")
        reduced = order["remaining_count_fp"]
        if order["status"] == "resting":
            order["status"] = "canceled"
            order["remaining_count_fp"] = "0.00"
            order["last_update_time"] = _now_iso()
        return web.json_response(
            {
                "order_id": order["order_id"],
                "client_order_id": order["client_order_id"],
                "reduced_by": reduced,
                "ts_ms": int(time.time() * 1000),
            }
        )

    async def create_order(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "invalid_parameters", "body is not JSON")
        if not isinstance(body, dict):
            return _error(400, "invalid_parameters", "body must be an object")
        ticker = body.get("ticker")
        coid = body.get("client_order_id")
        side = body.get("side")
        tif = body.get("time_in_force")
        if ticker not in self.s.markets:
            return _error(404, "market_not_found", f"market {ticker!r} not found")
        if not isinstance(coid, str) or not coid:
            return _error(400, "invalid_parameters", "client_order_id is required")
        if any(o["client_order_id"] == coid for o in self.s.orders.values()):
            return _error(409, "order_already_exists", "an order with this client_order_id exists")
        if side not in ("bid", "ask"):
            return _error(400, "invalid_parameters", "side must be bid or ask")
        if tif not in ("immediate_or_cancel", "good_till_canceled", "fill_or_kill"):
            return _error(400, "invalid_parameters", "bad time_in_force")
        if body.get("self_trade_prevention_type") not in ("taker_at_cross", "maker"):
            return _error(400, "invalid_parameters", "self_trade_prevention_type is required")
        if not isinstance(body.get("count"), str) or not isinstance(body.get("price"), str):
            return _error(400, "invalid_parameters", "count and price must be strings")
        try:
            count, price = Decimal(body["count"]), Decimal(body["price"])
        except InvalidOperation:
            return _error(400, "invalid_parameters", "count and price must be decimal strings")
        if count <= 0 or not ONE > price > 0:
            return _error(400, "invalid_parameters", "count must be > 0 and 0 < price < 1")
        reduce_only = body.get("reduce_only") is True
        if reduce_only and tif != "immediate_or_cancel":
            return _error(400, "invalid_parameters", "reduce_only requires immediate_or_cancel")
        position = _d(self.s.positions.get(ticker, {}).get("position_fp", "0"))
        if reduce_only:
            room = max(-position, Decimal(0)) if side == "bid" else max(position, Decimal(0))
            count = min(count, room)

        book = self.s.books.setdefault(ticker, {"yes": [], "no": []})
        # bid (buy YES) takes NO bids: YES price = 1 - NO price; ask (sell YES) takes YES bids.
        levels = book["no"] if side == "bid" else book["yes"]
        levels.sort(key=lambda lv: lv[0], reverse=True)

        def yes_price(level: list[Decimal]) -> Decimal:
            return ONE - level[0] if side == "bid" else level[0]

        def crosses(level: list[Decimal]) -> bool:
            return yes_price(level) <= price if side == "bid" else yes_price(level) >= price

        available = sum((lv[1] for lv in levels if crosses(lv)), Decimal(0))
        to_fill = (
            Decimal(0) if tif == "fill_or_kill" and available < count else min(count, available)
        )
        order_id = str(uuid.uuid4())
        if not self.s.fills_listed:
            self.s.unlisted_fills.add(order_id)
        filled, cost, remaining_to_fill = Decimal(0), Decimal(0), to_fill
        proceeds, fees = Decimal(0), Decimal(0)  # YES terms; fees of the fills
        for level in levels:
            if remaining_to_fill <= 0 or not crosses(level):
                break
            take = min(level[1], remaining_to_fill)
            level[1] -= take
            remaining_to_fill -= take
            filled += take
            # What the outcome bought cost: YES for a bid, NO (1 − YES) for an ask.
            cost += take * (yes_price(level) if side == "bid" else ONE - yes_price(level))
            proceeds += take * yes_price(level)
            fee = take * self.s.fee_per_contract
            fees += fee
            self.s.fills.append(
                {
                    "fill_id": str(uuid.uuid4()),
                    "trade_id": str(uuid.uuid4()),
                    "order_id": order_id,
                    "client_order_id": coid,
                    "ticker": ticker,
                    "market_ticker": ticker,
                    # bid ≡ long yes, ask ≡ long no: the same bit in Kalshi's two vocabularies.
                    "outcome_side": "yes" if side == "bid" else "no",
                    "book_side": side,
                    "side": "yes",
                    "action": "buy" if side == "bid" else "sell",
                    "count_fp": _fp(take),
                    "yes_price_dollars": _dollars(yes_price(level)),
                    "no_price_dollars": _dollars(ONE - yes_price(level)),
                    "is_taker": True,
                    "fee_cost": _dollars(fee),
                    "created_time": _now_iso(),
                }
            )
        levels[:] = [lv for lv in levels if lv[1] > 0]
        if filled:
            new_pos = position + filled if side == "bid" else position - filled
            self.s.set_position(ticker, _fp(new_pos))
        resting = count - filled if tif == "good_till_canceled" else Decimal(0)
        status = "resting" if resting > 0 else ("executed" if filled == count else "canceled")
        now = _now_iso()
        # Listings still use the V1 order shape: side yes/no plus action buy/sell.
        self.s.orders[order_id] = {
            "order_id": order_id,
            "user_id": "user-1",
            "client_order_id": coid,
            "ticker": ticker,
            "side": "yes",
            "action": "buy" if side == "bid" else "sell",
            "outcome_side": "yes" if side == "bid" else "no",
            "book_side": side,
            "type": "limit",
            "status": status,
            "yes_price_dollars": _dollars(price),
            "no_price_dollars": _dollars(ONE - price),
            "initial_count_fp": _fp(_d(body["count"])),
            "fill_count_fp": _fp(filled),
            "remaining_count_fp": _fp(resting),
            "taker_fill_cost_dollars": _dollars(cost),
            "maker_fill_cost_dollars": "0.0000",
            "taker_fees_dollars": _dollars(fees),
            "maker_fees_dollars": "0.0000",
            "self_trade_prevention_type": body["self_trade_prevention_type"],
            "expiration_time": None,
            "created_time": now,
            "last_update_time": now,
        }
        answer: dict[str, Any] = {
            "order_id": order_id,
            "client_order_id": coid,
            "fill_count": _fp(filled),
            "remaining_count": _fp(resting),
            "ts_ms": int(time.time() * 1000),
        }
        if filled:  # only present when something filled
            answer["average_fill_price"] = _dollars(proceeds / filled)  # YES terms
            answer["average_fee_paid"] = _dollars(fees / filled)
        return web.json_response(answer, status=201)


def _page_multi(request: web.Request, positions: list[dict[str, Any]]) -> web.Response:
    """Positions page: `market_positions` plus `event_positions` (left empty here)."""
    response = _page(request, positions, "market_positions", 1000)
    if response.status != 200:
        return response
    data = json.loads(response.body)  # type: ignore[arg-type]
    data["event_positions"] = []
    return web.json_response(data)


def build_app(state: KalshiState) -> web.Application:
    h = _Handlers(state)

    @web.middleware
    async def protocol(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if not request.path.startswith(PREFIX + "/"):
            return _error(404, "not_found", "no such path")
        path = request.path[len(PREFIX) :]
        body = None
        if request.can_read_body:
            raw = await request.read()
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode(errors="replace")
        fault = state._take_fault(request.method, path)
        state.requests.append(
            Recorded(
                time.monotonic(),
                request.method,
                path,
                dict(request.query),
                body,
                fault.kind if fault else None,
            )
        )
        if fault and fault.kind in ("429", "503"):
            if fault.kind == "429":
                answer = _error(429, "too_many_requests", "too many requests")
            else:
                answer = _error(503, "service_unavailable", "service unavailable")
            if fault.retry_after is not None:
                answer.headers["Retry-After"] = fault.retry_after
            return answer
        if fault and fault.kind == "refuse":
            return _error(fault.status, fault.code, fault.message)
        if fault and fault.kind == "html":
            page = f"<html><head><title>{fault.status} Bad Gateway</title></head><body>nginx</body></html>"
            return web.Response(status=fault.status, text=page, content_type="text/html")
        if fault and fault.kind == "500" and not fault.after_processing:
            return _error(500, "internal_server_error", "internal server error")
        if path.startswith("/portfolio/"):
            refused = state.check_auth(request)
            if refused is not None:
                return refused
        response = await handler(request)
        if fault is None:
            return response
        if fault.kind == "500":
            return _error(500, "internal_server_error", "internal server error")
        if fault.kind == "delay":
            if fault.release is not None:
                await fault.release.wait()
            else:
                await asyncio.sleep(fault.seconds)
            return response
        if fault.kind == "cutoff":
            assert isinstance(response, web.Response) and response.body is not None
            whole = bytes(response.body)  # type: ignore[arg-type]
            cut = web.StreamResponse(status=response.status)
            cut.content_type = "application/json"
            cut.content_length = len(whole)
            await cut.prepare(request)
            await cut.write(whole[: len(whole) // 2])
            assert request.transport is not None
            request.transport.close()  # the connection drops mid-answer
            return cut
        if fault.kind == "truncated":
            assert isinstance(response, web.Response) and response.body is not None
            text = bytes(response.body)  # type: ignore[arg-type]
            return web.Response(
                status=response.status,
                body=text[: len(text) // 2],
                content_type="application/json",
            )
        return response

    app = web.Application(middlewares=[protocol])
    p = PREFIX
    app.router.add_get(f"{p}/events", h.events)
    app.router.add_get(f"{p}/markets", h.markets)
    app.router.add_get(f"{p}/markets/{{ticker}}", h.market)
    app.router.add_get(f"{p}/markets/{{ticker}}/orderbook", h.orderbook)
    app.router.add_get(f"{p}/portfolio/positions", h.positions)
    app.router.add_get(f"{p}/portfolio/fills", h.fills)
    app.router.add_get(f"{p}/portfolio/orders", h.orders)
    app.router.add_get(f"{p}/portfolio/orders/{{order_id}}", h.order)
    app.router.add_post(f"{p}/portfolio/events/orders", h.create_order)
    app.router.add_delete(f"{p}/portfolio/events/orders/{{order_id}}", h.cancel)
    return app


@dataclass
class RunningServer:
    state: KalshiState
    base_url: str


@asynccontextmanager
async def kalshi_server(
    key_id: str, public_key: rsa.RSAPublicKey, **state_kwargs: Any
) -> AsyncIterator[RunningServer]:
    """Run the loopback server for the duration of the block."""
    state = KalshiState(key_id=key_id, public_key=public_key, **state_kwargs)
    async with serve(build_app(state)) as port:
        yield RunningServer(state, f"http://127.0.0.1:{port}{PREFIX}")
