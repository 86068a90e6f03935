"""A smoke run of every benchmark (benchmarks/*.py with a `main(argv)`), so none of them rots.

Each benchmark's `main()` is called, as `run_all.py` calls it, with tiny arguments, in a child
process of its own (they set process-wide things: the switch interval, GC thresholds, patched
httpcore methods). The test asserts that `main()` returned a bool and that the benchmark printed
its title and its table; never the numbers (no timing assertions: a smoke run on a shared
machine measures nothing). A benchmark added to benchmarks/ without an entry in SMOKE fails here,
and so does one that `run_all.py` does not run.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"


@dataclass(frozen=True)
class Smoke:
    args: list[str]
    title: str  # the first words of the line the benchmark prints above its table
    slow: bool = False  # over ~10 s here, or needs tmux
    needs: list[str] = field(default_factory=list)  # programs on PATH, else skipped
    timeout: float = 120.0


SMOKE: dict[str, Smoke] = {
    "reaction_latency": Smoke(
        ["--sizes", "10", "--samples", "5", "--warmup", "1"],
        "Reaction latency: max_loss quote into engine.handle()",
    ),
    "tick_cost": Smoke(
        ["--trades", "20", "--iterations", "5", "--warmup", "1"],
        "Evaluation pass cost at 20 open trades",
    ),
    "kalshi_reaction": Smoke(
        ["--samples", "3", "--warmup", "1", "--positions", "10"],
        "Kalshi reaction latency: orderbook_delta sent",
    ),
    "stall_reaction": Smoke(
        ["--quick"], "Reaction of a second trade while a first trade's exit is stalled"
    ),
    "recovery": Smoke(["--quick"], "Kalshi market data back after a 3 s outage"),
    "service_reaction": Smoke(
        ["--samples", "20", "--warmup", "5", "--clients", "1"], "Reaction with attached screens"
    ),
    # starts the engine service in the background and attaches 20 times
    "service": Smoke(["--seconds", "1"], "Engine service: attach time", slow=True),
    "tape": Smoke(["--quick"], "Tape: reaction (max_loss quote -> PaperVenue.submit), tape off vs on"),
    "ui_update": Smoke(
        ["--samples", "3", "--warmup", "1", "--strikes", "50", "--trades", "20"],
        "UI update cost at 200x50: 50 strikes, 20 open trades",
    ),
    # Four runs, two of them with the engine in a child process: ~13 s of start-ups.
    "ui_reaction": Smoke(
        ["--samples", "20", "--warmup", "5", "--strikes", "50", "--trades", "20"],
        "Reaction latency on the engine's loop",
        slow=True,
    ),
    # run-app twice in tmux: ~35 s of start-ups.
    "ui_cpu": Smoke(
        ["--quick"], "CPU share of the process tree", slow=True, needs=["tmux"], timeout=240.0
    ),
}

# Calls the benchmark's main() as run_all.py does (benchmarks/ first on the path, as when a
# script runs) and says what it returned. An exception prints its traceback and ends the process
# at once: a benchmark that raised mid-run can leave a thread behind (aiosqlite's worker of a
# store never closed) that would keep the interpreter from exiting until the test's timeout.
DRIVER = """
import importlib, os, sys, traceback
sys.path.insert(0, sys.argv[1])
try:
    rv = importlib.import_module(sys.argv[2]).main(sys.argv[3:])
except BaseException:
    traceback.print_exc()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)
print(f"\\nmain() returned {rv!r}")
sys.exit(0 if isinstance(rv, bool) else 3)
"""


def benchmarks() -> list[str]:
    """The benchmark scripts: benchmarks/*.py defining a top-level `main` (not _*.py helpers,
    not run_all.py)."""
    out = []
    for path in sorted(BENCH.glob("*.py")):
        if path.name.startswith("_") or path.stem == "run_all":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body):
            out.append(path.stem)
    return out


def _params() -> list[object]:
    names = sorted(set(benchmarks()) | set(SMOKE))
    return [
        pytest.param(n, marks=[pytest.mark.slow] if n in SMOKE and SMOKE[n].slow else [], id=n)
        for n in names
    ]


def _table_after(out: str, title: str) -> bool:
    """`title` printed, followed (within a few lines) by a table: a header, a rule of dashes,
    at least one row."""
    lines = out.splitlines()
    for i, line in enumerate(lines):
        if title not in line:
            continue
        for j in range(i + 1, min(i + 6, len(lines) - 1)):
            if re.fullmatch(r"-+( +-+)*", lines[j].strip()) and lines[j - 1].strip():
                return bool(lines[j + 1].strip())
    return False


def test_benchmarks_are_found() -> None:
    found = benchmarks()
    assert "reaction_latency" in found and "ui_cpu" in found, found


@pytest.mark.parametrize("name", _params())
def test_benchmark_smoke(name: str, tmp_path: Path) -> None:
    assert name in benchmarks(), (
        f"SMOKE in tests/test_benchmarks_smoke.py names {name!r}, but benchmarks/{name}.py "
        "(with a main(argv)) is not there: remove the entry"
    )
    assert name in SMOKE, (
        f"benchmarks/{name}.py has a main(argv) but no smoke run: add an entry to SMOKE in "
        "tests/test_benchmarks_smoke.py (tiny arguments; add a --quick flag if it has no small "
        "mode; slow=True if it takes over ~10 s)"
    )
    smoke = SMOKE[name]
    for program in smoke.needs:
        if shutil.which(program) is None:
            pytest.skip(f"{name}: needs {program}")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # The child runs on this interpreter already. Without the test environment's bin/ first on
    # PATH, the scripts that start `run-app` (ui_cpu, through tmux, whose server takes this
    # environment) find uv as a user's shell does, not a `python3` of the venv that lacks it.
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(d for d in env.get("PATH", "").split(os.pathsep) if d != venv_bin)
    env.pop("VIRTUAL_ENV", None)
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, str(BENCH), name, *smoke.args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=smoke.timeout,
    )
    out = proc.stdout
    assert proc.returncode == 0, (
        f"benchmarks/{name}.py {' '.join(smoke.args)} failed (exit {proc.returncode}):\n"
        f"{out[-3000:]}\n{proc.stderr[-5000:]}"
    )
    assert "main() returned" in out
    assert _table_after(out, smoke.title), (
        f"benchmarks/{name}.py printed no table under {smoke.title!r}:\n{out[-3000:]}"
    )


def test_run_all_runs_every_benchmark() -> None:
    """run_all.py imports every benchmark and calls its main()."""
    tree = ast.parse((BENCH / "run_all.py").read_text(encoding="utf-8"))
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    called = {
        n.func.value.id
        for n in ast.walk(tree)
        if isinstance(n, ast.Call)
        and isinstance(n.func, ast.Attribute)
        and n.func.attr == "main"
        and isinstance(n.func.value, ast.Name)
    }
    missing = [b for b in benchmarks() if b not in imported or b not in called]
    assert not missing, f"benchmarks/run_all.py does not run {missing}: import it, call its main()"


@pytest.mark.slow
def test_stall_reaction_shows_a_blocked_second_trade(tmp_path: Path) -> None:
    """The stall benchmark can fail: with exits awaited on the reaction path (`--inline-orders`,
    the engine before `Engine._orders_in_tasks`), the second trade's exit waits for the held
    first order, and the benchmark says so instead of reporting a latency (~5 s: its wait)."""
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, str(BENCH), "stall_reaction", "--quick", "--inline-orders"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120.0,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "MISSED: the second trade waited for the stalled order" in proc.stdout, proc.stdout
    assert "main() returned False" in proc.stdout
