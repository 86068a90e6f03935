"""Cost of a full evaluation pass at N open trades (default 1000): the periodic tick and a spot update.

A real engine (ManualClock, WAL SQLite journal in a temp dir, paper venue) holds N trades over
min(N, 200) contracts with max_loss, profit_target, trailing, ttc_cutoff and momentum enabled.
Each iteration advances the clock 1 s and, untimed, refreshes the quote of every contract (at the
model price for the moved spot, so P&L moves a little but no rule fires). Then:

  (a) tick:  untimed spot update, then timed `await engine.tick()`. With fresh quotes the tick
             re-evaluates no trade; it checks staleness and time triggers for each, sums risk,
             flushes the mark samples, writes the heartbeat, and every 5 s also scans the strike
             table for opportunities and polls the venue's positions and the journal.
  (b) spot:  untimed tick, then timed `await engine.handle(SpotEvent(...))`: momentum and
             volatility are updated and every open trade is re-evaluated.

The run fails loudly if any trade exits or has a data problem (it would measure exits, not
evaluation). `--profile` adds a cProfile pass over each path (the profiler is on only inside the
timed call) and prints the top functions by cumulative and by own time.

Run: uv run python benchmarks/tick_cost.py [--trades 1000] [--iterations 300] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import pstats
import sys
import time
from collections.abc import Awaitable, Callable

from _harness import Bench, ms, pct, table

TARGET_S = 0.005


async def _loop(
    b: Bench,
    iterations: int,
    before: Callable[[], Awaitable[None]],
    timed: Callable[[], Awaitable[None]],
    prof: cProfile.Profile | None = None,
    cpu: list[float] | None = None,
) -> list[float]:
    out = []
    for _ in range(iterations):
        b.clock.advance(1.0)
        await b.refresh_quotes(model=True)
        await before()
        if prof is not None:
            prof.enable()
        t0 = time.perf_counter()
        c0 = time.thread_time()
        await timed()
        dt = time.perf_counter() - t0
        if cpu is not None:
            # CPU of the event-loop thread only: the time the loop could not react to a quote.
            # SQLite runs on aiosqlite's worker thread and is excluded here (not from `dt`).
            cpu.append(time.thread_time() - c0)
        if prof is not None:
            prof.disable()
        out.append(dt)
    return out


async def run(
    n_trades: int, iterations: int, warmup: int, profile: int
) -> tuple[dict[str, list[float]], dict[str, str], dict[str, int]]:
    async with Bench(n_trades, entry_step=0.01) as b:
        eng = b.engine

        async def tick() -> None:
            await eng.tick()

        async def spot() -> None:
            await eng.handle(b.spot_event())

        # Steady state first: several 5-s polls, mark flushes and volatility recomputes.
        await _loop(b, warmup, spot, tick)
        b.check_quiet()
        gc.collect()
        tick_cpu: list[float] = []
        spot_cpu: list[float] = []
        samples = {
            "tick": await _loop(b, iterations, spot, tick, cpu=tick_cpu),
            "spot": await _loop(b, iterations, tick, spot, cpu=spot_cpu),
        }
        samples["tick_cpu"] = tick_cpu
        samples["spot_cpu"] = spot_cpu
        b.check_quiet()
        if b.venue.submits:
            raise RuntimeError(f"{len(b.venue.submits)} orders were sent during the measurement")
        info = {
            "trades": len(eng.trades),
            "contracts": b.n_contracts,
            "rules": max(len(st.results) for st in eng.status.values()),
        }
        profiles: dict[str, str] = {}
        if profile:
            for name, before, timed in (("tick", spot, tick), ("spot", tick, spot)):
                prof = cProfile.Profile()
                await _loop(b, profile, before, timed, prof)
                profiles[name] = _top(prof, name, profile)
            b.check_quiet()
        return samples, profiles, info


def _top(prof: cProfile.Profile, name: str, iterations: int, n: int = 20) -> str:
    out = io.StringIO()
    for key in ("cumulative", "tottime"):
        out.write(f"\n--- {name}: top {n} by {key} ({iterations} timed calls) ---\n")
        st = pstats.Stats(prof, stream=out)
        st.sort_stats(key).print_stats(n)
    text = out.getvalue()
    # Drop pstats' per-block preamble lines that repeat the totals.
    return "\n".join(line for line in text.splitlines() if "Ordered by" not in line)


def report(samples: dict[str, list[float]], info: dict[str, int]) -> bool:
    labels = {
        "tick": "engine.tick() wall",
        "tick_cpu": "engine.tick() loop CPU",
        "spot": "handle(SpotEvent) wall",
        "spot_cpu": "handle(SpotEvent) loop CPU",
    }
    rows = []
    ok = True
    for key, xs in samples.items():
        passed = pct(xs, 99) <= TARGET_S
        ok = ok and passed
        rows.append(
            [
                labels[key],
                str(len(xs)),
                ms(sum(xs) / len(xs)),
                ms(pct(xs, 50)),
                ms(pct(xs, 90)),
                ms(pct(xs, 99)),
                ms(max(xs)),
                f"{pct(xs, 50) / info['trades'] * 1e6:.1f}",
                "ok" if passed else "MISSED",
            ]
        )
    print(
        f"Evaluation pass cost at {info['trades']} open trades over {info['contracts']} contracts "
        f"({info['rules']} rules evaluated per trade), ms"
    )
    print(
        table(
            [
                "path",
                "iterations",
                "mean",
                "p50",
                "p90",
                "p99",
                "max",
                "p50 us/trade",
                f"p99<={TARGET_S * 1e3:g}ms",
            ],
            rows,
        )
    )
    return ok


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trades", type=int, default=1000)
    p.add_argument("--iterations", type=int, default=300, help="timed iterations per path")
    p.add_argument("--warmup", type=int, default=30, help="untimed iterations first")
    p.add_argument(
        "--profile",
        type=int,
        nargs="?",
        const=100,
        default=0,
        metavar="N",
        help="also cProfile N calls of each path (default 100) and print the hot spots",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> bool:
    args = parse(argv)
    samples, profiles, info = asyncio.run(
        run(args.trades, args.iterations, args.warmup, args.profile)
    )
    ok = report(samples, info)
    for text in profiles.values():
        print(text)
    return ok


if __name__ == "__main__":
    main(sys.argv[1:])
