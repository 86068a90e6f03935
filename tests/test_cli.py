"""The `trade-supervisor` command line, run for real in subprocesses.

Each test runs `python -m engine.cli` in its own tmp_path (the working directory), with a config
whose `[engine] data_dir` points into tmp_path and HOME / XDG dirs moved into tmp_path, so no
user config or data is read or written. Tests that start a long-running headless engine are
marked slow; they wait on the engine's output lines with a deadline, never on fixed sleeps.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from textwrap import dedent
from typing import Any

import pytest

from engine.replay_format import ReplayLineError, parse_line

CID = "KXBTCD-25NOV2114-T97000"
SECRET_ID = "key-id-SECRET-6d1f0c9e"
SECRET_PATH = "/home/trader/.kalshi/SECRET-key.pem"


class Cli:
    """Runs the CLI in one directory with an isolated environment."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.config = root / "cfg.toml"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("KALSHI_")}
        self.env.update(
            HOME=str(root / "home"),
            XDG_CONFIG_HOME=str(root / "xdg-config"),
            XDG_DATA_HOME=str(root / "xdg-data"),
            PYTHONUNBUFFERED="1",
        )

    def write_config(self, extra: str = "", name: str = "cfg.toml") -> Path:
        path = self.root / name
        path.write_text(f'[engine]\ndata_dir = "{self.data}"\n' + dedent(extra), encoding="utf-8")
        return path

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "engine.cli", *args]

    def run(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args),
            cwd=self.root,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def ok(self, *args: str) -> str:
        proc = self.run(*args)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    c = Cli(tmp_path)
    c.write_config()
    return c


# --- check-config and config errors -------------------------------------------------------------


def test_check_config_prints_the_effective_config(cli: Cli) -> None:
    cli.write_config(
        """
        [auto_stop]
        mode = "alert_only"
        [auto_stop.criteria]
        max_loss_percent = 33
        """
    )
    out = cli.ok("--config", str(cli.config), "check-config")
    assert str(cli.config) in out.splitlines()[0]
    effective = tomllib.loads(out)  # it is TOML: the header is a comment
    assert effective["engine"]["data_dir"] == str(cli.data)
    assert effective["auto_stop"]["mode"] == "alert_only"
    assert effective["auto_stop"]["criteria"]["max_loss_percent"] == 33
    assert effective["engine"]["tick_seconds"] == 1.0  # defaults are shown too
    assert not cli.data.exists()  # check-config writes nothing
    # `--config` after the command works the same.
    assert cli.ok("check-config", "--config", str(cli.config)) == out


def test_the_installed_command_runs(cli: Cli) -> None:
    # The `trade-supervisor` console script (pyproject [project.scripts]) next to this Python.
    script = Path(sys.executable).parent / "trade-supervisor"
    if not script.exists():
        pytest.skip("the console script is not installed next to this interpreter")
    proc = subprocess.run(
        [str(script), "check-config", "--config", str(cli.config)],
        cwd=cli.root,
        env=cli.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert tomllib.loads(proc.stdout)["engine"]["data_dir"] == str(cli.data)


BAD_CONFIGS = {
    # name: (text after the [engine] data_dir line, the key named, its line, what is expected)
    "unknown_key": (
        "[auto_stop.criteria]\nmax_loss_pct = 40\n",
        "auto_stop.criteria.max_loss_pct",
        4,
        "unknown key",
    ),
    "wrong_type": ('[auto_stop]\narmed = "yes"\n', "auto_stop.armed", 4, "true or false"),
    "out_of_range": (
        "[risk]\nmax_open_positions = 0\n",
        "risk.max_open_positions",
        4,
        "at least 1",
    ),
    "syntax_error": ("[auto_stop]\nmode = dry_run\n", "", 4, "syntax error"),
}


def assert_not_started(cli: Cli, proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stdout == ""
    assert "nothing was written" in proc.stderr
    assert not cli.data.exists()
    assert sorted(p.name for p in cli.root.iterdir()) == ["cfg.toml"]


@pytest.mark.parametrize("name", sorted(BAD_CONFIGS))
def test_bad_config_stops_start_up_naming_key_and_line(cli: Cli, name: str) -> None:
    text, key, line, expected = BAD_CONFIGS[name]
    cli.write_config(text)
    proc = cli.run("--config", str(cli.config), "--headless", timeout=30)
    assert_not_started(cli, proc)
    first = proc.stderr.splitlines()[0]
    assert first.startswith(f"{cli.config}, line {line}")
    assert key in first
    assert expected in first.lower()


@pytest.mark.parametrize(
    "args",
    [
        ["check-config"],
        ["status"],
        [
            "trades",
            "add",
            "--id",
            "m1",
            "--contract",
            CID,
            "--side",
            "yes",
            "--qty",
            "1",
            "--price",
            "0.5",
        ],
        ["record", "out.jsonl", "--duration", "10"],
        ["replay", "in.jsonl", "--json"],
    ],
    ids=lambda a: a[0],
)
def test_every_command_refuses_a_bad_config(cli: Cli, args: list[str]) -> None:
    cli.write_config("[engine.extra]\n")
    proc = cli.run("--config", str(cli.config), *args)
    assert_not_started(cli, proc)
    assert f"{cli.config}, line 3: engine.extra" in proc.stderr


def test_the_screens_settings_are_checked_before_anything_starts(cli: Cli) -> None:
    cli.write_config(
        """
        [ui]
        theme = "no-such-theme"
        down_color = "redd"
        """
    )
    for args in (["check-config"], []):
        proc = cli.run("--config", str(cli.config), *args)
        assert proc.returncode == 2, proc.stderr
        assert "ui.theme: unknown theme 'no-such-theme'" in proc.stderr
        assert "textual-dark" in proc.stderr  # the choices are listed
        assert "ui.down_color: 'redd' is not a colour" in proc.stderr
    assert not cli.data.exists()


def test_missing_config_file(cli: Cli) -> None:
    missing = cli.root / "nowhere" / "config.toml"
    proc = cli.run("--config", str(missing), "--headless", timeout=30)
    assert_not_started(cli, proc)
    assert str(missing) in proc.stderr and "not found" in proc.stderr


def test_secrets_are_never_printed(cli: Cli) -> None:
    secrets = {"KALSHI_API_KEY_ID": SECRET_ID, "KALSHI_PRIVATE_KEY_PATH": SECRET_PATH}
    proc = cli.run("--config", str(cli.config), "check-config", env=secrets)
    assert proc.returncode == 0, proc.stderr
    shown = tomllib.loads(proc.stdout)["venues"]["kalshi"]
    assert shown["api_key_id"] == shown["private_key_path"] == "**********"
    for s in secrets.values():
        assert s not in proc.stdout + proc.stderr
    # Secrets written into the file are hidden too, and so are they in an error report.
    cli.write_config(
        f'[venues.kalshi]\napi_key_id = "{SECRET_ID}"\nprivate_key_path = "{SECRET_PATH}"\n'
    )
    proc = cli.run("--config", str(cli.config), "check-config")
    assert proc.returncode == 0 and "**********" in proc.stdout
    cli.write_config(f"[venues.kalshi]\napi_key_id = 987654321\napi_key = {SECRET_ID!r}\n")
    proc = cli.run("--config", str(cli.config), "check-config", env=secrets)
    assert proc.returncode == 2
    assert "venues.kalshi.api_key_id" in proc.stderr and "venues.kalshi.api_key" in proc.stderr
    for s in (*secrets.values(), "987654321"):
        assert s not in proc.stdout + proc.stderr


# --- the manual journal and status ---------------------------------------------------------


def trades_json(cli: Cli, *flags: str) -> list[dict[str, Any]]:
    return json.loads(cli.ok("--config", str(cli.config), "trades", "list", "--json", *flags))


def add_trade(cli: Cli, trade_id: str = "m1", *extra: str) -> subprocess.CompletedProcess[str]:
    return cli.run(
        *("--config", str(cli.config), "trades", "add", "--id", trade_id, "--contract", CID),
        *("--side", "yes", "--qty", "10", "--price", "0.47", "--strategy", "scalp", *extra),
    )


def test_status_before_any_run_writes_nothing(cli: Cli) -> None:
    out = cli.ok("--config", str(cli.config), "status")
    assert "has not run" in out
    assert not cli.data.exists()


def test_trades_add_list_close(cli: Cli) -> None:
    proc = add_trade(cli, "m1", "--opened", "1763740800")
    assert proc.returncode == 0, proc.stderr
    assert "journaled m1" in proc.stdout
    listed = cli.ok("--config", str(cli.config), "trades", "list")
    assert "m1" in listed and CID in listed and "1 trade(s)" in listed
    (t,) = trades_json(cli)
    assert {k: t[k] for k in ("trade_id", "contract_id", "side", "qty", "entry_price")} == {
        "trade_id": "m1",
        "contract_id": CID,
        "side": "yes",
        "qty": 10.0,
        "entry_price": 0.47,
    }
    assert (t["strategy"], t["state"], t["opened_ts"]) == ("scalp", "open", 1763740800.0)

    again = add_trade(cli, "m1")  # the same id twice is refused
    assert again.returncode == 1 and "already exists" in again.stderr

    out = cli.ok("--config", str(cli.config), "trades", "close", "m1", "--price", "0.6")
    assert "m1 marked closed" in out
    assert trades_json(cli) == []  # no longer open
    assert "0 trade(s)" in cli.ok("--config", str(cli.config), "trades", "list")
    (t,) = trades_json(cli, "--all")
    assert (t["state"], t["exit_reason"], t["exit_price"]) == ("closed", "manual", 0.6)
    assert t["realized_pnl"] == pytest.approx(10 * (0.6 - 0.47))
    assert "closed" in cli.ok("--config", str(cli.config), "trades", "list", "--all")

    twice = cli.run("--config", str(cli.config), "trades", "close", "m1", "--price", "0.6")
    assert twice.returncode == 1 and "no open trade 'm1'" in twice.stderr


def test_status_without_an_engine_lists_open_trades(cli: Cli) -> None:
    assert add_trade(cli, "m1").returncode == 0
    assert add_trade(cli, "m2").returncode == 0
    cli.ok("--config", str(cli.config), "trades", "close", "m2")
    out = cli.ok("--config", str(cli.config), "status")
    assert "not running" in out
    assert "open trades: 1" in out
    assert "m1" in out and "m2" not in out
    info = json.loads(cli.ok("--config", str(cli.config), "status", "--json"))
    assert (info["running"], info["pid"]) == (False, None)
    assert [t["trade_id"] for t in info["open_trades"]] == ["m1"]


# --- record, then replay -------------------------------------------------------------------


def test_record_writes_a_file_replay_accepts(cli: Cli) -> None:
    cli.write_config(
        """
        [sim]
        demo_trades = 3
        [auto_stop.criteria]
        max_loss_percent = 40
        """
    )
    out = cli.ok(
        *("--config", str(cli.config), "record", "session.jsonl"),
        *("--duration", "120", "--speed", "2000"),
    )
    assert "recorded" in out
    assert not cli.data.exists()  # a temporary journal unless --db
    lines = (cli.root / "session.jsonl").read_text(encoding="utf-8").splitlines()
    events = []
    for n, line in enumerate(lines, start=1):
        try:
            events.append(parse_line(line))
        except ReplayLineError as e:  # pragma: no cover - the message is the point
            pytest.fail(f"session.jsonl:{n}: {e}")
    kinds = {ev.kind for ev in events if ev is not None}
    assert {"contract", "spot", "quote", "open"} <= kinds
    opens = sum(ev is not None and ev.kind == "open" for ev in events)
    assert opens == 3
    ts = [ev.ts for ev in events if ev is not None]
    assert max(ts) - min(ts) <= 120 + 1

    proc = cli.run("--config", str(cli.config), "replay", "session.jsonl", "--json")
    assert proc.returncode == 0, proc.stderr
    assert "skipped" not in proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    summary = rows[-1]
    assert summary["event"] == "summary"
    assert summary["invalid_lines"] == 0
    assert summary["trades"] == opens
    assert summary["exits"] == sum(r["event"] == "exit" for r in rows)
    assert summary["alerts"] == sum(r["event"] == "alert" for r in rows)


def test_record_writes_events_in_time_order(cli: Cli) -> None:
    cli.write_config("[sim]\ndemo_trades = 2\n")
    cli.ok("--config", str(cli.config), "record", "s.jsonl", "--duration", "30", "--speed", "2000")
    ts = [json.loads(line)["ts"] for line in (cli.root / "s.jsonl").read_text().splitlines()]
    assert ts == sorted(ts)


# --- a running engine -------------------------------------------------------------------------


class Engine:
    """A headless engine in a subprocess whose stdout lines are read with a deadline."""

    def __init__(self, cli: Cli) -> None:
        self.stderr_path = cli.root / "engine.stderr"
        self._stderr = self.stderr_path.open("w")
        self.proc = subprocess.Popen(
            cli.argv("--config", str(cli.config), "--headless"),
            cwd=cli.root,
            env=cli.env,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, match: Callable[[str], bool], timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                pytest.fail(
                    f"the engine exited ({self.proc.wait()}) before the expected line; "
                    f"stdout: {self.lines}; stderr: {self.stderr_path.read_text()}"
                )
            self.lines.append(line)
            if match(line):
                return line
        pytest.fail(f"no matching line within {timeout} s; stdout so far: {self.lines}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        finally:
            self._stderr.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self._stderr.close()


@pytest.fixture
def start_engine(cli: Cli) -> Iterator[Callable[[], Engine]]:
    started: list[Engine] = []

    def start() -> Engine:
        eng = Engine(cli)
        started.append(eng)
        eng.wait_for(lambda line: line.startswith("trade-supervisor: venue"))  # the banner
        return eng

    yield start
    for eng in started:
        eng.kill()


ENGINE_CONFIG = """
    [sim]
    demo_trades = 1
    speed = 10
"""


@pytest.mark.slow
def test_one_engine_per_journal(cli: Cli, start_engine: Callable[[], Engine]) -> None:
    # The open trade is one of the journal's on a contract the simulated market does not list: it
    # is never quoted or settled, so it is still open whatever the wall clock says. (A demo trade
    # settles when the sim's hourly event closes at the top of the hour, which at speed 10 comes
    # within a minute of wall time of every HH:59.)
    cli.write_config(ENGINE_CONFIG.replace("demo_trades = 1", "demo_trades = 0"))
    assert add_trade(cli, "m1").returncode == 0
    first = start_engine()
    assert "1 open trades" in first.lines[-1]

    second = cli.run("--config", str(cli.config), "--headless", timeout=30)
    assert second.returncode == 1
    assert f"another trade-supervisor (pid {first.proc.pid})" in second.stderr
    assert first.proc.poll() is None  # the first one is unharmed

    # status and the journal commands still work next to the running engine. The heartbeat is
    # written on the engine's first tick: ask until it is there (with a deadline).
    deadline = time.monotonic() + 30
    while True:
        info = json.loads(cli.ok("--config", str(cli.config), "status", "--json"))
        if info["heartbeat_age_seconds"] is not None or time.monotonic() > deadline:
            break
    assert (info["running"], info["pid"]) == (True, first.proc.pid)
    assert (info["mode"], info["armed"], info["paused_all"]) == ("dry_run", True, False)
    assert "spot BTC-USD" in info["sources"] and "quotes" in info["sources"]
    assert [t["trade_id"] for t in info["open_trades"]] == ["m1"]
    out = cli.ok("--config", str(cli.config), "status")
    assert f"running (pid {first.proc.pid})" in out and "mode dry_run, ARMED" in out
    assert "m1" in out
    assert [t["trade_id"] for t in trades_json(cli)] == ["m1"]

    # The manual journal reaches the running engine: a trade added is watched, and a close
    # recorded with `trades close` is queued for the engine (which owns the journal).
    added = add_trade(cli, "m9")
    assert added.returncode == 0 and "the running engine picks it up" in added.stdout
    first.wait_for(lambda line: "tracking m9 from the journal" in line)
    closed = cli.run("--config", str(cli.config), "trades", "close", "m9", "--price", "0.5")
    assert closed.returncode == 0 and "queued for the running engine" in closed.stdout
    first.wait_for(lambda line: "m9 closed in the journal" in line)

    assert first.stop() == 0
    assert "not running" in cli.ok("--config", str(cli.config), "status")
    (m9,) = [t for t in trades_json(cli, "--all") if t["trade_id"] == "m9"]
    assert (m9["state"], m9["exit_reason"], m9["exit_price"]) == ("closed", "manual", 0.5)


@pytest.mark.slow
def test_sighup_with_an_invalid_config_keeps_running(
    cli: Cli, start_engine: Callable[[], Engine]
) -> None:
    cli.write_config(ENGINE_CONFIG)
    eng = start_engine()
    cli.write_config(ENGINE_CONFIG + "[auto_stop]\nmode = 'sometimes'\n")
    eng.proc.send_signal(signal.SIGHUP)
    line = eng.wait_for(lambda line: "config reload failed" in line)
    assert "data_quality" in line and "auto_stop.mode" in line
    assert eng.proc.poll() is None

    # Fixed again, a reload takes the new config.
    cli.write_config(ENGINE_CONFIG + "[auto_stop]\nmode = 'alert_only'\n")
    eng.proc.send_signal(signal.SIGHUP)
    eng.wait_for(lambda line: "config reloaded: mode alert_only" in line)
    assert eng.stop() == 0
