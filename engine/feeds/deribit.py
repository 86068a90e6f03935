"""Deribit public REST: DVOL, the 30-day implied volatility index of BTC (55 means sigma 0.55)."""

from __future__ import annotations

import httpx

from engine.clock import Clock
from engine.feeds.spot_sources import (
    DERIBIT_URL,
    DVOL_RANGE,
    MINUTE,
    DvolReading,
    RestClient,
    SourceBadData,
    SourceUnavailable,
    parse_price,
    parse_unix,
    row_of,
    short,
)

# --- Deribit DVOL ---------------------------------------------------------------------------------


class DeribitDvol(RestClient):
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
            raise SourceUnavailable(self.name, f"venue error: {short(payload['error'])}")
        result = self._field(payload, "result", "response")
        data = self._field(result, "data", "result")
        if not isinstance(data, list):
            raise SourceBadData(self.name, "result.data", data, "expected a list of rows")
        out: dict[float, float] = {}
        lo, hi = DVOL_RANGE
        for i, raw in enumerate(data):
            row = row_of(self.name, f"data[{i}]", raw, 5)
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
