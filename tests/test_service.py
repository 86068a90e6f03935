"""`trade-supervisor start` / `stop` and the verbs against a running engine, for real: every
command is the real CLI in a subprocess, the engine a real background process on the sim with
a temporary data_dir."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.control import ControlClient, wait_until
from engine.store import JOURNAL_FILENAME, Store
from tests.test_cli import Cli, add_trade, trades_json

pytestmark = pytest.mark.slow

# The trade is on a contract the simulated market does not list: never quoted or settled, so it
# stays open whatever the wall clock says.
CONFIG = """
    [sim]
    demo_trades = 0
    speed = 10
"""


def engine_pid(cli: Cli) -> int | None:
    return Store(cli.data / JOURNAL_FILENAME).engine_pid()


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Cli]:
    c = Cli(tmp_path)
    c.write_config(CONFIG)
    yield c
    pid = engine_pid(c)
    if pid is not None and pid > 0:  # never leave an engine behind
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: engine_pid(c) is None, 10)


def run(cli: Cli, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cli.argv("--config", str(cli.config), *args),
        cwd=cli.root,
        env=cli.env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def live_status(cli: Cli) -> dict[str, object]:
    with ControlClient(cli.data.resolve() / "engine.sock") as c:
        st = c.status()
    return {"armed": st.armed, "paused_all": st.paused_all, "open": st.open_trades}  # type: ignore[union-attr]


def test_the_verbs_say_when_no_engine_runs(cli: Cli) -> None:
    for args in (["arm"], ["pause", "m1"], ["kill-switch", "on"], ["close-all", "--yes"]):
        proc = run(cli, *args)
        assert proc.returncode == 1, (args, proc.stderr)
        assert "no engine runs for" in proc.stderr and "nothing was sent" in proc.stderr
    proc = run(cli, "stop", "--yes")
    assert proc.returncode == 1 and "no engine runs" in proc.stdout


def test_start_then_verbs_then_stop(cli: Cli) -> None:
    assert add_trade(cli, "m1").returncode == 0
    started = run(cli, "start")
    assert started.returncode == 0, started.stderr
    pid = engine_pid(cli)
    assert pid is not None and f"engine started (pid {pid})" in started.stdout
    # A service: its own session, detached from ours, and it outlived the command.
    assert os.getsid(pid) == pid != os.getsid(0)
    assert (cli.data / "engine.log").exists()
    status = run(cli, "status")
    assert status.stdout.splitlines()[0].startswith(f"engine:  running (pid {pid})")
    # Live numbers from the running engine: open P&L, risk, the health of each source.
    assert status.stdout.splitlines()[1].startswith("live: open P&L ")
    assert "at risk" in status.stdout and "spot BTC-USD" in status.stdout
    info = json.loads(run(cli, "status", "--json").stdout)
    assert info["live"]["open_positions"] == 1 and "m1" in info["live"]["trades"]

    proc = run(cli, "disarm")
    assert (proc.returncode, proc.stdout.strip()) == (0, "disarmed")
    assert live_status(cli)["armed"] is False
    proc = run(cli, "arm")
    assert (proc.returncode, proc.stdout.strip()) == (0, "armed")
    proc = run(cli, "pause", "m1")
    assert (proc.returncode, proc.stdout.strip()) == (0, "m1 auto-stop paused")
    proc = run(cli, "resume", "m1")
    assert (proc.returncode, proc.stdout.strip()) == (0, "m1 auto-stop resumed")
    proc = run(cli, "pause", "nope")  # refused by the engine: non-zero, its answer printed
    assert proc.returncode == 1 and "no open trade 'nope'" in proc.stdout
    proc = run(cli, "kill-switch", "on")
    assert proc.returncode == 0 and live_status(cli)["paused_all"] is True
    proc = run(cli, "resume")  # no ID: all of them
    assert proc.returncode == 0 and live_status(cli)["paused_all"] is False
    proc = run(cli, "reload")
    assert proc.returncode == 0 and "config reloaded" in proc.stdout

    # close-all wants the typed word: anything else sends nothing.
    proc = run(cli, "close-all", stdin="yes\n")
    assert proc.returncode == 2 and "nothing was sent" in proc.stderr
    assert live_status(cli)["open"] == ["m1"]

    # stop asks, warns that the armed engine's trade loses protection, and is refused unless
    # the word is typed.
    proc = run(cli, "stop", stdin="\n")
    assert proc.returncode == 2 and "not stopped" in proc.stderr
    assert "ARMED" in proc.stderr and "m1" in proc.stderr
    assert engine_pid(cli) == pid
    proc = run(cli, "stop", stdin="stop\n")
    assert proc.returncode == 0, proc.stderr
    assert f"engine (pid {pid}) stopped" in proc.stdout
    assert engine_pid(cli) is None
    assert not (cli.data / "engine.sock").exists()

    status = run(cli, "status").stdout.splitlines()
    assert status[0].startswith("engine:  not running")
    assert status[1].startswith("last seen ") and " 0s ago" not in status[1]
    assert "its 1 open trade(s) are UNPROTECTED" in status[1]
    # The journal commands keep working with no engine.
    assert [t["trade_id"] for t in trades_json(cli)] == ["m1"]


def test_start_up_errors_print_in_the_terminal_with_their_exit_code(cli: Cli) -> None:
    cli.data.mkdir()
    (cli.data / JOURNAL_FILENAME).write_bytes(b"this is not a database" * 100)
    proc = run(cli, "start")
    assert proc.returncode == 1
    assert "journal" in proc.stderr and "the engine did not start (exit code 1)" in proc.stderr
    assert engine_pid(cli) is None


def test_start_when_one_runs_and_after_one_was_killed(cli: Cli) -> None:
    assert run(cli, "start").returncode == 0
    first = engine_pid(cli)
    again = run(cli, "start")
    assert (
        again.returncode == 0
        and f"already runs for {cli.data.resolve()} (pid {first})" in again.stdout
    )
    assert first is not None
    os.kill(first, signal.SIGKILL)  # leaves its socket file and lock file behind
    assert wait_until(lambda: engine_pid(cli) is None, 10)
    assert (cli.data / "engine.sock").exists()
    status = run(cli, "status").stdout
    assert "engine:  not running" in status and "last seen" in status
    restarted = run(cli, "start")
    assert restarted.returncode == 0, restarted.stderr
    second = engine_pid(cli)
    assert second not in (None, first)
    proc = run(cli, "disarm")
    assert proc.returncode == 0 and proc.stdout.strip() == "disarmed"


def test_headless_serves_the_same_socket(cli: Cli) -> None:
    from tests.test_cli import Engine

    eng = Engine(cli)
    try:
        eng.wait_for(lambda line: line.startswith("trade-supervisor: venue"))
        assert "control socket" in eng.lines[-1]
        proc = run(cli, "kill-switch", "on")
        assert (proc.returncode, proc.stdout.strip()) == (0, "all auto-stops paused")
        proc = run(cli, "stop", "--yes")
        assert proc.returncode == 0, proc.stderr
        assert eng.proc.wait(timeout=30) == 0
    finally:
        eng.kill()
    print(json.dumps(eng.lines))


def test_status_and_the_verbs_need_no_venue_secrets(cli: Cli) -> None:
    cli.write_config('    venue = "kalshi"\n    [auto_stop]\n    mode = "alert_only"\n')
    assert "kalshi" in cli.config.read_text()
    env = {k: v for k, v in cli.env.items() if not k.startswith("KALSHI_")}
    proc = subprocess.run(
        cli.argv("--config", str(cli.config), "status"),
        cwd=cli.root, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run(
        cli.argv("--config", str(cli.config), "arm"),
        cwd=cli.root, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1 and "no engine runs" in proc.stderr
    # The engine itself still refuses to start without the key.
    proc = subprocess.run(
        cli.argv("--config", str(cli.config), "start"),
        cwd=cli.root, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2 and "Kalshi API key" in proc.stderr
