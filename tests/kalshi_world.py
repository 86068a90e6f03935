"""The Kalshi session's world, shared by the session and fault tests: loopback servers only.

A Kalshi REST server (tests/kalshi_server.py) with one event of three KXBTCD markets closing at
17:00 UTC, an account holding YES 10 of `HELD` bought at 0.60, Coinbase and Kraken spot servers,
a `ManualClock` at 16:30, and the config that wires them (`engine.venue = "kalshi"`, live, armed,
max_loss 40 %). `start` builds the runtime as `build_runtime` does for a real session; `step` is
one round of the session: the clock moves, both feeds poll once, the engine ticks.

Faults: the server injects answers (`kalshi.state.queue_fault`); `World.refuse_connections`
adds the one fault a server cannot answer with: nothing listening, the connection refused by
the operating system (requests matching it are sent to a bound, non-listening port of 127.0.0.1).
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from engine.clock import ManualClock
from engine.config import Config, parse_config
from engine.feeds.kalshi_feed import KalshiMarketFeed
from engine.feeds.spot_feed import SpotFeed
from engine.runtime import Runtime, build_runtime
from engine.venues.kalshi import KalshiClient
from tests.kalshi_server import PREFIX, RunningServer, kalshi_server
from tests.loopback import RecordedSleeps
from tests.spot_servers import CoinbaseServer, KrakenServer

KEY_ID = "session-test-key"
EVENT = "KXBTCD-26NOV2117"
HELD = f"{EVENT}-T97000"
CLOSE_17 = 1795280400.0  # 2026-11-21T17:00:00Z
START = CLOSE_17 - 1800.0  # 16:30 UTC


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Refusal:
    """Connections for matching requests are refused; `times` None: until cleared."""

    method: str | None
    path: str | None  # a prefix of the path after /trade-api/v2
    times: int | None

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and (
            self.path is None or path.startswith(self.path)
        )


class _RefusingTransport(httpx.AsyncBaseTransport):
    """httpx's own transport, except that a request matching a `Refusal` is pointed at a port
    where nothing listens: the connection is really refused, httpx raises what it raises then."""

    def __init__(self, inner: httpx.AsyncBaseTransport, world: World) -> None:
        self._inner = inner
        self._world = world

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix(PREFIX)
        if self._world._take_refusal(request.method, path):
            self._world.refused.append((request.method, path))
            request.url = request.url.copy_with(port=self._world.dead_port)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


@dataclass
class World:
    kalshi: RunningServer
    coinbase: CoinbaseServer
    kraken: KrakenServer
    key_path: Path
    data: Path
    clock: ManualClock
    dead_port: int = 0
    refusals: list[Refusal] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (method, path) refused
    sleeps: RecordedSleeps = field(default_factory=RecordedSleeps)

    def config(
        self,
        *,
        kalshi: Mapping[str, Any] | None = None,
        engine: Mapping[str, Any] | None = None,
        **auto_stop: Any,
    ) -> Config:
        return parse_config(
            {
                "engine": {"venue": "kalshi", "data_dir": str(self.data), **(engine or {})},
                "auto_stop": {
                    "mode": "live",
                    "armed": True,
                    "criteria": {"max_loss_percent": 40},
                    **auto_stop,
                },
                "alerts": {"log_file": "", "cooldown_seconds": 0.0},
                "venues": {
                    "kalshi": {
                        "base_url": self.kalshi.base_url,
                        "api_key_id": KEY_ID,
                        "private_key_path": str(self.key_path),
                        "timeout_seconds": 2.0,
                        "read_requests_per_second": 1000.0,
                        "write_requests_per_second": 1000.0,
                        "rate_limit_burst": 100,
                        "max_attempts": 1,
                        **(kalshi or {}),
                    }
                },
                "spot": {"coinbase_url": self.coinbase.url, "kraken_url": self.kraken.url},
            }
        )

    async def start(self, config: Config | None = None) -> Runtime:
        """`build_runtime` on this world's clock; then the Kalshi client's backoff waits are
        recorded instead of slept (`sleeps`) and its connections can be refused."""
        rt = await build_runtime(config or self.config(), None, clock=self.clock)
        client = kalshi_client(rt)
        client._sleep = self.sleeps
        http = client._http
        http._transport = _RefusingTransport(http._transport, self)
        return rt

    def refuse_connections(
        self, *, method: str | None = None, path: str | None = None, times: int | None = None
    ) -> None:
        self.refusals.append(Refusal(method, path, times))

    def clear_faults(self) -> None:
        """Every injected fault is over: server faults and refused connections."""
        self.kalshi.state.clear_faults()
        self.refusals.clear()

    def _take_refusal(self, method: str, path: str) -> bool:
        for r in self.refusals:
            if r.matches(method, path):
                if r.times is not None:
                    r.times -= 1
                    if r.times <= 0:
                        self.refusals.remove(r)
                return True
        return False

    def spot_at(self, price: float) -> None:
        now = self.clock.now()
        p = f"{price:.2f}"
        self.coinbase.ticker = {
            "price": p,
            "bid": p,
            "ask": f"{price + 0.02:.2f}",
            "time": iso(now - 1),
            "size": "0.1",
        }
        k = f"{price:.1f}"
        self.kraken.ticker = {
            "a": [f"{price + 0.1:.1f}", "1", "1.0"],
            "b": [k, "1", "1.0"],
            "c": [k, "0.1"],
        }

    def book(self, bid: str, ask: str) -> None:
        """The held market's YES top of book (REST quote) and the resting YES bids behind it."""
        m = self.kalshi.state.markets[HELD]
        m["yes_bid_dollars"], m["yes_ask_dollars"] = f"{bid}00", f"{ask}00"
        m["no_bid_dollars"] = f"{1 - float(ask):.4f}"
        m["no_ask_dollars"] = f"{1 - float(bid):.4f}"
        self.kalshi.state.set_book(HELD, yes=[(bid, "50")])


@pytest.fixture
async def world(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> AsyncIterator[World]:
    key_path = tmp_path / "kalshi.pem"
    key_path.write_bytes(
        rsa_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    os.chmod(key_path, 0o600)
    cb = await CoinbaseServer().start()
    kr = await KrakenServer().start()
    assert isinstance(cb, CoinbaseServer) and isinstance(kr, KrakenServer)
    # Bound but never listening: a connection to it is refused, and no one else can take it.
    dead = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    dead.bind(("127.0.0.1", 0))
    async with kalshi_server(KEY_ID, rsa_key.public_key()) as srv:
        s = srv.state
        s.add_event(EVENT)
        for strike in (96500, 97000, 97500):
            s.add_market(
                f"{EVENT}-T{strike}",
                event_ticker=EVENT,
                close_time="2026-11-21T17:00:00Z",
                floor_strike=strike,
            )
        # The account: YES 10 of HELD, bought at 0.60 (its fill says so; the exposure agrees).
        s.set_position(HELD, "10.00", exposure="6.0000")
        s.add_fill(
            ticker=HELD,
            outcome_side="yes",
            book_side="bid",
            count_fp="10.00",
            yes_price_dollars="0.6000",
            no_price_dollars="0.4000",
        )
        w = World(srv, cb, kr, key_path, tmp_path / "data", ManualClock(START))
        w.dead_port = dead.getsockname()[1]
        w.book("0.58", "0.60")
        w.spot_at(97_100.0)
        try:
            yield w
        finally:
            dead.close()
            await cb.close()
            await kr.close()


def feeds(rt: Runtime) -> tuple[KalshiMarketFeed, SpotFeed]:
    [market] = [f for f in rt.feeds if isinstance(f, KalshiMarketFeed)]
    [spot] = [f for f in rt.feeds if isinstance(f, SpotFeed)]
    return market, spot


def kalshi_client(rt: Runtime) -> KalshiClient:
    """The one `KalshiClient` of the session (the market feed's and the venue's)."""
    market, _ = feeds(rt)
    assert market.client is rt.engine.venue._client  # type: ignore[attr-defined]
    return market.client


async def step(w: World, rt: Runtime, seconds: float = 1.0, *, drain: bool = True) -> None:
    """One round of the session: the clock moves, both feeds poll, the engine ticks; then the
    exits' venue calls (each in a task of its own) are let finish, unless `drain` is False."""
    w.clock.advance(seconds)
    w.spot_at(97_100.0)
    market, spot = feeds(rt)
    await market.poll_once(rt.engine)
    await spot.step(rt.engine)
    await rt.engine.tick()
    if drain:
        await rt.engine.drain_exits()
