"""The engine in a child process (`ProcessEngineHost`): what crosses the pipe, and what happens
when either side stops, fails or dies. The screen's own tests over this host are the
`[process]` cases in test_tui_app.py."""

from __future__ import annotations

import asyncio
import functools
import os
import select
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from engine.commands import Command
from engine.config import Config
from engine.snapshot import Snapshot
from engine.store import JOURNAL_FILENAME, Store
from engine.supervisor import Engine
from tests.tui_harness import ROOT, journal_trade, make_host, ui_config
from tui import wire
from tui.engine_process import ProcessEngineHost
from tui.host import EngineHostError

STOP_WAIT = 20.0  # seconds: generous bounds on events that take milliseconds


class Seen:
    """What the host hands the screen: snapshots, and the stop report."""

    def __init__(self, host: ProcessEngineHost) -> None:
        self.snaps: list[Snapshot] = []
        self.stopped: list[BaseException | None] = []
        self.stopped_event = threading.Event()
        host.on_snapshot = self.snaps.append
        host.on_stopped = self._on_stopped

    def _on_stopped(self, e: BaseException | None) -> None:
        self.stopped.append(e)
        self.stopped_event.set()


async def _trade_ids(e: Engine) -> list[str]:
    return sorted(e.trades)


async def _raise(message: str, _e: Engine) -> None:
    raise ValueError(message)


async def _journal_can_be_locked(cfg_path: Path) -> bool:
    """True when no process holds the journal (a second engine could start on it)."""
    store = Store(cfg_path)
    try:
        await store.open()
    except Exception:
        return False
    await store.close()
    return True


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    return ui_config(tmp_path)


async def test_snapshots_commands_and_queries_cross_to_the_engine_process(cfg: Config) -> None:
    host = make_host("process", cfg)
    host.start()
    seen = Seen(host)
    try:
        assert host.running and host.process.pid != os.getpid()
        await host.advance(5)
        snap = seen.snaps[-1]  # published before advance() returned
        assert [t.trade_id for t in snap.trades] == ["demo-1", "demo-2", "demo-3", "demo-4"]
        assert len(snap.strikes) == cfg.sim.strikes and snap.market is not None
        assert await host.call(_trade_ids) == ["demo-1", "demo-2", "demo-3", "demo-4"]

        detail = await host.trade_detail("demo-1")
        assert detail is not None and detail.row.trade_id == "demo-1"
        assert detail.marks and detail.marks[-1][1] == pytest.approx(snap.trades[0].pnl)

        result = await host.command(Command("close", "demo-1"))
        assert result.ok, result.message
        await host.sync()
        assert "demo-1" not in [t.trade_id for t in seen.snaps[-1].trades]
        row = await journal_trade(cfg, "demo-1")
        assert row["state"] == "closed" and row["exit_reason"] == "manual"
    finally:
        host.stop()
    assert host.process.returncode == 0
    assert host.stopped.is_set() and not host.running
    assert seen.stopped == [None]


async def test_a_request_the_engine_cannot_take_fails_alone(cfg: Config) -> None:
    host = make_host("process", cfg)
    host.start()
    try:
        with pytest.raises(EngineHostError, match="must be picklable"):
            await host.call(lambda e: e.trades)  # a lambda cannot be sent to another process
        with pytest.raises(ValueError, match="from the engine"):
            await host.call(functools.partial(_raise, "from the engine"))
        # The engine process is still there and answers.
        assert await host.call(_trade_ids) == ["demo-1", "demo-2", "demo-3", "demo-4"]
    finally:
        host.stop()


async def test_stop_closes_the_journal_so_another_engine_can_open_it(cfg: Config) -> None:
    db = cfg.data_path() / JOURNAL_FILENAME
    host = make_host("process", cfg)
    host.start()
    assert not await _journal_can_be_locked(db)  # the engine process holds it
    host.stop()
    assert await _journal_can_be_locked(db)
    result = await host.command(Command("close", "demo-1"))
    assert not result.ok and "not sent" in result.message


async def test_a_locked_journal_is_reported_before_any_screen(cfg: Config) -> None:
    first = make_host("process", cfg)
    first.start()
    try:
        second = make_host("process", cfg)
        with pytest.raises(EngineHostError, match="another trade-supervisor"):
            second.start()
        assert second.process.returncode is not None  # that engine process has ended
        assert second.stopped.is_set()
    finally:
        first.stop()


SCREEN_THAT_DIES = """
import sys
from pathlib import Path
from tests.tui_harness import make_host, ui_config
host = make_host("process", ui_config(Path(sys.argv[1])))
host.start()
print(host.process.pid, flush=True)
sys.stdin.read()  # until killed
"""


async def test_the_engine_process_stops_cleanly_when_the_screen_is_killed(
    tmp_path: Path,
    cfg: Config,
) -> None:
    db = cfg.data_path() / JOURNAL_FILENAME
    screen = subprocess.Popen(
        [sys.executable, "-c", SCREEN_THAT_DIES, str(tmp_path)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        engine_pid = int(await asyncio.to_thread(screen.stdout.readline))
        engine = os.pidfd_open(engine_pid)  # to wait for a process that is not our child
        assert not await _journal_can_be_locked(db)
        screen.kill()  # no stop message, no clean-up: only the pipe closes
        screen.wait(STOP_WAIT)
        ready, _, _ = await asyncio.to_thread(select.select, [engine], [], [], STOP_WAIT)
        assert ready, "the engine process outlived its screen"
        os.close(engine)
        assert await _journal_can_be_locked(db)  # it flushed and closed the journal first
    finally:
        screen.kill()
        screen.wait(STOP_WAIT)


async def test_sigterm_to_the_engine_process_closes_the_journal_and_tells_the_screen(
    cfg: Config,
) -> None:
    db = cfg.data_path() / JOURNAL_FILENAME
    host = make_host("process", cfg)
    host.start()
    seen = Seen(host)
    try:
        host.process.send_signal(signal.SIGTERM)  # a service manager stopping the group
        assert await asyncio.to_thread(host.process.wait, STOP_WAIT) == 0
        assert seen.stopped_event.wait(STOP_WAIT)
        assert host.stopped.is_set() and not host.running
        assert await _journal_can_be_locked(db)
        result = await host.command(Command("close", "demo-1"))
        assert not result.ok and "not sent" in result.message
    finally:
        host.stop()


async def test_signals_from_the_terminal_leave_the_decision_to_the_screen(cfg: Config) -> None:
    host = make_host("process", cfg)
    host.start()
    try:
        # A closed terminal or ctrl+c reach both processes; the screen decides to stop.
        host.process.send_signal(signal.SIGHUP)
        host.process.send_signal(signal.SIGINT)
        assert await host.call(_trade_ids) == ["demo-1", "demo-2", "demo-3", "demo-4"]
        assert host.running
    finally:
        host.stop()
    assert host.process.returncode == 0


async def test_an_engine_process_that_dies_is_reported_with_its_exit_code(cfg: Config) -> None:
    host = make_host("process", cfg)
    host.start()
    seen = Seen(host)
    try:
        host.process.kill()
        assert seen.stopped_event.wait(STOP_WAIT)
        (error,) = seen.stopped
        assert isinstance(error, EngineHostError)
        assert "ended unexpectedly" in str(error) and "-9" in str(error)
        with pytest.raises(EngineHostError):
            await host.call(_trade_ids)
    finally:
        host.stop()


async def test_snapshots_survive_the_wire_unchanged(cfg: Config) -> None:
    host = make_host("thread", cfg)
    host.start()
    try:
        await host.advance(5)
        await host.command(Command("close", "demo-2"))  # an alert with a trade, a closed row
        await host.advance(1)
        snap = host.engine.snapshot()
        detail = await host.trade_detail("demo-1")
    finally:
        host.stop()
    assert snap.trades and snap.strikes and snap.alerts and snap.market is not None
    assert wire.loads(wire.dumps(snap)) == snap
    assert wire.loads(wire.dumps(detail)) == detail
