"""Spot price and volatility sources: what they share (errors, data, checked parsing, HTTP).

The venues' clients are `engine.feeds.coinbase`, `engine.feeds.kraken` and `engine.feeds.deribit`;
`engine.feeds.spot_selector.PrimaryFallback` picks the source in use.

Each client turns one venue's public JSON into checked floats at the boundary (the engine works
in float dollars) and into typed errors otherwise:

- `SourceUnavailable`: no answer worth reading (connection refused, timeout, HTTP 429/5xx, the
  venue saying no: an HTTP 4xx, Kraken's `error` list, a JSON-RPC `error`), or not asked at all
  while the venue's `Retry-After` runs (a 429/503 with it closes the client's `retry_gate`,
  `engine.http_retry`, bounded by `[engine] retry_after_max_seconds`);
- `SourceBadData`: an answer that is not what the venue documents (an HTML page, truncated
  JSON, a missing field, NaN/inf/zero/negative prices, bid > ask, a timestamp from the future).

Both name the source, and `SourceBadData` the field and the value, so a `data_quality` alert can
say what came back.

`SpotSource` is what the engine needs from a spot feed: `latest()` (the last trade and the top of
the book) and `backfill(minutes)` (1-minute closes, oldest first, to seed `SpotHistory` so
momentum and volatility are available at once). A streaming source (`engine.feeds.spot_streams`)
implements the same protocol (`latest()` returns the newest pushed tick) and reports into `PrimaryFallback`
through `record_ok` / `record_failure` as updates arrive instead of being polled.

Timestamps are Unix seconds (float, UTC); all clocks are injected (`engine.clock.Clock`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol, runtime_checkable

import httpx

from engine.clock import Clock
from engine.http_retry import RetryGate
from engine.models import SpotEvent

FUTURE_TOLERANCE_SECONDS = 5.0
"""How far ahead of our clock a venue timestamp may be (the engine's data guard uses the same)."""

MINUTE = 60
COINBASE_URL = "https://api.exchange.coinbase.com"
KRAKEN_URL = "https://api.kraken.com"
DERIBIT_URL = "https://www.deribit.com/api/v2"
COINBASE_MAX_CANDLES = 300  # per request, documented
KRAKEN_MAX_CANDLES = 720  # per request, documented
DVOL_RANGE = (1.0, 1000.0)  # percent points; outside this the value is not a DVOL reading


# --- errors ---------------------------------------------------------------------------------------


class SpotSourceError(Exception):
    """A source could not give a usable answer; `source` names it (e.g. "coinbase")."""

    def __init__(self, source: str, message: str) -> None:
        super().__init__(f"{source}: {message}")
        self.source = source
        self.detail = message


class SourceUnavailable(SpotSourceError):
    """Transport error, timeout, HTTP 429/4xx/5xx, or the venue's own error report."""

    def __init__(self, source: str, message: str, status: int | None = None) -> None:
        super().__init__(source, message)
        self.status = status


class SourceBadData(SpotSourceError):
    """The answer came, but it is malformed or implausible; `field` and `value` say what."""

    def __init__(self, source: str, field: str, value: object, problem: str) -> None:
        super().__init__(source, f"{field} = {short(value)}: {problem}")
        self.field = field
        self.value = value
        self.problem = problem


def short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- data -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SpotTick:
    """One top-of-book reading: `ts` Unix seconds, prices in USD (floats, checked)."""

    source: str
    ts: float
    price: float
    bid: float | None
    ask: float | None

    def to_event(self, symbol: str) -> SpotEvent:
        """The engine's event for this tick (the last trade price is the spot)."""
        return SpotEvent(self.ts, symbol, self.price)


@dataclass(frozen=True, slots=True)
class MinuteClose:
    """The close of the 1-minute bar that ENDS at `ts` (Unix seconds, a whole minute).

    Stamped at the bar's end so `SpotHistory.add(ts, price)` followed by `minute_closes` sees it as
    the price at that instant.
    """

    ts: float
    price: float


@dataclass(frozen=True, slots=True)
class DvolReading:
    """Deribit's DVOL index at `ts` (Unix seconds): 30-day implied vol, annualised, in percent."""

    ts: float
    value: float

    @property
    def sigma(self) -> float:
        """As the engine's annualised fraction: DVOL 55 → 0.55."""
        return self.value / 100.0


@runtime_checkable
class SpotSource(Protocol):
    """A spot feed the engine can poll (REST) or read the newest push of (a stream)."""

    name: str

    async def latest(self) -> SpotTick:
        """The newest tick; raises SourceUnavailable / SourceBadData."""
        ...

    async def backfill(self, minutes: int = 30) -> list[MinuteClose]:
        """The last `minutes` complete 1-minute closes, oldest first."""
        ...

    async def aclose(self) -> None: ...


# --- checked parsing ------------------------------------------------------------------------------


def parse_price(source: str, field: str, raw: object) -> float:
    """A positive, finite price from a JSON string or number (via Decimal: no float surprises)."""
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise SourceBadData(source, field, raw, "not a number")
    try:
        dec = Decimal(raw.strip()) if isinstance(raw, str) else Decimal(repr(raw))
    except InvalidOperation:
        raise SourceBadData(source, field, raw, "not a number") from None
    if not dec.is_finite():
        raise SourceBadData(source, field, raw, "not finite")
    if dec <= 0:
        raise SourceBadData(source, field, raw, "must be > 0")
    value = float(dec)
    if not math.isfinite(value):
        raise SourceBadData(source, field, raw, "out of range")
    return value


def check_ts(source: str, field: str, ts: float, now: float) -> float:
    """A finite, positive Unix time no further ahead of `now` than FUTURE_TOLERANCE_SECONDS."""
    if not math.isfinite(ts) or ts <= 0:
        raise SourceBadData(source, field, ts, "not a valid timestamp")
    if ts - now > FUTURE_TOLERANCE_SECONDS:
        raise SourceBadData(source, field, ts, f"{ts - now:.0f}s in the future (check the clocks)")
    return ts


def parse_unix(source: str, field: str, raw: object, now: float, scale: float = 1.0) -> float:
    """A Unix timestamp from a JSON number (or numeric string), divided by `scale` (1000 for ms)."""
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise SourceBadData(source, field, raw, "not a timestamp")
    try:
        ts = float(raw) / scale
    except ValueError:
        raise SourceBadData(source, field, raw, "not a timestamp") from None
    return check_ts(source, field, ts, now)


_FRACTION = re.compile(r"(\.\d{6})\d+")


def parse_iso(source: str, field: str, raw: object, now: float) -> float:
    """An ISO 8601 UTC time ("2026-11-21T13:05:00.123456Z") as Unix seconds."""
    if not isinstance(raw, str):
        raise SourceBadData(source, field, raw, "not an ISO 8601 time")
    text = _FRACTION.sub(r"\1", raw.strip())  # fromisoformat takes at most 6 fraction digits
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise SourceBadData(source, field, raw, "not an ISO 8601 time") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return check_ts(source, field, dt.timestamp(), now)


def check_book(source: str, bid: float, ask: float) -> None:
    if bid > ask:
        raise SourceBadData(source, "bid", bid, f"above the ask {ask} (crossed book)")


def row_of(source: str, field: str, raw: object, width: int) -> Sequence[Any]:
    if not isinstance(raw, list) or len(raw) < width:
        raise SourceBadData(source, field, raw, f"expected a row of at least {width} values")
    return raw


def describe_body(body: bytes) -> str:
    """What came back instead of JSON, briefly (for the error message)."""
    text = body.decode("utf-8", "replace").strip()
    if not text:
        return "an empty body"
    if text.startswith("<"):
        m = re.search(r"<title>(.*?)</title>", text, re.I | re.S)
        title = f" ({m.group(1).strip()[:60]})" if m else ""
        return f"an HTML page{title}"
    return f"invalid or truncated JSON ({len(body)} bytes: {short(text[:60])})"


def minute_grid(end_open: int, minutes: int, bars: dict[int, float]) -> list[MinuteClose]:
    """Closes for the `minutes` bars opening at end_open − (minutes−1)·60 … end_open.

    `bars` maps a bar's open time to its close. A venue publishes no bar for a minute without
    trades, so a missing bar takes the previous close (the price did not move); a bar before the
    grid seeds the first minutes. Leading minutes with nothing before them are left out, so the
    result can be shorter than `minutes` (never padded with invented prices).
    """
    first_open = end_open - (minutes - 1) * MINUTE
    earlier = [t for t in bars if t < first_open]
    last: float | None = bars[max(earlier)] if earlier else None
    out: list[MinuteClose] = []
    for open_ts in range(first_open, end_open + MINUTE, MINUTE):
        close = bars.get(open_ts, last)
        if close is not None:
            out.append(MinuteClose(float(open_ts + MINUTE), close))
            last = close
    return out


def last_complete_open(now: float) -> int:
    """Open time of the newest 1-minute bar that has ended by `now`."""
    return math.floor(now / MINUTE) * MINUTE - MINUTE


# --- HTTP -----------------------------------------------------------------------------------------


class RestClient:
    """Shared GET-and-decode: maps transport and HTTP failures to the typed errors."""

    name = "rest"

    def __init__(
        self,
        base_url: str,
        clock: Clock,
        timeout_seconds: float = 5.0,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.clock = clock
        self.timeout = httpx.Timeout(timeout_seconds)
        self._own_http = http is None
        self._http = http if http is not None else httpx.AsyncClient()
        # The venue's Retry-After, on the injected clock (dates, and when it runs out).
        self.retry_gate = RetryGate(self.name, now=clock.now)

    async def aclose(self) -> None:
        if self._own_http:
            await self._http.aclose()

    async def _get_json(self, path: str, params: dict[str, str | int]) -> Any:
        url = self.base_url + path
        wait = self.retry_gate.remaining()
        if wait > 0:  # the venue said when to come back: not before
            raise SourceUnavailable(
                self.name, f"not asked: {self.retry_gate.describe()}; {wait:.0f} s to go"
            )
        try:
            resp = await self._http.get(url, params=params, timeout=self.timeout)
        except httpx.TimeoutException as e:
            raise SourceUnavailable(self.name, f"timed out ({type(e).__name__})") from e
        except httpx.HTTPError as e:
            raise SourceUnavailable(self.name, f"{type(e).__name__}: {e}") from e
        body = resp.content
        ra = self.retry_gate.note(resp.status_code, resp.headers)
        if resp.status_code < 400:
            self.retry_gate.ok()
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
            if resp.status_code < 400:
                raise SourceBadData(
                    self.name, f"body of {path}", f"HTTP {resp.status_code}", describe_body(body)
                ) from None
        if resp.status_code >= 400:
            what = self._venue_message(payload) or describe_body(body)
            hint = "rate limited" if resp.status_code == 429 else "HTTP error"
            after = f" (Retry-After {ra.asked:.0f} s)" if ra is not None else ""
            raise SourceUnavailable(
                self.name, f"{hint} {resp.status_code} on {path}: {what}{after}", resp.status_code
            )
        return payload

    def _venue_message(self, payload: Any) -> str | None:
        """The venue's own error text from an error body, when it has one."""
        if isinstance(payload, dict):
            for key in ("message", "error"):
                if payload.get(key):
                    return short(payload[key])
        return None

    def _field(self, obj: Any, key: str, where: str) -> Any:
        if not isinstance(obj, dict) or key not in obj:
            raise SourceBadData(self.name, where, obj, f"missing '{key}'")
        return obj[key]
