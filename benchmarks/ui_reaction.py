"""Reaction latency while the screen renders: max_loss quote -> order, with the UI and headless.

The measurement of reaction_latency.py (`_reaction_probe.sample`: t0 = perf_counter(); await
engine.handle(QuoteEvent(...)) with a quote that puts one trade at -41%, past max_loss 40%;
latency = perf_counter() on entry to the venue's `submit` - t0), run on the engine's own loop
wherever the engine lives (`host.call`), on a host with a ManualClock, `drive=False` and
`auto_publish=True` (a snapshot every `ui.refresh_seconds` = 0.25 s of real time when anything
changed). The shipped config with `sim.strikes = 1000`, no demo trades, mode `live` (armed; the
sim venue is the paper broker) and 500 trades opened through `add_trade` (see _ui.py). Toasts
are off: 60 exits a second would stack hundreds of them, not the screen being measured.

Four runs on fresh hosts with the same seed:

  headless               `EngineHost` (the engine on a thread of this process), no app
                         (snapshots are still built and published, to nobody);
  ui, engine thread      the same, with `TradeSupervisorApp` at 200x50 rendering every snapshot
                         in the main thread (`[ui] engine = "thread"`; run_app's 1 ms switch
                         interval);
  ui, engine process     `ProcessEngineHost` (the engine in a child process, what run_app does
                         by default) with the app at 200x50;
  engine process, no ui  the child process, no app.

The app is headless `run_test`, frames encoded as for a terminal by `_ui.FrameApp`. In every run
the market moves one simulated second per real second (`host.advance(1)`: 1000 new quotes, a
spot print, an engine tick; untimed, between two samples), so the screen has 1000 strikes and
500 trades changing. Every 15 ms (real time) one sample fires a trade; untimed, the quote is put
back and a replacement trade opened at the same entry.

With the screen, this process gets run_app's garbage collector thresholds
(`tune_gc_for_the_screen`). The table also shows the frames the screen drew per second and the
full (generation 2) garbage collections per minute in this process with the longest one (with the engine in a child
process, the engine's own collections are not in that column).
`--gc-freeze` (diagnostic) calls gc.freeze() once the screen is drawn, which the app does not do.

Target: reaction p99 with the UI (as run_app runs it: the engine process) <= 2x headless, where
headless is the lower p99 of the two runs without the UI (the stricter baseline).
Run: uv run python benchmarks/ui_reaction.py [--samples 1000] [--warmup 50] [--gc-freeze]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import _reaction_probe as probe
from _harness import ms, pct, table
from _ui import SIZE, STRIKES, T0, TRADES, FrameApp, GcWatch, open_trades, ui_config

from engine.clock import ManualClock
from tui.app import tune_gc_for_the_screen
from tui.engine_process import ProcessEngineHost
from tui.host import EngineHost

TARGET_RATIO = 2.0
APP_SWITCH_INTERVAL = 0.001  # tui/app.py run_app, with [ui] engine = "thread"
SAMPLE_EVERY_S = 0.015

# (label, host kind, with the screen)
RUNS = (
    ("headless", "thread", False),
    ("ui, engine thread", "thread", True),
    ("ui, engine process", "process", True),
    ("engine process, no ui", "process", False),
)
TARGET_RUN = "ui, engine process"  # what run_app does by default ([ui] engine = "process")


@contextlib.asynccontextmanager
async def maybe_app(host: Any, cfg: Any, with_ui: bool) -> AsyncIterator[FrameApp | None]:
    if not with_ui:
        yield None
        return
    app = FrameApp(cfg, host)
    async with app.run_test(size=SIZE):
        yield app


def make_host(kind: str, cfg: Any) -> Any:
    if kind == "process":
        return ProcessEngineHost(cfg, None, clock=ManualClock(T0), drive=False, auto_publish=True)
    return EngineHost(cfg, None, clock=ManualClock(T0), drive=False, auto_publish=True)


async def measure(
    label: str,
    kind: str,
    with_ui: bool,
    samples: int,
    warmup: int,
    strikes: int,
    trades: int,
    freeze: bool = False,
) -> dict[str, Any]:
    old_switch = sys.getswitchinterval()
    sys.setswitchinterval(APP_SWITCH_INTERVAL)
    old_gc = gc.get_threshold()
    if with_ui:
        tune_gc_for_the_screen()  # as run_app does for the screen's process
    try:
        with tempfile.TemporaryDirectory(prefix="ts-ui-react-") as tmp:
            cfg = ui_config(
                Path(tmp) / "data", strikes, auto_stop={"mode": "live"}, ui={"toasts": False}
            )
            host = make_host(kind, cfg)
            host.start()
            try:
                await host.advance(5)
                await open_trades(host, trades)
                n_slots = await host.call(probe.install)
                async with maybe_app(host, cfg, with_ui) as app:
                    await asyncio.sleep(2.0)  # the screen has drawn every pane
                    if freeze:  # diagnostic: what gc.freeze() after start-up would give
                        gc.collect()
                        gc.freeze()
                    lat: list[float] = []
                    tot: list[float] = []
                    frames0 = len(app.frame_log.frames) if app else 0
                    t_start = last_second = time.perf_counter()
                    with GcWatch() as gcw:
                        for i in range(warmup + samples):
                            t = time.perf_counter()
                            if t - last_second >= 1.0:  # the market's next second, untimed
                                last_second = t
                                await host.advance(1)
                                t = time.perf_counter()
                            a, b = await host.call(
                                functools.partial(probe.sample, i % n_slots, f"R{i + 1:06d}")
                            )
                            if i >= warmup:
                                lat.append(a)
                                tot.append(b)
                            await asyncio.sleep(
                                max(0.0, SAMPLE_EVERY_S - (time.perf_counter() - t))
                            )
                    elapsed = time.perf_counter() - t_start
                    frames = (len(app.frame_log.frames) - frames0) if app else 0
                    full = gcw.full(t_start, t_start + elapsed)
                    open_now = await host.call(probe.count_open)
                    if open_now != trades:
                        raise RuntimeError(f"expected {trades} open trades, have {open_now}")
            finally:
                host.stop()
                gc.unfreeze()
    finally:
        sys.setswitchinterval(old_switch)
        gc.set_threshold(*old_gc)
    return {
        "label": label,
        "kind": kind,
        "ui": with_ui,
        "samples": len(lat),
        "p50": pct(lat, 50),
        "p90": pct(lat, 90),
        "p99": pct(lat, 99),
        "max": max(lat),
        "tot_p99": pct(tot, 99),
        "fps": frames / elapsed,
        # Collections in this process: the engine's own when it is a thread, not when a process.
        "gc2": len(full) / elapsed,
        "gc2_ms": max(full, default=0.0),
    }


def run(
    samples: int, warmup: int, strikes: int, trades: int, freeze: bool = False
) -> list[dict[str, Any]]:
    out = []
    for label, kind, with_ui in RUNS:
        gc.collect()
        out.append(
            asyncio.run(measure(label, kind, with_ui, samples, warmup, strikes, trades, freeze))
        )
    return out


def report(results: list[dict[str, Any]]) -> bool:
    base_p99 = min(x["p99"] for x in results if not x["ui"])  # the stricter baseline
    rows = []
    ok = True
    for r in results:
        ratio = r["p99"] / base_p99
        verdict = ""
        if r["ui"]:
            passed = ratio <= TARGET_RATIO
            verdict = "ok" if passed else "MISSED"
            if r["label"] == TARGET_RUN:
                ok = ok and passed
            else:
                verdict = f"({verdict})"  # reported, not the target: not what run_app does
        rows.append(
            [
                r["label"],
                str(r["samples"]),
                ms(r["p50"]),
                ms(r["p90"]),
                ms(r["p99"]),
                ms(r["max"]),
                ms(r["tot_p99"]),
                f"{ratio:.2f}",
                f"{r['fps']:.1f}" if r["ui"] else "-",
                f"{r['gc2'] * 60:.0f} / {r['gc2_ms'] * 1e3:.0f}",
                verdict,
            ]
        )
    print(
        "Reaction latency on the engine's loop: max_loss quote into engine.handle() -> "
        "venue.submit() (ms), 1000 strikes, 500 trades"
    )
    print(
        table(
            [
                "",
                "samples",
                "p50",
                "p90",
                "p99",
                "max",
                "handle p99",
                "p99 / best headless",
                "frames/s",
                "full GCs/min / longest ms (this process)",
                f"<={TARGET_RATIO:g}x",
            ],
            rows,
        )
    )
    return ok


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=1000, help="timed samples per run")
    p.add_argument("--warmup", type=int, default=50, help="untimed samples first, per run")
    p.add_argument("--strikes", type=int, default=STRIKES)
    p.add_argument("--trades", type=int, default=TRADES)
    p.add_argument(
        "--gc-freeze",
        action="store_true",
        help="diagnostic: gc.collect() + gc.freeze() once the screen is drawn (not what the "
        "app does today)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> bool:
    args = parse(argv)
    if args.gc_freeze:
        print("(diagnostic run: gc.freeze() once the screen is drawn)")
    return report(run(args.samples, args.warmup, args.strikes, args.trades, args.gc_freeze))


if __name__ == "__main__":
    main(sys.argv[1:])
