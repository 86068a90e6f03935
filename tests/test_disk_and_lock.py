"""The disk under the journal and the one-engine lock (issue 15, "Disk and lock").

A full, read-only or failing disk is simulated at SQLite's own boundary, on the store's real
connections: `PRAGMA max_page_count` (the journal cannot grow: SQLITE_FULL, "database or disk is
full"), `PRAGMA query_only` or a `mode=ro` connection (SQLITE_READONLY, "attempt to write a
readonly database"), and for real by the OS with RLIMIT_FSIZE (a slow test: a headless engine whose
WAL may not grow). The tests run as root, where chmod stops no write: an unwritable directory is
chmod 555 where that works, else a read-only mount (/proc/sys here), else the test is skipped.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from engine.alerts import Alert, AlertFilter
from engine.models import AlertKind, Severity
from engine.store import JournalUnwritable, Store, StoreError, StoreLocked
from tests.engine_harness import T0, standard


class RecordingChannel:
    """A channel that needs no disk (as the desktop and the webhook): what it was given, and
    whether the engine had already stopped by then."""

    name = "webhook"

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.got: list[tuple[Alert, bool]] = []

    async def deliver(self, alert: Alert) -> None:
        self.got.append((alert, self.engine.stopping))


async def _on_connections(store: Store, sql: str) -> None:
    """Run a pragma on every connection the store writes through (main and exit writer)."""
    assert store._db is not None and store._fast is not None
    await store._db.execute(sql)
    store._fast.execute(sql)


async def fill_disk(store: Store, trade_id: str) -> None:
    """The journal's disk is full: its file cannot grow by one page more, and another program
    has used up the room left in the pages of the tables the engine writes as it runs (marks,
    alerts, audit), so the engine's next such write fails."""
    await _on_connections(store, "PRAGMA max_page_count = 1")  # clamped to the current size
    audit = "INSERT INTO audit (ts, trade_id, event, data) VALUES (0, NULL, 'pad', ?)"
    alerts = (
        "INSERT INTO alerts (ts, kind, severity, trade_id, message, data)"
        " VALUES (0, 'data_quality', 'info', NULL, ?, '{}')"
    )
    # Mark rows the size of the engine's own: when one more does not fit, neither does its.
    marks = "INSERT INTO marks (trade_id, ts, mark, pnl, pnl_pct) VALUES (?, ?, 0.5, 0.1, 0.1)"
    fillers = [(sql, ("x" * n,)) for sql in (audit, alerts) for n in (400, 40, 1)]
    fillers.append((marks, (trade_id, T0 + 0.5)))
    other = sqlite3.connect(store.path, isolation_level=None)
    try:
        other.execute("PRAGMA max_page_count = 1")
        for sql, params in fillers:
            while True:
                try:
                    other.execute(sql, params)
                except sqlite3.OperationalError as e:
                    assert "full" in str(e)
                    break
    finally:
        other.close()


async def make_readonly(store: Store) -> None:
    await _on_connections(store, "PRAGMA query_only = ON")


def _critical_stop(ch: RecordingChannel) -> list[tuple[Alert, bool]]:
    return [
        (a, stopped)
        for a, stopped in ch.got
        if a.severity is Severity.CRITICAL and "ENGINE STOPPED" in a.message
    ]


async def test_readonly_journal_while_running_alerts_every_channel_then_stops(tmp_path: Path):
    h = await standard(tmp_path)
    ch = RecordingChannel(h.engine)
    picky = RecordingChannel(h.engine)  # set to pass only auto-stop exits
    picky.name = "desktop"
    picky.filter = AlertFilter(Severity.CRITICAL, frozenset({AlertKind.AUTO_STOP}))
    h.engine.alerts.channels += [ch, picky]
    await make_readonly(h.store)
    await h.quote(0.30, 0.32)  # max_loss fires: the exit cannot be journaled
    await asyncio.wait_for(h.engine.wait_stopping(), 5)

    assert h.venue.submitted == []  # nothing is sent that the journal does not hold
    assert isinstance(h.engine.fatal, JournalUnwritable)
    stops = _critical_stop(ch)
    assert len(stops) == 1
    alert, stopped_before = stops[0]
    assert not stopped_before  # delivered before the engine stopped
    assert "read-only" in alert.message and "free on" in alert.message
    assert "t1" in alert.message  # the trades left unprotected are named
    assert "move it aside" not in alert.message
    assert len(_critical_stop(picky)) == 1  # the engine stopping passes every channel's filter
    assert not [a for a, _ in ch.got if "tick failed" in a.message or "internal" in a.message]
    await h.engine.flush()  # nothing more is written to a journal that refused
    await h.store.close()


async def test_full_disk_while_running_alerts_then_stops_and_run_raises(tmp_path: Path):
    h = await standard(tmp_path)
    ch = RecordingChannel(h.engine)
    h.engine.alerts.channels.append(ch)
    await fill_disk(h.store, "t1")
    run = asyncio.create_task(h.engine.run())
    # The journal fills as the engine writes: marks every tick, the heartbeat, alerts.
    for i in range(1, 400):
        if h.engine.stopping:
            break
        await h.quote(0.50 + (i % 5) * 0.002, 0.52)
        await h.tick(i)
    assert h.engine.stopping, "the engine went on writing to a full disk"
    with pytest.raises(JournalUnwritable) as err:
        await asyncio.wait_for(run, 5)
    assert "the disk is full" in str(err.value) and "free on" in str(err.value)
    assert "move it aside" not in str(err.value)
    stops = _critical_stop(ch)
    assert len(stops) == 1 and not stops[0][1]
    await h.store.close()


async def test_store_failure_never_swallows_the_delivery(tmp_path: Path):
    """The alert reaches the channels even when storing it fails (stored after delivery)."""
    h = await standard(tmp_path)
    ch = RecordingChannel(h.engine)
    h.engine.alerts.channels.append(ch)
    order: list[str] = []

    async def failing_add_alert(**_kw: Any) -> None:
        order.append("store")
        raise StoreError("database or disk is full")

    orig = ch.deliver

    async def deliver(alert: Alert) -> None:
        order.append("channel")
        await orig(alert)

    ch.deliver = deliver  # type: ignore[method-assign]
    h.engine.alerts.store = type("S", (), {"add_alert": staticmethod(failing_add_alert)})()
    await h.quote(0.30, 0.32)  # closes t1: an auto_stop alert
    assert order[:2] == ["channel", "store"]
    assert any("closed by max_loss" in a.message for a, _ in ch.got)
    await h.close()


def test_disk_problems_are_told_apart_from_other_errors() -> None:
    from engine.store import disk_problem

    assert disk_problem(sqlite3.OperationalError("database or disk is full")) == "full"
    assert disk_problem(sqlite3.OperationalError("attempt to write a readonly database")) == (
        "read-only"
    )
    assert disk_problem(sqlite3.OperationalError("disk I/O error")) == "I/O error"
    assert disk_problem(sqlite3.OperationalError("database is locked")) is None
    assert disk_problem(sqlite3.IntegrityError("UNIQUE constraint failed")) is None


async def _journal_readonly(e: Any) -> None:  # run in the engine process (module level: pickled)
    await make_readonly(e.store)


async def test_the_reason_reaches_the_screen_from_the_engine_process(tmp_path: Path) -> None:
    from engine.commands import Command
    from tests.tui_harness import make_host, ui_config

    host = make_host("process", ui_config(tmp_path))
    host.start()
    stopped: list[BaseException | None] = []
    done = threading.Event()
    host.on_stopped = lambda e: (stopped.append(e), done.set())
    try:
        await host.call(_journal_readonly)
        result = await host.command(Command("close", "demo-1"))
        assert not result.ok  # the exit could not be journaled: nothing was sent
        assert await asyncio.to_thread(done.wait, 20)
    finally:
        host.stop()
    (error,) = stopped
    assert error is not None and "JournalUnwritable" in str(error)
    assert "read-only" in str(error) and "free on" in str(error)


# --- start-up on a full or read-only disk ---------------------------------------------------


class _FullDisk(sqlite3.Connection):
    """A connection on a disk with no room left: the file cannot grow (SQLITE_FULL)."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.execute("PRAGMA max_page_count = 1")


class _ShmFails(sqlite3.Connection):
    """Setting up the WAL's files fails as on a full disk: SQLITE_IOERR from the pragma."""

    def execute(self, sql: str, *a: Any) -> sqlite3.Cursor:  # type: ignore[override]
        if "journal_mode" in sql:
            raise sqlite3.OperationalError("disk I/O error")
        return super().execute(sql, *a)


def _connect_with(monkeypatch: pytest.MonkeyPatch, factory: type | None, readonly: bool = False):
    import aiosqlite

    orig = aiosqlite.connect

    def connect(database: Any, **kw: Any) -> Any:
        if factory is not None:
            kw["factory"] = factory
        if readonly:  # as a read-only mount: every write is refused (root ignores chmod)
            return orig(f"{Path(database).resolve().as_uri()}?mode=ro", uri=True, **kw)
        return orig(database, **kw)

    monkeypatch.setattr(aiosqlite, "connect", connect)


def _run_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from engine import cli

    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[engine]\ndata_dir = "{tmp_path / "data"}"\n[alerts]\nlog_file = ""\n')
    code = cli.main(["--config", str(cfg), "--headless"])
    return code, capsys.readouterr().err


def _assert_disk_message(err: str, what: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err  # one line, no traceback
    assert what in lines[0] and "free on" in lines[0]
    assert "move it aside" not in err and "not a usable SQLite database" not in err


async def test_a_new_journal_on_a_full_disk_says_so(tmp_path: Path, monkeypatch) -> None:
    _connect_with(monkeypatch, _FullDisk)
    with pytest.raises(JournalUnwritable) as err:
        await Store(tmp_path / "trades.db").open()
    _assert_disk_message(str(err.value), "the disk is full")
    monkeypatch.undo()
    async with Store(tmp_path / "trades.db"):
        pass  # nothing left locked; it opens once there is room


async def test_an_existing_journal_whose_wal_cannot_be_set_up_is_kept(
    tmp_path: Path, monkeypatch
) -> None:
    p = tmp_path / "trades.db"
    async with Store(p) as s:
        await s.set_state("armed", True)
    before = p.read_bytes()
    _connect_with(monkeypatch, _ShmFails)
    with pytest.raises(JournalUnwritable) as err:
        await Store(p).open()
    _assert_disk_message(str(err.value), "I/O error")
    assert "Keep the journal" in str(err.value)
    assert p.read_bytes() == before


def test_start_on_a_full_disk_through_the_command(tmp_path: Path, monkeypatch, capsys) -> None:
    _connect_with(monkeypatch, _FullDisk)
    code, err = _run_cli(tmp_path, capsys)
    assert code == 1
    _assert_disk_message(err, "the disk is full")


def test_start_on_a_read_only_journal_through_the_command(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    asyncio.run(_make_journal(tmp_path / "data" / "trades.db"))
    _connect_with(monkeypatch, None, readonly=True)
    code, err = _run_cli(tmp_path, capsys)
    assert code == 1
    _assert_disk_message(err, "read-only")


async def _make_journal(p: Path) -> None:
    async with Store(p) as s:
        await s.set_state("armed", False)


# --- a data_dir that cannot be one -----------------------------------------------------------


def _cli(tmp_path: Path, data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(f'[engine]\ndata_dir = "{data_dir}"\n', encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KALSHI_")}
    env.update(HOME=str(tmp_path / "home"), XDG_DATA_HOME=str(tmp_path / "xdg"))
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", "--config", str(cfg), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _one_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr  # no traceback
    return lines[0]


@pytest.mark.parametrize("under", [False, True], ids=["is-a-file", "parent-is-a-file"])
def test_a_file_where_data_dir_should_be_is_one_line_and_exit_2(
    tmp_path: Path, under: bool
) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory\n")
    data_dir = blocker / "data" if under else blocker
    commands = [("check-config",), ("--headless",), ("trades", "add", *_TRADE)]
    commands += [("status",), ("trades", "list"), ("metrics",)]  # those that only read, too
    for args in commands:
        proc = _cli(tmp_path, data_dir, *args)
        assert proc.returncode == 2, (args, proc.stderr)
        line = _one_line(proc)
        assert "engine.data_dir" in line and str(blocker) in line and "is a file" in line
        assert proc.stdout == ""  # check-config says so first, before any config is printed
    assert blocker.read_text() == "not a directory\n"


_TRADE = ("--id", "m1", "--contract", "C", "--side", "yes", "--qty", "1", "--price", "0.5")


def _unwritable_dir(tmp_path: Path) -> Path:
    d = tmp_path / "locked"
    d.mkdir()
    d.chmod(0o555)
    if os.access(d, os.W_OK):  # root: permissions stop nothing; a read-only mount does
        d = Path("/proc/sys")
        if os.access(d, os.W_OK):
            pytest.skip("no directory this user cannot write (root, no read-only mount)")
    return d


def test_an_unwritable_data_dir_or_parent_is_one_line_and_exit_2(tmp_path: Path) -> None:
    parent = _unwritable_dir(tmp_path)
    try:
        for data_dir in (parent / "ts-data", parent):  # to be created in it, or it itself
            for args in (("check-config",), ("--headless",)):
                proc = _cli(tmp_path, data_dir, *args)
                assert proc.returncode == 2, (args, proc.stderr)
                line = _one_line(proc)
                assert "engine.data_dir" in line and "not writable" in line
                assert str(parent) in line
        # Reading an unwritable data dir is fine: `status` says no engine has run there.
        status = _cli(tmp_path, parent, "status")
        assert status.returncode == 0 and "has not run" in status.stdout, status.stderr
    finally:
        (tmp_path / "locked").chmod(0o755)


# --- the one-engine lock ------------------------------------------------------------------


def _alerts_about_lock(h: Any) -> list[Alert]:
    return [a for a in h.alerts if "lock file" in a.message]


async def test_a_deleted_lock_file_is_recreated_within_a_tick_and_keeps_others_out(
    tmp_path: Path,
) -> None:
    h = await standard(tmp_path)
    await h.tick(1)
    h.store.lock_path.unlink()  # someone cleans up the data directory
    await h.tick(2)
    (alert,) = _alerts_about_lock(h)
    assert alert.severity is Severity.WARNING and "deleted" in alert.message
    assert h.store.lock_path.read_text().strip() == str(os.getpid())
    with pytest.raises(StoreLocked):
        await Store(h.store.path).open()  # a second engine is kept out again
    assert not h.engine.stopping
    await h.close()


async def test_a_lock_taken_by_another_process_stops_this_engine(tmp_path: Path) -> None:
    import fcntl

    h = await standard(tmp_path)
    await h.tick(1)
    h.store.lock_path.unlink()
    other = os.open(h.store.lock_path, os.O_RDWR | os.O_CREAT)  # another engine's lock
    try:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(other, b"424242\n")
        await h.tick(2)
        (first,) = _alerts_about_lock(h)
        assert first.severity is Severity.CRITICAL and "424242" in first.message
        assert not h.engine.stopping  # a second engine refusing lets go within a second
        for t in (3, 4):
            await h.tick(t)
        await asyncio.wait_for(h.engine.wait_stopping(), 5)
        assert isinstance(h.engine.fatal, StoreLocked)
        assert "this engine stops" in str(h.engine.fatal)
        assert any("ENGINE STOPPED" in a.message for a in h.alerts)
    finally:
        os.close(other)
    await h.engine.flush()
    await h.close()


def test_a_second_engine_refuses_a_journal_with_a_live_heartbeat(tmp_path: Path) -> None:
    """The first engine's lock file is deleted; a second one (a real process) finds the
    heartbeat in the journal, refuses with the first's pid, and the first takes its lock
    file back."""

    async def first_engine() -> None:
        h = await standard(tmp_path)
        await h.tick(1)  # writes the heartbeat: this process's pid, the wall time
        h.store.lock_path.unlink()
        proc = await asyncio.to_thread(_cli, tmp_path, tmp_path, "--headless")
        assert proc.returncode == 1, proc.stderr
        line = _one_line(proc)
        assert f"pid {os.getpid()}" in line and f"kill {os.getpid()}" in line
        assert "heartbeat" in line
        assert (await h.store.get_state("heartbeat"))["pid"] == os.getpid()  # untouched
        await h.tick(2)
        (alert,) = _alerts_about_lock(h)
        assert "replaced" in alert.message  # the second engine's file, let go: taken back
        with pytest.raises(StoreLocked):
            await Store(h.store.path).open()
        assert not h.engine.stopping
        await h.close()

    asyncio.run(first_engine())


async def test_a_heartbeat_of_a_process_that_is_gone_does_not_block(tmp_path: Path) -> None:
    p = tmp_path / "trades.db"
    for reaped in (True, False):  # gone, or dead and not yet reaped by its parent (a zombie)
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        if reaped:
            gone.wait()
        else:
            os.waitid(os.P_PID, gone.pid, os.WEXITED | os.WNOWAIT)  # dead, still listed
        async with Store(p) as s:
            await s.set_state("heartbeat", {"pid": gone.pid, "wall_ts": time.time()})
        async with Store(p):  # a crashed engine's journal opens at once
            pass
        gone.wait()


@pytest.mark.parametrize("host_kind", ["process", "thread"])
async def test_the_screen_shows_why_the_engine_stopped(tmp_path: Path, host_kind: str) -> None:
    from engine.commands import Command
    from tests.tui_harness import running_app, settle
    from tui.panes import StatusBar

    async with running_app(tmp_path, host_kind=host_kind) as (app, pilot, host):
        await host.call(_journal_readonly)
        result = await host.command(Command("close", "demo-1"))
        assert not result.ok  # the exit could not be journaled: nothing was sent
        assert await asyncio.to_thread(host.stopped.wait, 20.0)
        await settle(pilot)
        assert app.main is not None
        assert "ENGINE STOPPED" in str(app.main.query_one(StatusBar).render())
        notes = [(n.title, n.message) for n in app._notifications]
        title, message = notes[-1]
        assert title == "Engine stopped" and "NOT protected" in message
        assert "read-only" in message and "free on" in message and "Keep the journal" in message
        assert app.bells >= 1


async def test_the_webhook_gets_the_stop_from_a_real_runtime_on_a_read_only_journal(
    tmp_path: Path,
) -> None:
    """The shipped wiring (build_runtime, attach_channels, Runtime.close): the webhook's POST of
    the ENGINE STOPPED alert goes out although the journal refuses every write."""
    from aiohttp import web

    from engine.clock import ManualClock
    from engine.commands import Command
    from engine.runtime import build_runtime
    from tests.loopback import serve
    from tests.tui_harness import T0 as UI_T0
    from tests.tui_harness import ui_config

    bodies: list[dict[str, Any]] = []

    async def handle(request: web.Request) -> web.Response:
        bodies.append(await request.json())
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_route("POST", "/hook", handle)
    async with serve(app, shutdown_timeout=0.1) as port:
        hook = {"enabled": True, "url": f"http://127.0.0.1:{port}/hook"}
        cfg = ui_config(tmp_path, alerts={"log_file": "", "webhook": hook})
        rt = await build_runtime(cfg, None, clock=ManualClock(UI_T0))
        try:
            await make_readonly(rt.store)
            result = await rt.engine.command(Command("close", "demo-1"))
            assert not result.ok
            await asyncio.wait_for(rt.engine.wait_stopping(), 5)
        finally:
            await rt.close()  # the webhook sends what is waiting before it closes
    stops = [b for b in bodies if "ENGINE STOPPED" in json.dumps(b)]
    assert len(stops) == 1, bodies
    assert "read-only" in json.dumps(stops[0]) and "demo-1" in json.dumps(stops[0])


@pytest.mark.slow
def test_a_deleted_lock_of_a_running_headless_engine_lets_no_second_one_in(
    tmp_path: Path,
) -> None:
    from tests.test_cli import ENGINE_CONFIG, Cli, add_trade
    from tests.test_cli import Engine as HeadlessEngine

    cli = Cli(tmp_path)
    cli.write_config(ENGINE_CONFIG.replace("demo_trades = 1", "demo_trades = 0"))
    assert add_trade(cli, "m1").returncode == 0
    first = HeadlessEngine(cli)
    try:
        first.wait_for(lambda line: line.startswith("trade-supervisor: venue"))  # the banner
        deadline = time.monotonic() + 30  # the heartbeat is written on the first tick
        while True:
            info = json.loads(cli.ok("--config", str(cli.config), "status", "--json"))
            if info["heartbeat_age_seconds"] is not None or time.monotonic() > deadline:
                break
        (cli.data / "trades.db.lock").unlink()  # someone tidies the data directory

        second = cli.run("--config", str(cli.config), "--headless", timeout=30)
        assert second.returncode == 1, second.stderr
        assert f"pid {first.proc.pid}" in second.stderr  # by the heartbeat or the new lock
        line = first.wait_for(lambda line: "lock file" in line and "re-created" in line)
        assert "warning" in line
        assert first.proc.poll() is None  # the first one is unharmed and holds its lock again
        third = cli.run("--config", str(cli.config), "--headless", timeout=30)
        assert third.returncode == 1
        assert f"another trade-supervisor (pid {first.proc.pid})" in third.stderr
        assert first.stop() == 0
    finally:
        first.kill()


_UNDER_FILE_SIZE_LIMIT = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from engine.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow
def test_a_headless_engine_on_a_disk_that_fills_says_so_and_stops(tmp_path: Path) -> None:
    """A real refusal by the OS: RLIMIT_FSIZE stops the journal's files growing (SQLite sees
    the write fail as on a full disk). Start-up fits; the WAL soon does not."""
    from tests.test_cli import Cli
    from tests.test_cli import Engine as HeadlessEngine

    cli = Cli(tmp_path)
    cli.write_config("[sim]\nspeed = 10\ndemo_trades = 2\n[alerts]\nlog_file = ''\n")
    first = HeadlessEngine(cli)  # creates the journal and the demo trades, then stops cleanly
    try:
        first.wait_for(lambda line: line.startswith("trade-supervisor: venue"))
        assert first.stop() == 0
    finally:
        first.kill()
    db = cli.data / "trades.db"
    limit = db.stat().st_size + 64 * 1024
    argv = ["--config", str(cli.config), "--headless"]
    proc = subprocess.run(
        [sys.executable, "-c", _UNDER_FILE_SIZE_LIMIT, str(limit), *argv],
        cwd=tmp_path,
        env=cli.env,
        capture_output=True,  # pipes: no size limit on them
        text=True,
        timeout=90,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    stops = [line for line in proc.stdout.splitlines() if "ENGINE STOPPED" in line]
    assert len(stops) == 1 and "critical" in stops[0], proc.stdout
    assert "demo-1" in stops[0] and "demo-2" in stops[0] and "free on" in stops[0]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("trade-supervisor: cannot write the journal"), proc.stderr[-2000:]
    assert "move it aside" not in proc.stdout + proc.stderr
    assert db.exists()
    # Once there is room again, the same journal starts with its trades.
    again = cli.run("--config", str(cli.config), "trades", "list", "--json")
    assert sorted(t["trade_id"] for t in json.loads(again.stdout)) == ["demo-1", "demo-2"]
