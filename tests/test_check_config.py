"""`check-config` says first what would stop the engine from starting (no network needed), and
the files the supervisor writes in data_dir are private. The real command, in subprocesses."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from engine.store import Store

KEY_ID = "key-id-SECRET-0b7e"


def _run(
    root: Path, config: str, *args: str, umask: int = 0o022
) -> subprocess.CompletedProcess[str]:
    cfg = root / "cfg.toml"
    cfg.write_text(f'[engine]\ndata_dir = "{root / "data"}"\n' + config, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KALSHI_")}
    env.update(
        HOME=str(root / "home"), XDG_CONFIG_HOME=str(root / "x"), XDG_DATA_HOME=str(root / "y")
    )
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", "--config", str(cfg), *(args or ("check-config",))],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        umask=umask,
    )


def _key(path: Path, mode: int = 0o600) -> Path:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(mode)
    return path


def _kalshi_config(root: Path, key: Path) -> str:
    return f'[auto_stop]\nmode = "alert_only"\n[venues.kalshi]\napi_key_id = "{KEY_ID}"\nprivate_key_path = "{key}"\n'


def _run_kalshi(root: Path, key: Path) -> subprocess.CompletedProcess[str]:
    cfg = root / "cfg.toml"
    text = f'[engine]\nvenue = "kalshi"\ndata_dir = "{root / "data"}"\n' + _kalshi_config(root, key)
    cfg.write_text(text, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KALSHI_")}
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", "--config", str(cfg), "check-config"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_kalshi_key_readable_by_others_is_refused_with_exit_2(tmp_path: Path) -> None:
    key = _key(tmp_path / "kalshi.pem", 0o644)
    proc = _run_kalshi(tmp_path, key)
    assert proc.returncode == 2, proc.stderr
    assert "venues.kalshi.private_key_path" in proc.stderr and f"chmod 600 {key}" in proc.stderr
    assert KEY_ID not in proc.stderr + proc.stdout
    key.chmod(0o600)
    proc = _run_kalshi(tmp_path, key)
    assert proc.returncode == 0, proc.stderr


def test_a_kalshi_key_that_does_not_parse_or_is_missing_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    bad.chmod(0o600)
    proc = _run_kalshi(tmp_path, bad)
    assert proc.returncode == 2 and "not an unencrypted PEM private key" in proc.stderr
    proc = _run_kalshi(tmp_path, tmp_path / "nowhere.pem")
    assert proc.returncode == 2 and "not found" in proc.stderr


def test_data_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("x")
    proc = _run(tmp_path, "")
    assert proc.returncode == 2 and "engine.data_dir" in proc.stderr and "a file" in proc.stderr


def test_an_engine_running_on_the_journal_is_said_with_exit_2(tmp_path: Path) -> None:
    data = tmp_path / "data"

    async def hold() -> None:
        store = Store(data / "trades.db")
        await store.open()  # takes the one-engine lock, as a running engine does
        try:
            proc = await asyncio.to_thread(_run, tmp_path, "")
        finally:
            await store.close()
        assert proc.returncode == 2, proc.stderr
        assert f"another trade-supervisor (pid {os.getpid()})" in proc.stderr
        assert f"kill -HUP {os.getpid()}" in proc.stderr

    asyncio.run(hold())
    assert _run(tmp_path, "").returncode == 0  # released: the engine could start


def test_a_journal_that_is_not_one_is_refused(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "trades.db").write_text("my notes, not a database\n")
    proc = _run(tmp_path, "")
    assert proc.returncode == 2 and "not a SQLite database" in proc.stderr


def test_an_alert_log_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "data" / "alerts.jsonl").mkdir(parents=True)
    proc = _run(tmp_path, "")
    assert proc.returncode == 2 and "alerts.log_file" in proc.stderr


def test_a_contradiction_warning_is_printed_and_the_check_passes(tmp_path: Path) -> None:
    proc = _run(tmp_path, "[auto_stop.strategies.s.criteria]\nspike_window_seconds = 60\n")
    assert proc.returncode == 0, proc.stderr
    assert "warning: auto_stop.strategies.s.criteria.spike_window_seconds" in proc.stderr


def test_a_refused_contradiction_exits_2(tmp_path: Path) -> None:
    proc = _run(tmp_path, '[ui.keys]\nclose_trade = "q"\n')
    assert proc.returncode == 2 and "ui.keys.quit" in proc.stderr


# --- private files -------------------------------------------------------------------------------


def _modes(data: Path) -> dict[str, str]:
    return {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in data.iterdir()}


def test_the_journal_and_its_files_are_created_private(tmp_path: Path) -> None:
    proc = _run(
        tmp_path,
        "",
        "trades", "add", "--id", "t1", "--contract", "KXBTCD-25NOV2114-T97000",
        "--side", "yes", "--qty", "1", "--price", "0.4",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    data = tmp_path / "data"
    assert oct(stat.S_IMODE(data.stat().st_mode)) == "0o700"
    modes = _modes(data)
    assert "trades.db" in modes
    assert set(modes.values()) == {"0o600"}, modes


@pytest.mark.slow
def test_a_headless_session_writes_only_private_files(tmp_path: Path) -> None:
    # journal, WAL/SHM, lock, alert log, paper state: every file the engine writes.
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(
        f'[engine]\nvenue = "paper"\ndata_dir = "{tmp_path / "data"}"\n[sim]\nspeed = 50\n'
        "demo_trades = 2\n",
        encoding="utf-8",
    )
    proc = subprocess.run(
        [sys.executable, "-m", "engine.cli", "--config", str(cfg), "record", "out.jsonl",
         "--duration", "5", "--db", str(tmp_path / "data" / "trades.db")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, umask=0o022,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    data = tmp_path / "data"
    modes = _modes(data)
    # Directories 0700 (the tapes), every file 0600, the tapes' too.
    dirs = {k: v for k, v in modes.items() if (data / k).is_dir()}
    files = {k: v for k, v in modes.items() if k not in dirs}
    assert "trades.db" in files and set(files.values()) == {"0o600"}, modes
    assert set(dirs.values()) <= {"0o700"}, modes
    if (data / "tapes").is_dir():
        assert set(_modes(data / "tapes").values()) == {"0o600"}


def test_an_existing_journal_readable_by_others_is_warned_then_tightened(tmp_path: Path) -> None:
    args = ("trades", "add", "--id", "t1", "--contract", "C1", "--side", "yes", "--qty", "1",
            "--price", "0.4")  # fmt: skip
    assert _run(tmp_path, "", *args).returncode == 0
    journal = tmp_path / "data" / "trades.db"
    journal.chmod(0o644)
    proc = _run(tmp_path, "")
    assert proc.returncode == 0
    assert f"warning: {journal}: readable by other users" in proc.stderr
    assert stat.S_IMODE(journal.stat().st_mode) == 0o644  # check-config writes nothing
    assert _run(tmp_path, "", *[a.replace("t1", "t2") for a in args]).returncode == 0
    assert stat.S_IMODE(journal.stat().st_mode) == 0o600


def test_a_live_engine_whose_lock_file_was_deleted_is_said_too(tmp_path: Path) -> None:
    import time

    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:

        async def journal() -> None:
            store = Store(tmp_path / "data" / "trades.db")
            await store.open()
            await store.set_state("heartbeat", {"pid": other.pid, "wall_ts": time.time()})
            await store.close()

        asyncio.run(journal())
        (tmp_path / "data" / "trades.db.lock").unlink()
        proc = _run(tmp_path, "")
        assert proc.returncode == 2, proc.stderr
        assert f"pid {other.pid}" in proc.stderr and "lock file was deleted" in proc.stderr
    finally:
        other.kill()
        other.wait()
    assert _run(tmp_path, "").returncode == 0  # its process is gone: the engine could start
