"""Spot price and volatility sources over REST: Coinbase Exchange, Kraken, Deribit DVOL.

Each client turns one venue's public JSON into checked floats at the boundary (the engine works
in float dollars) and into typed errors otherwise:

- `SourceUnavailable`: no answer worth reading (connection refused, timeout, HTTP 429/5xx, the
  venue saying no: an HTTP 4xx, Kraken's `error` list, a JSON-RPC `error`);
- `SourceBadData`: an answer that is not what the venue documents (an HTML page, truncated
  JSON, a missing field, NaN/inf/zero/negative prices, bid > ask, a timestamp from the future).

Both name the source, and `SourceBadData` the field and the value, so a `data_quality` alert can
say what came back.

`SpotSource` is what the engine needs from a spot feed: `latest()` (the last trade and the top of
the book) and `backfill(minutes)` (1-minute closes, oldest first, to seed `SpotHistory` so
momentum and volatility are available at once). A streaming source (websockets, later) implements
the same protocol (`latest()` returns the newest pushed tick) and reports into `PrimaryFallback`
through `record_ok` / `record_failure` as updates arrive instead of being polled.

Timestamps are Unix seconds (float, UTC); all clocks are injected (`engine.clock.Clock`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol, runtime_checkable

import httpx

from engine.clock import Clock
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
        super().__init__(source, f"{field} = {_short(value)}: {problem}")
        self.field = field
        self.value = value
        self.problem = problem


def _short(value: object, limit: int = 80) -> str:
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


def _row(source: str, field: str, raw: object, width: int) -> Sequence[Any]:
    if not isinstance(raw, list) or len(raw) < width:
        raise SourceBadData(source, field, raw, f"expected a row of at least {width} values")
    return raw


def _describe_body(body: bytes) -> str:
    """What came back instead of JSON, briefly (for the error message)."""
    text = body.decode("utf-8", "replace").strip()
    if not text:
        return "an empty body"
    if text.startswith("<"):
        m = re.search(r"<title>(.*?)</title>", text, re.I | re.S)
        title = f" ({m.group(1).strip()[:60]})" if m else ""
        return f"an HTML page{title}"
    return f"invalid or truncated JSON ({len(body)} bytes: {_short(text[:60])})"


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


class _RestClient:
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

    async def aclose(self) -> None:
        if self._own_http:
            await self._http.aclose()

    async def _get_json(self, path: str, params: dict[str, str | int]) -> Any:
        url = self.base_url + path
        try:
            resp = await self._http.get(url, params=params, timeout=self.timeout)
        except httpx.TimeoutException as e:
            raise SourceUnavailable(self.name, f"timed out ({type(e).__name__})") from e
        except httpx.HTTPError as e:
            raise SourceUnavailable(self.name, f"{type(e).__name__}: {e}") from e
        body = resp.content
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
            if resp.status_code < 400:
                raise SourceBadData(
                    self.name, f"body of {path}", f"HTTP {resp.status_code}", _describe_body(body)
                ) from None
        if resp.status_code >= 400:
            what = self._venue_message(payload) or _describe_body(body)
            hint = "rate limited" if resp.status_code == 429 else "HTTP error"
            raise SourceUnavailable(
                self.name, f"{hint} {resp.status_code} on {path}: {what}", resp.status_code
            )
        return payload

    def _venue_message(self, payload: Any) -> str | None:
        """The venue's own error text from an error body, when it has one."""
        if isinstance(payload, dict):
            for key in ("message", "error"):
                if payload.get(key):
                    return _short(payload[key])
        return None

    def _field(self, obj: Any, key: str, where: str) -> Any:
        if not isinstance(obj, dict) or key not in obj:
            raise SourceBadData(self.name, where, obj, f"missing '{key}'")
        return obj[key]


# --- Coinbase Exchange ----------------------------------------------------------------------------


class CoinbaseSpot(_RestClient):
    """Coinbase Exchange public REST: `/products/{id}/ticker` and `/products/{id}/candles`."""

    name = "coinbase"

    def __init__(
        self,
        clock: Clock,
        product: str = "BTC-USD",
        base_url: str = COINBASE_URL,
        timeout_seconds: float = 5.0,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(base_url, clock, timeout_seconds, http)
        self.product = product

    async def latest(self) -> SpotTick:
        """`{"price", "bid", "ask", "time", ...}` (strings; `time` is the last trade's)."""
        data = await self._get_json(f"/products/{self.product}/ticker", {})
        now = self.clock.now()
        price = parse_price(self.name, "price", self._field(data, "price", "ticker"))
        bid = parse_price(self.name, "bid", self._field(data, "bid", "ticker"))
        ask = parse_price(self.name, "ask", self._field(data, "ask", "ticker"))
        check_book(self.name, bid, ask)
        ts = parse_iso(self.name, "time", self._field(data, "time", "ticker"), now)
        return SpotTick(self.name, ts, price, bid, ask)

    async def backfill(self, minutes: int = 30) -> list[MinuteClose]:
        """Rows `[time, low, high, open, close, volume]`, newest first; `time` opens the bar."""
        if not 1 <= minutes <= COINBASE_MAX_CANDLES - 1:
            raise ValueError(f"coinbase backfill takes 1..{COINBASE_MAX_CANDLES - 1} minutes")
        now = self.clock.now()
        end_open = last_complete_open(now)
        start = end_open - minutes * MINUTE  # one bar early: seeds a gap at the first minute
        params: dict[str, str | int] = {
            "granularity": MINUTE,
            "start": _iso(start),
            "end": _iso(end_open + MINUTE),
        }
        rows = await self._get_json(f"/products/{self.product}/candles", params)
        if not isinstance(rows, list):
            raise SourceBadData(self.name, "candles", rows, "expected a list of rows")
        bars: dict[int, float] = {}
        for i, raw in enumerate(rows):
            row = _row(self.name, f"candles[{i}]", raw, 5)
            t = parse_unix(self.name, f"candles[{i}].time", row[0], now)
            low = parse_price(self.name, f"candles[{i}].low", row[1])
            high = parse_price(self.name, f"candles[{i}].high", row[2])
            close = parse_price(self.name, f"candles[{i}].close", row[4])
            if low > high or not low <= close <= high:
                raise SourceBadData(
                    self.name, f"candles[{i}]", row, "close outside low..high (or low > high)"
                )
            if t + MINUTE <= now:  # the bar still forming is not a close yet
                bars[int(t)] = close
        return minute_grid(end_open, minutes, bars)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- Kraken ---------------------------------------------------------------------------------------

_KRAKEN_TRANSIENT = ("EService:", "EGeneral:Too many", "EAPI:Rate limit", "EGeneral:Temporary")


class KrakenSpot(_RestClient):
    """Kraken public REST: `/0/public/Ticker` and `/0/public/OHLC`.

    Kraken answers errors with HTTP 200 and a non-empty `error` list; the result is keyed by
    Kraken's own pair name, which may differ from the one asked for (XBTUSD → XXBTZUSD). Its
    ticker carries no timestamp, so a tick is stamped with our clock when it arrives.
    """

    name = "kraken"

    def __init__(
        self,
        clock: Clock,
        pair: str = "XBTUSD",
        base_url: str = KRAKEN_URL,
        timeout_seconds: float = 5.0,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(base_url, clock, timeout_seconds, http)
        self.pair = pair

    async def _result(self, path: str, params: dict[str, str | int]) -> dict[str, Any]:
        payload = await self._get_json(path, params)
        errors = self._field(payload, "error", path)
        if not isinstance(errors, list):
            raise SourceBadData(self.name, "error", errors, "expected a list")
        if errors:
            text = "; ".join(str(e) for e in errors)
            kind = "busy" if any(str(e).startswith(_KRAKEN_TRANSIENT) for e in errors) else "error"
            raise SourceUnavailable(self.name, f"venue {kind} on {path}: {text}")
        result = self._field(payload, "result", path)
        if not isinstance(result, dict):
            raise SourceBadData(self.name, "result", result, "expected an object")
        return result

    def _pair_entry(self, result: dict[str, Any], where: str) -> Any:
        """The one pair entry of `result` (whatever Kraken calls the pair)."""
        if self.pair in result:
            return result[self.pair]
        keys = [k for k in result if k != "last"]
        if len(keys) != 1:
            raise SourceBadData(
                self.name, where, sorted(result), f"no single entry for {self.pair}"
            )
        return result[keys[0]]

    def _first(self, entry: Any, key: str) -> float:
        """The price at the head of one of the ticker's arrays (`a`, `b`, `c`)."""
        row = _row(self.name, key, self._field(entry, key, "result[pair]"), 1)
        return parse_price(self.name, f"{key}[0]", row[0])

    async def latest(self) -> SpotTick:
        """`result[pair]`: `a` = [ask, whole lot vol, lot vol], `b` = [bid, …], `c` = [last, vol]."""
        result = await self._result("/0/public/Ticker", {"pair": self.pair})
        now = self.clock.now()
        entry = self._pair_entry(result, "result")
        ask = self._first(entry, "a")
        bid = self._first(entry, "b")
        last = self._first(entry, "c")
        check_book(self.name, bid, ask)
        return SpotTick(self.name, now, last, bid, ask)

    async def backfill(self, minutes: int = 30) -> list[MinuteClose]:
        """Rows `[time, open, high, low, close, vwap, volume, count]`, oldest first, plus `last`;
        the newest row is the bar still forming and is left out."""
        if not 1 <= minutes <= KRAKEN_MAX_CANDLES - 2:
            raise ValueError(f"kraken backfill takes 1..{KRAKEN_MAX_CANDLES - 2} minutes")
        now = self.clock.now()
        end_open = last_complete_open(now)
        since = end_open - (minutes + 1) * MINUTE
        result = await self._result(
            "/0/public/OHLC", {"pair": self.pair, "interval": 1, "since": since}
        )
        rows = self._pair_entry(result, "result")
        if not isinstance(rows, list):
            raise SourceBadData(self.name, "result[pair]", rows, "expected a list of rows")
        bars: dict[int, float] = {}
        for i, raw in enumerate(rows):
            row = _row(self.name, f"ohlc[{i}]", raw, 5)
            t = parse_unix(self.name, f"ohlc[{i}].time", row[0], now)
            high = parse_price(self.name, f"ohlc[{i}].high", row[2])
            low = parse_price(self.name, f"ohlc[{i}].low", row[3])
            close = parse_price(self.name, f"ohlc[{i}].close", row[4])
            if low > high or not low <= close <= high:
                raise SourceBadData(
                    self.name, f"ohlc[{i}]", row, "close outside low..high (or low > high)"
                )
            if t + MINUTE <= now:
                bars[int(t)] = close
        return minute_grid(end_open, minutes, bars)


# --- Deribit DVOL ---------------------------------------------------------------------------------


class DeribitDvol(_RestClient):
    """Deribit `public/get_volatility_index_data` (JSON-RPC over GET): the DVOL index.

    `result.data` rows are `[ts_ms, open, high, low, close]` in percent points (55 = σ 0.55).
    Values outside DVOL_RANGE are refused rather than rescaled: a 0.55 could be a fraction or a
    broken feed, and guessing would put a 100× wrong volatility into the probabilities.
    """

    name = "deribit"

    def __init__(
        self,
        clock: Clock,
        currency: str = "BTC",
        base_url: str = DERIBIT_URL,
        timeout_seconds: float = 5.0,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(base_url, clock, timeout_seconds, http)
        self.currency = currency

    async def history(self, minutes: int = 30) -> list[DvolReading]:
        """1-minute DVOL closes over the last `minutes`, oldest first (stamped at the row time)."""
        now = self.clock.now()
        end_ms = int(now * 1000)
        params: dict[str, str | int] = {
            "currency": self.currency,
            "start_timestamp": end_ms - minutes * MINUTE * 1000,
            "end_timestamp": end_ms,
            "resolution": "60",
        }
        payload = await self._get_json("/public/get_volatility_index_data", params)
        if isinstance(payload, dict) and payload.get("error"):
            raise SourceUnavailable(self.name, f"venue error: {_short(payload['error'])}")
        result = self._field(payload, "result", "response")
        data = self._field(result, "data", "result")
        if not isinstance(data, list):
            raise SourceBadData(self.name, "result.data", data, "expected a list of rows")
        out: dict[float, float] = {}
        lo, hi = DVOL_RANGE
        for i, raw in enumerate(data):
            row = _row(self.name, f"data[{i}]", raw, 5)
            ts = parse_unix(self.name, f"data[{i}].ts", row[0], now, scale=1000.0)
            value = parse_price(self.name, f"data[{i}].close", row[4])
            if not lo <= value <= hi:
                raise SourceBadData(
                    self.name,
                    f"data[{i}].close",
                    row[4],
                    f"outside {lo:g}..{hi:g} (DVOL is in percent: 55 means sigma 0.55)",
                )
            out[ts] = value
        return [DvolReading(ts, v) for ts, v in sorted(out.items())]

    async def latest(self) -> DvolReading:
        """The newest DVOL reading (from the last 10 minutes)."""
        rows = await self.history(10)
        if not rows:
            raise SourceBadData(self.name, "result.data", [], "no DVOL in the last 10 minutes")
        return rows[-1]


# --- primary / fallback selection -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SourceSwitch:
    """The selector moved from one source to another (`None`: no source is usable)."""

    ts: float
    from_source: str | None
    to_source: str | None
    reason: str


@dataclass(slots=True)
class _Health:
    last_ok_ts: float | None = None  # the data time of the last good tick
    last_tick: SpotTick | None = None
    error: SpotSourceError | None = None  # the last failure, until a good tick clears it
    good_streak: int = 0


class PrimaryFallback:
    """Picks the primary spot source while it is healthy, else the fallback.

    Healthy: the last attempt succeeded and its data is at most `stale_after_seconds` old by the
    injected clock. The primary is taken back after `recover_after` consecutive good updates (1:
    at once; more damps flapping). Each change of the source in use is reported once, through
    `on_switch` and `switches`, which the engine turns into one `data_quality` alert per episode.

    REST sources are driven by `poll()`; a streaming source reports through `record_ok` /
    `record_failure` as its messages (or its disconnects) arrive, and the engine calls
    `evaluate()` from its tick so staleness is noticed even when nothing arrives.
    """

    def __init__(
        self,
        primary: SpotSource,
        fallback: SpotSource,
        clock: Clock,
        stale_after_seconds: float = 10.0,
        recover_after: int = 1,
        on_switch: Callable[[SourceSwitch], None] | None = None,
    ) -> None:
        if primary.name == fallback.name:
            raise ValueError("primary and fallback need different names")
        self.primary = primary
        self.fallback = fallback
        self.clock = clock
        self.stale_after_seconds = stale_after_seconds
        self.recover_after = max(1, recover_after)
        self.on_switch = on_switch
        self.switches: list[SourceSwitch] = []
        self._health = {primary.name: _Health(), fallback.name: _Health()}
        self._active: str | None = primary.name

    @property
    def active(self) -> str | None:
        """The name of the source in use (for the market pane), or None when none is usable."""
        return self._active

    def record_ok(self, tick: SpotTick) -> None:
        h = self._health[tick.source]
        h.last_ok_ts = tick.ts if h.last_ok_ts is None else max(h.last_ok_ts, tick.ts)
        h.last_tick = tick
        h.error = None
        h.good_streak += 1

    def record_failure(self, source: str, error: SpotSourceError) -> None:
        h = self._health[source]
        h.error = error
        h.good_streak = 0

    def problem(self, source: str, now: float) -> str | None:
        """Why `source` is not usable now, or None when it is."""
        h = self._health[source]
        if h.error is not None:
            return f"{source} failing: {h.error.detail}"
        if h.last_ok_ts is None:
            return f"{source} has not delivered yet"
        age = now - h.last_ok_ts
        if age > self.stale_after_seconds:
            return f"{source} stale: last good update {age:.0f}s ago (limit {self.stale_after_seconds:g}s)"
        return None

    def evaluate(self) -> str | None:
        """Re-decide the source in use; returns it. Reports a switch once when it changes."""
        now = self.clock.now()
        p, f = self.primary.name, self.fallback.name
        p_problem = self.problem(p, now)
        primary_back = p_problem is None and (
            self._active == p or self._health[p].good_streak >= self.recover_after
        )
        if primary_back:
            choice: str | None = p
            reason = f"{p} recovered" if self._active != p else ""
        elif self.problem(f, now) is None:
            choice = f
            reason = p_problem or f"{p} recovering"
        else:
            choice = None
            reason = f"{p_problem or p + ' recovering'}; {self.problem(f, now)}"
        if choice != self._active:
            switch = SourceSwitch(now, self._active, choice, reason)
            self._active = choice
            self.switches.append(switch)
            if self.on_switch is not None:
                self.on_switch(switch)
        return self._active

    async def _poll_one(self, source: SpotSource) -> None:
        try:
            tick = await source.latest()
        except SpotSourceError as e:
            self.record_failure(source.name, e)
        else:
            self.record_ok(tick)

    async def poll(self) -> SpotTick | None:
        """Ask the primary (always: that is how its recovery is seen) and, while it is not usable,
        the fallback; returns the newest tick of the source in use, or None."""
        await self._poll_one(self.primary)
        if self.problem(self.primary.name, self.clock.now()) is not None or (
            self._active != self.primary.name
        ):
            await self._poll_one(self.fallback)
        active = self.evaluate()
        if active is None:
            return None
        return self._health[active].last_tick

    async def backfill(self, minutes: int = 30) -> list[MinuteClose]:
        """Closes from the primary, or the fallback when the primary cannot give them."""
        try:
            return await self.primary.backfill(minutes)
        except SpotSourceError as e:
            self.record_failure(self.primary.name, e)
            return await self.fallback.backfill(minutes)
