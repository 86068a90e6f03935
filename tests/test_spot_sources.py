"""Spot sources over loopback venues: parsing to the right numbers, typed errors for every fault,
recovery, refusal of bad data, and the primary/fallback selector on an injected clock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from engine.clock import ManualClock
from engine.feeds.coinbase import CoinbaseSpot
from engine.feeds.deribit import DeribitDvol
from engine.feeds.kraken import KrakenSpot
from engine.feeds.spot_selector import PrimaryFallback, SourceSwitch
from engine.feeds.spot_sources import (
    MinuteClose,
    SourceBadData,
    SourceUnavailable,
    SpotSourceError,
    SpotTick,
)
from tests.spot_servers import CoinbaseServer, DeribitServer, FakeVenue, KrakenServer

# 2027-01-15T08:00:30Z, 30 s into a minute. The last complete bar opened at 07:59:00
# (T0 − 90) and closed at 08:00:00 (T0 − 30).
T0 = 1_800_000_030.0
LAST_CLOSE_TS = 1_800_000_000.0
TIMEOUT = 0.3  # the "slow" fault holds its answer far longer than this


def coinbase_ticker(**over: Any) -> dict[str, Any]:
    t = {
        "trade_id": 86_326_522,
        "price": "90123.45",
        "size": "0.0013",
        "bid": "90123.44",
        "ask": "90123.46",
        "volume": "6042.1",
        "time": "2027-01-15T08:00:25.123456789Z",  # T0 − 4.876543211 (nanoseconds trimmed)
    }
    t.update(over)
    return t


def kraken_ticker(**over: Any) -> dict[str, Any]:
    t = {
        "a": ["90130.10000", "1", "1.000"],
        "b": ["90129.90000", "2", "2.000"],
        "c": ["90130.00000", "0.00100000"],
        "v": ["100.1", "2000.2"],
        "p": ["90100.0", "90000.0"],
        "t": [1000, 20000],
        "l": ["89000.0", "88000.0"],
        "h": ["91000.0", "92000.0"],
        "o": "90050.0",
    }
    t.update(over)
    return t


def bar_open(k: int) -> int:
    """Open time of bar k: k = 1..30 are the 30 complete bars of the backfill, k = 0 the one
    before them, k = 31 the bar still forming at T0."""
    return int(LAST_CLOSE_TS) - (31 - k) * 60


def close_of(k: int) -> float:
    return 90_000.0 + 10.0 * k


def coinbase_rows(skip: tuple[int, ...] = ()) -> list[list[Any]]:
    rows = []
    for k in range(32):
        if k in skip:
            continue
        c = close_of(k) if k < 31 else 99_999.0
        rows.append(
            [bar_open(k), c - 5, c + 5, c - 1, c, 1.5]
        )  # [time, low, high, open, close, vol]
    return rows


def kraken_rows() -> list[list[Any]]:
    rows = []
    for k in range(32):
        c = close_of(k) if k < 31 else 99_999.0
        # [time, open, high, low, close, vwap, volume, count], prices as strings
        rows.append(
            [
                bar_open(k),
                f"{c - 1:.1f}",
                f"{c + 5:.1f}",
                f"{c - 5:.1f}",
                f"{c:.1f}",
                f"{c:.1f}",
                "1.5",
                12,
            ]
        )
    return rows


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
async def coinbase(clock: ManualClock) -> AsyncIterator[tuple[CoinbaseServer, CoinbaseSpot]]:
    server = await CoinbaseServer().start()
    assert isinstance(server, CoinbaseServer)
    server.ticker = coinbase_ticker()
    server.candles = coinbase_rows()
    client = CoinbaseSpot(clock, base_url=server.url, timeout_seconds=TIMEOUT)
    yield server, client
    await client.aclose()
    await server.close()


@pytest.fixture
async def kraken(clock: ManualClock) -> AsyncIterator[tuple[KrakenServer, KrakenSpot]]:
    server = await KrakenServer().start()
    assert isinstance(server, KrakenServer)
    server.ticker = kraken_ticker()
    server.ohlc = kraken_rows()
    client = KrakenSpot(clock, pair="XBTUSD", base_url=server.url, timeout_seconds=TIMEOUT)
    yield server, client
    await client.aclose()
    await server.close()


@pytest.fixture
async def deribit(clock: ManualClock) -> AsyncIterator[tuple[DeribitServer, DeribitDvol]]:
    server = await DeribitServer().start()
    assert isinstance(server, DeribitServer)
    ms = int(LAST_CLOSE_TS) * 1000
    server.rows = [
        [ms - 120_000, 54.0, 54.5, 53.9, 54.1],
        [ms - 60_000, 54.1, 55.3, 54.0, 55.2],
        [ms, 55.2, 55.6, 55.1, 55.5],
    ]
    client = DeribitDvol(clock, base_url=server.url, timeout_seconds=TIMEOUT)
    yield server, client
    await client.aclose()
    await server.close()


# --- good data parses to the right numbers --------------------------------------------------------


async def test_coinbase_ticker_parses(coinbase: tuple[CoinbaseServer, CoinbaseSpot]) -> None:
    _, client = coinbase
    tick = await client.latest()
    assert tick == SpotTick(
        "coinbase", pytest.approx(1_800_000_025.123456), 90123.45, 90123.44, 90123.46
    )  # type: ignore[arg-type]
    assert tick.to_event("BTC-USD").price == 90123.45


async def test_coinbase_backfill_gives_30_closes_oldest_first(
    coinbase: tuple[CoinbaseServer, CoinbaseSpot],
) -> None:
    server, client = coinbase
    closes = await client.backfill(30)
    assert len(closes) == 30
    # Bar k closes at open + 60; k = 1 is the oldest, k = 30 ended at 08:00:00.
    assert closes[0] == MinuteClose(1_799_998_260.0, 90_010.0)
    assert closes[-1] == MinuteClose(LAST_CLOSE_TS, 90_300.0)
    assert [c.ts for c in closes] == [LAST_CLOSE_TS - 60 * (29 - i) for i in range(30)]
    assert 99_999.0 not in [c.price for c in closes]  # the bar still forming is not a close
    path, query = server.requests[-1]
    assert path == "/products/BTC-USD/candles"
    assert query["granularity"] == "60"
    assert query["end"] == "2027-01-15T08:00:00Z"


async def test_coinbase_minute_without_trades_keeps_the_previous_close(
    coinbase: tuple[CoinbaseServer, CoinbaseSpot],
) -> None:
    server, client = coinbase
    server.candles = coinbase_rows(skip=(10, 11))
    closes = await client.backfill(30)
    assert len(closes) == 30
    assert [c.price for c in closes[7:12]] == [90_080.0, 90_090.0, 90_090.0, 90_090.0, 90_120.0]


async def test_kraken_ticker_parses_under_krakens_own_pair_name(
    kraken: tuple[KrakenServer, KrakenSpot], clock: ManualClock
) -> None:
    server, client = kraken
    tick = await client.latest()
    # No timestamp in Kraken's ticker: stamped on arrival by our clock.
    assert tick == SpotTick("kraken", T0, 90130.0, 90129.9, 90130.1)
    assert server.requests[-1] == ("/0/public/Ticker", {"pair": "XBTUSD"})


async def test_kraken_backfill_gives_30_closes_oldest_first(
    kraken: tuple[KrakenServer, KrakenSpot],
) -> None:
    _, client = kraken
    closes = await client.backfill(30)
    assert [c.price for c in closes] == [close_of(k) for k in range(1, 31)]
    assert closes[-1].ts == LAST_CLOSE_TS
    assert closes[0].ts == 1_799_998_260.0


async def test_deribit_dvol_in_percent_and_as_sigma(
    deribit: tuple[DeribitServer, DeribitDvol],
) -> None:
    server, client = deribit
    hist = await client.history(30)
    assert [r.value for r in hist] == [54.1, 55.2, 55.5]
    latest = await client.latest()
    assert latest.ts == LAST_CLOSE_TS
    assert latest.sigma == pytest.approx(0.555)
    query = server.requests[-1][1]
    assert query["currency"] == "BTC" and query["resolution"] == "60"
    assert int(query["end_timestamp"]) == int(T0 * 1000)


# --- faults: the right typed error, then the next good answer recovers ----------------------------

FAULT_CASES = [
    ("500", SourceUnavailable, "HTTP error 500"),
    ("429", SourceUnavailable, "rate limited 429"),
    ("slow", SourceUnavailable, "timed out"),
    ("truncated", SourceBadData, "truncated JSON"),
    ("html", SourceUnavailable, "HTML page (502 Bad Gateway)"),
    ("html200", SourceBadData, "HTML page (502 Bad Gateway)"),
]


@pytest.mark.parametrize(("fault", "error", "text"), FAULT_CASES)
async def test_coinbase_faults_then_recovery(
    coinbase: tuple[CoinbaseServer, CoinbaseSpot], fault: str, error: type, text: str
) -> None:
    server, client = coinbase
    server.fail(fault)
    with pytest.raises(error) as info:
        await client.latest()
    assert info.value.source == "coinbase"
    assert text in str(info.value)
    assert (await client.latest()).price == 90123.45


@pytest.mark.parametrize(
    ("fault", "error", "text"),
    [*FAULT_CASES, ("venue_error", SourceUnavailable, "EService:Unavailable")],
)
async def test_kraken_faults_then_recovery(
    kraken: tuple[KrakenServer, KrakenSpot], fault: str, error: type, text: str
) -> None:
    server, client = kraken
    server.fail(fault)
    with pytest.raises(error) as info:
        await client.backfill(30)
    assert info.value.source == "kraken"
    assert text in str(info.value)
    assert len(await client.backfill(30)) == 30


async def test_kraken_error_list_with_http_200_names_the_error(
    kraken: tuple[KrakenServer, KrakenSpot],
) -> None:
    server, client = kraken
    server.errors = ["EQuery:Unknown asset pair"]
    server.fail("venue_error")
    with pytest.raises(SourceUnavailable, match="Unknown asset pair"):
        await client.latest()


@pytest.mark.parametrize(
    ("fault", "error", "text"),
    [*FAULT_CASES, ("venue_error", SourceUnavailable, "too_many_requests")],
)
async def test_deribit_faults_then_recovery(
    deribit: tuple[DeribitServer, DeribitDvol], fault: str, error: type, text: str
) -> None:
    server, client = deribit
    server.fail(fault)
    with pytest.raises(error) as info:
        await client.latest()
    assert text in str(info.value)
    assert (await client.latest()).value == 55.5


async def test_nobody_listening_is_unavailable(clock: ManualClock) -> None:
    server = await FakeVenue().start()
    url = server.url
    await server.close()
    client = CoinbaseSpot(clock, base_url=url, timeout_seconds=TIMEOUT)
    with pytest.raises(SourceUnavailable, match="coinbase: ConnectError"):
        await client.latest()
    await client.aclose()


# --- bad data is refused with a clear message -----------------------------------------------------


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"price": "NaN"}, "coinbase: price = 'NaN': not finite"),
        ({"price": "Infinity"}, "coinbase: price = 'Infinity': not finite"),
        ({"price": "-90123.45"}, "coinbase: price = '-90123.45': must be > 0"),
        ({"bid": "0"}, "coinbase: bid = '0': must be > 0"),
        ({"price": "abc"}, "coinbase: price = 'abc': not a number"),
        ({"price": None}, "coinbase: price = None: not a number"),
        ({"bid": "90200", "ask": "90100"}, "coinbase: bid = 90200.0: above the ask 90100.0"),
        ({"time": "2027-01-15T08:01:00Z"}, "coinbase: time = 1800000060.0: 30s in the future"),
        ({"time": "yesterday"}, "coinbase: time = 'yesterday': not an ISO 8601 time"),
    ],
)
async def test_coinbase_bad_ticker_is_refused(
    coinbase: tuple[CoinbaseServer, CoinbaseSpot], over: dict[str, Any], message: str
) -> None:
    server, client = coinbase
    server.ticker = coinbase_ticker(**over)
    with pytest.raises(SourceBadData) as info:
        await client.latest()
    assert str(info.value).startswith(message)


async def test_missing_field_is_named(coinbase: tuple[CoinbaseServer, CoinbaseSpot]) -> None:
    server, client = coinbase
    server.ticker = {"price": "1"}
    with pytest.raises(SourceBadData, match="missing 'bid'"):
        await client.latest()


async def test_bad_candle_is_refused(coinbase: tuple[CoinbaseServer, CoinbaseSpot]) -> None:
    server, client = coinbase
    server.candles = [[bar_open(30), 90_000.0, 89_000.0, 89_500.0, 89_500.0, 1.0]]  # low > high
    with pytest.raises(SourceBadData, match=r"candles\[0\].*low"):
        await client.backfill(30)
    server.candles = [[bar_open(30), 90_000.0, 91_000.0, 90_500.0, float("nan"), 1.0]]
    with pytest.raises(SourceBadData):  # NaN is not even valid JSON; either way refused
        await client.backfill(30)


async def test_kraken_bad_ticker_is_refused(kraken: tuple[KrakenServer, KrakenSpot]) -> None:
    server, client = kraken
    server.ticker = kraken_ticker(c=["nan", "1"])
    with pytest.raises(SourceBadData, match=r"kraken: c\[0\] = 'nan': not finite"):
        await client.latest()
    server.ticker = kraken_ticker(b=["90140.0", "1", "1"])
    with pytest.raises(SourceBadData, match=r"kraken: bid = 90140\.0: above the ask 90130\.1"):
        await client.latest()


async def test_dvol_as_a_fraction_is_refused_not_rescaled(
    deribit: tuple[DeribitServer, DeribitDvol],
) -> None:
    server, client = deribit
    server.rows = [[int(LAST_CLOSE_TS) * 1000, 0.55, 0.56, 0.54, 0.55]]
    with pytest.raises(SourceBadData, match=r"data\[0\].close = 0.55: outside 1..1000"):
        await client.latest()


# --- primary / fallback ---------------------------------------------------------------------------


class ScriptedSource:
    """A SpotSource whose next answer the test sets: a price (stamped now, or at `ts`) or an error."""

    def __init__(self, name: str, clock: ManualClock, price: float) -> None:
        self.name = name
        self.clock = clock
        self.price = price
        self.ts: float | None = None  # a frozen data time, to make the source stale
        self.error: SpotSourceError | None = None
        self.calls = 0

    async def latest(self) -> SpotTick:
        self.calls += 1
        if self.error is not None:
            raise self.error
        ts = self.clock.now() if self.ts is None else self.ts
        return SpotTick(self.name, ts, self.price, self.price - 1, self.price + 1)

    async def backfill(self, minutes: int = 30) -> list[MinuteClose]:
        if self.error is not None:
            raise self.error
        return [MinuteClose(self.clock.now() - 60 * k, self.price) for k in range(minutes, 0, -1)]

    async def aclose(self) -> None:
        pass


def selector(
    clock: ManualClock, recover_after: int = 1
) -> tuple[PrimaryFallback, ScriptedSource, ScriptedSource, list[SourceSwitch]]:
    primary = ScriptedSource("coinbase", clock, 90_000.0)
    fallback = ScriptedSource("kraken", clock, 90_010.0)
    seen: list[SourceSwitch] = []
    sel = PrimaryFallback(
        primary,
        fallback,
        clock,
        stale_after_seconds=10,
        recover_after=recover_after,
        on_switch=seen.append,
    )
    return sel, primary, fallback, seen


async def test_failing_primary_switches_once_and_back_once(clock: ManualClock) -> None:
    sel, primary, fallback, seen = selector(clock)
    tick = await sel.poll()
    assert sel.active == "coinbase" and tick is not None and tick.price == 90_000.0
    assert fallback.calls == 0  # the fallback is not asked while the primary is fine
    primary.error = SourceUnavailable("coinbase", "HTTP error 500 on /products/BTC-USD/ticker")
    for _ in range(5):  # five failing polls: one switch
        clock.advance(1)
        tick = await sel.poll()
        assert sel.active == "kraken" and tick is not None and tick.price == 90_010.0
    assert len(seen) == 1
    assert (seen[0].from_source, seen[0].to_source) == ("coinbase", "kraken")
    assert "coinbase failing: HTTP error 500" in seen[0].reason
    primary.error = None
    for _ in range(3):
        clock.advance(1)
        tick = await sel.poll()
        assert sel.active == "coinbase" and tick is not None and tick.price == 90_000.0
    assert [(s.from_source, s.to_source) for s in seen] == [
        ("coinbase", "kraken"),
        ("kraken", "coinbase"),
    ]
    assert seen[1].reason == "coinbase recovered"
    assert sel.switches == seen


async def test_stale_primary_switches_after_the_limit(clock: ManualClock) -> None:
    sel, primary, _, seen = selector(clock)
    await sel.poll()
    primary.ts = clock.now()  # answers, but its data stops moving
    clock.advance(10)
    await sel.poll()
    assert sel.active == "coinbase" and seen == []  # exactly at the limit: still fresh
    clock.advance(1)
    await sel.poll()
    assert sel.active == "kraken"
    assert seen[0].reason == "coinbase stale: last good update 11s ago (limit 10s)"
    primary.ts = None  # fresh again
    clock.advance(1)
    await sel.poll()
    assert sel.active == "coinbase" and len(seen) == 2


async def test_staleness_is_seen_without_a_poll(clock: ManualClock) -> None:
    """A stream that goes quiet: the engine's tick calls evaluate()."""
    sel, _, _, seen = selector(clock)
    sel.record_ok(SpotTick("coinbase", clock.now(), 90_000.0, None, None))
    sel.record_ok(SpotTick("kraken", clock.now(), 90_010.0, None, None))
    assert sel.evaluate() == "coinbase"
    clock.advance(5)
    sel.record_ok(SpotTick("kraken", clock.now(), 90_011.0, None, None))
    clock.advance(6)
    assert sel.evaluate() == "kraken"
    assert sel.evaluate() == "kraken"
    assert len(seen) == 1


async def test_both_down_reports_none_once_then_recovers(clock: ManualClock) -> None:
    sel, primary, fallback, seen = selector(clock)
    await sel.poll()
    primary.error = SourceUnavailable("coinbase", "timed out")
    fallback.error = SourceBadData("kraken", "c[0]", "nan", "not finite")
    for _ in range(3):
        clock.advance(1)
        assert await sel.poll() is None
    assert sel.active is None
    assert len(seen) == 1
    assert seen[0].reason == "coinbase failing: timed out; kraken failing: c[0] = 'nan': not finite"
    fallback.error = None
    clock.advance(1)
    await sel.poll()
    assert sel.active == "kraken" and len(seen) == 2


async def test_recover_after_damps_flapping(clock: ManualClock) -> None:
    sel, primary, _, seen = selector(clock, recover_after=3)
    await sel.poll()
    primary.error = SourceUnavailable("coinbase", "timed out")
    clock.advance(1)
    await sel.poll()
    primary.error = None
    for expected in ("kraken", "kraken", "coinbase"):
        clock.advance(1)
        await sel.poll()
        assert sel.active == expected
    assert len(seen) == 2


async def test_backfill_falls_back(clock: ManualClock) -> None:
    sel, primary, _, _ = selector(clock)
    primary.error = SourceUnavailable("coinbase", "timed out")
    closes = await sel.backfill(30)
    assert len(closes) == 30 and closes[-1].price == 90_010.0


async def test_selector_over_loopback_venues(
    coinbase: tuple[CoinbaseServer, CoinbaseSpot],
    kraken: tuple[KrakenServer, KrakenSpot],
    clock: ManualClock,
) -> None:
    cb_server, cb = coinbase
    _, kr = kraken
    seen: list[SourceSwitch] = []
    sel = PrimaryFallback(cb, kr, clock, stale_after_seconds=10, on_switch=seen.append)
    assert (await sel.poll()).source == "coinbase"  # type: ignore[union-attr]
    cb_server.fail("500", "500")
    for _ in range(2):
        tick = await sel.poll()
        assert tick is not None and tick.source == "kraken" and tick.price == 90130.0
    tick = await sel.poll()
    assert tick is not None and tick.source == "coinbase"
    assert [s.to_source for s in seen] == ["kraken", "coinbase"]
