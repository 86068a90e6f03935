"""Run every benchmark (engine, then UI) and print the machine they ran on.

Run: uv run python benchmarks/run_all.py [--profile] [--strict] [--no-ui] [--no-cpu]
  --profile  also cProfile the tick and spot-update paths (tick_cost.py --profile)
  --strict   exit 1 when a target is missed (the default always exits 0: numbers, not a gate)
  --no-ui    only the engine benchmarks (about 3.5 min: kalshi_reaction.py's ~45 s,
             stall_reaction.py's ~75 s and recovery.py's ~75 s included)
  --no-cpu   skip ui_cpu.py (two 60 s runs of the real app under tmux, plus start-up, and a wait
             for the next hour when the simulated ladder would settle during the run)
"""

from __future__ import annotations

import argparse
import sys
import time

import kalshi_reaction
import reaction_latency
import recovery
import service
import service_reaction
import stall_reaction
import tape
import tick_cost
import ui_cpu
import ui_reaction
import ui_update
from _harness import machine


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", action="store_true", help="cProfile the tick and spot paths")
    p.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    p.add_argument("--no-ui", action="store_true", help="only the engine benchmarks")
    p.add_argument("--no-cpu", action="store_true", help="skip ui_cpu.py (tmux, ~3 min)")
    args = p.parse_args(argv)

    print("Machine")
    for key, value in machine():
        print(f"  {key:<10} {value}")
    print()
    t0 = time.perf_counter()
    ok = reaction_latency.main([])
    print()
    ok = tick_cost.main(["--profile"] if args.profile else []) and ok
    print()
    ok = kalshi_reaction.main([]) and ok
    print()
    ok = stall_reaction.main([]) and ok
    print()
    ok = recovery.main([]) and ok
    print()
    ok = tape.main([]) and ok
    print()
    ok = service_reaction.main([]) and ok
    print()
    ok = service.main(["--seconds", "60"]) and ok
    if not args.no_ui:
        print()
        ok = ui_update.main([]) and ok
        print()
        ok = ui_reaction.main([]) and ok
        if not args.no_cpu:
            print()
            ok = ui_cpu.main([]) and ok
    print()
    print(f"all targets met: {'yes' if ok else 'NO'} ({time.perf_counter() - t0:.0f} s)")
    return 0 if ok or not args.strict else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
