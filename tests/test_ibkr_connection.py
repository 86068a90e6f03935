"""`IbConnection` (engine/venues/ibkr/connection.py) with the REAL ib_async client against the
loopback TWS gateway (tests/tws_gateway.py) on 127.0.0.1.

Nothing of the connection or the client is patched: the reconnect waits go through the injected
`sleep` (recorded, not slept), and every wait in a test is on an event with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from engine.clock import ManualClock
from engine.config import IbkrConfig
from engine.venues.ibkr.connection import IbConnection, IbError, backoff_delay, pacing
from engine.venues.ibkr.ib import Option, Stock
from tests.ib_client_guard import decoded_cleanly as decoded_cleanly  # autouse
from tests.tws_gateway import Gateway, option_contract, stock_contract, tws_gateway

ACCOUNT = "DU7654321"
AAPL = stock_contract(265598, "AAPL")
MSFT = stock_contract(272093, "MSFT")
DEADLINE = 3.0
IN_REQ_MKT_DATA, IN_CANCEL_MKT_DATA, IN_REQ_MARKET_DATA_TYPE = 1, 2, 59


class Signal:
    """Something changed: wakes `until` waiters, which re-check their predicate."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()

    async def until(self, predicate: Callable[[], Any], timeout: float = DEADLINE) -> Any:
        async def loop() -> Any:
            while not (value := predicate()):
                self._event.clear()
                await self._event.wait()
            return value

        return await asyncio.wait_for(loop(), timeout)


class Sleeps:
    """The connection's `sleep`: records each reconnect wait, yields once, returns."""

    def __init__(self, signal: Signal) -> None:
        self.delays: list[float] = []
        self.signal = signal

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        self.signal.notify()
        await asyncio.sleep(0)


class Watcher:
    """A connection listener that records what it is told."""

    def __init__(self, signal: Signal) -> None:
        self.states: list[tuple[bool, str]] = []
        self.resubscribes = 0
        self.errors: list[IbError] = []
        self.signal = signal

    def on_state(self, connected: bool, reason: str) -> None:
        self.states.append((connected, reason))
        self.signal.notify()

    def on_resubscribe(self) -> None:
        self.resubscribes += 1
        self.signal.notify()

    def on_error(self, error: IbError) -> None:
        self.errors.append(error)
        self.signal.notify()


class Harness:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.signal = Signal()
        self.sleeps = Sleeps(self.signal)
        self.watcher = Watcher(self.signal)
        self.clock = ManualClock(1_767_000_000.0)
        self.conns: list[IbConnection] = []
        self.tasks: list[asyncio.Task[None]] = []

    def config(self, **kw: Any) -> IbkrConfig:
        base: dict[str, Any] = {
            "host": self.gw.host,
            "port": self.gw.port,
            "client_id": 11,
            "connect_timeout_seconds": 2.0,
            "reconnect_min_seconds": 1.0,
            "reconnect_max_seconds": 8.0,
        }
        return IbkrConfig(**{**base, **kw})

    def start(self, **kw: Any) -> IbConnection:
        conn = IbConnection(self.config(**kw), self.clock, sleep=self.sleeps, rng=random.Random(5))
        conn.add_listener(self.watcher)
        conn.add_error_listener(self.watcher.on_error)
        self.conns.append(conn)
        self.tasks.append(asyncio.create_task(conn.run()))
        return conn

    async def until(self, predicate: Callable[[], Any], timeout: float = DEADLINE) -> Any:
        return await self.signal.until(predicate, timeout)

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


@pytest.fixture
async def gw() -> AsyncIterator[Gateway]:
    async with tws_gateway(accounts=[ACCOUNT]) as gateway:
        gateway.state.add_position(AAPL, 100, 180.25, market_price=185.0)
        yield gateway


@pytest.fixture
async def h(gw: Gateway) -> AsyncIterator[Harness]:
    harness = Harness(gw)
    yield harness
    await harness.close()


def aapl() -> Stock:
    return Stock("AAPL", "SMART", "USD", conId=AAPL.con_id)


def msft() -> Stock:
    return Stock("MSFT", "SMART", "USD", conId=MSFT.con_id)


def count(gw: Gateway, msg_id: int, client_id: int = 11) -> int:
    return sum(1 for r in gw.state.requests(msg_id) if r.client_id == client_id)


async def round_trip(conn: IbConnection) -> None:
    """Everything the client sent before this has reached the gateway when it returns."""
    await asyncio.wait_for(conn.ib.reqCurrentTimeAsync(), DEADLINE)


# ---- connecting -----------------------------------------------------------------------------


async def test_connects_with_the_configured_session(h: Harness, gw: Gateway) -> None:
    conn = h.start(market_data_type="delayed", account=ACCOUNT)
    assert await conn.wait_connected(DEADLINE)
    assert conn.state.since == h.clock.now()
    assert conn.is_ready() and conn.current_ib() is conn.ib
    assert "connected to 127.0.0.1" in conn.state.reason
    assert h.watcher.states == [(True, conn.state.reason)]
    assert conn.ib.client.clientId == 11
    assert conn.ib.managedAccounts() == [ACCOUNT]
    assert {p.contract.conId for p in conn.ib.positions()} == {AAPL.con_id}
    # orders are synchronised (not read-only); the market data type is the session's setting
    assert count(gw, 5) == 1 and count(gw, 99) == 1
    # sent before the connection says it is up; the gateway reads it on its own schedule
    [mdt] = await gw.wait_until(
        lambda: [r for r in gw.state.requests(IN_REQ_MARKET_DATA_TYPE) if r.client_id == 11],
        DEADLINE,
    )
    assert mdt.fields[2] == "3"
    assert h.watcher.resubscribes == 0
    assert h.sleeps.delays == []


async def test_readonly_does_not_ask_for_orders(h: Harness, gw: Gateway) -> None:
    conn = h.start(readonly=True)
    await h.until(lambda: conn.connected)
    assert count(gw, 61) == 1  # positions
    assert count(gw, 5) == 0 and count(gw, 99) == 0  # no open / completed orders


async def test_first_connect_refused_then_backoff_until_it_works(h: Harness, gw: Gateway) -> None:
    await gw.stop_listening()
    conn = h.start()
    await h.until(lambda: len(h.sleeps.delays) >= 4)
    assert not conn.connected
    assert "connection refused" in conn.state.reason
    assert h.watcher.states == [(False, h.watcher.states[0][1])]  # the first failure, once
    await gw.start_listening()
    await h.until(lambda: conn.connected)
    assert conn.connects == 1
    assert h.watcher.resubscribes == 0  # a first connect: nothing was subscribed before
    # doubling from 1 s with jitter in the upper half of each step, capped at 8 s
    for n, delay in enumerate(h.sleeps.delays[:5], start=1):
        step = min(8.0, 2.0 ** (n - 1))
        assert max(1.0, step / 2) <= delay <= step
    assert max(h.sleeps.delays) <= 8.0


def test_backoff_delay_is_jittered_within_bounds() -> None:
    rng = random.Random(1)
    delays = [backoff_delay(n, 0.5, 30.0, rng) for n in range(1, 12)]
    assert delays[0] == 0.5  # the first step is the minimum
    assert all(0.5 <= d <= 30.0 for d in delays)
    assert delays[-1] >= 15.0  # capped steps still jitter in the upper half
    assert len(set(delays[3:])) == len(delays[3:])  # jittered, not in lockstep


async def test_dropped_connection_reconnects_with_backoff_and_resubscribes(
    h: Harness, gw: Gateway
) -> None:
    conn = h.start()
    await h.until(lambda: conn.connected)
    assert conn.lines.acquire(aapl())
    first = await gw.wait_for_mkt_data(AAPL.con_id)

    await gw.stop_listening(drop_connections=True)
    await h.until(lambda: not conn.connected)
    assert "lost the connection" in conn.state.reason
    assert not conn.is_ready() and conn.current_ib() is None
    await h.until(lambda: len(h.sleeps.delays) >= 3)  # the drop's wait and two refused attempts
    await gw.start_listening()
    await h.until(lambda: conn.connected and h.watcher.resubscribes == 1)

    again = await gw.wait_for_mkt_data(AAPL.con_id)
    assert again.conn is not first.conn  # requested again on the new session
    assert conn.lines.holds(AAPL.con_id)
    assert conn.connects == 2
    assert [s for s, _ in h.watcher.states] == [True, False, True]
    assert h.sleeps.delays[0] == 1.0
    assert all(1.0 <= d <= 8.0 for d in h.sleeps.delays)
    assert count(gw, IN_REQ_MARKET_DATA_TYPE) == 2  # each session gets it, before its lines
    mdt, mkt = (
        gw.state.requests(IN_REQ_MARKET_DATA_TYPE)[-1],
        gw.state.requests(IN_REQ_MKT_DATA)[-1],
    )
    assert mdt.at <= mkt.at

    # the new session's ticker is the one that updates
    gw.quote(AAPL.con_id, bid=184.9, ask=185.1)
    ticker = conn.ib.ticker(aapl())
    assert ticker is not None
    await asyncio.wait_for(_until_ib(conn, lambda: ticker.bid == 184.9), DEADLINE)


async def _until_ib(conn: IbConnection, predicate: Callable[[], Any]) -> None:
    while not predicate():
        await conn.ib.updateEvent


# ---- TWS's own link to IB: 1100 / 1101 / 1102 ---------------------------------------------------


async def test_1101_requests_every_line_again(h: Harness, gw: Gateway) -> None:
    conn = h.start()
    await h.until(lambda: conn.connected)
    assert conn.lines.acquire(aapl()) and conn.lines.acquire(msft())
    await gw.wait_until(lambda: count(gw, IN_REQ_MKT_DATA) == 2)

    gw.send_error(1101, "Connectivity between IB and TWS has been restored- data lost.")
    await h.until(lambda: h.watcher.resubscribes == 1)
    await round_trip(conn)
    assert count(gw, IN_REQ_MKT_DATA) == 4
    assert count(gw, IN_REQ_MARKET_DATA_TYPE) == 2
    assert conn.connected
    assert [e.code for e in h.watcher.errors] == [2104, 2106, 2158, 1101]  # notices at connect


async def test_1102_keeps_the_subscriptions(h: Harness, gw: Gateway) -> None:
    conn = h.start()
    await h.until(lambda: conn.connected)
    assert conn.lines.acquire(aapl())
    await gw.wait_until(lambda: count(gw, IN_REQ_MKT_DATA) == 1)

    gw.send_error(1102, "Connectivity between IB and TWS has been restored- data maintained.")
    await h.until(lambda: h.watcher.errors and h.watcher.errors[-1].code == 1102)
    await round_trip(conn)
    assert count(gw, IN_REQ_MKT_DATA) == 1
    assert h.watcher.resubscribes == 0
    assert conn.connected
    assert h.watcher.states == [(True, h.watcher.states[0][1])]  # no change to report


async def test_1100_then_1102(h: Harness, gw: Gateway) -> None:
    conn = h.start()
    await h.until(lambda: conn.connected)
    assert conn.lines.acquire(aapl())
    h.clock.advance(30)

    gw.send_error(1100, "Connectivity between IB and Trader Workstation has been lost.")
    await h.until(lambda: not conn.connected)
    assert conn.state.reason.startswith("1100:")
    assert conn.state.since == h.clock.now()
    assert conn.is_ready()  # the socket to TWS is fine; TWS lost IB

    h.clock.advance(10)
    gw.send_error(1102, "Connectivity between IB and TWS has been restored- data maintained.")
    await h.until(lambda: conn.connected)
    assert conn.state.reason.startswith("1102:")
    assert conn.state.since == h.clock.now()
    await round_trip(conn)
    assert count(gw, IN_REQ_MKT_DATA) == 1
    assert h.watcher.resubscribes == 0
    assert [s for s, _ in h.watcher.states] == [True, False, True]
    assert h.sleeps.delays == []  # nothing reconnected


async def test_info_notices_change_nothing_and_errors_reach_listeners_by_req_id(
    h: Harness, gw: Gateway
) -> None:
    conn = h.start()
    await h.until(lambda: conn.connected and len(h.watcher.errors) == 3)  # the farm notices
    mine: list[IbError] = []
    remove = conn.add_error_listener(lambda e: (mine.append(e), h.signal.notify()), req_id=42)
    for code in (2104, 2106, 2158):
        gw.send_error(code, "data farm connection is OK")
    gw.send_error(201, "Order rejected - reason:no margin", req_id=42)
    gw.send_error(202, "Order Canceled - reason:", req_id=43)
    await h.until(lambda: len(h.watcher.errors) == 8)
    assert [(e.req_id, e.code) for e in mine] == [(42, 201)]
    assert mine[0].message == "Order rejected - reason:no margin"
    assert conn.connected and len(h.watcher.states) == 1
    remove()
    gw.send_error(201, "again", req_id=42)
    await h.until(lambda: len(h.watcher.errors) == 9)
    assert len(mine) == 1


# ---- pacing and lines -----------------------------------------------------------------------


def test_pacing_from_config() -> None:
    assert pacing(45.0) == (45, 1.05)
    assert pacing(45.5) == (45, 1.05)
    count_, interval = pacing(0.5)
    assert count_ == 1 and interval == pytest.approx(2.05)


async def test_never_over_the_configured_message_rate(h: Harness, gw: Gateway) -> None:
    """A large chain subscribed at once: the client queues what is over the rate (ib_async's
    throttle, set from max_messages_per_second), measured by the gateway's pacing meter.

    The meter stamps messages when the gateway (on this test's event loop) reads them, so a
    busy loop can bunch a few together; over 2 s windows, 90 requests at 30/s fit at most 60
    (+15 for up to half a second of such bunching), where an unthrottled client sends all 90
    at once."""
    rate, n = 30, 90
    conn = h.start(max_messages_per_second=rate, max_market_data_lines=100)
    await h.until(lambda: conn.connected)
    assert (conn.ib.client.MaxRequests, conn.ib.client.RequestsInterval) == (rate, 1.05)
    chain = [
        option_contract(800_000 + i, "AAPL", "20260116", 100.0 + 5 * (i // 2), "CP"[i % 2])
        for i in range(n)
    ]
    for c in chain:
        assert conn.lines.acquire(
            Option(c.symbol, c.expiry, c.strike, c.right, "SMART", conId=c.con_id)
        )
    await gw.wait_until(lambda: count(gw, IN_REQ_MKT_DATA) == n, timeout=10.0)
    assert gw.state.max_rate(2.0, client_id=11) <= 2 * rate + rate // 2


async def test_market_data_lines_limit_and_release(h: Harness, gw: Gateway) -> None:
    conn = h.start(max_market_data_lines=2)
    await h.until(lambda: conn.connected)
    lines = conn.lines
    assert lines.acquire(aapl())
    assert lines.acquire(aapl())  # a second user shares the line
    spy = Stock("SPY", "SMART", "USD", conId=756733)
    assert lines.acquire(spy)
    assert not lines.acquire(msft())  # both lines in use
    assert (len(lines), lines.free) == (2, 0)
    with pytest.raises(ValueError):
        lines.acquire(Stock("QQQ", "SMART", "USD"))  # unqualified: no conId

    assert not lines.release(aapl())  # the other user still has it
    assert lines.release(aapl())  # the last one: cancelMktData
    assert not lines.release(aapl())
    assert lines.acquire(msft())
    await gw.wait_until(lambda: count(gw, IN_CANCEL_MKT_DATA) == 1)
    await round_trip(conn)
    assert gw._subscription(AAPL.con_id) is None
    assert gw._subscription(MSFT.con_id) is not None
    assert gw._subscription(756733) is not None
    assert count(gw, IN_REQ_MKT_DATA) == 3


async def test_lines_taken_while_down_are_requested_on_connect(h: Harness, gw: Gateway) -> None:
    await gw.stop_listening()
    conn = h.start()
    await h.until(lambda: h.sleeps.delays)
    assert conn.lines.acquire(aapl())  # recorded only
    await gw.start_listening()
    await h.until(lambda: conn.connected)
    await gw.wait_for_mkt_data(AAPL.con_id)
    assert count(gw, IN_REQ_MKT_DATA) == 1


async def test_cancelling_run_disconnects_for_good(h: Harness, gw: Gateway) -> None:
    conn = h.start()
    await h.until(lambda: conn.connected)
    h.tasks[0].cancel()
    with pytest.raises(asyncio.CancelledError):
        await h.tasks[0]
    assert not conn.ib.isConnected()
    assert conn.state == conn.state.__class__(False, h.clock.now(), "closed")
    assert h.sleeps.delays == []
