"""UI update cost: one engine snapshot with 1000 strikes and 500 open trades -> the frame painted.

The real app (`TradeSupervisorApp`, headless via `run_test(size=(200, 50))`) over a real engine
host with a ManualClock (`drive=False`, `auto_publish=False`): by default `ProcessEngineHost`, the
engine in a child process as `run_app` runs it (`--host thread`: `EngineHost`, the engine on a
thread of this process, `[ui] engine = "thread"`). The shipped config with
`sim.strikes = 1000`, `sim.demo_trades = 0`, and 500 trades opened through the engine's command
interface (`Command("add_trade", ...)`), spread evenly over the strikes (see `_ui.py`). Each sample:

  untimed  `await host.advance(1)`: one second of the simulated market (a spot print and a new
           quote for every strike), an engine tick and a snapshot, captured instead of posted;
  timed    t0 = perf_counter(), c0 = thread_time() on the UI thread;
           `app.post_message(SnapshotReady(snap))` (what the engine host does), then wait until
           the frame is painted and 60 ms more for any follow-up frame. The paint is
           `Screen._compositor_refresh`: every dirty widget rendered, the compositor update built
           and, because headless `App._display` skips it (textual/app.py checks `is_headless`),
           encoded to terminal escape sequences by `_ui.FrameApp` (`render_segments`), so the
           frame costs what a terminal frame costs minus the write system call.
           update (CPU)  = UI-thread CPU from t0 to the end of the last frame. The engine is
                           idle meanwhile, so this is the UI's own work, without idle waits.
           update (wall) = t0 to the end of the last frame; includes Textual's frame pacing
                           (the screen repaints at most every 1/60 s after the widgets ask).
           render_main   = diffing the four panes against the snapshot (inside the CPU figure).
           paint         = Screen._compositor_refresh incl. the encoding (inside the CPU figure).

It also counts the cells per update: those whose displayed text or style changed, over all 1500
rows, and those written to the tables (`LiveTable.updates`: rows off screen wait until they are
shown). It checks that prices really move: the share of strikes whose YES quote changed since the
previous snapshot, and of rows whose displayed inputs changed. It counts the full (generation 2)
garbage collections of this process that started inside a timed update: one costs more than an
update (with `--host thread`, the engine's objects are in this process's heap too).

`--gc-freeze` (diagnostic) calls gc.freeze() once the screen is drawn, which the app does not do;
`--profile` runs pyinstrument over the timed part (uv run --with pyinstrument ...).

Target: update p99 <= 50 ms (CPU of the UI thread).
Run: uv run python benchmarks/ui_update.py [--samples 150] [--warmup 10] [--gc-freeze] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _harness import ms, pct, table
from _ui import SIZE, STRIKES, T0, TRADES, FrameApp, GcWatch, open_trades, ui_config

from engine.clock import ManualClock
from engine.snapshot import Snapshot
from tui.app import tune_gc_for_the_screen
from tui.engine_process import ProcessEngineHost
from tui.format import Palette
from tui.host import EngineHost
from tui.messages import SnapshotReady
from tui.panes import StrikesPane, TradesPane
from tui.rows import strike_row, trade_row

TARGET_P99_S = 0.050
QUIET_S = 0.06  # after the first frame: wait this long for follow-up frames


def _changes(prev: Snapshot, snap: Snapshot) -> dict[str, float]:
    """How much of the market moved between two snapshots (shares of rows)."""
    old = {s.contract_id: s for s in prev.strikes}
    quoted = moved = 0
    for s in snap.strikes:
        o = old.get(s.contract_id)
        if o is None:
            continue
        quoted += (o.yes_bid, o.yes_ask) != (s.yes_bid, s.yes_ask)
        moved += (o.buffer, o.prob, o.yes_bid, o.yes_ask, o.volume) != (
            s.buffer,
            s.prob,
            s.yes_bid,
            s.yes_ask,
            s.volume,
        )
    old_t = {t.trade_id: t for t in prev.trades}
    marked = sum(1 for t in snap.trades if t.trade_id in old_t and old_t[t.trade_id].mark != t.mark)
    n = max(len(snap.strikes), 1)
    return {
        "quote": quoted / n,
        "strike_moved": moved / n,
        "mark": marked / max(len(snap.trades), 1),
    }


def _cells_changed(prev: Snapshot, snap: Snapshot) -> int:
    """Displayed cells that differ between two snapshots, over all rows (on screen or not)."""
    pal = Palette()
    n = 0
    pairs: tuple[tuple[Any, Any, Any], ...] = (
        (prev.strikes, snap.strikes, strike_row),
        (prev.trades, snap.trades, trade_row),
    )
    for before, after, make in pairs:
        old = {r.key: r.cells for r in (make(x, pal) for x in before)}
        for x in after:
            new = make(x, pal)
            o = old.get(new.key)
            n += (
                len(new.cells)
                if o is None
                else sum(a != b for a, b in zip(o, new.cells, strict=True))
            )
    return n


async def measure(
    samples: int,
    warmup: int,
    strikes: int,
    trades: int,
    size: tuple[int, int],
    prof: Any = None,
    freeze: bool = False,
    host_kind: str = "process",
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ts-ui-bench-") as tmp:
        cfg = ui_config(Path(tmp) / "data", strikes)
        kind = ProcessEngineHost if host_kind == "process" else EngineHost
        host = kind(cfg, None, clock=ManualClock(T0), drive=False, auto_publish=False)
        host.start()
        try:
            # The engine holds its trades before the screen starts, as when run_app starts.
            await host.advance(5)
            await open_trades(host, trades)
            await host.advance(1)
            app = FrameApp(cfg, host)
            async with app.run_test(size=size) as pilot:
                await pilot.pause()
                await pilot.pause()
                assert app.main is not None
                snaps: list[Snapshot] = []
                host.on_snapshot = snaps.append  # captured; the sample posts it itself
                app.watch_paint(app.main)
                tables = [
                    app.main.query_one(TradesPane).table,
                    app.main.query_one(StrikesPane).table,
                ]
                visible = [t.content_region.height for t in tables]
                frames = app.frame_log.frames
                keys = "cpu wall render paint encode cells changed frames chars gc2 gc2_ms"
                out: dict[str, list[float]] = {k: [] for k in keys.split()}
                out.update(quote=[], strike_moved=[], mark=[])
                prev = app.snapshot
                if freeze:  # diagnostic: what gc.freeze() after the first frame would give
                    gc.collect()
                    gc.freeze()
                with GcWatch() as gcw:
                    t_run = time.perf_counter()
                    for i in range(warmup + samples):
                        snaps.clear()
                        await host.advance(1)
                        snap = snaps[-1]
                        n_frames, n_render = len(frames), len(app.render_times)
                        updates = sum(t.updates for t in tables)
                        app.frame_event.clear()
                        timed = i >= warmup
                        if timed and prof is not None:
                            prof.start()
                        t0 = time.perf_counter()
                        c0 = time.thread_time()
                        app.post_message(SnapshotReady(snap))
                        await asyncio.wait_for(app.frame_event.wait(), 30)
                        await asyncio.sleep(QUIET_S)
                        if timed and prof is not None:
                            prof.stop()
                        new = frames[n_frames:]
                        if not timed:
                            prev = snap
                            continue
                        full = gcw.full(t0, new[-1].t_end)
                        out["cpu"].append(new[-1].cpu_end - c0)
                        out["wall"].append(new[-1].t_end - t0)
                        out["render"].append(sum(app.render_times[n_render:]))
                        out["paint"].append(sum(f.paint for f in new))
                        out["encode"].append(sum(f.encode for f in new))
                        out["cells"].append(sum(t.updates for t in tables) - updates)
                        out["frames"].append(len(new))
                        out["chars"].append(sum(f.chars for f in new))
                        out["gc2"].append(len(full))
                        out["gc2_ms"].extend(full)
                        if prev is not None:
                            out["changed"].append(_cells_changed(prev, snap))
                            for k, v in _changes(prev, snap).items():
                                out[k].append(v)
                        prev = snap
                    run_s = time.perf_counter() - t_run
                    run_full = gcw.full(t_run, t_run + run_s)
                rows = [t.row_count for t in tables]
                if rows != [trades, strikes]:
                    raise RuntimeError(
                        f"expected {trades} trades and {strikes} strikes, got {rows}"
                    )
        finally:
            host.stop()
            gc.unfreeze()
    return {
        "series": out,
        "rows": rows,
        "visible": visible,
        "size": size,
        "gc2_per_min": len(run_full) * 60 / run_s,
        "gc2_longest": max(run_full, default=0.0),
    }


def report(r: dict[str, Any]) -> bool:
    s = r["series"]
    n = len(s["cpu"])
    rows = []
    for label, key in (
        ("update (UI-thread CPU)", "cpu"),
        ("update (wall, incl. frame pacing)", "wall"),
        ("  render_main (diff the panes)", "render"),
        ("  paint (render + compositor + encode)", "paint"),
        ("    of which encode", "encode"),
    ):
        xs = s[key]
        rows.append([label, ms(pct(xs, 50)), ms(pct(xs, 90)), ms(pct(xs, 99)), ms(max(xs))])
    p99 = pct(s["cpu"], 99)
    ok = p99 <= TARGET_P99_S
    w, h = r["size"]
    print(
        f"UI update cost at {w}x{h}: {r['rows'][1]} strikes, {r['rows'][0]} open trades, "
        f"one snapshot per simulated second, {n} samples (ms)"
    )
    print(table(["", "p50", "p90", "p99", "max"], rows))
    med = statistics.median
    print(
        f"cells per update: {med(s['changed']):.0f} changed (median, all rows), "
        f"{med(s['cells']):.0f} written to the tables (median; min {min(s['cells']):.0f}, "
        f"max {max(s['cells']):.0f}: rows off screen wait until shown); "
        f"frames per update: median {med(s['frames']):.0f}; "
        f"terminal output per update: median {med(s['chars']) / 1024:.1f} KiB"
    )
    print(
        f"rows visible: trades {r['visible'][0]}, strikes {r['visible'][1]}; per second "
        f"{100 * statistics.mean(s['quote']):.1f}% of strikes get a new YES bid/ask, "
        f"{100 * statistics.mean(s['strike_moved']):.1f}% change a displayed input "
        f"(buffer, prob, quote or volume), {100 * statistics.mean(s['mark']):.1f}% of trades "
        "change mark"
    )
    gc_ms = s["gc2_ms"]
    print(
        f"full garbage collections inside the timed updates: {len(gc_ms)} in {n} updates"
        + (f" ({', '.join(f'{x * 1e3:.0f}' for x in sorted(gc_ms)[-5:])} ms)" if gc_ms else "")
        + f"; over the whole run {r['gc2_per_min']:.1f} a minute in this process, the longest "
        f"{r['gc2_longest'] * 1e3:.0f} ms"
    )
    print(
        f"target update p99 <= {TARGET_P99_S * 1e3:g} ms: {ms(p99)} ms {'ok' if ok else 'MISSED'}"
    )
    return ok


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=150, help="timed updates")
    p.add_argument("--warmup", type=int, default=10, help="untimed updates first")
    p.add_argument("--strikes", type=int, default=STRIKES)
    p.add_argument("--trades", type=int, default=TRADES)
    p.add_argument("--size", type=int, nargs=2, default=list(SIZE), metavar=("W", "H"))
    p.add_argument(
        "--gc-freeze",
        action="store_true",
        help="diagnostic: gc.collect() + gc.freeze() once the screen is drawn (not what the "
        "app does today)",
    )
    p.add_argument(
        "--host",
        choices=["process", "thread"],
        default="process",
        help="where the engine runs: a child process (run_app's default) or a thread of this "
        'process ([ui] engine = "thread")',
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="pyinstrument over the timed part (uv run --with pyinstrument ...)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> bool:
    args = parse(argv)
    prof = None
    if args.profile:
        from pyinstrument import Profiler

        prof = Profiler(async_mode="disabled")
    old_gc = tune_gc_for_the_screen()  # as run_app does
    gc.collect()
    r = asyncio.run(
        measure(
            args.samples,
            args.warmup,
            args.strikes,
            args.trades,
            tuple(args.size),
            prof,
            args.gc_freeze,
            args.host,
        )
    )
    print(
        f"(engine: {'a child process' if args.host == 'process' else 'a thread of this process'})"
    )
    gc.set_threshold(*old_gc)
    if args.gc_freeze:
        print("(diagnostic run: gc.freeze() after the first frame)")
    ok = report(r)
    if prof is not None:
        print(prof.output_text(unicode=True, color=False))
    return ok


if __name__ == "__main__":
    main(sys.argv[1:])
