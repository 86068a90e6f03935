"""The engine as a service: attach time, and the engine's memory with a stopped client.

    .venv/bin/python benchmarks/service.py [--seconds 300] [--strikes N]

Starts a real engine (`trade-supervisor start`) on the simulated market in a temp data_dir and
measures, over its control socket:

- attach: connect, handshake, and the first full snapshot decoded back into a `Snapshot`
  (what a screen needs before it can draw), median and worst of 20;
- memory: the engine's RSS (VmRSS) while a subscribed client that never reads (a child process
  stopped with SIGSTOP) stays attached for `--seconds`; the target is flat (a slow client gets
  only the newest snapshot).

Then stops the engine with `trade-supervisor stop --yes`.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _harness import table  # noqa: E402

from engine import control  # noqa: E402

STUCK_CLIENT = """
import socket, struct, sys, time, json
s = socket.socket(socket.AF_UNIX)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
s.connect(sys.argv[1])
b = json.dumps({"type": "hello", "protocol": 1, "subscribe": True}).encode()
s.sendall(struct.pack(">I", len(b)) + b)
print("attached", flush=True)
time.sleep(10**6)
"""


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


ATTACH_TARGET_MS = 1000.0  # attach to the first full snapshot
RSS_GROWTH_TARGET = 1.10  # the engine's memory with a stopped client stays flat (<= 10 % up)


def main(argv: list[str] | None = None) -> bool:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=300.0)
    ap.add_argument("--strikes", type=int, default=0, help="sim strikes (0: the default)")
    args = ap.parse_args(argv)
    print("Engine service: attach time and memory with a stopped client")
    tmp = Path(tempfile.mkdtemp(prefix="ts-bench-"))
    cfg = tmp / "cfg.toml"
    sim = "[sim]\ndemo_trades = 4\n" + (f"strikes = {args.strikes}\n" if args.strikes else "")
    cfg.write_text(
        f'[engine]\ndata_dir = "{tmp / "data"}"\n[alerts]\nlog_file = ""\n'
        "[ui]\nrefresh_seconds = 0.25\n" + sim,
        encoding="utf-8",
    )
    cli = [sys.executable, "-m", "engine.cli", "--config", str(cfg)]
    started = subprocess.run([*cli, "start"], cwd=ROOT, capture_output=True, text=True)
    if started.returncode:
        print(started.stdout, started.stderr)
        return False
    sock = tmp / "data" / "engine.sock"
    stuck = None
    try:
        with control.ControlClient(sock) as c:
            pid = c.welcome.pid
        times = []
        size = 0
        for _ in range(20):
            t0 = time.perf_counter()
            with control.ControlClient(sock, subscribe=True) as c:
                while True:
                    msg = c.read()
                    if isinstance(msg, control.SnapshotFrame):
                        snap = control.snapshot_from_json(msg.snapshot)
                        break
            times.append(time.perf_counter() - t0)
            size = len(snap.strikes)
        attach_ms = statistics.median(times) * 1000
        stuck = subprocess.Popen(
            [sys.executable, "-c", STUCK_CLIENT, str(sock)], stdout=subprocess.PIPE, text=True
        )
        assert stuck.stdout is not None and stuck.stdout.readline().strip() == "attached"
        os.kill(stuck.pid, signal.SIGSTOP)
        samples = [rss_kb(pid)]
        end = time.monotonic() + args.seconds
        while time.monotonic() < end:
            time.sleep(min(5.0, max(0.0, end - time.monotonic())))
            samples.append(rss_kb(pid))
        growth = max(samples) / samples[0]
        print(
            table(
                ["measure", "value", "target", "ok"],
                [
                    [
                        f"attach to first full snapshot ({size} strikes, {len(snap.trades)} trades)",
                        f"median {attach_ms:.1f} ms, worst {max(times) * 1000:.1f} ms",
                        f"<= {ATTACH_TARGET_MS:.0f} ms",
                        "ok" if attach_ms <= ATTACH_TARGET_MS else "MISSED",
                    ],
                    [
                        f"engine RSS, a SIGSTOPped client, {args.seconds:.0f} s",
                        f"{samples[0] / 1024:.1f} -> {samples[-1] / 1024:.1f} MB "
                        f"(max {max(samples) / 1024:.1f})",
                        f"<= x{RSS_GROWTH_TARGET:.2f}",
                        "ok" if growth <= RSS_GROWTH_TARGET else "MISSED",
                    ],
                ],
            )
        )
        ok = attach_ms <= ATTACH_TARGET_MS and growth <= RSS_GROWTH_TARGET
    finally:
        if stuck is not None:
            os.kill(stuck.pid, signal.SIGKILL)
            stuck.wait()
        subprocess.run([*cli, "stop", "--yes"], cwd=ROOT, capture_output=True, text=True)
    return ok


if __name__ == "__main__":
    raise SystemExit(0 if main(sys.argv[1:]) else 1)
