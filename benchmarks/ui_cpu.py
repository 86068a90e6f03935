"""CPU share of the real app over a minute: 1000 strikes, 500 open trades, a 200x50 terminal.

The app runs as a user runs it: `run-app --config bench.toml` inside a detached tmux session of
200x50 (tmux is the terminal: every frame is written to it), on the real-time simulated market.
bench.toml sets only a temp data dir, `sim.strikes = 1000` and `sim.demo_trades = 0`; everything
else is the shipped default (sim venue, dry_run, armed, refresh 0.25 s, tick 1 s). Before the
start, 500 trades are written into the journal with `Store.add_trade` (as `trades add` does),
spread evenly over the ladder the sim will list (see _ui.py `specs_for`): the engine adopts them
at start-up.

Once the screen shows 500 trades and 1000 strikes, and 5 s more, the CPU time (utime + stime in
/proc/<pid>/stat) of the whole process tree (run-app's uv and the Python process with all its
threads: UI, engine, SQLite) is read, and again after 60 s of wall time. CPU share = CPU seconds
/ wall seconds, in % of one core. Then the same with `--headless`, for comparison.

The sim lists a new ladder every hour and settles the old one (and ttc_cutoff closes trades in
the last 2 minutes): a run that would reach the last 4 minutes before the hour first waits for
the next hour. Skipped with a message when tmux is missing. The tmux session is killed at the end.

Target: <= 15% of one core with the UI.
Run: uv run python benchmarks/ui_cpu.py [--seconds 60] [--no-headless] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _harness import table
from _ui import ROOT, SIZE, STRIKES, TRADES, specs_for

from engine.config import load_config
from engine.models import ContractEvent, QuoteEvent, Trade
from engine.sim import SimMarket
from engine.store import JOURNAL_FILENAME, Store

TARGET_PCT = 15.0
HOUR = 3600
CLK_TCK = os.sysconf("SC_CLK_TCK")
READY_TIMEOUT_S = 90.0
SETTLE_S = 5.0  # after the screen shows everything
TTC_CUTOFF_S = 120.0  # the shipped auto_stop.criteria.ttc_cutoff_seconds


def write_setup(tmp: Path, strikes: int, trades: int) -> Path:
    """bench.toml and a journal holding `trades` open trades on the ladder the sim will list."""
    data = tmp / "data"
    cfg_path = tmp / "bench.toml"
    cfg_path.write_text(
        f'[engine]\ndata_dir = "{data}"\n\n[sim]\nstrikes = {strikes}\ndemo_trades = 0\n',
        encoding="utf-8",
    )
    cfg = load_config(cfg_path)
    now = time.time()
    market = SimMarket(cfg.sim, now)  # what build_runtime creates on a fresh data dir
    events = market.advance_to(now)
    contracts = [e.contract for e in events if isinstance(e, ContractEvent)]
    quotes = {e.quote.id: e.quote for e in events if isinstance(e, QuoteEvent)}
    specs = specs_for(contracts, quotes, trades, prefix="C")

    async def journal() -> None:
        data.mkdir(parents=True, exist_ok=True)
        store = Store(data / JOURNAL_FILENAME)
        await store.open()
        try:
            for p in specs:
                t = Trade(
                    trade_id=p["trade_id"],
                    contract_id=p["contract_id"],
                    side=p["side"],
                    qty=p["qty"],
                    entry_price=p["price"],
                    opened_ts=now,
                    venue=cfg.engine.venue,
                )
                if not await store.add_trade(t, source="manual"):
                    raise RuntimeError(f"could not journal {t.trade_id}")
        finally:
            await store.close()

    asyncio.run(journal())
    return cfg_path


def tree(root: int) -> list[int]:
    """`root` and all its descendants (from /proc/*/stat parent pids)."""
    parent: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            parent[int(d)] = int(stat.rsplit(")", 1)[1].split()[1])
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(c for c, pp in parent.items() if pp == p)
    return out


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / CLK_TCK


def tmux(*args: str) -> str:
    return subprocess.run(
        ["tmux", *args], check=True, capture_output=True, text=True, timeout=30
    ).stdout


def wait_for_ladder(needed_s: float) -> None:
    left = HOUR - time.time() % HOUR
    if left < needed_s:
        wait = left + 5.0
        print(
            f"(waiting {wait:.0f} s for the next hourly ladder: the sim settles every trade at "
            "the top of the hour)",
            flush=True,
        )
        time.sleep(wait)


def ready(screen: str, headless: bool, trades: int, strikes: int) -> bool:
    if headless:
        return re.search(rf"\b{trades} open trades\b", screen) is not None
    return (
        "Open trades" in screen
        and re.search(rf"\b{trades}\b", screen) is not None
        and re.search(rf"\b{strikes}\b", screen) is not None
    )


def measure(
    headless: bool,
    seconds: float,
    strikes: int,
    trades: int,
    settle: float = SETTLE_S,
    ladder_wait: bool = True,
) -> dict[str, float]:
    if ladder_wait:
        wait_for_ladder(READY_TIMEOUT_S + settle + seconds + TTC_CUTOFF_S + 30.0)
    session = f"ts-ui-cpu-{os.getpid()}"
    with tempfile.TemporaryDirectory(prefix="ts-ui-cpu-") as tmp_name:
        tmp = Path(tmp_name)
        cfg_path = write_setup(tmp, strikes, trades)
        env = f"PYTHONPATH={os.environ['PYTHONPATH']} " if os.environ.get("PYTHONPATH") else ""
        cmd = f"cd {tmp} && exec env {env}{ROOT / 'run-app'} --config {cfg_path}"
        if headless:
            cmd += " --headless"
        w, h = SIZE
        tmux("new-session", "-d", "-s", session, "-x", str(w), "-y", str(h), cmd)
        pid = 0
        try:
            pid = int(tmux("display-message", "-p", "-t", session, "#{pane_pid}").strip())
            t_end = time.time() + READY_TIMEOUT_S
            screen = ""
            while time.time() < t_end:
                screen = tmux("capture-pane", "-p", "-t", session)
                if ready(screen, headless, trades, strikes):
                    break
                time.sleep(0.5)
            else:
                raise RuntimeError(f"the app did not show {trades} trades in time:\n{screen}")
            time.sleep(settle)
            pids = tree(pid)
            c0, t0 = cpu_seconds(pids), time.perf_counter()
            time.sleep(seconds)
            pids = sorted(set(pids) | set(tree(pid)))
            c1, t1 = cpu_seconds(pids), time.perf_counter()
            screen = tmux("capture-pane", "-p", "-t", session)
            still = ready(screen, headless, trades, strikes)
        finally:
            with_pids = tree(pid) if pid else []
            subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True, timeout=30)
            _reap(with_pids)
        return {
            "headless": headless,
            "cpu": c1 - c0,
            "wall": t1 - t0,
            "pct": 100.0 * (c1 - c0) / (t1 - t0),
            "still": still,
        }


def _reap(pids: list[int]) -> None:
    """Wait for the processes this run started to exit (SIGTERM, then SIGKILL, by pid)."""
    deadline = time.time() + 20.0
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        alive = [p for p in pids if Path(f"/proc/{p}").exists()]
        if not alive:
            return
        for p in alive:
            if sig is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, sig)
        while time.time() < deadline and any(Path(f"/proc/{p}").exists() for p in alive):
            time.sleep(0.2)
        deadline = time.time() + 5.0


def report(results: list[dict[str, float]], strikes: int = STRIKES, trades: int = TRADES) -> bool:
    rows = []
    ok = True
    for r in results:
        verdict = "-"
        if not r["headless"]:
            ok = r["pct"] <= TARGET_PCT
            verdict = "ok" if ok else "MISSED"
        rows.append(
            [
                "headless" if r["headless"] else f"ui {SIZE[0]}x{SIZE[1]} (tmux)",
                f"{r['wall']:.1f}",
                f"{r['cpu']:.2f}",
                f"{r['pct']:.1f}",
                "yes" if r["still"] else "NO",
                verdict,
            ]
        )
    print(f"CPU share of the process tree, real-time sim, {strikes} strikes, {trades} trades")
    print(
        table(
            ["", "wall s", "CPU s", "% of a core", "all trades shown", f"<={TARGET_PCT:g}%"],
            rows,
        )
    )
    return ok


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=60.0, help="wall time measured per run")
    p.add_argument("--strikes", type=int, default=STRIKES)
    p.add_argument("--trades", type=int, default=TRADES)
    p.add_argument("--no-headless", action="store_true", help="skip the headless comparison")
    p.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: 2 s per run, 50 strikes, 20 trades, 1 s settle, no wait for the next "
        "hourly ladder (the numbers mean little)",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.seconds, args.strikes, args.trades = 2.0, 50, 20
    return args


def main(argv: list[str] | None = None) -> bool:
    args = parse(argv)
    if shutil.which("tmux") is None:
        print("ui_cpu: skipped, tmux is not installed (apt-get install tmux)")
        return True
    how = {"settle": 1.0, "ladder_wait": False} if args.quick else {}
    results = [measure(False, args.seconds, args.strikes, args.trades, **how)]
    if not args.no_headless:
        results.append(measure(True, args.seconds, args.strikes, args.trades, **how))
    return report(results, args.strikes, args.trades)


if __name__ == "__main__":
    main(sys.argv[1:])
