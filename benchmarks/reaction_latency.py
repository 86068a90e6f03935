"""Reaction latency: a quote that fires max_loss enters the engine -> the venue gets the order.

For each size N (open trades), a real engine (ManualClock, WAL SQLite journal in a temp dir, paper
venue) holds N trades over min(N, 200) contracts with max_loss, profit_target, trailing,
ttc_cutoff and momentum enabled. Each sample:

  untimed  advance the clock 10 ms (a spot update every clock second, which re-evaluates all);
           build a quote for one contract that puts its highest-entry trade at -30.5% (the
           others on that contract stay above -30%);
  timed    t0 = perf_counter(); await engine.handle(QuoteEvent(...))
           latency = (perf_counter() recorded on entry to PaperVenue.submit) - t0
           This includes evaluating every trade on the contract, journaling the exit intent, its
           audit record and the order row (each committed), then the submit call.
           "handle" = until handle() returns (fill applied, trade closed in the journal, alert).
  untimed  put the contract's quote back and open a replacement trade at the same entry, so
           the engine holds exactly N open trades at every sample.

Targets are taken round-robin over the contracts. Run: uv run python benchmarks/reaction_latency.py
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time

from _harness import Bench, ms, pct, table

TARGET_P99_S = 0.005
FIRE_FACTOR = 0.695  # held bid = entry x this: P&L -30.5%, past max_loss 30%
SAMPLE_STEP_S = 0.010  # clock time between samples
SPOT_EVERY_S = 1.0  # clock time between (untimed) spot updates


async def measure(
    n_trades: int, samples: int, warmup: int, pragmas: tuple[str, ...] = ()
) -> dict[str, float]:
    async with Bench(n_trades, entry_step=0.05, pragmas=pragmas) as b:
        eng, venue = b.engine, b.venue
        lat: list[float] = []
        tot: list[float] = []
        order = [c.id for c in b.contracts]
        for i in range(warmup + samples):
            cid = order[i % len(order)]
            b.clock.advance(SAMPLE_STEP_S)
            if b.now() - b.last_spot_ts >= SPOT_EVERY_S:
                await b.spot()
            slot = b.slots[cid][-1]  # the highest entry: the only trade this quote fires
            ev = b.quote_event(cid, slot.entry * FIRE_FACTOR)
            before = len(venue.submits)

            t0 = time.perf_counter()
            await eng.handle(ev)
            t1 = time.perf_counter()

            sent = venue.submits[before:]
            if len(sent) != 1 or sent[0][1].contract_id != cid or slot.trade_id in eng.trades:
                raise RuntimeError(
                    f"sample {i}: expected exactly {slot.trade_id} to exit, got {len(sent)} "
                    f"orders ({[r.contract_id for _, r in sent]})"
                )
            if i >= warmup:
                lat.append(sent[0][0] - t0)
                tot.append(t1 - t0)
            # Back to the set-up state: base quote, a fresh trade in the slot.
            await b.quote(cid, b.base[cid])
            slot.trade_id = await b.open_trade(cid, slot.entry)
        b.check_quiet()
        per_contract = len(b.slots[order[0]])
        return {
            "n": n_trades,
            "contracts": b.n_contracts,
            "per_contract": per_contract,
            "samples": len(lat),
            "p50": pct(lat, 50),
            "p99": pct(lat, 99),
            "max": max(lat),
            "over": sum(x > TARGET_P99_S for x in lat),
            "tot_p50": pct(tot, 50),
            "tot_p99": pct(tot, 99),
        }


async def run(
    sizes: list[int], samples: int, warmup: int, pragmas: tuple[str, ...] = ()
) -> list[dict[str, float]]:
    out = []
    for n in sizes:
        gc.collect()
        out.append(await measure(n, samples, warmup, pragmas))
    return out


def report(results: list[dict[str, float]]) -> bool:
    rows = []
    ok = True
    for r in results:
        passed = r["p99"] <= TARGET_P99_S
        ok = ok and passed
        rows.append(
            [
                str(r["n"]),
                f"{r['contracts']}x{r['per_contract']}",
                str(r["samples"]),
                ms(r["p50"]),
                ms(r["p99"]),
                ms(r["max"]),
                str(r["over"]),
                ms(r["tot_p50"]),
                ms(r["tot_p99"]),
                "ok" if passed else "MISSED",
            ]
        )
    print("Reaction latency: max_loss quote into engine.handle() -> PaperVenue.submit() (ms)")
    print(
        table(
            [
                "open trades",
                "contracts x trades",
                "samples",
                "p50",
                "p99",
                "max",
                f">{TARGET_P99_S * 1e3:g}ms",
                "handle p50",
                "handle p99",
                f"p99<={TARGET_P99_S * 1e3:g}ms",
            ],
            rows,
        )
    )
    return ok


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000])
    p.add_argument("--samples", type=int, default=300, help="timed samples per size")
    p.add_argument("--warmup", type=int, default=30, help="untimed samples first, per size")
    p.add_argument(
        "--pragma",
        action="append",
        default=[],
        metavar="EXPR",
        help="diagnostic: run PRAGMA EXPR on the journal's connection after it opens "
        "(e.g. 'wal_autocheckpoint = 0'); the default measures the journal as the engine sets it",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> bool:
    args = parse(argv)
    if args.pragma:
        print(f"(diagnostic run with PRAGMA {'; PRAGMA '.join(args.pragma)})")
    return report(asyncio.run(run(args.sizes, args.samples, args.warmup, tuple(args.pragma))))


if __name__ == "__main__":
    main(sys.argv[1:])
