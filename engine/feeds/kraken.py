"""Kraken public REST: the XBTUSD ticker and 1-minute OHLC."""

from __future__ import annotations

from typing import Any

import httpx

from engine.clock import Clock
from engine.feeds.spot_sources import (
    KRAKEN_MAX_CANDLES,
    KRAKEN_URL,
    MINUTE,
    MinuteClose,
    RestClient,
    SourceBadData,
    SourceUnavailable,
    SpotTick,
    check_book,
    last_complete_open,
    minute_grid,
    parse_price,
    parse_unix,
    row_of,
)

# --- Kraken ---------------------------------------------------------------------------------------

_KRAKEN_TRANSIENT = ("EService:", "EGeneral:Too many", "EAPI:Rate limit", "EGeneral:Temporary")


class KrakenSpot(RestClient):
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
        row = row_of(self.name, key, self._field(entry, key, "result[pair]"), 1)
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
            row = row_of(self.name, f"ohlc[{i}]", raw, 5)
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
