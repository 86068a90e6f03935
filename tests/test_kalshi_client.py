"""The Kalshi REST client against the loopback Kalshi server (tests/kalshi_server.py).

Everything runs on 127.0.0.1; backoff waits are recorded instead of slept, and the rate limiter
is checked on a fake clock (plus once on the server's own arrival times).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import ValidationError

from engine.config import KalshiConfig
from engine.venues.kalshi import (
    BASE_URLS,
    FixedPointError,
    KalshiAuthError,
    KalshiBadResponse,
    KalshiClient,
    KalshiConflict,
    KalshiKeyError,
    KalshiOrderOutcomeUnknown,
    KalshiRateLimited,
    KalshiSigner,
    KalshiUnavailable,
    load_private_key,
)
from engine.venues.kalshi.fixed import (
    format_count,
    format_dollars,
    parse_count,
    parse_dollars,
    parse_fixed,
)
from engine.venues.kalshi.ratelimit import TokenBucket
from tests.kalshi_server import RunningServer, kalshi_server
from tests.loopback import RecordedSleeps

KEY_ID = "a952bcbe-ec3b-4b5b-b8f9-11dae589608c"
TICKER = "KXBTCD-26NOV2117-T97000"


# ---- fixtures ----------------------------------------------------------------------------


def write_key(key: rsa.RSAPrivateKey, path: Path, mode: int = 0o600) -> Path:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.write_bytes(pem)
    os.chmod(path, mode)
    return path


@pytest.fixture
def key_path(rsa_key: rsa.RSAPrivateKey, tmp_path: Path) -> Path:
    return write_key(rsa_key, tmp_path / "kalshi.pem")


@pytest.fixture
async def server(rsa_key: rsa.RSAPrivateKey) -> AsyncIterator[RunningServer]:
    async with kalshi_server(KEY_ID, rsa_key.public_key()) as srv:
        srv.state.add_market(TICKER)
        yield srv


@pytest.fixture
def waits() -> RecordedSleeps:
    return RecordedSleeps()


@pytest.fixture
async def make_client(
    server: RunningServer, key_path: Path, waits: RecordedSleeps
) -> AsyncIterator[Callable[..., KalshiClient]]:
    """Clients on the loopback server: signed, no limiter waits, backoff recorded not slept."""
    made: list[KalshiClient] = []

    def make(**kw: Any) -> KalshiClient:
        options: dict[str, Any] = {
            "base_url": server.base_url,
            "signer": KalshiSigner.from_file(KEY_ID, key_path),
            "timeout_seconds": 2.0,
            "read_per_second": 10_000,
            "write_per_second": 10_000,
            "burst": 100,
            "max_attempts": 4,
            "sleep": waits,
            "rng": random.Random(7),
        }
        options.update(kw)
        client = KalshiClient(**options)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.aclose()


# ---- fixed point -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0.5600", Decimal("0.5600")),
        ("10.00", Decimal("10.00")),
        ("0.000100", Decimal("0.0001")),
        (" 0.42 ", Decimal("0.42")),
        (Decimal("0.1"), Decimal("0.1")),
        (3, Decimal(3)),
    ],
)
def test_fixed_point_values_parse_exactly(value: Any, expected: Decimal) -> None:
    result = parse_fixed(value, "yes_bid_dollars")
    assert result == expected and isinstance(result, Decimal)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (None, "missing"),
        ("", "empty"),
        ("abc", "expected a decimal string"),
        ("0,56", "expected a decimal string"),
        ("NaN", "finite"),
        ("Infinity", "finite"),
        (0.56, "expected a decimal string"),
        (True, "expected a decimal string"),
        ([1], "not list"),
    ],
)
def test_malformed_fixed_point_names_field_and_value(value: Any, problem: str) -> None:
    with pytest.raises(FixedPointError) as info:
        parse_fixed(value, "yes_ask_dollars")
    message = str(info.value)
    assert "yes_ask_dollars" in message and repr(value) in message and problem in message
    assert info.value.field == "yes_ask_dollars" and info.value.value == value


def test_prices_and_counts_refuse_negatives_but_positions_are_signed() -> None:
    with pytest.raises(FixedPointError, match="negative"):
        parse_dollars("-0.01", "price")
    with pytest.raises(FixedPointError, match="negative"):
        parse_count("-1.00", "count_fp")
    assert parse_count("-5.00", "position_fp", signed=True) == Decimal("-5")


def test_formatting_prices_and_counts_for_orders() -> None:
    assert format_dollars(Decimal("0.42")) == "0.4200"
    assert format_dollars(Decimal("0.12345")) == "0.12345"
    assert format_count(2) == "2.00"
    assert format_count(Decimal("1.5")) == "1.50"
    with pytest.raises(ValueError):
        format_dollars(Decimal("0.1234567"))
    with pytest.raises(ValueError):
        format_count(Decimal("0.001"))
    with pytest.raises(ValueError):
        format_count(0)


# ---- keys and signing --------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_key_file_others_can_read_is_refused_with_the_fix(
    rsa_key: rsa.RSAPrivateKey, tmp_path: Path, mode: int
) -> None:
    path = write_key(rsa_key, tmp_path / "open.pem", mode)
    with pytest.raises(KalshiKeyError) as info:
        load_private_key(path)
    assert f"chmod 600 {path}" in str(info.value)
    assert "PRIVATE KEY" not in str(info.value)


def test_missing_or_garbage_key_files_say_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(KalshiKeyError, match="not found"):
        load_private_key(tmp_path / "nope.pem")
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    os.chmod(bad, 0o600)
    with pytest.raises(KalshiKeyError, match="not an unencrypted PEM") as info:
        load_private_key(bad)
    assert "not a key" not in str(info.value)


def test_signer_repr_hides_the_key_id(key_path: Path) -> None:
    assert KEY_ID not in repr(KalshiSigner.from_file(KEY_ID, key_path))


async def test_signed_portfolio_requests_are_accepted(
    server: RunningServer, make_client: Callable[..., KalshiClient]
) -> None:
    server.state.set_position(TICKER, "-7.00", exposure="3.1500")
    positions = await make_client().get_positions()
    assert len(positions) == 1
    pos = positions[0]
    assert pos.ticker == TICKER
    assert pos.position == Decimal("-7") and isinstance(pos.position, Decimal)
    assert pos.market_exposure == Decimal("3.15")


async def test_a_wrong_key_gets_a_typed_auth_error(
    server: RunningServer, make_client: Callable[..., KalshiClient], tmp_path: Path
) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    signer = KalshiSigner.from_file(KEY_ID, write_key(other, tmp_path / "other.pem"))
    with pytest.raises(KalshiAuthError) as info:
        await make_client(signer=signer).get_positions()
    assert info.value.status == 401
    assert info.value.code == "authentication_error"
    assert "invalid signature" in info.value.message
    assert len(server.state.requests) == 1  # a 401 is final, not retried


async def test_unknown_key_id_and_stale_timestamp_are_refused(
    make_client: Callable[..., KalshiClient], rsa_key: rsa.RSAPrivateKey
) -> None:
    with pytest.raises(KalshiAuthError, match="unknown API key"):
        await make_client(signer=KalshiSigner("someone-else", rsa_key)).get_fills()
    stale = KalshiSigner(KEY_ID, rsa_key, now_ms=lambda: 1_700_000_000_000)
    with pytest.raises(KalshiAuthError, match="timestamp"):
        await make_client(signer=stale).get_fills()


async def test_portfolio_without_a_key_fails_before_sending(
    server: RunningServer, make_client: Callable[..., KalshiClient]
) -> None:
    with pytest.raises(KalshiAuthError, match="no API key"):
        await make_client(signer=None).get_orders()
    assert server.state.requests == []


async def test_logs_never_contain_the_signature_or_the_key(
    server: RunningServer,
    make_client: Callable[..., KalshiClient],
    caplog: pytest.LogCaptureFixture,
) -> None:
    sent: list[httpx.Request] = []

    class Spy(httpx.AsyncHTTPTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            sent.append(request)
            return await super().handle_async_request(request)

    caplog.set_level(logging.DEBUG)
    server.state.queue_fault("500", path="/portfolio/positions")  # a retry logs a warning too
    await make_client(transport=Spy()).get_positions()
    signatures = [r.headers["KALSHI-ACCESS-SIGNATURE"] for r in sent]
    assert len(signatures) == 2 and all(signatures)
    assert "/portfolio/positions" in caplog.text  # the requests were logged...
    for secret in [*signatures, KEY_ID]:
        assert secret not in caplog.text  # ...without their secrets


# ---- market data -------------------------------------------------------------------------


async def test_market_data_needs_no_key_and_parses_to_decimals(
    server: RunningServer, make_client: Callable[..., KalshiClient]
) -> None:
    server.state.add_market(
        "KXBTCD-26NOV2117-T98000", yes_bid_dollars="0.1500", yes_ask_dollars=None
    )
    server.state.set_book(TICKER, yes=[("0.40", "10"), ("0.39", "4")], no=[("0.58", "5")])
    client = make_client(signer=None)

    market = await client.get_market(TICKER)
    assert market.yes_bid == Decimal("0.4") and market.floor_strike == Decimal(97000)
    assert (await client.get_market("KXBTCD-26NOV2117-T98000")).yes_ask is None

    book = await client.get_orderbook(TICKER)
    assert book.best_yes_bid == Decimal("0.40")
    assert book.best_yes_ask == Decimal("0.42")  # 1 - best NO bid
    assert book.yes_bids[1] == (Decimal("0.39"), Decimal(4))

    events = await client.get_events(
        series_ticker="KXBTCD", status="open", with_nested_markets=True
    )
    assert [e.event_ticker for e in events] == ["KXBTCD-26NOV2117"]
    assert {m.ticker for m in events[0].markets} == {TICKER, "KXBTCD-26NOV2117-T98000"}
    assert server.state.requests[-1].query["with_nested_markets"] == "true"


async def test_pagination_returns_every_item_across_pages(
    server: RunningServer, make_client: Callable[..., KalshiClient]
) -> None:
    tickers = [f"KXBTCD-26NOV2118-T{90000 + i * 250}" for i in range(250)]
    for t in tickers:
        server.state.add_market(t)
    for i in range(45):
        server.state.add_fill(fill_id=f"f{i}")
    client = make_client()

    got = await client.get_markets(event_ticker="KXBTCD-26NOV2118", page_size=100)
    assert [m.ticker for m in got] == tickers
    market_pages = [r for r in server.state.requests if r.path == "/markets"]
    assert len(market_pages) == 3 and "cursor" not in market_pages[0].query

    fills = [f.fill_id async for f in client.iter_fills(page_size=20)]
    assert fills == [f"f{i}" for i in range(45)]


async def test_a_malformed_price_from_the_venue_is_a_bad_response_naming_it(
    server: RunningServer, make_client: Callable[..., KalshiClient]
) -> None:
    server.state.add_market("KXBTCD-26NOV2117-T99000", yes_bid_dollars="56c")
    with pytest.raises(KalshiBadResponse) as info:
        await make_client().get_market("KXBTCD-26NOV2117-T99000")
    assert "yes_bid_dollars" in str(info.value) and "56c" in str(info.value)


# ---- faults ------------------------------------------------------------------------------

FAULTS = ["429", "500", "html", "truncated", "delay"]


@pytest.mark.parametrize("kind", FAULTS)
async def test_each_fault_once_recovers(
    server: RunningServer,
    make_client: Callable[..., KalshiClient],
    waits: RecordedSleeps,
    kind: str,
) -> None:
    server.state.queue_fault(kind, path="/markets/", seconds=2.0)  # type: ignore[arg-type]
    market = await make_client(timeout_seconds=0.3).get_market(TICKER)
    assert market.ticker == TICKER
    assert [r.fault for r in server.state.requests] == [kind, None]
    assert len(waits.delays) == 1


@pytest.mark.parametrize(
    ("kind", "error", "says"),
    [
        ("429", KalshiRateLimited, "too many requests"),
        ("500", KalshiUnavailable, "internal server error"),
        ("html", KalshiUnavailable, "an HTML page ('502 Bad Gateway')"),
        ("truncated", KalshiBadResponse, "expected JSON, got"),
        ("delay", KalshiUnavailable, "timed out"),
    ],
)
async def test_a_persistent_fault_fails_with_the_right_typed_error(
    server: RunningServer,
    make_client: Callable[..., KalshiClient],
    waits: RecordedSleeps,
    kind: str,
    error: type[Exception],
    says: str,
) -> None:
    server.state.queue_fault(kind, times=3, seconds=2.0)  # type: ignore[arg-type]
    with pytest.raises(error) as info:
        await make_client(max_attempts=3, timeout_seconds=0.3).get_market(TICKER)
    assert says in str(info.value)
    assert len(server.state.requests) == 3 and len(waits.delays) == 2
    if kind in ("429", "500"):
        assert info.value.status == int(kind)  # type: ignore[attr-defined]
        assert info.value.code in ("too_many_requests", "internal_server_error")  # type: ignore[attr-defined]


async def test_backoff_is_exponential_jittered_and_bounded(
    server: RunningServer, make_client: Callable[..., KalshiClient], waits: RecordedSleeps
) -> None:
    server.state.queue_fault("429", times=5)
    client = make_client(max_attempts=6, backoff_base_seconds=0.5, backoff_max_seconds=2.0)
    await client.get_market(TICKER)
    caps = [0.5, 1.0, 2.0, 2.0, 2.0]
    assert len(waits.delays) == 5
    assert all(0 <= d <= cap for d, cap in zip(waits.delays, caps, strict=True))
    assert len(set(waits.delays)) == 5  # jittered, not a fixed schedule


# ---- orders ------------------------------------------------------------------------------


async def test_an_ioc_exit_fills_against_the_book(
    server: RunningServer, make_client: Callable[..., KalshiClient]
) -> None:
    server.state.set_position(TICKER, "3.00")
    server.state.set_book(TICKER, yes=[("0.40", "2"), ("0.38", "5")])
    client = make_client()
    order = await client.create_order(
        TICKER,
        client_order_id="exit-1",
        side="ask",
        count=3,
        price=Decimal("0.30"),
        reduce_only=True,
    )
    assert order.client_order_id == "exit-1"
    assert order.fill_count == Decimal(3) and order.remaining_count == 0
    assert order.average_fill_price == Decimal("0.3933")  # (2 x 0.40 + 0.38) / 3, 4 places
    body = server.state.order_posts()[0].body
    assert body == {
        "ticker": TICKER,
        "client_order_id": "exit-1",
        "side": "ask",
        "count": "3.00",
        "price": "0.3000",
        "time_in_force": "immediate_or_cancel",
        "self_trade_prevention_type": "taker_at_cross",
        "reduce_only": True,
    }
    assert (await client.get_positions())[0].position == 0
    fills = await client.get_fills(order_id=order.order_id)
    assert sum(f.count for f in fills) == 3
    fetched = await client.get_order(order.order_id)
    assert fetched.status == "executed" and fetched.fill_count == 3
    # A listing gives no average, only the fill cost of the order's outcome side: selling YES
    # is long NO, so it is what the NO side cost, 3 − 1.18 (the venue converts it, not the model).
    assert fetched.average_fill_price is None
    assert fetched.raw["outcome_side"] == "no" and fetched.fill_cost == Decimal("1.82")


async def test_a_resting_order_can_be_cancelled(
    server: RunningServer, make_client: Callable[..., KalshiClient]
) -> None:
    client = make_client()
    order = await client.create_order(
        TICKER,
        client_order_id="rest-1",
        side="bid",
        count=2,
        price=Decimal("0.10"),
        time_in_force="good_till_canceled",
    )
    assert order.remaining_count == 2
    assert [o.order_id for o in await client.get_orders(status="resting")] == [order.order_id]
    cancelled = await client.cancel_order(order.order_id)
    assert cancelled.client_order_id == "rest-1" and cancelled.reduced_by == 2
    after = await client.get_order(order.order_id)
    assert after.status == "canceled" and after.remaining_count == 0


async def test_a_repeated_client_order_id_is_a_typed_conflict(
    server: RunningServer, make_client: Callable[..., KalshiClient]
) -> None:
    client = make_client()
    args = {"client_order_id": "dup-1", "side": "bid", "count": 1, "price": Decimal("0.05")}
    await client.create_order(TICKER, **args)
    with pytest.raises(KalshiConflict) as info:
        await client.create_order(TICKER, **args)
    assert info.value.status == 409 and info.value.code == "order_already_exists"
    assert len(server.state.orders) == 1


@pytest.mark.parametrize(
    "fault",
    [
        {"kind": "delay", "seconds": 2.0},  # the order was placed; its answer never came
        {"kind": "500", "after_processing": True},
        {"kind": "truncated"},
    ],
)
async def test_an_unclear_order_attempt_is_retried_with_the_same_id_never_doubled(
    server: RunningServer, make_client: Callable[..., KalshiClient], fault: dict[str, Any]
) -> None:
    server.state.set_book(TICKER, no=[("0.55", "10")])
    server.state.queue_fault(method="POST", **fault)
    order = await make_client(timeout_seconds=0.3).create_order(
        TICKER, client_order_id="exit-7", side="bid", count=2, price=Decimal("0.50")
    )
    assert order.client_order_id == "exit-7" and order.fill_count == 2
    assert len(server.state.orders) == 1  # one order at the exchange
    posts = server.state.order_posts()
    assert len(posts) == 2 and {p.body["client_order_id"] for p in posts} == {"exit-7"}


async def test_a_refused_order_attempt_is_simply_retried(
    server: RunningServer, make_client: Callable[..., KalshiClient]
) -> None:
    server.state.queue_fault("429", method="POST")
    server.state.queue_fault("500", method="POST")  # failed before taking effect
    order = await make_client().create_order(
        TICKER, client_order_id="x-1", side="bid", count=1, price=Decimal("0.05")
    )
    assert order.fill_count == 0 and len(server.state.orders) == 1


async def test_persistent_unclear_order_attempts_end_in_outcome_unknown(
    server: RunningServer, make_client: Callable[..., KalshiClient]
) -> None:
    server.state.queue_fault("500", method="POST", times=3)
    with pytest.raises(KalshiOrderOutcomeUnknown) as info:
        await make_client(max_attempts=3).create_order(
            TICKER, client_order_id="x-2", side="bid", count=1, price=Decimal("0.05")
        )
    assert info.value.client_order_id == "x-2" and "reconcile" in str(info.value)
    assert isinstance(info.value, KalshiUnavailable)


async def test_an_order_whose_lookup_fails_after_an_unclear_attempt_is_unknown(
    server: RunningServer, make_client: Callable[..., KalshiClient]
) -> None:
    server.state.queue_fault("delay", method="POST", seconds=2.0)  # placed, answer lost
    server.state.queue_fault("500", method="GET", path="/portfolio/orders", times=2)
    with pytest.raises(KalshiOrderOutcomeUnknown) as info:
        await make_client(max_attempts=2, timeout_seconds=0.3).create_order(
            TICKER, client_order_id="x-4", side="bid", count=1, price=Decimal("0.05")
        )
    assert info.value.client_order_id == "x-4"
    assert len(server.state.orders) == 1  # it does exist: the caller must reconcile, not resend


async def test_persistent_429_on_an_order_is_rate_limited_not_unknown(
    server: RunningServer, make_client: Callable[..., KalshiClient]
) -> None:
    server.state.queue_fault("429", method="POST", times=3)
    with pytest.raises(KalshiRateLimited):
        await make_client(max_attempts=3).create_order(
            TICKER, client_order_id="x-3", side="bid", count=1, price=Decimal("0.05")
        )
    assert server.state.orders == {}


async def test_order_arguments_are_checked_before_sending(
    server: RunningServer, make_client: Callable[..., KalshiClient]
) -> None:
    client = make_client()
    with pytest.raises(ValueError, match="reduce_only"):
        await client.create_order(
            TICKER,
            client_order_id="y",
            side="ask",
            count=1,
            price=Decimal("0.5"),
            time_in_force="good_till_canceled",
            reduce_only=True,
        )
    with pytest.raises(ValueError, match="side"):
        await client.create_order(
            TICKER,
            client_order_id="y",
            side="yes",
            count=1,
            price=Decimal("0.5"),  # type: ignore[arg-type]
        )
    assert server.state.requests == []


# ---- rate limiting -----------------------------------------------------------------------


class FakeTime:
    """A monotonic clock that moves only when the limiter sleeps."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


def max_in_window(times: list[float], window: float) -> int:
    """The most events in any half-open window [t, t + window)."""
    times = sorted(times)
    return max(sum(1 for u in times[i:] if u < t + window) for i, t in enumerate(times))


async def test_token_bucket_never_exceeds_its_rate_on_a_fake_clock() -> None:
    clock = FakeTime()
    for rate, burst in [(20, 1), (10, 1), (20, 5)]:
        bucket = TokenBucket(rate, burst, clock=clock, sleep=clock.sleep)
        stamps = []
        for _ in range(3 * rate):
            await bucket.acquire()
            stamps.append(clock.now)
        assert max_in_window(stamps, 1.0) <= rate + burst - 1
        assert stamps[-1] - stamps[0] == pytest.approx((3 * rate - burst) / rate)


async def test_client_requests_on_the_wire_stay_at_the_configured_rates(
    server: RunningServer, make_client: Callable[..., KalshiClient]
) -> None:
    """Reads and writes, each at its own rate, observed where requests leave the client."""
    clock = FakeTime()
    wire: list[tuple[float, str]] = []

    class Stamp(httpx.AsyncHTTPTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            wire.append((clock.now, request.method))
            return await super().handle_async_request(request)

    client = make_client(
        read_per_second=20,
        write_per_second=10,
        burst=1,
        monotonic=clock,
        sleep=clock.sleep,
        transport=Stamp(),
    )
    for _ in range(45):
        await client.get_market(TICKER)
    for i in range(25):
        await client.create_order(
            TICKER, client_order_id=f"r{i}", side="bid", count=1, price=Decimal("0.01")
        )
    reads = [t for t, m in wire if m == "GET"]
    writes = [t for t, m in wire if m == "POST"]
    assert len(reads) == 45 and len(writes) == 25
    assert max_in_window(reads, 1.0) == 20
    assert max_in_window(writes, 1.0) == 10


async def test_server_observed_rate_under_concurrency(
    server: RunningServer, make_client: Callable[..., KalshiClient]
) -> None:
    """Real time, 30 concurrent reads at 40/s: the server never sees them bunched."""
    client = make_client(read_per_second=40, burst=1, sleep=asyncio.sleep)
    await asyncio.gather(*(client.get_market(TICKER) for _ in range(30)))
    arrivals = [r.at for r in server.state.requests]
    assert len(arrivals) == 30
    # 0.5 s holds at most 20 at 40/s; one more allowed for loopback jitter at the boundary.
    assert max_in_window(arrivals, 0.5) <= 21
    assert max(arrivals) - min(arrivals) >= 29 / 40 * 0.9


# ---- configuration -----------------------------------------------------------------------


async def test_client_from_config(key_path: Path) -> None:
    config = KalshiConfig(
        environment="prod",
        api_key_id=KEY_ID,
        private_key_path=str(key_path),
        read_requests_per_second=5.0,
        max_attempts=2,
    )
    client = KalshiClient.from_config(config)
    try:
        assert client.base_url == BASE_URLS["prod"]
        assert client.read_bucket.rate == 5.0 and client.max_attempts == 2
        assert client._signer is not None
    finally:
        await client.aclose()
    with pytest.raises(ValidationError, match="expected an http"):
        KalshiConfig(base_url="external-api.kalshi.com/trade-api/v2")
    demo = KalshiClient.from_config(KalshiConfig(base_url="http://127.0.0.1:1/trade-api/v2/"))
    assert demo.base_url == "http://127.0.0.1:1/trade-api/v2"
    await demo.aclose()


async def test_no_server_at_all_is_unavailable_and_an_order_is_not_unknown(
    make_client: Callable[..., KalshiClient], waits: RecordedSleeps
) -> None:
    """Connection refused: nothing was sent, so even an order fails plainly (safe to resend)."""
    # Bound but never listening: a connection is refused, and no other server can take the port
    # meanwhile (closing it first would leave it free for any server started in between).
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        client = make_client(base_url=f"http://127.0.0.1:{port}/trade-api/v2", max_attempts=2)
        with pytest.raises(KalshiUnavailable, match="cannot connect"):
            await client.get_market(TICKER)
        with pytest.raises(KalshiUnavailable) as info:
            await client.create_order(
                TICKER, client_order_id="z-1", side="bid", count=1, price=Decimal("0.05")
            )
    assert not isinstance(info.value, KalshiOrderOutcomeUnknown)
