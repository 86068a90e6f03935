"""The tape: reaction p99 with the tape on vs off in the same run, tape size per hour, throughput.

1. Reaction (reaction_latency.py's measurement, on benchmarks/_harness.py's engine): a quote that
   fires max_loss enters engine.handle() -> the paper venue gets the order. The same engine set-up
   is measured in alternating blocks, tape off then tape on (a `Tape` attached to the engine, its
   writer thread running and writing gzip to a temp dir), so both see the same machine load. The
   target: p99 on <= 1.1 x p99 off.
2. Size per hour: the simulated Kalshi-style ladder (engine/sim.py with the shipped [sim] config:
   21 strikes, a quote for each and a spot print every second, the cadence of the Kalshi feed's
   1 s poll) for an hour of market time (--quick: 5 minutes, scaled), through a `Tape`; the
   compressed bytes on disk per hour.
3. Write throughput: lines per second the writer thread takes from the queue to the file.

Run: uv run python benchmarks/tape.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import tempfile
import time
from pathlib import Path

from _harness import Bench, ms, pct, table

from engine.clock import ManualClock
from engine.config import Config, TapeConfig
from engine.sim import SimMarket
from engine.tape import Tape

TARGET_RATIO = 1.1
FIRE_FACTOR = 0.695  # as reaction_latency.py: the held bid that puts one trade past max_loss
SAMPLE_STEP_S = 0.010
SPOT_EVERY_S = 1.0


async def _block(b: Bench, samples: int, lat: list[float], start: int) -> None:
    eng, venue = b.engine, b.venue
    order = [c.id for c in b.contracts]
    for i in range(start, start + samples):
        cid = order[i % len(order)]
        b.clock.advance(SAMPLE_STEP_S)
        if b.now() - b.last_spot_ts >= SPOT_EVERY_S:
            await b.spot()
        slot = b.slots[cid][-1]
        ev = b.quote_event(cid, slot.entry * FIRE_FACTOR)
        before = len(venue.submits)
        t0 = time.perf_counter()
        await eng.handle(ev)
        sent = venue.submits[before:]
        if len(sent) != 1 or slot.trade_id in eng.trades:
            raise RuntimeError(f"sample {i}: expected {slot.trade_id} to exit")
        lat.append(sent[0][0] - t0)
        await b.quote(cid, b.base[cid])
        slot.trade_id = await b.open_trade(cid, slot.entry)


async def reaction(n_trades: int, samples: int, blocks: int) -> dict[str, float]:
    """Alternating blocks off/on on one engine; returns p50/p99 of each and the tape's drops."""
    off: list[float] = []
    on: list[float] = []
    with tempfile.TemporaryDirectory(prefix="ts-tape-bench-") as tmp:
        async with Bench(n_trades, entry_step=0.05) as b:
            tape = Tape(Path(tmp), "sim", b.clock, TapeConfig())
            tape.start()
            await _block(b, 30, [], 0)  # warm-up, untimed, tape detached
            i = 30
            per = max(1, samples // blocks)
            for _ in range(blocks):
                gc.collect()
                await _block(b, per, off, i)
                i += per
                tape.attach(b.engine)
                gc.collect()
                await _block(b, per, on, i)
                i += per
                _detach(b.engine, tape)
            tape.close()
            b.check_quiet()
            return {
                "n": n_trades,
                "samples": len(on),
                "off_p50": pct(off, 50),
                "off_p99": pct(off, 99),
                "on_p50": pct(on, 50),
                "on_p99": pct(on, 99),
                "dropped": tape.dropped,
                "lines": tape.written,
            }


def _detach(engine: object, tape: Tape) -> None:
    for hooks, fn in (
        (engine.recorders, tape.record),  # type: ignore[attr-defined]
        (engine.exit_listeners, tape.on_exit),  # type: ignore[attr-defined]
        (engine.tape_listeners, tape.on_journal),  # type: ignore[attr-defined]
    ):
        if fn in hooks:
            hooks.remove(fn)


def size_per_hour(seconds: float) -> dict[str, float]:
    """Tape a simulated ladder for `seconds` of market time; bytes and lines, scaled to an hour."""
    cfg = Config()
    t0 = 1_796_637_630.0
    clock = ManualClock(t0)
    market = SimMarket(cfg.sim, t0)
    with tempfile.TemporaryDirectory(prefix="ts-tape-size-") as tmp:
        tape = Tape(Path(tmp), "kalshi", clock, TapeConfig())
        tape.start()
        events = 0
        w0 = time.perf_counter()
        for s in range(1, int(seconds) + 1):
            clock.set(t0 + s)
            for ev in market.advance_to(clock.now()):
                tape.record(ev)
                events += 1
        tape.close()
        wall = time.perf_counter() - w0
        size = sum(p.stat().st_size for p in Path(tmp).iterdir())
    scale = 3600.0 / seconds
    return {
        "seconds": seconds,
        "events": events,
        "bytes": size,
        "mb_per_hour": size * scale / 1e6,
        "events_per_hour": events * scale,
        "lines_per_s": tape.written / wall if wall > 0 else float("inf"),
        "dropped": tape.dropped,
    }


def main(argv: list[str] | None = None) -> bool:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a short run (smoke test)")
    p.add_argument("--trades", type=int, default=100, help="open trades (default 100)")
    p.add_argument("--samples", type=int, default=600, help="timed samples per side")
    args = p.parse_args(argv)
    samples, blocks, seconds = (60, 2, 300.0) if args.quick else (args.samples, 6, 3600.0)
    r = asyncio.run(reaction(10 if args.quick else args.trades, samples, blocks))
    ratio = r["on_p99"] / r["off_p99"] if r["off_p99"] > 0 else float("inf")
    ok = ratio <= TARGET_RATIO
    print("Tape: reaction (max_loss quote -> PaperVenue.submit), tape off vs on, same run (ms)")
    print(
        table(
            [
                "open trades",
                "samples",
                "off p50",
                "off p99",
                "on p50",
                "on p99",
                "on/off p99",
                "dropped",
                f"<={TARGET_RATIO:g}x",
            ],
            [
                [
                    str(r["n"]),
                    str(r["samples"]),
                    ms(r["off_p50"]),
                    ms(r["off_p99"]),
                    ms(r["on_p50"]),
                    ms(r["on_p99"]),
                    f"{ratio:.2f}x",
                    str(r["dropped"]),
                    "ok" if ok else "MISSED",
                ]
            ],
        )
    )
    s = size_per_hour(seconds)
    print()
    print(
        f"Tape size: simulated ladder ({Config().sim.strikes} strikes, 1 s cadence), "
        f"{s['seconds']:g} s of market time taped: {s['events']} events, {s['bytes']} bytes gzip"
    )
    print(
        f"  per hour: {s['mb_per_hour']:.2f} MB, {s['events_per_hour']:.0f} lines; "
        f"write throughput {s['lines_per_s']:.0f} lines/s (one writer thread), "
        f"{s['dropped']} dropped"
    )
    return ok


if __name__ == "__main__":
    main(sys.argv[1:])
