"""`KalshiClient`: Kalshi Trade API v2 over `httpx.AsyncClient`.

What it does for every request: signs it (portfolio endpoints), waits for a token of the right
budget (reads and writes have separate buckets, as at Kalshi), retries 429 / 5xx / timeouts /
transport errors / unreadable answers with exponential backoff and full jitter up to
`max_attempts`, and turns what came back into dataclasses with `Decimal` fields or a typed
`KalshiError`. Keys, signatures and headers are never logged.

`Retry-After` on a 429 or 503 (seconds or an HTTP date, read by `engine.http_retry`) closes a
gate until then, bounded by `retry_after_max_seconds`: `retry_gate` for market data (public
reads), `portfolio_retry_gate` for signed reads (positions, fills, order lookups),
`write_retry_gate` for writes (orders, cancels), as Kalshi budgets them apart: a rate-limited
order or positions poll never holds back market data, nor a rate-limited quote poll an exit. No
request of that kind is sent before it. A wait up to `backoff_max_seconds` is waited inside the
request (then it is tried again); a longer one ends the request at once with the venue's error,
and a request made while the gate is closed fails at once, not sent (`KalshiRateLimited`), so a
feed or an exit is never held for a minute inside the client: the caller comes back when the
gate opens (the market feed schedules its next poll then).

Order POSTs are the exception to blind retrying; see `KalshiClient.create_order`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote

import httpx

from engine.http_retry import DEFAULT_RETRY_AFTER_MAX_SECONDS, RetryGate
from engine.venues.kalshi.auth import KalshiSigner
from engine.venues.kalshi.errors import (
    KalshiAuthError,
    KalshiBadResponse,
    KalshiConflict,
    KalshiError,
    KalshiNotFound,
    KalshiOrderOutcomeUnknown,
    KalshiRateLimited,
    KalshiUnavailable,
)
from engine.venues.kalshi.fixed import FixedPointError, format_count, format_dollars
from engine.venues.kalshi.models import (
    Cancelled,
    Event,
    Fill,
    Market,
    Order,
    Orderbook,
    Position,
)
from engine.venues.kalshi.ratelimit import TokenBucket

if TYPE_CHECKING:
    from engine.config import KalshiConfig

__all__ = ["BASE_URLS", "KalshiClient"]

log = logging.getLogger("engine.venues.kalshi")

BASE_URLS = {
    "prod": "https://external-api.kalshi.com/trade-api/v2",
    "demo": "https://external-api.demo.kalshi.co/trade-api/v2",
}

Side = Literal["bid", "ask"]
TimeInForce = Literal["immediate_or_cancel", "good_till_canceled", "fill_or_kill"]


async def _real_sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)


class _Retry(Exception):
    """One attempt failed in a way worth another try; `error` is what to raise if none is left."""

    def __init__(self, error: KalshiError, *, ambiguous: bool = False) -> None:
        self.error = error
        self.ambiguous = ambiguous  # for a POST: the exchange may have acted on it


def describe_body(response: httpx.Response) -> str:
    """A short, safe description of an unexpected body: what came back, not all of it."""
    text = response.text.strip()
    if not text:
        return "an empty body"
    ctype = response.headers.get("content-type", "")
    if "html" in ctype or text[:1] == "<":
        m = re.search(r"<title>(.*?)</title>", text, re.I | re.S)
        title = m.group(1).strip()[:80] if m else text[:60]
        return f"an HTML page ({title!r}), {len(response.content)} bytes"
    snippet = text[:60] + ("…" if len(text) > 60 else "")
    return f"{len(response.content)} bytes of {ctype or 'unknown type'}: {snippet!r}"


def _venue_error(response: httpx.Response) -> tuple[str | None, str, object]:
    """(code, message, details) of an error answer; either {"code",...} or {"error": {...}}."""
    try:
        data = json.loads(response.text)
    except ValueError:
        return None, describe_body(response), None
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        data = data["error"]
    if not isinstance(data, dict):
        return None, describe_body(response), None
    code = data.get("code")
    message = data.get("message") or data.get("error") or describe_body(response)
    return (str(code) if code is not None else None), str(message), data.get("details")


def _clean_params(params: dict[str, Any]) -> dict[str, str]:
    out = {}
    for key, value in params.items():
        if value is None:
            continue
        if isinstance(value, bool):
            out[key] = "true" if value else "false"
        elif isinstance(value, list | tuple):
            out[key] = ",".join(str(v) for v in value)
        else:
            out[key] = str(value)
    return out


class KalshiClient:
    """An async client for Kalshi's REST API. Use as `async with KalshiClient(...) as client`.

    `base_url` wins over `environment`. `signer` is needed for /portfolio endpoints only.
    `sleep`, `monotonic` and `rng` are injectable so tests run backoff and rate limiting
    without real waiting; `transport` lets tests swap httpx's transport.
    """

    def __init__(
        self,
        *,
        environment: Literal["prod", "demo"] = "demo",
        base_url: str | None = None,
        signer: KalshiSigner | None = None,
        timeout_seconds: float = 10.0,
        connect_timeout_seconds: float = 5.0,
        read_per_second: float = 20.0,
        write_per_second: float = 10.0,
        burst: float = 1.0,
        max_attempts: int = 4,
        backoff_base_seconds: float = 0.25,
        backoff_max_seconds: float = 4.0,
        retry_after_max_seconds: float = DEFAULT_RETRY_AFTER_MAX_SECONDS,
        now: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = _real_sleep,
        monotonic: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.base_url = (base_url or BASE_URLS[environment]).rstrip("/")
        self._signer = signer
        self._sleep = sleep
        self._rng = rng or random.Random()
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base_seconds
        self.backoff_max = backoff_max_seconds
        # Kalshi's Retry-After, per kind of request (see the module doc). `now` is the injected
        # clock's (`use_clock`), for the HTTP-date form.
        bound = retry_after_max_seconds
        self.retry_gate = RetryGate("kalshi", now=now, max_seconds=bound)
        self.portfolio_retry_gate = RetryGate("kalshi portfolio", now=now, max_seconds=bound)
        self.write_retry_gate = RetryGate("kalshi orders", now=now, max_seconds=bound)
        self.read_bucket = TokenBucket(read_per_second, burst, clock=monotonic, sleep=sleep)
        self.write_bucket = TokenBucket(write_per_second, burst, clock=monotonic, sleep=sleep)
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_seconds, connect=connect_timeout_seconds),
            transport=transport,
            headers={"Accept": "application/json"},
            follow_redirects=False,
        )

    @classmethod
    def from_config(
        cls, config: KalshiConfig, *, signer: KalshiSigner | None = None, **overrides: Any
    ) -> KalshiClient:
        """A client set up from `[venues.kalshi]`. Loads the key when both secrets are set."""
        if signer is None and config.api_key_id and config.private_key_path:
            signer = KalshiSigner.from_file(
                config.api_key_id.get_secret_value(), config.private_key_path.get_secret_value()
            )
        kwargs: dict[str, Any] = {
            "environment": config.environment,
            "base_url": config.base_url,
            "timeout_seconds": config.timeout_seconds,
            "connect_timeout_seconds": config.connect_timeout_seconds,
            "read_per_second": config.read_requests_per_second,
            "write_per_second": config.write_requests_per_second,
            "burst": config.rate_limit_burst,
            "max_attempts": config.max_attempts,
            "backoff_base_seconds": config.backoff_base_seconds,
            "backoff_max_seconds": config.backoff_max_seconds,
        }
        kwargs.update(overrides)
        return cls(signer=signer, **kwargs)

    async def __aenter__(self) -> KalshiClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    def __repr__(self) -> str:
        return f"KalshiClient(base_url={self.base_url!r})"

    def use_clock(self, now: Callable[[], float]) -> None:
        """Read "now" (Retry-After dates, the gate) from the engine's clock from here on."""
        for gate in (self.retry_gate, self.portfolio_retry_gate, self.write_retry_gate):
            gate.now = now

    def _gate(self, write: bool, auth: bool) -> RetryGate:
        if write:
            return self.write_retry_gate
        return self.portfolio_retry_gate if auth else self.retry_gate

    # ---- the request machinery -------------------------------------------------------------

    def backoff_delay(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(max, base * 2**attempt)] (attempt counts from 0)."""
        return self._rng.uniform(0, min(self.backoff_max, self.backoff_base * 2**attempt))

    async def _attempt(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None,
        body: dict[str, Any] | None,
        auth: bool,
        write: bool,
    ) -> httpx.Response:
        """One request, after waiting for a token. Raises httpx's exceptions unchanged."""
        await (self.write_bucket if write else self.read_bucket).acquire()
        url = self.base_url + path
        headers: dict[str, str] = {}
        if auth:
            if self._signer is None:
                raise KalshiAuthError(
                    "no API key configured (set api_key_id and private_key_path)",
                    method=method,
                    path=path,
                )
            headers.update(self._signer.headers(method, url))
        content = None
        if body is not None:
            content = json.dumps(body, separators=(",", ":")).encode()
            headers["Content-Type"] = "application/json"
        started = time.perf_counter()
        response = await self._http.request(
            method, url, params=_clean_params(params or {}), content=content, headers=headers
        )
        log.debug(
            "%s %s -> %d (%.0f ms)",
            method,
            path,
            response.status_code,
            (time.perf_counter() - started) * 1000,
        )
        return response

    def _error_for(self, response: httpx.Response, method: str, path: str) -> KalshiError:
        status = response.status_code
        code, message, details = _venue_error(response)
        kw: dict[str, Any] = {
            "status": status,
            "code": code,
            "details": details,
            "method": method,
            "path": path,
        }
        if status in (401, 403):
            return KalshiAuthError(message, **kw)
        if status == 404:
            return KalshiNotFound(message, **kw)
        if status == 409:
            return KalshiConflict(message, **kw)
        if status == 429:
            return KalshiRateLimited(message, **kw)
        if status >= 500:
            return KalshiUnavailable(message, **kw)
        return KalshiError(message, **kw)

    def _decode(self, response: httpx.Response, method: str, path: str) -> Any:
        try:
            return json.loads(response.text, parse_float=Decimal)
        except ValueError:
            raise KalshiBadResponse(
                f"expected JSON, got {describe_body(response)}",
                status=response.status_code,
                method=method,
                path=path,
            ) from None

    async def _once(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        body: dict[str, Any] | None = None,
        auth: bool = False,
        write: bool = False,
    ) -> Any:
        """One attempt: the decoded JSON, a final `KalshiError`, or `_Retry`.

        `_Retry.ambiguous` is set when the exchange may have acted on the request: the request
        was (or may have been) sent, and no clear rejection came back. While the venue's
        `Retry-After` runs, nothing is sent (see the module doc).
        """
        await self._respect_retry_after(method, path, write, auth)
        try:
            response = await self._attempt(
                method, path, params=params, body=body, auth=auth, write=write
            )
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            # Nothing was sent: safe to try again, for any method.
            raise _Retry(
                KalshiUnavailable(f"cannot connect: {type(exc).__name__}", method=method, path=path)
            ) from None
        except httpx.TimeoutException as exc:
            raise _Retry(
                KalshiUnavailable(f"timed out ({type(exc).__name__})", method=method, path=path),
                ambiguous=True,
            ) from None
        except httpx.TransportError as exc:
            raise _Retry(
                KalshiUnavailable(
                    f"transport error: {type(exc).__name__}", method=method, path=path
                ),
                ambiguous=True,
            ) from None
        status = response.status_code
        gate = self._gate(write, auth)
        ra = gate.note(status, response.headers)
        if ra is not None:
            log.warning("Kalshi %s %s: %s", method, path, gate.describe())
        if status == 429 or status >= 500:
            error = self._error_for(response, method, path)
            if ra is not None:  # the alert that reports it says when we ask again
                error = type(error)(
                    f"{error.message} ({gate.describe()})",
                    status=error.status,
                    code=error.code,
                    details=error.details,
                    method=method,
                    path=path,
                )
            # A 429 was refused, not processed; a 5xx may have been.
            raise _Retry(error, ambiguous=status >= 500)
        gate.ok()
        if status >= 300:
            raise self._error_for(response, method, path)
        try:
            return self._decode(response, method, path)
        except KalshiBadResponse as exc:
            raise _Retry(exc, ambiguous=True) from None

    async def _respect_retry_after(self, method: str, path: str, write: bool, auth: bool) -> None:
        """Before sending: wait out a short `Retry-After`; refuse to send during a long one."""
        gate = self._gate(write, auth)
        wait = gate.remaining()
        if wait <= 0:
            return
        if wait > self.backoff_max:
            raise KalshiRateLimited(
                f"not sent: {gate.describe()}; {wait:.1f} s to go",
                status=gate.last.status if gate.last else None,
                method=method,
                path=path,
            )
        await self._sleep(wait)
        gate.passed()

    def _retry_delay(self, attempt: int, write: bool, auth: bool) -> float | None:
        """The wait before the next attempt: the backoff, or the venue's `Retry-After` when
        longer; None when that is longer than `backoff_max` (give the caller the error now)."""
        gate = self._gate(write, auth)
        delay = self.backoff_delay(attempt)
        wait = gate.remaining()
        if wait > self.backoff_max:
            return None
        if wait > 0:
            gate.passed()  # waited below, with the backoff
        return max(delay, wait)

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        body: dict[str, Any] | None = None,
        auth: bool = False,
        write: bool = False,
    ) -> Any:
        """A request that is safe to repeat (reads, cancels), retried as the module says."""
        last: KalshiError | None = None
        for attempt in range(self.max_attempts):
            try:
                return await self._once(
                    method, path, params=params, body=body, auth=auth, write=write
                )
            except _Retry as retry:
                last = retry.error
                if attempt + 1 < self.max_attempts:
                    delay = self._retry_delay(attempt, write, auth)
                    if delay is None:
                        break  # a long Retry-After: the caller comes back when the gate opens
                    log.warning(
                        "Kalshi %s %s failed (%s); retry %d/%d in %.2f s",
                        method,
                        path,
                        last.message,
                        attempt + 1,
                        self.max_attempts - 1,
                        delay,
                    )
                    await self._sleep(delay)
        assert last is not None
        raise last

    async def _paginate(
        self, path: str, key: str, params: dict[str, Any], *, auth: bool = False
    ) -> AsyncIterator[dict[str, Any]]:
        """Every item of `key` across all pages, following `cursor` until it comes back empty."""
        seen: set[str] = set()
        cursor: str | None = None
        while True:
            page_params = dict(params)
            if cursor:
                page_params["cursor"] = cursor
            data = await self.request("GET", path, params=page_params, auth=auth)
            items = data.get(key) if isinstance(data, dict) else None
            if not isinstance(items, list):
                raise KalshiBadResponse(f"expected a list {key!r} in the answer", path=path)
            for item in items:
                yield item
            cursor = data.get("cursor") or None
            if cursor is None:
                return
            if cursor in seen:  # a venue bug must not become an endless loop
                raise KalshiBadResponse(f"cursor {cursor!r} came back twice", path=path)
            seen.add(cursor)

    @staticmethod
    def _parse(factory: Callable[[dict[str, Any]], Any], data: Any, path: str) -> Any:
        if not isinstance(data, dict):
            raise KalshiBadResponse(f"expected an object, got {type(data).__name__}", path=path)
        try:
            return factory(data)
        except FixedPointError as exc:
            raise KalshiBadResponse(str(exc), path=path) from None

    async def _items(
        self,
        factory: Callable[[dict[str, Any]], Any],
        path: str,
        key: str,
        params: dict[str, Any],
        *,
        auth: bool = False,
    ) -> AsyncIterator[Any]:
        async for item in self._paginate(path, key, params, auth=auth):
            yield self._parse(factory, item, path)

    # ---- market data (no auth) -------------------------------------------------------------

    def iter_events(
        self,
        *,
        series_ticker: str | None = None,
        status: str | None = None,
        with_nested_markets: bool = False,
        page_size: int = 200,
    ) -> AsyncIterator[Event]:
        params = {
            "series_ticker": series_ticker,
            "status": status,
            "with_nested_markets": with_nested_markets or None,
            "limit": page_size,
        }
        return self._items(Event.from_json, "/events", "events", params)

    async def get_events(self, **filters: Any) -> list[Event]:
        """All events matching the filters of `iter_events`, every page."""
        return [e async for e in self.iter_events(**filters)]

    def iter_markets(
        self,
        *,
        series_ticker: str | None = None,
        event_ticker: str | None = None,
        tickers: list[str] | None = None,
        status: str | None = None,
        mve_filter: str | None = "exclude",
        page_size: int = 1000,
    ) -> AsyncIterator[Market]:
        params = {
            "series_ticker": series_ticker,
            "event_ticker": event_ticker,
            "tickers": tickers,
            "status": status,
            "mve_filter": mve_filter,
            "limit": page_size,
        }
        return self._items(Market.from_json, "/markets", "markets", params)

    async def get_markets(self, **filters: Any) -> list[Market]:
        """All markets matching the filters of `iter_markets`, every page."""
        return [m async for m in self.iter_markets(**filters)]

    async def get_market(self, ticker: str) -> Market:
        path = f"/markets/{quote(ticker, safe='')}"
        data = await self.request("GET", path)
        return self._parse(lambda d: Market.from_json(d["market"]), data, path)

    async def get_orderbook(self, ticker: str, *, depth: int | None = None) -> Orderbook:
        path = f"/markets/{quote(ticker, safe='')}/orderbook"
        data = await self.request("GET", path, params={"depth": depth})
        return self._parse(Orderbook.from_json, data, path)

    # ---- portfolio (signed) ----------------------------------------------------------------

    def iter_positions(
        self,
        *,
        ticker: str | None = None,
        settlement_status: str | None = "unsettled",
        page_size: int = 200,
    ) -> AsyncIterator[Position]:
        params = {"ticker": ticker, "settlement_status": settlement_status, "limit": page_size}
        return self._items(
            Position.from_json, "/portfolio/positions", "market_positions", params, auth=True
        )

    async def get_positions(self, **filters: Any) -> list[Position]:
        return [p async for p in self.iter_positions(**filters)]

    def iter_fills(
        self,
        *,
        ticker: str | None = None,
        order_id: str | None = None,
        min_ts: int | None = None,
        page_size: int = 200,
    ) -> AsyncIterator[Fill]:
        params = {"ticker": ticker, "order_id": order_id, "min_ts": min_ts, "limit": page_size}
        return self._items(Fill.from_json, "/portfolio/fills", "fills", params, auth=True)

    async def get_fills(self, **filters: Any) -> list[Fill]:
        return [f async for f in self.iter_fills(**filters)]

    def iter_orders(
        self, *, ticker: str | None = None, status: str | None = None, page_size: int = 200
    ) -> AsyncIterator[Order]:
        params = {"ticker": ticker, "status": status, "limit": page_size}
        return self._items(Order.from_json, "/portfolio/orders", "orders", params, auth=True)

    async def get_orders(self, **filters: Any) -> list[Order]:
        return [o async for o in self.iter_orders(**filters)]

    async def get_order(self, order_id: str) -> Order:
        path = f"/portfolio/orders/{quote(order_id, safe='')}"
        data = await self.request("GET", path, auth=True)
        return self._parse(lambda d: Order.from_json(d["order"]), data, path)

    async def find_order(self, ticker: str, client_order_id: str) -> Order | None:
        """The order on `ticker` with this client order id, or None (searches all statuses)."""
        async for order in self.iter_orders(ticker=ticker):
            if order.client_order_id == client_order_id:
                return order
        return None

    async def cancel_order(self, order_id: str) -> Cancelled:
        """Cancel a resting order (V2: answers {order_id, client_order_id, reduced_by}).

        A cancel is safe to repeat, so it is retried like a read; a repeat after a lost answer
        may come back 404 (`KalshiNotFound`) or with nothing reduced.
        """
        path = f"/portfolio/events/orders/{quote(order_id, safe='')}"
        data = await self.request("DELETE", path, auth=True, write=True)
        return self._parse(Cancelled.from_json, data, path)

    async def create_order(
        self,
        ticker: str,
        *,
        client_order_id: str,
        side: Side,
        count: Decimal | int,
        price: Decimal,
        time_in_force: TimeInForce = "immediate_or_cancel",
        reduce_only: bool = False,
        self_trade_prevention_type: Literal["taker_at_cross", "maker"] = "taker_at_cross",
    ) -> Order:
        """Place an order (side, count and price in YES terms; `bid` buys YES).

        Retries never create a second order. Every attempt sends the SAME body with the SAME
        `client_order_id`, which Kalshi uses to deduplicate, and:

        - 429 and connection failures (nothing sent) are retried with backoff: not processed.
        - A timeout, a dropped connection, a 5xx or an unreadable 2xx body leave the outcome
          unknown: the order may exist. We retry with the same id; if the exchange answers 409
          (the id exists) we look the order up by ticker and client_order_id and return it.
        - 409 on the first attempt (nothing ambiguous before it) means the caller reused an id:
          `KalshiConflict`.
        - If no attempt settles an ambiguous outcome (attempts exhausted, the 409 lookup finds
          nothing or fails, or a later attempt is refused outright, e.g. 401/400),
          `KalshiOrderOutcomeUnknown` is raised, never a plain failure: the caller must
          reconcile by client_order_id later, not treat the order as rejected.

        Why not "never retry after a timeout": for an exit, a retry with the same id is what
        gets the position closed soonest, and deduplication makes it safe. The 409-then-lookup
        path is also what turns "unknown" into a known order without waiting for the engine's
        reconciliation.
        """
        if side not in ("bid", "ask"):
            raise ValueError(f"side must be 'bid' or 'ask', not {side!r}")
        if reduce_only and time_in_force != "immediate_or_cancel":
            raise ValueError("reduce_only requires time_in_force='immediate_or_cancel'")
        body: dict[str, Any] = {
            "ticker": ticker,
            "client_order_id": client_order_id,
            "side": side,
            "count": format_count(count),
            "price": format_dollars(price),
            "time_in_force": time_in_force,
            "self_trade_prevention_type": self_trade_prevention_type,  # required by V2
        }
        if reduce_only:
            body["reduce_only"] = True
        path = "/portfolio/events/orders"
        ambiguous = False
        last: KalshiError | None = None
        for attempt in range(self.max_attempts):
            try:
                data = await self._once("POST", path, body=body, auth=True, write=True)
            except KalshiConflict:
                if not ambiguous:
                    raise
                return await self._order_after_conflict(ticker, client_order_id, path)
            except KalshiError as exc:
                if not ambiguous:
                    raise
                # e.g. a 401 or 400 after a timed-out attempt: this attempt was refused, but
                # the earlier one may still have placed the order.
                raise self._unknown(client_order_id, path, exc) from exc
            except _Retry as retry:
                ambiguous = ambiguous or retry.ambiguous
                last = retry.error
                if attempt + 1 < self.max_attempts:
                    delay = self._retry_delay(attempt, write=True, auth=True)
                    if delay is None:
                        break  # a long Retry-After: not sent again before it (see module doc)
                    log.warning(
                        "Kalshi order %s: %s; retrying with the same client_order_id in %.2f s",
                        client_order_id,
                        last.message,
                        delay,
                    )
                    await self._sleep(delay)
                continue
            return self._parse(lambda d: Order.from_json(d.get("order", d)), data, path)
        assert last is not None
        if ambiguous:
            raise self._unknown(client_order_id, path, last)
        raise last

    async def _order_after_conflict(self, ticker: str, client_order_id: str, path: str) -> Order:
        """After an unclear attempt, a 409 says our order exists: fetch it."""
        try:
            found = await self.find_order(ticker, client_order_id)
        except KalshiError as exc:
            raise self._unknown(client_order_id, path, exc) from exc
        if found is None:
            raise KalshiOrderOutcomeUnknown(
                "the exchange says this client_order_id exists, but no such order was found; "
                "reconcile by client_order_id",
                client_order_id=client_order_id,
                status=409,
                method="POST",
                path=path,
            )
        log.info("Kalshi order %s: found after an unclear attempt", client_order_id)
        return found

    def _unknown(
        self, client_order_id: str, path: str, last: KalshiError
    ) -> KalshiOrderOutcomeUnknown:
        return KalshiOrderOutcomeUnknown(
            f"no clear answer (last: {last.message}); the order may exist: reconcile by "
            "client_order_id",
            client_order_id=client_order_id,
            status=last.status,
            code=last.code,
            method="POST",
            path=path,
        )
