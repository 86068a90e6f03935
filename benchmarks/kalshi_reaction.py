"""Reaction latency through the Kalshi adapter: a book update leaves the venue -> the exit order
reaches the venue. Loopback servers only (127.0.0.1), real clock, real runtime.

What runs (one process, one asyncio event loop):

- the loopback Kalshi REST server (`tests/kalshi_server.py`) and market-data websocket
  (`tests/kalshi_ws_server.py`), and the Coinbase/Kraken spot servers (`tests/spot_servers.py`);
- the runtime `build_runtime` makes for `engine.venue = "kalshi"` (mode live, armed, max_loss
  30 %, `[venues.kalshi] stream = true`), with its `RealClock`, run as `run_headless` runs it:
  `engine.run(runtime.feeds)` (the Kalshi market feed with its websocket reader and 1 s REST
  polls, the spot feed polling every second, the engine's 1 s tick with its positions poll).

The account holds 100 positions (10 contracts each, YES and NO alternately) on 100 of the 120
markets of one KXBTCD event; the engine adopts them at start (entry price from the fills).

Each sample takes one held market (round-robin) and:

  untimed  the websocket sends an `orderbook_delta` adding a level on the held side's bids at
           60 % of the entry (below the top: the top of book does not move); the REST server's
           book for that side becomes that level (100 contracts), so the IOC exit fills there
           whatever its limit (a marketable 0.01/0.99 or the held side's bid);
  t0       `perf_counter()` just before the server sends the `orderbook_delta` that removes the
           top bid level: the held side's bid falls to 60 % of the entry (P&L -40 %);
  t1       `perf_counter()` when the loopback REST server receives POST
           /portfolio/events/orders (an aiohttp middleware in front of the server's own; request
           line and headers read, body not yet);
           latency = t1 - t0: websocket transit, the stream's parse and book, the market feed,
           `Engine.handle` (evaluation, the exit journaled in one commit), `KalshiVenue.submit`
           (RSA-PSS signing, httpx) and the loopback transit of the POST.
  untimed  wait for the engine to book the fill (the trade leaves the book), put the book back,
           restore the position at the server and re-open the trade through
           `Command("add_trade")` (entry as before), so exactly 100 trades are open at every t0.
           Then wait 150-300 ms (random, from the previous order; the default write budget is 10
           orders a second, burst 1) before the next sample.

The latency is split by stamps taken on the way (a few comparisons per event, nothing else):
when the market feed hands the dropped quote to `Engine.handle_safely` and when the engine calls
`KalshiVenue.submit` (wrappers on the engine instance), when the client calls httpx (a wrapper on
the client's `httpx.AsyncClient` instance), and when httpcore has written the POST to the socket
(`AnyIOStream.write` patched for the run and put back). "Written" is what a remote venue would
see, less the network; "received" minus "written" is this set-up's own cost.

Why one loop: both timestamps come from the same `perf_counter()`, with nothing to translate,
and the servers' work is small compared with the engine's (a few tens of microseconds per
request, ~1 ms for the 120-market REST answer once a second). On the same loop a server handler
can delay the engine by its own length, as a thread would through the GIL; a sample whose
timeline overlaps the REST poll or the positions poll pays for it, as it would in production
(where only the server side of it would be elsewhere).

Set-up choices (see the README section for the numbers):

- The rate limits are the defaults (Kalshi's basic tier: 20 reads and 10 writes a second). The
  positions poll reads each position's fills only when the position changed (KalshiVenue keeps
  the entry prices), so at 100 positions a poll is one GET plus one per restored position.
- Re-opening a trade must not interleave with a positions poll (one that read the account
  before the restore and compares after it would close the new trade as "external", or adopt a
  second one): the benchmark wraps the engine instance's `_poll_positions` in a lock that the
  re-open also takes. The lock is never held by the measured path.

Run: uv run python benchmarks/kalshi_reaction.py [--samples 150] [--warmup 15] [--quick]
     [--positions 100]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import math
import os
import random
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from _harness import ms, pct, table
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from httpcore._backends.anyio import AnyIOStream

ROOT = Path(__file__).resolve().parent.parent
# The loopback servers live in tests/, first on the path: eventkit (ib_async's dependency)
# installs a top-level `tests` package of its own into site-packages.
sys.path.insert(0, str(ROOT))

from engine.commands import Command  # noqa: E402
from engine.config import parse_config  # noqa: E402
from engine.models import QuoteEvent  # noqa: E402
from engine.runtime import Runtime, build_runtime  # noqa: E402
from engine.venues.kalshi import stream as kalshi_stream  # noqa: E402
from engine.venues.kalshi.auth import KalshiSigner  # noqa: E402
from tests.kalshi_server import KalshiState, build_app  # noqa: E402
from tests.kalshi_ws_server import RunningWsServer, kalshi_ws_server  # noqa: E402
from tests.loopback import serve  # noqa: E402
from tests.spot_servers import CoinbaseServer, KrakenServer  # noqa: E402

TARGET_P99_S = 0.020
KEY_ID = "bench-key"
PREFIX = "/trade-api/v2"
ORDERS_PATH = "/portfolio/events/orders"
SERIES = "KXBTCD"
SPOT = 97_000.0
STRIKE_STEP = 250
MARKETS = 120
HELD = 100
QTY = 10
DEPTH = 100  # contracts per resting level
DROP = 0.60  # the held bid falls to this fraction of the entry: P&L -40 %, past max_loss 30 %
MAX_LOSS_PERCENT = 30.0
GAP_S = (0.15, 0.30)  # from one order to the next sample's t0
WAIT_S = 5.0  # longest wait for an order or for the engine to book it


def _iso(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _c(cents: int) -> str:
    """Cents as Kalshi's dollar string."""
    return f"{cents / 100:.4f}"


@dataclass
class Market:
    ticker: str
    strike: int
    bid: int  # YES bid, cents
    ask: int  # YES ask, cents
    held: str | None = None  # "yes" | "no" | None
    entry: int = 0  # held-side price paid, cents

    @property
    def side(self) -> str:
        """The book side holding the held side's bids (NO bids are the YES ask's other face)."""
        return "yes" if self.held == "yes" else "no"

    @property
    def top(self) -> int:
        """The held side's bid, cents."""
        return self.bid if self.held == "yes" else 100 - self.ask

    @property
    def dropped(self) -> int:
        return max(1, math.floor(self.entry * DROP))

    @property
    def position(self) -> str:
        return f"{QTY if self.held == 'yes' else -QTY:.2f}"


@dataclass
class Sample:
    ticker: str
    ticker_held: str  # "yes" | "no"
    open_trades: int
    t0: float
    held_bid: int = 0  # cents: the held side's bid after the drop
    t_quote: float | None = None
    t_submit: float | None = None
    t_http: float | None = None
    t_wrote: float | None = None
    t_post: float | None = None
    coid: str = ""
    limit: str = ""  # the order's YES price
    filled: bool = False


@dataclass
class Probe:
    """Timestamps of the sample under way, set by the server middleware and the engine wrapper."""

    current: Sample | None = None
    posted: asyncio.Event = field(default_factory=asyncio.Event)
    orders: list[tuple[float, str, str]] = field(default_factory=list)  # (t, ticker, coid)
    unexpected: int = 0

    def on_order(self, t: float, body: Any) -> None:
        ticker = body.get("ticker", "") if isinstance(body, dict) else ""
        coid = body.get("client_order_id", "") if isinstance(body, dict) else ""
        self.orders.append((t, ticker, coid))
        s = self.current
        if s is not None and s.t_post is None and ticker == s.ticker:
            s.t_post, s.coid, s.limit = t, coid, str(body.get("price", ""))
            self.posted.set()
        else:
            self.unexpected += 1


def timing_middleware(probe: Probe) -> Any:
    @web.middleware
    async def stamp(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        t = time.perf_counter()
        if request.method == "POST" and request.path == PREFIX + ORDERS_PATH:
            try:
                body = await request.json()  # aiohttp keeps the body: the handler reads it again
            except ValueError:
                body = None
            probe.on_order(t, body)
        return await handler(request)

    return stamp


class LiveCoinbase(CoinbaseServer):
    """Coinbase's ticker stamped with the time of the request (a live venue), spot wiggling."""

    async def _ticker(self, request: web.Request) -> web.Response:  # type: ignore[override]
        now = time.time()
        price = SPOT + 25.0 * math.sin(now / 20.0)
        self.ticker = {
            "price": f"{price:.2f}",
            "bid": f"{price:.2f}",
            "ask": f"{price + 0.01:.2f}",
            "time": _iso(datetime.fromtimestamp(now, UTC)),
            "size": "0.01",
            "volume": "1000",
        }
        return await super()._ticker(request)


def candles(now: float, minutes: int = 90) -> list[list[Any]]:
    start = int(now // 60) * 60 - minutes * 60
    out = []
    for i in range(minutes):
        t = start + 60 * i
        p = SPOT + 25.0 * math.sin(t / 20.0)
        out.append([t, p - 5.0, p + 5.0, p, p, 3.5])
    return out


def ladder(now: datetime) -> tuple[str, datetime, list[Market]]:
    close = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=2)
    event = f"{SERIES}-{close:%y%b%d%H}".upper()
    centre = round(SPOT / STRIKE_STEP) * STRIKE_STEP
    first_held = (MARKETS - HELD) // 2
    out = []
    for i in range(MARKETS):
        strike = centre + (i - MARKETS // 2) * STRIKE_STEP
        prob = 1.0 / (1.0 + math.exp((strike - SPOT) / 3000.0))
        bid = min(max(round(prob * 100) - 1, 15), 83)
        m = Market(f"{event}-T{strike}", strike, bid, bid + 2)
        j = i - first_held
        if 0 <= j < HELD:
            m.held = "yes" if j % 2 == 0 else "no"
            m.entry = m.ask if m.held == "yes" else 100 - m.bid  # bought at the ask
        out.append(m)
    return event, close, out


@dataclass
class World:
    rest: KalshiState
    ws: RunningWsServer
    markets: list[Market]
    held: list[Market]
    rt: Runtime
    conn: Any = None  # the websocket connection of the engine's stream, seen from the server


def set_up_account(state: KalshiState, ws: RunningWsServer, event: str, close: datetime,
                   markets: list[Market]) -> None:  # fmt: skip
    state.add_event(event, series_ticker=SERIES)
    opened = close - timedelta(hours=1)
    for m in markets:
        state.add_market(
            m.ticker,
            event_ticker=event,
            open_time=_iso(opened),
            close_time=_iso(close),
            expected_expiration_time=_iso(close + timedelta(minutes=5)),
            floor_strike=m.strike,
            yes_bid_dollars=_c(m.bid),
            yes_ask_dollars=_c(m.ask),
            no_bid_dollars=_c(100 - m.ask),
            no_ask_dollars=_c(100 - m.bid),
        )
        state.set_book(m.ticker, yes=[(_c(m.bid), f"{DEPTH}")], no=[(_c(100 - m.ask), f"{DEPTH}")])
        ws.state.set_book(m.ticker, yes={_c(m.bid): f"{DEPTH}"}, no={_c(100 - m.ask): f"{DEPTH}"})
        if m.held is None:
            continue
        state.set_position(m.ticker, m.position, exposure=_c(m.entry * QTY))
        yes_price = m.ask if m.held == "yes" else m.bid
        state.add_fill(
            ticker=m.ticker,
            outcome_side=m.held,
            book_side="bid" if m.held == "yes" else "ask",
            count_fp=f"{QTY:.2f}",
            yes_price_dollars=_c(yes_price),
            no_price_dollars=_c(100 - yes_price),
            created_time=_iso(opened),
        )


def config(
    data: Path, key_path: Path, rest_url: str, ws_url: str, cb: str, kr: str
) -> dict[str, Any]:
    kalshi: dict[str, Any] = {
        "base_url": rest_url,
        "api_key_id": KEY_ID,
        "private_key_path": str(key_path),
        "stream": True,
        "ws_url": ws_url,
    }
    return {
        "engine": {"venue": "kalshi", "data_dir": str(data)},
        "auto_stop": {
            "mode": "live",
            "armed": True,
            "criteria": {"max_loss_percent": MAX_LOSS_PERCENT},
        },
        "venues": {"kalshi": kalshi},
        "spot": {"coinbase_url": cb, "kraken_url": kr},
    }


async def wait_for(cond: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.perf_counter() + timeout
    while not cond():
        if time.perf_counter() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.001)


async def one_sample(w: World, probe: Probe, lock: asyncio.Lock, m: Market) -> Sample:
    eng = w.rt.engine
    ids = eng.by_contract.get(m.ticker) or set()
    if len(ids) != 1:
        raise RuntimeError(f"{m.ticker}: expected one open trade, have {len(ids)}")
    [tid] = ids
    low, top = _c(m.dropped), _c(m.top)
    now_iso = _iso(datetime.now(UTC))
    # Untimed: a level under the top (the top of book does not move, nothing is quoted).
    await w.conn.delta(m.ticker, m.side, low, f"{DEPTH}", ts=now_iso)
    w.rest.books[m.ticker][m.side] = [[Decimal(low), Decimal(DEPTH)]]  # what the exit meets
    await asyncio.sleep(0.005)
    probe.posted.clear()
    s = Sample(m.ticker, str(m.held), len(eng.trades), 0.0, held_bid=m.dropped)
    probe.current = s
    s.t0 = time.perf_counter()
    await w.conn.delta(m.ticker, m.side, top, f"-{DEPTH}", ts=now_iso)  # the bid falls
    try:
        await asyncio.wait_for(probe.posted.wait(), WAIT_S)
    except TimeoutError:
        raise RuntimeError(f"{m.ticker}: no exit order within {WAIT_S} s") from None
    await wait_for(lambda: tid not in eng.trades, f"{tid} to be booked")
    probe.current = None
    order = next(
        (o for o in w.rest.orders.values() if o["client_order_id"] == s.coid), None
    )  # fmt: skip
    s.filled = order is not None and order["status"] == "executed"
    # Untimed: the book back as it was, the position and the trade re-opened.
    await w.conn.delta(m.ticker, m.side, top, f"{DEPTH}", ts=now_iso)
    await w.conn.delta(m.ticker, m.side, low, f"-{DEPTH}", ts=now_iso)
    w.rest.books[m.ticker][m.side] = [[Decimal(top), Decimal(DEPTH)]]
    async with lock:
        w.rest.set_position(m.ticker, m.position, exposure=_c(m.entry * QTY))
        if not eng.by_contract.get(m.ticker):  # a positions poll may have adopted it already
            res = await eng.command(
                Command(
                    "add_trade",
                    payload={
                        "trade_id": f"bench-{len(probe.orders):05d}",
                        "contract_id": m.ticker,
                        "side": m.held,
                        "qty": QTY,
                        "price": m.entry / 100,
                    },
                )
            )
            if not res.ok:
                raise RuntimeError(f"could not re-open {m.ticker}: {res.message}")
    return s


KRAKEN_TICKER = {"a": ["97000.1", "1", "1.0"], "b": ["97000.0", "1", "1.0"], "c": ["97000.0", "0.1"]}


def write_key(root: Path) -> tuple[rsa.RSAPrivateKey, Path]:
    """A fresh RSA key for the loopback Kalshi server, its private half written to
    root/kalshi.pem with mode 0600 (the adapter refuses a key file others can read)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_path = root / "kalshi.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    os.chmod(key_path, 0o600)
    return key, key_path


async def measure(samples: int, warmup: int, seed: int = 1) -> dict[str, Any]:
    rng = random.Random(seed)
    probe = Probe()
    tmp = tempfile.TemporaryDirectory(prefix="ts-bench-kalshi-")
    root = Path(tmp.name)
    key, key_path = write_key(root)
    event, close, markets = ladder(datetime.now(UTC))
    held = [m for m in markets if m.held is not None]
    state = KalshiState(key_id=KEY_ID, public_key=key.public_key())
    app = build_app(state)
    app.middlewares.insert(0, timing_middleware(probe))  # outermost: before the server's own
    cb, kr = LiveCoinbase(), KrakenServer()
    cb.candles = candles(time.time())
    kr.ticker = dict(KRAKEN_TICKER)
    await cb.start()
    await kr.start()
    saved_urls = dict(kalshi_stream.WS_URLS)
    anyio_write = AnyIOStream.write
    run_task: asyncio.Task[None] | None = None
    rt: Runtime | None = None
    try:
        async with (
            serve(app) as port,
            kalshi_ws_server(KEY_ID, key.public_key()) as ws,
        ):
            set_up_account(state, ws, event, close, markets)
            rest_url = f"http://127.0.0.1:{port}{PREFIX}"
            cfg = parse_config(config(root / "data", key_path, rest_url, ws.url, cb.url, kr.url))
            # Without `[venues.kalshi] ws_url` (older checkouts) the stream's address comes from
            # the environment's entry, pointed here for the time of the build.
            kalshi_stream.WS_URLS[cfg.venues.kalshi.environment] = ws.url
            t_build = time.perf_counter()
            rt = await build_runtime(cfg, None)
            kalshi_stream.WS_URLS.update(saved_urls)
            build_s = time.perf_counter() - t_build
            eng = rt.engine
            if len(eng.trades) != HELD:
                raise RuntimeError(f"the engine adopted {len(eng.trades)} trades, not {HELD}")

            lock = asyncio.Lock()
            poll_positions = eng._poll_positions

            async def locked_poll(now: float) -> None:
                async with lock:
                    await poll_positions(now)

            eng._poll_positions = locked_poll  # type: ignore[method-assign]
            handle_safely = eng.handle_safely

            async def stamped(ev: Any) -> None:
                s = probe.current
                if (
                    s is not None
                    and s.t_quote is None
                    and isinstance(ev, QuoteEvent)
                    and ev.quote.id == s.ticker
                ):
                    s.t_quote = time.perf_counter()
                await handle_safely(ev)

            eng.handle_safely = stamped  # type: ignore[method-assign]
            submit = eng.venue.submit

            async def stamped_submit(req: Any) -> Any:
                s = probe.current
                if s is not None and s.t_submit is None and req.contract_id == s.ticker:
                    s.t_submit = time.perf_counter()
                return await submit(req)

            eng.venue.submit = stamped_submit  # type: ignore[method-assign]
            http = eng.venue._client._http  # type: ignore[attr-defined]
            http_request = http.request

            async def stamped_request(method: str, url: Any, **kw: Any) -> Any:
                s = probe.current
                if (
                    s is not None
                    and s.t_submit is not None
                    and s.t_http is None
                    and method == "POST"
                ):
                    s.t_http = time.perf_counter()
                return await http_request(method, url, **kw)

            http.request = stamped_request
            anyio_write = AnyIOStream.write

            async def stamped_write(self: Any, buffer: bytes, timeout: float | None = None) -> None:
                await anyio_write(self, buffer, timeout)
                s = probe.current
                if (
                    s is not None
                    and s.t_http is not None
                    and s.t_wrote is None
                    and buffer[:5] == b"POST "
                ):
                    s.t_wrote = time.perf_counter()

            AnyIOStream.write = stamped_write  # type: ignore[method-assign]

            run_task = asyncio.create_task(eng.run(rt.feeds), name="engine")
            w = World(state, ws, markets, held, rt)
            w.conn = await ws.state.next_connection(timeout=WAIT_S)
            [feed] = [f for f in rt.feeds if getattr(f, "stream", None) is not None]
            await wait_for(
                lambda: all(feed.stream.book(m.ticker) is not None for m in markets),
                "the stream's order books",
            )
            await wait_for(lambda: eng.spot_hist.latest() is not None, "a spot price")
            await asyncio.sleep(1.5)  # a tick, a REST poll and a spot poll: steady state
            problems = [st.problem for st in eng.status.values() if st.problem is not None]
            if problems:
                raise RuntimeError(f"{len(problems)} trades have data problems: {problems[0]}")
            gc.collect()
            out: list[Sample] = []
            last_post = time.perf_counter()
            for i in range(warmup + samples):
                if run_task.done():
                    run_task.result()
                    raise RuntimeError("the engine stopped")
                wait = rng.uniform(*GAP_S) - (time.perf_counter() - last_post)
                if wait > 0:
                    await asyncio.sleep(wait)
                s = await one_sample(w, probe, lock, held[i % len(held)])
                last_post = s.t_post or time.perf_counter()
                if i >= warmup:
                    out.append(s)
            if len(eng.trades) != HELD:
                raise RuntimeError(f"{len(eng.trades)} trades open at the end, not {HELD}")
            rt.engine.stop()
            await run_task
            run_task = None
            await rt.close()  # before the servers go: the stream closes, it does not reconnect
            rt = None
            sign = signing_cost(KalshiSigner(KEY_ID, key))
            return summarize(out, probe, build_s, sign)
    finally:
        AnyIOStream.write = anyio_write  # type: ignore[method-assign]
        kalshi_stream.WS_URLS.update(saved_urls)
        if run_task is not None:
            run_task.cancel()
            with contextlib.suppress(BaseException):
                await run_task
        if rt is not None:
            with contextlib.suppress(Exception):
                await rt.close()
        await cb.close()
        await kr.close()
        tmp.cleanup()


def signing_cost(signer: KalshiSigner, n: int = 200) -> float:
    """Median seconds to sign one request (RSA-PSS, 2048-bit key), on this machine."""
    times = []
    for _ in range(n):
        t = time.perf_counter()
        signer.headers("POST", PREFIX + ORDERS_PATH)
        times.append(time.perf_counter() - t)
    return pct(times, 50)


def summarize(out: list[Sample], probe: Probe, build_s: float, sign_s: float) -> dict[str, Any]:
    lat = [s.t_post - s.t0 for s in out if s.t_post is not None]
    feed = [s.t_quote - s.t0 for s in out if s.t_quote is not None]
    eng = [s.t_submit - s.t_quote for s in out if s.t_submit is not None and s.t_quote is not None]
    order = [s.t_post - s.t_submit for s in out if s.t_post is not None and s.t_submit is not None]
    client = [s.t_http - s.t_submit for s in out if s.t_http is not None and s.t_submit is not None]
    wire = [s.t_post - s.t_http for s in out if s.t_post is not None and s.t_http is not None]
    wrote = [s.t_wrote - s.t0 for s in out if s.t_wrote is not None]
    limits = {"marketable": 0, "at the held bid": 0, "other": 0}
    for s in out:
        yes = Decimal(s.limit or "-1")
        at_bid = (
            Decimal(s.held_bid) / 100 if s.ticker_held == "yes" else 1 - Decimal(s.held_bid) / 100
        )
        if yes in (Decimal("0.01"), Decimal("0.99")):
            limits["marketable"] += 1
        elif yes == at_bid:
            limits["at the held bid"] += 1
        else:
            limits["other"] += 1
    return {
        "limits": ", ".join(f"{k} {v}" for k, v in limits.items() if v),
        "samples": len(lat),
        "open_min": min(s.open_trades for s in out),
        "open_max": max(s.open_trades for s in out),
        "p50": pct(lat, 50),
        "p90": pct(lat, 90),
        "p99": pct(lat, 99),
        "max": max(lat),
        "over": sum(x > TARGET_P99_S for x in lat),
        "feed_p50": pct(feed, 50),
        "feed_p99": pct(feed, 99),
        "engine_p50": pct(eng, 50),
        "engine_p99": pct(eng, 99),
        "order_p50": pct(order, 50),
        "order_p99": pct(order, 99),
        "client_p50": pct(client, 50),
        "client_p99": pct(client, 99),
        "wire_p50": pct(wire, 50),
        "wire_p99": pct(wire, 99),
        "wrote_p50": pct(wrote, 50),
        "wrote_p99": pct(wrote, 99),
        "wrote_max": max(wrote),
        "filled": sum(s.filled for s in out),
        "unexpected": probe.unexpected,
        "build_s": build_s,
        "sign_s": sign_s,
    }


def report(r: dict[str, Any]) -> bool:
    ok = bool(r["p99"] <= TARGET_P99_S)
    target = f"{TARGET_P99_S * 1e3:g}ms"
    opened = (
        str(r["open_min"]) if r["open_min"] == r["open_max"] else f"{r['open_min']}-{r['open_max']}"
    )
    print(
        "Kalshi reaction latency: orderbook_delta sent by the loopback websocket -> exit order "
        "POST received by the loopback REST server (ms)"
    )
    print(
        table(
            [
                "open trades",
                "samples",
                "p50",
                "p90",
                "p99",
                "max",
                f">{target}",
                "ws->engine p50",
                "ws->engine p99",
                "engine p50",
                "engine p99",
                "submit->POST p50",
                "submit->POST p99",
                f"p99<={target}",
            ],
            [
                [
                    opened,
                    str(r["samples"]),
                    ms(r["p50"]),
                    ms(r["p90"]),
                    ms(r["p99"]),
                    ms(r["max"]),
                    str(r["over"]),
                    ms(r["feed_p50"]),
                    ms(r["feed_p99"]),
                    ms(r["engine_p50"]),
                    ms(r["engine_p99"]),
                    ms(r["order_p50"]),
                    ms(r["order_p99"]),
                    "ok" if ok else "MISSED",
                ]
            ],
        )
    )
    print(
        f"first attempt filled: {r['filled']}/{r['samples']} (limits: {r['limits']}); "
        f"other order POSTs: "
        f"{r['unexpected']}; start-up (build_runtime, {HELD} positions adopted): "
        f"{r['build_s']:.2f} s"
    )
    print(
        f"submit->POST = venue and client, signing included (p50 {ms(r['client_p50'])}, p99 "
        f"{ms(r['client_p99'])}) + httpx and the loopback (p50 {ms(r['wire_p50'])}, p99 "
        f"{ms(r['wire_p99'])}); signing one request alone: {ms(r['sign_s'])} ms (median)"
    )
    print(
        f"t0 -> POST written to the socket by httpx (what a remote venue would see, less the "
        f"network): p50 {ms(r['wrote_p50'])}, p99 {ms(r['wrote_p99'])}, max {ms(r['wrote_max'])}"
    )
    return ok


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=150, help="timed samples")
    p.add_argument("--warmup", type=int, default=15, help="untimed samples first")
    p.add_argument("--quick", action="store_true", help="a smoke run: 20 samples, 3 warm-up")
    p.add_argument("--seed", type=int, default=1, help="seed of the gaps between samples")
    p.add_argument(
        "--positions",
        type=int,
        default=HELD,
        help=f"held positions, on as many markets + 20 (default {HELD}; fewer start faster: "
        "the start-up reads each position's fills within the read budget)",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.samples, args.warmup = 20, 3
    if args.positions < 1:
        p.error("--positions: at least 1")
    return args


@contextlib.contextmanager
def positions(n: int) -> Iterator[None]:
    """HELD and MARKETS set for `n` positions for the block (module constants that `ladder` and
    the checks read), then put back."""
    global HELD, MARKETS
    saved = HELD, MARKETS
    HELD, MARKETS = n, n + 20
    try:
        yield
    finally:
        HELD, MARKETS = saved


def main(argv: list[str] | None = None) -> bool:
    args = parse(argv)
    with positions(args.positions):
        return report(asyncio.run(measure(args.samples, args.warmup, args.seed)))


if __name__ == "__main__":
    main(sys.argv[1:])
