"""Reaction latency with screens attached over the control socket vs none, in the same run.

The measurement of ui_reaction.py (`_reaction_probe.sample`: a max_loss quote handled on the
engine loop, latency = entry to the venue's `submit`), on the engine in a child process
(`ProcessEngineHost`, auto_publish off: nothing else publishes) that also serves its control
socket (`engine.control.ControlServer`, started on the engine's loop by `start_control`). The
shipped config with 1000 strikes and 500 open trades, mode live (the sim's paper broker).

Two runs on fresh engines with the same seed:

  no clients     the control socket open, nobody attached;
  3 clients      three subscriber processes attached, each decoding every snapshot it gets back
                 into an `engine.snapshot.Snapshot` (the attached screen's work, without the
                 drawing); the engine builds and encodes a picture every [ui] refresh_seconds.

Target: p99 with three clients <= 1.5x the p99 with none.
Run: .venv/bin/python benchmarks/service_reaction.py [--samples 1000] [--warmup 50] [--clients 3]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _control_probe as control_probe
import _reaction_probe as probe
from _harness import ms, pct, table
from _ui import T0, TRADES, open_trades, ui_config

from engine.clock import ManualClock
from tui.engine_process import ProcessEngineHost

TARGET_RATIO = 1.5
SAMPLE_EVERY_S = 0.015

CLIENT = """
import sys
from pathlib import Path
from engine import control
with control.ControlClient(Path(sys.argv[1]), subscribe=True, timeout=600) as c:
    print("attached", flush=True)
    n = 0
    while True:
        msg = c.read()
        if isinstance(msg, control.SnapshotFrame):
            control.snapshot_from_json(msg.snapshot)
            n += 1
"""


async def measure(label: str, clients: int, samples: int, warmup: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ts-svc-react-") as tmp:
        cfg = ui_config(Path(tmp) / "data", auto_stop={"mode": "live"}, ui={"toasts": False})
        host = ProcessEngineHost(cfg, None, clock=ManualClock(T0), drive=False, auto_publish=False)
        host.start()
        procs: list[subprocess.Popen[str]] = []
        try:
            await host.advance(5)
            await open_trades(host, TRADES)
            n_slots = await host.call(probe.install)
            path = await host.call(control_probe.start_control)
            for _ in range(clients):
                p = subprocess.Popen(
                    [sys.executable, "-c", CLIENT, path], stdout=subprocess.PIPE, text=True
                )
                procs.append(p)
                assert p.stdout is not None and p.stdout.readline().strip() == "attached"
            lat: list[float] = []
            last_second = time.perf_counter()
            for i in range(warmup + samples):
                t = time.perf_counter()
                if t - last_second >= 1.0:  # the market's next second, untimed
                    last_second = t
                    await host.advance(1)
                    t = time.perf_counter()
                a, _b = await host.call(functools.partial(probe.sample, i % n_slots, f"R{i:06d}"))
                if i >= warmup:
                    lat.append(a)
                await asyncio.sleep(max(0.0, SAMPLE_EVERY_S - (time.perf_counter() - t)))
            encoded = await host.call(control_probe.snapshots_encoded)
        finally:
            for p in procs:
                p.kill()
                p.wait()
            host.stop()
    return {
        "label": label,
        "samples": len(lat),
        "p50": pct(lat, 50),
        "p99": pct(lat, 99),
        "max": max(lat),
        "snapshots": encoded,
    }


def main(argv: list[str] | None = None) -> bool:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--clients", type=int, default=3)
    args = ap.parse_args(argv)
    print(
        f"Reaction with attached screens: max_loss quote -> venue submit, no clients vs "
        f"{args.clients} decoding subscribers on the control socket (ms)"
    )
    base = asyncio.run(measure("no clients", 0, args.samples, args.warmup))
    many = asyncio.run(measure(f"{args.clients} clients", args.clients, args.samples, args.warmup))
    rows = [
        [
            r["label"],
            str(r["samples"]),
            ms(r["p50"]),
            ms(r["p99"]),
            ms(r["max"]),
            str(r["snapshots"]),
        ]
        for r in (base, many)
    ]
    print(table(["run", "samples", "p50", "p99", "max", "snapshots encoded"], rows))
    ratio = many["p99"] / base["p99"]
    ok = ratio <= TARGET_RATIO
    print(f"p99 ratio {ratio:.2f} (target <= {TARGET_RATIO}): {'OK' if ok else 'MISSED'}")
    return ok


if __name__ == "__main__":
    raise SystemExit(0 if main() else 1)
