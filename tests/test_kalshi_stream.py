"""`KalshiStream` against the loopback websocket (`tests/kalshi_ws_server.py`).

No test waits on the wall clock: the server hands over connections and commands through queues,
the stream's updates are read as they come, and backoff waits go to a recording `sleep`.
"""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from engine.clock import ManualClock
from engine.venues.kalshi.auth import KalshiSigner
from engine.venues.kalshi.errors import KalshiAuthError
from engine.venues.kalshi.stream import (
    Connected,
    Disconnected,
    KalshiQuote,
    KalshiStream,
    MalformedMessage,
    SequenceGap,
    StreamError,
    StreamUpdate,
)
from tests.kalshi_ws_server import RunningWsServer, kalshi_ws_server
from tests.loopback import RecordedSleeps

KEY_ID = "ws-test-key"
A = "KXBTCD-26NOV2117-T97000"
B = "KXBTCD-26NOV2117-T98000"
D = Decimal
T = TypeVar("T")


@pytest.fixture
async def server(rsa_key: rsa.RSAPrivateKey) -> AsyncIterator[RunningWsServer]:
    async with kalshi_ws_server(KEY_ID, rsa_key.public_key()) as srv:
        srv.state.set_book(A, yes={"0.40": "10", "0.38": "5"}, no={"0.55": "7", "0.50": "3"})
        srv.state.set_book(B, yes={"0.20": "1"}, no={"0.70": "2"})
        yield srv


@pytest.fixture
def sleeps() -> RecordedSleeps:
    return RecordedSleeps()


@pytest.fixture
async def make_stream(
    server: RunningWsServer, rsa_key: rsa.RSAPrivateKey, sleeps: RecordedSleeps
) -> AsyncIterator[Callable[..., KalshiStream]]:
    streams: list[KalshiStream] = []

    def make(tickers: list[str], key: rsa.RSAPrivateKey | None = None) -> KalshiStream:
        stream = KalshiStream(
            KalshiSigner(KEY_ID, key or rsa_key),
            tickers,
            url=server.url,
            clock=ManualClock(1_795_000_000.0),
            sleep=sleeps,
            rng=random.Random(7),
            proxy=None,
        )
        streams.append(stream)
        return stream

    yield make
    for stream in streams:
        await stream.aclose()


async def next_of(stream: KalshiStream, kind: type[T], seen: list[StreamUpdate] | None = None) -> T:
    """The next update of `kind`; the ones before it go to `seen`."""
    while True:
        update = await asyncio.wait_for(anext(stream), 5.0)
        if isinstance(update, kind):
            return update
        if seen is not None:
            seen.append(update)


async def next_quote(
    stream: KalshiStream,
    ticker: str,
    source: str = "book",
    seen: list[StreamUpdate] | None = None,
) -> KalshiQuote:
    """The next quote of `ticker` from `source`; what comes before it goes to `seen`."""
    while True:
        quote = await next_of(stream, KalshiQuote, seen)
        if quote.ticker == ticker and quote.source == source:
            return quote
        if seen is not None:
            seen.append(quote)


async def drain_commands(server: RunningWsServer, n: int) -> list[dict[str, Any]]:
    return [await server.state.next_command() for _ in range(n)]


# ---- handshake ------------------------------------------------------------------------------


async def test_the_handshake_is_signed_and_subscribes_both_channels(
    server: RunningWsServer, make_stream: Callable[..., KalshiStream]
) -> None:
    stream = make_stream([A, B])
    await stream.start()
    connected = await next_of(stream, Connected)
    assert connected.reconnect is False
    (command,) = await drain_commands(server, 1)
    assert command["cmd"] == "subscribe"
    assert command["params"] == {
        "channels": ["ticker", "orderbook_delta"],
        "market_tickers": [A, B],
    }
    assert server.state.refused == []


async def test_a_wrong_key_is_refused_at_the_handshake_with_a_typed_error(
    server: RunningWsServer, make_stream: Callable[..., KalshiStream]
) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    stream = make_stream([A], key=other)
    await stream.start()
    with pytest.raises(KalshiAuthError) as info:
        await asyncio.wait_for(anext(stream), 5.0)
    assert info.value.status == 401
    assert server.state.refused == ["invalid signature"]
    assert server.state.connections == []  # never upgraded, never retried


# ---- the book -------------------------------------------------------------------------------


async def test_snapshot_and_deltas_give_the_hand_checked_top_of_book(
    server: RunningWsServer, make_stream: Callable[..., KalshiStream]
) -> None:
    stream = make_stream([A])
    await stream.start()
    conn = await server.state.next_connection()

    # Snapshot: YES bids 0.40×10, 0.38×5; NO bids 0.55×7, 0.50×3.
    # YES bid = 0.40 (10); YES ask = 1 − 0.55 = 0.45 (7). Snapshots carry no venue time.
    q = await next_quote(stream, A)
    assert (q.yes_bid, q.yes_bid_size, q.yes_ask, q.yes_ask_size) == (
        D("0.40"),
        D("10"),
        D("0.45"),
        D("7"),
    )
    assert q.ts is None and q.received == 1_795_000_000.0

    # The 0.55 NO bid is taken out: the best NO bid is 0.50, so YES ask = 0.50 (3).
    await conn.delta(A, "no", "0.5500", "-7.00", ts="2026-11-21T13:00:05Z")
    q = await next_quote(stream, A)
    assert (q.yes_bid, q.yes_ask, q.yes_ask_size) == (D("0.40"), D("0.50"), D("3"))
    assert q.ts == datetime(2026, 11, 21, 13, 0, 5, tzinfo=UTC).timestamp()

    # A sub-penny YES bid above the best: 0.4150 × 2.5 (fractional contracts).
    await conn.delta(A, "yes", "0.4150", "2.50")
    q = await next_quote(stream, A)
    assert (q.yes_bid, q.yes_bid_size) == (D("0.4150"), D("2.5"))

    # Adding to the best NO bid: 0.50 × (3 + 4) = 7; YES ask stays 0.50, size 7.
    await conn.delta(A, "no", "0.5000", "4.00")
    q = await next_quote(stream, A)
    assert (q.yes_ask, q.yes_ask_size) == (D("0.50"), D("7"))

    book = stream.book(A)
    assert book is not None
    assert book.yes == {D("0.4150"): D("2.5"), D("0.40"): D("10"), D("0.38"): D("5")}
    assert book.no == {D("0.50"): D("7")}


async def test_ticker_messages_are_quotes_with_the_venue_time(
    server: RunningWsServer, make_stream: Callable[..., KalshiStream]
) -> None:
    stream = make_stream([A])
    await stream.start()
    conn = await server.state.next_connection()
    await next_quote(stream, A)
    await conn.ticker(A)
    q = await next_quote(stream, A, source="ticker")
    assert (q.yes_bid, q.yes_bid_size, q.yes_ask, q.yes_ask_size, q.last_price) == (
        D("0.48"),
        D("10"),
        D("0.52"),
        D("20"),
        D("0.50"),
    )
    assert q.ts == 1_795_000_000.25  # ts_ms, finer than ts


# ---- sequence gaps --------------------------------------------------------------------------


async def test_a_seq_gap_is_reported_once_and_the_book_is_rebuilt_from_a_new_snapshot(
    server: RunningWsServer, make_stream: Callable[..., KalshiStream]
) -> None:
    stream = make_stream([A])
    await stream.start()
    conn = await server.state.next_connection()
    await drain_commands(server, 1)
    await next_quote(stream, A)
    book_sid = conn.sub_for("orderbook_delta", A).sid

    # Lost on the way: the 0.40 YES bid is cancelled. The client still shows it...
    conn.lose_delta(A, "yes", "0.40", "-10")
    assert stream.book(A) is not None and D("0.40") in stream.book(A).yes  # type: ignore[union-attr]
    # ...until the next delta arrives with seq + 2.
    await conn.delta(A, "yes", "0.30", "1.00")

    seen: list[StreamUpdate] = []
    gap = await next_of(stream, SequenceGap, seen)
    assert (gap.sid, gap.channel, gap.tickers) == (book_sid, "orderbook_delta", (A,))
    assert gap.got == gap.expected + 1
    assert stream.book(A) is None  # dropped at once: no stale top of book is served

    # The subscription is replaced: unsubscribe the old sid, subscribe the book again.
    unsub, resub = await drain_commands(server, 2)
    assert unsub["cmd"] == "unsubscribe" and unsub["params"] == {"sids": [book_sid]}
    assert resub["cmd"] == "subscribe"
    assert resub["params"] == {"channels": ["orderbook_delta"], "market_tickers": [A]}

    # Rebuilt from the new snapshot: 0.40 is gone, 0.30 is there.
    q = await next_quote(stream, A, seen=seen)
    assert (q.yes_bid, q.yes_bid_size) == (D("0.38"), D("5"))
    assert stream.book(A).yes == {D("0.38"): D("5"), D("0.30"): D("1")}  # type: ignore[union-attr]

    # The stream goes on, in sequence, with no second report.
    await conn.delta(A, "yes", "0.39", "2.00")
    q = await next_quote(stream, A, seen=seen)
    assert q.yes_bid == D("0.39")
    await conn.ticker(A)
    await next_quote(stream, A, source="ticker", seen=seen)
    assert not [u for u in seen if isinstance(u, SequenceGap)]


# ---- reconnection ---------------------------------------------------------------------------


async def test_an_abrupt_close_reconnects_with_backoff_and_resubscribes_every_ticker(
    server: RunningWsServer, make_stream: Callable[..., KalshiStream], sleeps: RecordedSleeps
) -> None:
    stream = make_stream([A, B])
    await stream.start()
    first = await server.state.next_connection()
    await drain_commands(server, 1)
    await next_quote(stream, A)
    await next_quote(stream, B)

    first.abort()
    dropped = await next_of(stream, Disconnected)
    assert dropped.attempt == 1 and dropped.retry_in > 0
    again = await next_of(stream, Connected)
    assert again.reconnect is True
    assert sleeps.delays == [dropped.retry_in]

    second = await server.state.next_connection()
    assert second is not first
    (command,) = await drain_commands(server, 1)
    assert command["cmd"] == "subscribe"
    assert command["params"] == {
        "channels": ["ticker", "orderbook_delta"],
        "market_tickers": [A, B],
    }
    # Fresh snapshots for both markets on the new connection.
    assert (await next_quote(stream, A)).yes_bid == D("0.40")
    assert (await next_quote(stream, B)).yes_ask == D("0.30")

    # A connection that worked resets the backoff: the next drop is attempt 1 again.
    second.abort()
    assert (await next_of(stream, Disconnected)).attempt == 1
    await next_of(stream, Connected)
    await server.state.next_connection()


def test_backoff_grows_exponentially_with_jitter_and_is_capped(sleeps: RecordedSleeps) -> None:
    stream = KalshiStream(
        KalshiSigner(KEY_ID, rsa.generate_private_key(public_exponent=65537, key_size=1024)),
        rng=random.Random(1),
        backoff_base=0.5,
        backoff_max=8.0,
        sleep=sleeps,
    )
    delays = [stream._backoff(n) for n in range(1, 9)]
    steps = [0.5, 1, 2, 4, 8, 8, 8, 8]
    for delay, step in zip(delays, steps, strict=True):
        assert step / 2 <= delay <= step
    assert len(set(delays[4:])) == 4  # jittered, not one fixed value


# ---- errors ---------------------------------------------------------------------------------


async def test_malformed_decimals_are_refused_naming_the_field_and_the_stream_goes_on(
    server: RunningWsServer, make_stream: Callable[..., KalshiStream]
) -> None:
    stream = make_stream([A])
    await stream.start()
    conn = await server.state.next_connection()
    await drain_commands(server, 1)
    await next_quote(stream, A)

    # A bad ticker price: refused, named, nothing else changes.
    await conn.ticker(A, yes_bid_dollars="0.4x")
    bad = await next_of(stream, MalformedMessage)
    assert (bad.kind, bad.field) == ("ticker", "yes_bid_dollars")
    assert "'yes_bid_dollars'" in bad.error and "0.4x" in bad.error

    # A bad delta size: refused, named, and the book is rebuilt (it missed a change).
    # (The server's book did change: +1 at 0.41, which the client could not read.)
    await conn.delta(A, "yes", "0.41", "1.00", raw_fields={"delta_fp": "abc"})
    bad = await next_of(stream, MalformedMessage)
    assert (bad.kind, bad.field) == ("orderbook_delta", "delta_fp")
    assert "'delta_fp'" in bad.error and "abc" in bad.error
    q = await next_quote(stream, A)  # from the fresh snapshot, which has the change
    assert (q.yes_bid, q.yes_bid_size) == (D("0.41"), D("1"))

    await conn.send_raw("{not json")
    bad = await next_of(stream, MalformedMessage)
    assert bad.error.startswith("not JSON")

    await conn.delta(A, "yes", "0.45", "1.00")
    assert (await next_quote(stream, A)).yes_bid == D("0.45")


async def test_venue_error_messages_are_typed(
    server: RunningWsServer, make_stream: Callable[..., KalshiStream]
) -> None:
    stream = make_stream([A])
    await stream.start()
    conn = await server.state.next_connection()
    await conn.error(16, "Market not found", cmd_id=99, market_ticker="KX-NOPE")
    error = await next_of(stream, StreamError)
    assert (error.code, error.message, error.cmd_id, error.market_ticker) == (
        16,
        "Market not found",
        99,
        "KX-NOPE",
    )


# ---- changing the markets -------------------------------------------------------------------


async def test_tickers_are_added_and_removed_with_update_subscription(
    server: RunningWsServer, make_stream: Callable[..., KalshiStream]
) -> None:
    stream = make_stream([A])
    await stream.start()
    conn = await server.state.next_connection()
    await drain_commands(server, 1)
    await next_quote(stream, A)
    sids = {c: conn.sub_for(c).sid for c in ("ticker", "orderbook_delta")}

    await stream.add_tickers([B])
    commands = await drain_commands(server, 2)
    assert sorted((c["params"]["sids"][0], c["params"]["action"]) for c in commands) == sorted(
        (sid, "add_markets") for sid in sids.values()
    )
    assert all(c["params"]["market_tickers"] == [B] for c in commands)
    assert (await next_quote(stream, B)).yes_bid == D("0.20")

    # The book's seq counted the `ok` answer too: a delta now is in sequence, no gap.
    await conn.delta(B, "yes", "0.25", "1.00")
    assert (await next_quote(stream, B)).yes_bid == D("0.25")

    await stream.remove_tickers([A])
    assert stream.book(A) is None
    commands = await drain_commands(server, 2)
    assert {c["params"]["action"] for c in commands} == {"delete_markets"}
    assert all(c["params"]["market_tickers"] == [A] for c in commands)
    assert stream.tickers == (B,)


async def test_a_delta_that_does_not_fit_the_book_is_treated_as_a_lost_message(
    server: RunningWsServer, make_stream: Callable[..., KalshiStream]
) -> None:
    stream = make_stream([A])
    await stream.start()
    conn = await server.state.next_connection()
    await drain_commands(server, 1)
    await next_quote(stream, A)
    # The client holds 5 at 0.38; taking 6 away means it missed an addition.
    await conn.delta(A, "yes", "0.38", "-6.00")
    gap = await next_of(stream, SequenceGap)
    assert gap.tickers == (A,) and "would hold" in gap.reason
    unsub, resub = await drain_commands(server, 2)
    assert (unsub["cmd"], resub["cmd"]) == ("unsubscribe", "subscribe")
    await next_quote(stream, A)
    assert stream.book(A).yes == {D("0.40"): D("10")}  # type: ignore[union-attr]


async def test_an_unreachable_venue_is_retried_with_growing_backoff(
    rsa_key: rsa.RSAPrivateKey, sleeps: RecordedSleeps
) -> None:
    with socket.socket() as probe:  # bound, never listening: refused, and no one can take it
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        stream = KalshiStream(
            KalshiSigner(KEY_ID, rsa_key),
            [A],
            url=f"ws://127.0.0.1:{port}/trade-api/ws/v2",
            clock=ManualClock(0.0),
            sleep=sleeps,
            rng=random.Random(3),
            proxy=None,
        )
        async with stream:
            drops = [await next_of(stream, Disconnected) for _ in range(3)]
    assert [d.attempt for d in drops] == [1, 2, 3]
    assert all(d.reason.startswith("cannot connect") for d in drops)
    assert 0.25 <= drops[0].retry_in <= 0.5 and 1.0 <= drops[2].retry_in <= 2.0
