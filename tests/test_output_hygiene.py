"""Output a trader can trust: a closed pipe, ids from other programs, ages and precision."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.alerts import Alert, AlertBus, PrintChannel
from engine.models import AlertKind, Severity, Trade
from engine.rules import RuleResult
from engine.store import Store
from engine.text import shown
from tests.engine_harness import standard

EVIL = "t\x1b[2J\u202eevil\rx"
EVIL_SHOWN = "t\\x1b[2J\\u202eevil\\x0dx"


class _ClosedPipe(io.TextIOBase):
    def __init__(self) -> None:
        self.writes = 0

    def write(self, s: str) -> int:
        self.writes += 1
        raise BrokenPipeError(32, "Broken pipe")


def _alert(i: int, message: str = "m", trade_id: str | None = None) -> Alert:
    return Alert(1.0e9 + i, AlertKind.DATA_QUALITY, Severity.WARNING, message, trade_id, {}, 0, i)


def test_the_stdout_channel_switches_itself_off_on_a_closed_pipe(
    capsys: pytest.CaptureFixture[str],
) -> None:
    pipe = _ClosedPipe()
    ch = PrintChannel(pipe)  # type: ignore[arg-type]

    async def go() -> None:
        for i in range(5):
            await ch.deliver(_alert(i))  # never raises

    asyncio.run(go())
    err = capsys.readouterr().err
    assert err.count("the stdout alert channel is off") == 1, err
    assert "Traceback" not in err
    assert pipe.writes == 1  # not tried again
    assert ch.health().disabled and "pipe was closed" in ch.health().disabled


def test_alert_messages_and_ids_from_other_programs_are_escaped() -> None:
    out = io.StringIO()
    bus = AlertBus(0.0)
    bus.channels.append(PrintChannel(out))
    a = asyncio.run(
        bus.raise_(1.0e9, AlertKind.DATA_QUALITY, Severity.WARNING, f"venue: {EVIL}", EVIL)
    )
    assert a is not None and a.message == f"venue: {EVIL_SHOWN}"
    line = out.getvalue()
    assert "\x1b" not in line and "\u202e" not in line and "\r" not in line
    assert f"[{EVIL_SHOWN}]" in line


def test_text_stays_as_written_when_it_is_printable() -> None:
    assert shown("KXBTCD-25NOV2114-T97000 ü 中 $0.05") == "KXBTCD-25NOV2114-T97000 ü 中 $0.05"
    assert shown(None) == ""


def test_the_screen_escapes_ids_and_messages(tmp_path: Path) -> None:
    from tui.format import Palette
    from tui.rows import alert_row, trade_row

    async def go() -> None:
        h = await standard(tmp_path)
        await h.open_trade(EVIL)
        snap = h.engine.snapshot()
        [row] = [trade_row(t, Palette("green", "red")) for t in snap.trades if t.trade_id == EVIL]
        assert row.key == EVIL  # the key stays the trade's own id
        assert row.cells[0] == EVIL_SHOWN
        await h.close()

    asyncio.run(go())
    arow = alert_row(_alert(1, f"from a venue: {EVIL}", EVIL))
    texts = [c if isinstance(c, str) else c[0] for c in arow.cells]
    assert EVIL_SHOWN in texts and f"from a venue: {EVIL_SHOWN}" in texts


def test_time_value_alerts_keep_their_cents() -> None:
    r = RuleResult("min_time_value", True, 0.05, 0.10, 0.0, "$", {})
    assert r.describe() == "min_time_value FIRED $0.05 <= $0.10"
    r = RuleResult("min_time_value", True, 0.09996, 0.10, 0.0, "$", {})
    assert r.describe() == "min_time_value FIRED $0.09996 <= $0.10"
    assert RuleResult("min_time_value", False, 1.25, 0.1, 1.15, "$", {}).describe() == (
        "min_time_value $1.15"
    )


def test_the_venue_has_an_age_in_the_health_list(tmp_path: Path) -> None:
    from engine.supervisor import POSITIONS_POLL_SECONDS

    async def go() -> None:
        h = await standard(tmp_path)
        await h.tick(POSITIONS_POLL_SECONDS + 1)
        await asyncio.sleep(0)
        await h.tick(POSITIONS_POLL_SECONDS + 3)
        ages = h.engine._heartbeat(h.clock.now())["sources"]
        assert ages["venue sim"] is not None and 0 <= ages["venue sim"] <= 3
        await h.close()

    asyncio.run(go())


# --- the real command ----------------------------------------------------------------------------


def _cfg(tmp: Path) -> Path:
    cfg = tmp / "cfg.toml"
    cfg.write_text(f'[engine]\ndata_dir = "{tmp / "data"}"\n', encoding="utf-8")
    return cfg


def _journal_with(tmp: Path, ids: list[str]) -> None:
    async def go() -> None:
        store = Store(tmp / "data" / "trades.db")
        await store.open(lock=False)
        for tid in ids:
            t = Trade(tid, "KXBTCD-25NOV2114-T97000", "yes", 1.0, 0.4, time.time(), venue="sim")
            await store.add_trade(t, source="manual")
        await store.close()

    asyncio.run(go())


def _env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KALSHI_")}
    env.update(HOME=str(tmp / "home"), XDG_CONFIG_HOME=str(tmp / "x"), XDG_DATA_HOME=str(tmp / "y"))
    return env


@pytest.mark.parametrize(
    "args",
    [("trades", "list"), ("status",), ("trades", "list", "--json")],
)
def test_every_command_survives_head(tmp_path: Path, args: tuple[str, ...]) -> None:
    _journal_with(tmp_path, [f"trade-{i:05d}-{'x' * 40}" for i in range(3000)])
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "--config", str(_cfg(tmp_path)), *args],
        cwd=tmp_path,
        env=_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.readline()  # `| head -1`: one line, then the reader goes away
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_the_cli_escapes_ids_from_other_programs(tmp_path: Path) -> None:
    _journal_with(tmp_path, [EVIL])
    for args in (("trades", "list"), ("status",)):
        proc = subprocess.run(
            [sys.executable, "-m", "engine.cli", "--config", str(_cfg(tmp_path)), *args],
            cwd=tmp_path,
            env=_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        assert EVIL_SHOWN in proc.stdout
        assert "\x1b" not in proc.stdout and "\u202e" not in proc.stdout


@pytest.mark.slow
def test_a_headless_engine_whose_stdout_closes_says_so_once_and_carries_on(
    tmp_path: Path,
) -> None:
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(
        f'[engine]\ndata_dir = "{tmp_path / "data"}"\n[sim]\ndemo_trades = 0\n'
        "[alerts]\ncooldown_seconds = 0\n",
        encoding="utf-8",
    )
    env = _env(tmp_path)
    err_path = tmp_path / "engine.stderr"
    with err_path.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine.cli", "--config", str(cfg), "--headless"],
            cwd=tmp_path,
            env={**env, "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.startswith("trade-supervisor: venue"), line
            proc.stdout.close()  # the reader goes away (`| head -1`)

            def add(tid: str) -> None:
                done = subprocess.run(
                    [sys.executable, "-m", "engine.cli", "--config", str(cfg), "trades", "add",
                     "--id", tid, "--contract", "KXBTCD-25NOV2114-T97000", "--side", "yes",
                     "--qty", "1", "--price", "0.4"],
                    cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
                )  # fmt: skip
                assert done.returncode == 0, done.stderr

            def wait_for(pred: object, what: str) -> None:
                deadline = time.monotonic() + 40
                while time.monotonic() < deadline:
                    if pred():  # type: ignore[operator]
                        return
                    time.sleep(0.2)
                pytest.fail(f"{what}; stderr: {err_path.read_text()}")

            add("p1")  # the engine's "tracking p1" alert meets the closed pipe
            wait_for(lambda: "stdout alert channel is off" in err_path.read_text(), "no line")
            add("p2")  # more alerts: no more lines, no tracebacks
            log = tmp_path / "data" / "alerts.jsonl"
            wait_for(lambda: '"p2"' in log.read_text(), "p2 was not picked up")
            assert proc.poll() is None  # still running
        finally:
            proc.terminate()
            code = proc.wait(timeout=30)
    text = err_path.read_text()
    assert text.count("stdout alert channel is off") == 1, text
    assert "Traceback" not in text and "BrokenPipe" not in text, text
    assert code == 0, text


@pytest.mark.slow
def test_a_headless_engine_started_with_stdout_closed_runs_and_says_so(tmp_path: Path) -> None:
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(
        f'[engine]\ndata_dir = "{tmp_path / "data"}"\n[sim]\ndemo_trades = 0\n', encoding="utf-8"
    )
    err_path = tmp_path / "engine.stderr"
    r, w = os.pipe()
    os.close(r)  # nobody will ever read: every write to stdout is a broken pipe
    with err_path.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine.cli", "--config", str(cfg), "--headless"],
            cwd=tmp_path,
            env=_env(tmp_path),
            stdout=w,
            stderr=err,
        )
        os.close(w)
        try:
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline and "stdout" not in err_path.read_text():
                time.sleep(0.2)
            # it runs: its heartbeat reaches the journal
            while time.monotonic() < deadline:
                out = subprocess.run(
                    [sys.executable, "-m", "engine.cli", "--config", str(cfg), "status", "--json"],
                    cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=60,
                )  # fmt: skip
                if '"heartbeat_age_seconds": null' not in out.stdout and '"running": true' in (
                    out.stdout
                ):
                    break
                time.sleep(0.2)
            else:
                pytest.fail(f"the engine did not run; stderr: {err_path.read_text()}")
            assert proc.poll() is None
        finally:
            proc.terminate()
            code = proc.wait(timeout=30)
    text = err_path.read_text()
    assert "Traceback" not in text and "BrokenPipe" not in text, text
    said = [line for line in text.splitlines() if line.startswith("trade-supervisor: stdout")]
    assert len(said) == 1, text  # one line says stdout is gone, whatever wrote first
    assert code == 0, text
