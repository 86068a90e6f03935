"""Coinbase Exchange public REST: the BTC-USD ticker and 1-minute candles."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx

from engine.clock import Clock
from engine.feeds.spot_sources import (
    COINBASE_MAX_CANDLES,
    COINBASE_URL,
    MINUTE,
    MinuteClose,
    RestClient,
    SourceBadData,
    SpotTick,
    check_book,
    last_complete_open,
    minute_grid,
    parse_iso,
    parse_price,
    parse_unix,
    row_of,
)

# --- Coinbase Exchange ----------------------------------------------------------------------------


class CoinbaseSpot(RestClient):
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
            row = row_of(self.name, f"candles[{i}]", raw, 5)
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
