"""Reaction of a second trade while a first trade's exit order is stalled at Kalshi, against the
same reaction with nothing stalled, in the same run. Loopback servers only (127.0.0.1), real
clock, real runtime (issue 15: "one slow order freezes every other trade").

The set-up is `kalshi_reaction.py`'s (imported from it): the loopback Kalshi REST server and
market-data websocket, the Coinbase/Kraken spot servers, the runtime `build_runtime` makes for
`engine.venue = "kalshi"` (mode live, armed, max_loss 30 %, `stream = true`) run as
`run_headless` runs it, 100 held positions adopted at start. A sample is `kalshi_reaction.py`'s:
the held bid of one market falls to 60 % of the entry; latency = the `orderbook_delta` sent ->
the exit's POST /portfolio/events/orders received by the REST server. After each sample the
fill is booked and the trade re-opened, so 100 trades are open at every t0.

Each round measures two blocks of `--samples` samples, one after the other:

  no stall  the samples as they are;
  stall     first one market's bid falls (the "first trade"): its exit POST reaches the server,
            which processes the order but holds the answer (a "delay" fault of
            tests/kalshi_server.py with a `release` event) until the block ends. Meanwhile the
            samples run on the other markets (the "second trade", each in turn), for at least
            `--samples` samples and at least `--hold` seconds (default 12: the issue's stalled
            order). Then the answer is released, the first trade booked and re-opened.

At the end of each stall block the benchmark checks that the first order was still held, as one
request (no retry): the Kalshi client's timeout is raised to 120 s for this run (both blocks),
so the held order is one outstanding request for the whole window instead of timing out after
the default 10 s and being sent again. The engine sends every network venue's exit in a task of
its own (`Engine._orders_in_tasks`), so the second trade should not wait for the first.
`--inline-orders` shows what it did before: the exit awaited on the reaction path (the engine's
property patched for the run); the second trade's exit then waits for the release.

Target: stall p99 within noise of no-stall p99: at most 1.5x, or at most 5 ms more.

Run: uv run python benchmarks/stall_reaction.py [--samples 60] [--rounds 2] [--hold 12]
     [--warmup 10] [--positions 100] [--quick] [--inline-orders]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests/ first (see kalshi_reaction.py)

import kalshi_reaction as kr  # noqa: E402
from _harness import ms, pct, table  # noqa: E402

from engine.commands import Command  # noqa: E402
from engine.config import parse_config  # noqa: E402
from engine.runtime import Runtime, build_runtime  # noqa: E402
from engine.supervisor import Engine  # noqa: E402
from engine.venues.kalshi import stream as kalshi_stream  # noqa: E402
from tests.kalshi_server import KalshiState, build_app  # noqa: E402
from tests.kalshi_ws_server import kalshi_ws_server  # noqa: E402
from tests.loopback import serve  # noqa: E402
from tests.spot_servers import KrakenServer  # noqa: E402

RATIO_TARGET = 1.5  # stall p99 / no-stall p99 ...
SLACK_S = 0.005  # ... or at most this much more
CLIENT_TIMEOUT_S = 120.0  # the Kalshi client's, for this run: the held order is never re-sent


class Blocked(Exception):
    """The second trade's exit did not go out while the first one was stalled."""


@dataclass
class Block:
    stalled: bool
    lat: list[float] = field(default_factory=list)
    hold_s: float = 0.0  # how long the first order's answer was held
    held_posts: int = 0  # POSTs of the stalled market while held (1: never re-sent)
    still_held: bool = False  # the first trade still open, its exit in flight, at the end


def _restore(w: kr.World, m: kr.Market) -> None:
    """The REST server's book of `m` as it was before its bid fell (`stall_first` put the
    websocket's back already)."""
    w.rest.books[m.ticker][m.side] = [[Decimal(kr._c(m.top)), Decimal(kr.DEPTH)]]


async def _reopen(w: kr.World, lock: asyncio.Lock, m: kr.Market, n: int) -> None:
    eng = w.rt.engine
    async with lock:
        w.rest.set_position(m.ticker, m.position, exposure=kr._c(m.entry * kr.QTY))
        if not eng.by_contract.get(m.ticker):  # a positions poll may have adopted it already
            res = await eng.command(
                Command(
                    "add_trade",
                    payload={
                        "trade_id": f"bench-stalled-{n:03d}",
                        "contract_id": m.ticker,
                        "side": m.held,
                        "qty": kr.QTY,
                        "price": m.entry / 100,
                    },
                )
            )
            if not res.ok:
                raise RuntimeError(f"could not re-open {m.ticker}: {res.message}")


async def stall_first(w: kr.World, m: kr.Market, release: asyncio.Event) -> str:
    """The first trade's bid falls; its exit order reaches the server, which holds the answer
    until `release` is set. Returns the trade's id once the order is held."""
    eng = w.rt.engine
    ids = eng.by_contract.get(m.ticker) or set()
    if len(ids) != 1:
        raise RuntimeError(f"{m.ticker}: expected one open trade, have {len(ids)}")
    [tid] = ids
    held_before = len(w.rest.faulted("POST", kr.ORDERS_PATH))
    w.rest.queue_fault("delay", method="POST", path=kr.ORDERS_PATH, release=release)
    low, top = kr._c(m.dropped), kr._c(m.top)
    now_iso = kr._iso(datetime.now(UTC))
    await w.conn.delta(m.ticker, m.side, low, f"{kr.DEPTH}", ts=now_iso)
    w.rest.books[m.ticker][m.side] = [[Decimal(low), Decimal(kr.DEPTH)]]
    await asyncio.sleep(0.005)
    await w.conn.delta(m.ticker, m.side, top, f"-{kr.DEPTH}", ts=now_iso)
    await kr.wait_for(
        lambda: len(w.rest.faulted("POST", kr.ORDERS_PATH)) > held_before,
        f"{m.ticker}'s exit order to reach the server",
    )
    # The websocket's book back at the top: when the answer comes, nothing else is to fire.
    await w.conn.delta(m.ticker, m.side, top, f"{kr.DEPTH}", ts=now_iso)
    await w.conn.delta(m.ticker, m.side, low, f"-{kr.DEPTH}", ts=now_iso)
    return tid


def _posts_for(probe: kr.Probe, ticker: str, since: int) -> int:
    """Order POSTs for `ticker` the server received after the first `since` (the timing
    middleware's record: it reads the body before the server's own middleware would)."""
    return sum(1 for _, t, _ in probe.orders[since:] if t == ticker)


async def run_block(
    w: kr.World,
    probe: kr.Probe,
    lock: asyncio.Lock,
    rng: random.Random,
    others: list[kr.Market],
    start: int,
    samples: int,
    stalled: kr.Market | None,
    hold: float,
    n_round: int,
) -> tuple[Block, int]:
    """One block of samples on `others` from index `start`; with `stalled`, while that
    market's exit order is held at the server. Returns the block and the next index."""
    eng = w.rt.engine
    b = Block(stalled is not None)
    release = asyncio.Event()
    tid = ""
    posts0 = len(probe.orders)
    t_hold = 0.0
    if stalled is not None:
        tid = await stall_first(w, stalled, release)
        t_hold = time.perf_counter()
    i = start
    last = time.perf_counter()
    try:
        while len(b.lat) < samples or (stalled is not None and time.perf_counter() - t_hold < hold):
            wait = rng.uniform(*kr.GAP_S) - (time.perf_counter() - last)
            if wait > 0:
                await asyncio.sleep(wait)
            m = others[i % len(others)]
            i += 1
            try:
                s = await kr.one_sample(w, probe, lock, m)
            except RuntimeError as e:
                if stalled is not None and "no exit order" in str(e):
                    raise Blocked(
                        f"{m.ticker}: no exit order within {kr.WAIT_S:g} s while "
                        f"{stalled.ticker}'s order was held {time.perf_counter() - t_hold:.1f} s"
                    ) from None
                raise
            assert s.t_post is not None
            b.lat.append(s.t_post - s.t0)
            last = s.t_post
        if stalled is not None:
            b.hold_s = time.perf_counter() - t_hold
            b.held_posts = _posts_for(probe, stalled.ticker, posts0)
            b.still_held = tid in eng.trades and tid in eng.exits and not release.is_set()
    finally:
        release.set()
    if stalled is not None:
        await kr.wait_for(lambda: tid not in eng.trades, f"{tid} to be booked after the release")
        _restore(w, stalled)
        await _reopen(w, lock, stalled, n_round)
    return b, i


async def measure(
    samples: int, warmup: int, rounds: int, hold: float, seed: int = 1
) -> tuple[list[Block], str | None]:
    rng = random.Random(seed)
    probe = kr.Probe()
    tmp = tempfile.TemporaryDirectory(prefix="ts-bench-stall-")
    root = Path(tmp.name)
    key, key_path = kr.write_key(root)
    event, close, markets = kr.ladder(datetime.now(UTC))
    held = [m for m in markets if m.held is not None]
    stalled, others = held[0], held[1:]
    state = KalshiState(key_id=kr.KEY_ID, public_key=key.public_key())
    app = build_app(state)
    app.middlewares.insert(0, kr.timing_middleware(probe))
    cb, kk = kr.LiveCoinbase(), KrakenServer()
    cb.candles = kr.candles(time.time())
    kk.ticker = dict(kr.KRAKEN_TICKER)
    await cb.start()
    await kk.start()
    saved_urls = dict(kalshi_stream.WS_URLS)
    run_task: asyncio.Task[None] | None = None
    rt: Runtime | None = None
    blocks: list[Block] = []
    blocked: str | None = None
    try:
        async with (
            serve(app) as port,
            kalshi_ws_server(kr.KEY_ID, key.public_key()) as ws,
        ):
            kr.set_up_account(state, ws, event, close, markets)
            rest_url = f"http://127.0.0.1:{port}{kr.PREFIX}"
            raw = kr.config(root / "data", key_path, rest_url, ws.url, cb.url, kk.url)
            raw["venues"]["kalshi"]["timeout_seconds"] = CLIENT_TIMEOUT_S
            cfg = parse_config(raw)
            kalshi_stream.WS_URLS[cfg.venues.kalshi.environment] = ws.url
            rt = await build_runtime(cfg, None)
            kalshi_stream.WS_URLS.update(saved_urls)
            eng = rt.engine
            if len(eng.trades) != kr.HELD:
                raise RuntimeError(f"the engine adopted {len(eng.trades)} trades, not {kr.HELD}")
            lock = asyncio.Lock()
            poll_positions = eng._poll_positions

            async def locked_poll(now: float) -> None:
                async with lock:
                    await poll_positions(now)

            eng._poll_positions = locked_poll  # type: ignore[method-assign]
            run_task = asyncio.create_task(eng.run(rt.feeds), name="engine")
            w = kr.World(state, ws, markets, held, rt)
            w.conn = await ws.state.next_connection(timeout=kr.WAIT_S)
            [feed] = [f for f in rt.feeds if getattr(f, "stream", None) is not None]
            await kr.wait_for(
                lambda: all(feed.stream.book(m.ticker) is not None for m in markets),
                "the stream's order books",
            )
            await kr.wait_for(lambda: eng.spot_hist.latest() is not None, "a spot price")
            await asyncio.sleep(1.5)  # a tick, a REST poll and a spot poll: steady state
            problems = [st.problem for st in eng.status.values() if st.problem is not None]
            if problems:
                raise RuntimeError(f"{len(problems)} trades have data problems: {problems[0]}")
            gc.collect()
            i = 0
            if warmup:
                _, i = await run_block(w, probe, lock, rng, others, i, warmup, None, 0.0, 0)
            try:
                for r in range(rounds):
                    for stall in (None, stalled):
                        if run_task.done():
                            run_task.result()
                            raise RuntimeError("the engine stopped")
                        b, i = await run_block(
                            w, probe, lock, rng, others, i, samples, stall, hold, r
                        )
                        blocks.append(b)
            except Blocked as e:
                blocked = str(e)
            if blocked is None and len(eng.trades) != kr.HELD:
                raise RuntimeError(f"{len(eng.trades)} trades open at the end, not {kr.HELD}")
            eng.stop()
            await run_task
            run_task = None
            await rt.close()
            rt = None
    finally:
        kalshi_stream.WS_URLS.update(saved_urls)
        if run_task is not None:
            run_task.cancel()
            with contextlib.suppress(BaseException):
                await run_task
        if rt is not None:
            with contextlib.suppress(Exception):
                await rt.close()
        await cb.close()
        await kk.close()
        tmp.cleanup()
    return blocks, blocked


def report(blocks: list[Block], blocked: str | None, inline: bool) -> bool:
    base = [x for b in blocks if not b.stalled for x in b.lat]
    stall = [x for b in blocks if b.stalled for x in b.lat]
    stalls = [b for b in blocks if b.stalled]
    how = " (--inline-orders: exits awaited on the reaction path)" if inline else ""
    print(
        "Reaction of a second trade while a first trade's exit is stalled at Kalshi: "
        f"orderbook_delta sent -> exit POST received, {kr.HELD} open trades (ms){how}"
    )
    rows = []
    for name, lat in (("no stall", base), ("first trade's exit stalled", stall)):
        if lat:
            qs = [pct(lat, 50), pct(lat, 90), pct(lat, 99), max(lat)]
            rows.append([name, str(len(lat)), *map(ms, qs)])
        else:
            rows.append([name, "0", "-", "-", "-", "-"])
    print(table(["", "samples", "p50", "p90", "p99", "max"], rows))
    if stalls:
        holds = ", ".join(f"{b.hold_s:.1f}" for b in stalls)
        posts = sorted({b.held_posts for b in stalls})
        print(
            f"first order held {holds} s per stall block (answer released after); POSTs of it "
            f"while held: {'/'.join(map(str, posts))} (1 = never re-sent); still in flight at "
            f"each block's end: {'yes' if all(b.still_held for b in stalls) else 'NO'}"
        )
    if blocked is not None:
        print(f"MISSED: the second trade waited for the stalled order: {blocked}")
        return False
    if not base or not stall:
        print("no samples")
        return False
    b99, s99 = pct(base, 99), pct(stall, 99)
    ok = s99 <= max(RATIO_TARGET * b99, b99 + SLACK_S) and all(b.still_held for b in stalls)
    print(
        f"stall / no stall: p50 {pct(stall, 50) / pct(base, 50):.2f}x, p99 {s99 / b99:.2f}x "
        f"(target p99 <= {RATIO_TARGET:g}x or + {SLACK_S * 1e3:g} ms): {'ok' if ok else 'MISSED'}"
    )
    return ok


@contextlib.contextmanager
def inline_orders(on: bool) -> Any:
    """With `on`, the engine awaits every exit's venue call on the reaction path (as before
    `Engine._orders_in_tasks`), for the time of the block."""
    if not on:
        yield
        return
    saved = Engine.__dict__["_orders_in_tasks"]
    Engine._orders_in_tasks = property(lambda self: False)  # type: ignore[assignment,method-assign]
    try:
        yield
    finally:
        Engine._orders_in_tasks = saved  # type: ignore[method-assign]


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=60, help="timed samples per block")
    p.add_argument("--rounds", type=int, default=2, help="no-stall + stall block pairs")
    p.add_argument("--hold", type=float, default=12.0, help="least seconds the first order is held")
    p.add_argument("--warmup", type=int, default=10, help="untimed samples first")
    p.add_argument("--positions", type=int, default=kr.HELD, help="held positions")
    p.add_argument("--seed", type=int, default=1, help="seed of the gaps between samples")
    p.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: 10 positions, 1 round of 5 samples, 2 warm-up, held >= 1 s",
    )
    p.add_argument(
        "--inline-orders",
        action="store_true",
        help="the engine awaits each exit on the reaction path (what it did before)",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.positions, args.rounds, args.samples, args.warmup, args.hold = 10, 1, 5, 2, 1.0
    if args.positions < 2 or args.samples < 1 or args.rounds < 1:
        p.error("--positions at least 2, --samples and --rounds at least 1")
    return args


def main(argv: list[str] | None = None) -> bool:
    args = parse(argv)
    with kr.positions(args.positions), inline_orders(args.inline_orders):
        blocks, blocked = asyncio.run(
            measure(args.samples, args.warmup, args.rounds, args.hold, args.seed)
        )
        return report(blocks, blocked, args.inline_orders)


if __name__ == "__main__":
    sys.exit(0 if main(sys.argv[1:]) else 1)
