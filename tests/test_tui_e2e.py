"""End to end: the real `trade-supervisor` in tmux, driven by keys, read with capture-pane.

This is how traders run it (over SSH, in tmux). The test waits for what should appear on the
screen (polling capture-pane up to a deadline), never for a fixed time.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
APP = Path(sys.executable).parent / "trade-supervisor"
DEADLINE_SECONDS = 40.0
STRANDED = "KXBTCD-25JAN0100-T97000"  # an hourly event of the past: the sim never lists it

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("tmux") is None,
        reason="tmux is not installed (apt install tmux); the end-to-end screen test needs it",
    ),
]


class Tmux:
    """One private tmux server (its own socket) with one session running the app."""

    def __init__(self, tmp: Path) -> None:
        self.socket = f"ts-e2e-{os.getpid()}"
        self.session = "ts"
        self.tmp = tmp

    def run(self, *args: str) -> str:
        # COLUMNS/LINES (set by pytest's terminal handling) would pin the app's size.
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
        out = subprocess.run(
            ["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=20, env=env
        )
        return out.stdout

    def start(self, command: list[str], width: int = 160, height: int = 50) -> None:
        self.run(
            "new-session", "-d", "-s", self.session, "-x", str(width), "-y", str(height),
            "-c", str(self.tmp), " ".join(_quote(c) for c in command),
        )  # fmt: skip
        self.run("set-option", "-t", self.session, "remain-on-exit", "on")

    def screen(self, history: bool = False) -> str:
        """The visible screen (with `history`, the scrollback too), wrapped lines joined."""
        more = ["-S", "-"] if history else []
        return self.run("capture-pane", "-p", "-J", *more, "-t", self.session)

    def keys(self, *keys: str) -> None:
        self.run("send-keys", "-t", self.session, *keys)

    def wait_for(self, what: Callable[[str], bool], why: str) -> str:
        end = time.monotonic() + DEADLINE_SECONDS
        screen = ""
        while time.monotonic() < end:
            screen = self.screen()
            if what(screen):
                return screen
            time.sleep(0.1)  # polling the screen, not timing the app
        raise AssertionError(f"timed out waiting for {why}; the screen was:\n{screen}")

    def dead(self) -> bool:
        return self.run("display-message", "-p", "-t", self.session, "#{pane_dead}").strip() == "1"

    def kill(self) -> None:
        self.run("kill-server")


def _quote(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Tmux]:
    t = Tmux(tmp_path)
    try:
        yield t
    finally:
        t.kill()


def _config(tmp: Path, engine: str = "process") -> Path:
    text = (ROOT / "config.toml").read_text(encoding="utf-8")
    data_dir = tmp / "data"
    text = text.replace('data_dir = "./data"', f'data_dir = "{data_dir}"', 1)
    text = text.replace('engine = "service"', f'engine = "{engine}"', 1)
    assert tomllib.loads(text)["ui"]["engine"] == engine
    assert tomllib.loads(text)["engine"]["data_dir"] == str(data_dir)
    path = tmp / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_real_app_in_tmux_shows_the_panes_and_obeys_the_keys(
    tmux: Tmux, tmp_path: Path
) -> None:
    assert APP.exists(), f"{APP} is missing: install the project (uv sync) first"
    cfg = _config(tmp_path)
    # An open trade on a contract the simulated market does not list: never quoted or settled,
    # so it is open at any wall-clock time. (Demo trades are settled by the sim's hourly event
    # and closed by the shipped ttc_cutoff in its last two minutes: started then, the app would
    # have nothing to protect and quit without the warning this test looks for.)
    added = subprocess.run(
        [str(APP), "--config", str(cfg), "trades", "add", "--id", "m1", "--contract", STRANDED,
         "--side", "yes", "--qty", "10", "--price", "0.47"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    tmux.start([str(APP), "--config", str(cfg)])

    screen = tmux.wait_for(
        lambda s: all(w in s for w in ("Open trades", "m1", "Market", "Strikes", "Alerts")),
        "the four panes with the open trade",
    )
    assert " SIM " in screen and "ARMED" in screen and "Market" in screen, screen

    tmux.keys("P")
    tmux.wait_for(lambda s: "PAUSED" in s.splitlines()[0], "the kill switch in the header")
    tmux.keys("P")
    tmux.wait_for(lambda s: "PAUSED" not in s.splitlines()[0], "the kill switch off again")

    tmux.keys("?")
    tmux.wait_for(lambda s: "kill_switch" in s and "close_all" in s, "the help screen")
    tmux.keys("Escape")
    tmux.wait_for(lambda s: "kill_switch" not in s, "the help screen closed")

    tmux.keys("q")
    tmux.wait_for(lambda s: "--headless" in s, "the quit warning pointing to --headless")
    tmux.keys("n")
    tmux.wait_for(lambda s: "--headless" not in s and "Open trades" in s, "the warning gone")
    assert not tmux.dead()

    tmux.keys("q")
    tmux.wait_for(lambda s: "--headless" in s, "the quit warning again")
    tmux.keys("y")
    tmux.wait_for(lambda _s: tmux.dead(), "the app to exit")
    screen = tmux.screen(history=True)
    assert "stopped; the journal is closed" in screen, screen

    status = subprocess.run(
        [str(APP), "--config", str(cfg), "status"], capture_output=True, text=True, timeout=30
    )
    assert "not running" in status.stdout, status.stdout


def _alive(pid: int) -> bool:
    """The process runs (a zombie waiting for its new parent to reap it has exited)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    state = next(line for line in status.splitlines() if line.startswith("State:"))
    return "zombie" not in state


def _cli(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(APP), "--config", str(cfg), *args], capture_output=True, text=True, timeout=60
    )


def test_the_screen_attaches_to_a_service_that_outlives_it(tmux: Tmux, tmp_path: Path) -> None:
    """The default (`[ui] engine = "service"`): the screen starts the engine in the background
    and attaches; q detaches and the engine protects on, killing the tmux server too; a screen
    attaches again; `stop` ends it."""
    cfg = _config(tmp_path, engine="service")
    added = _cli(cfg, "trades", "add", "--id", "m1", "--contract", STRANDED, "--side", "yes",
                 "--qty", "10", "--price", "0.47")  # fmt: skip
    assert added.returncode == 0, added.stderr
    try:
        tmux.start([str(APP), "--config", str(cfg)])
        tmux.wait_for(lambda s: "Open trades" in s and "m1" in s, "the attached screen")
        running = _cli(cfg, "status").stdout.splitlines()[0]
        assert running.startswith("engine:  running (pid "), running
        tmux.keys("q")
        tmux.wait_for(lambda s: "stays on" in s and "trade-supervisor stop" in s, "detach dialog")
        tmux.keys("y")
        tmux.wait_for(lambda _s: tmux.dead(), "the screen to exit")
        assert "detached; the engine (pid" in tmux.screen(history=True)
        assert _cli(cfg, "status").stdout.splitlines()[0] == running  # the same engine runs on

        tmux.kill()  # the whole tmux server: the engine is in a session of its own
        assert _cli(cfg, "status").stdout.splitlines()[0] == running
        tmux.start([str(APP), "--config", str(cfg)])
        tmux.wait_for(lambda s: "Open trades" in s and "m1" in s, "a screen attached again")
        # A command from the command line shows on the screen.
        proc = _cli(cfg, "kill-switch", "on")
        assert proc.returncode == 0, proc.stderr
        tmux.wait_for(lambda s: "PAUSED" in s.splitlines()[0], "the kill switch in the header")

        # The tmux session killed under the screen: the screen exits within 2 s (SIGHUP), the
        # engine runs on.
        screen_pid = int(tmux.run("display-message", "-p", "-t", tmux.session, "#{pane_pid}"))
        assert b"trade-supervisor" in Path(f"/proc/{screen_pid}/cmdline").read_bytes()
        tmux.kill()
        end = time.monotonic() + 2.0
        while _alive(screen_pid) and time.monotonic() < end:
            time.sleep(0.05)
        assert not _alive(screen_pid), "the screen outlived its terminal"
        assert _cli(cfg, "status").stdout.splitlines()[0] == running
        tmux.start([str(APP), "--config", str(cfg)])
        tmux.wait_for(lambda s: "Open trades" in s and "PAUSED" in s, "attached once more")
    finally:
        stopped = _cli(cfg, "stop", "--yes")
    assert stopped.returncode == 0, stopped.stderr
    tmux.wait_for(lambda s: "ENGINE STOPPED" in s.upper(), "the red header on the screen")
    # q, and ./run-app offers to start it again.
    tmux.keys("q")
    tmux.wait_for(lambda s: "Start the engine again" in s, "the offer to start it again")
    tmux.keys("y", "Enter")
    try:
        tmux.wait_for(lambda s: "Open trades" in s and "m1" in s, "attached to a new engine")
        again = _cli(cfg, "status").stdout.splitlines()[0]
        assert again.startswith("engine:  running (pid ") and again != running, again
    finally:
        assert _cli(cfg, "stop", "--yes").returncode == 0


def test_on_quit_stop_stops_the_service_with_the_screen(tmux: Tmux, tmp_path: Path) -> None:
    cfg = _config(tmp_path, engine="service")
    cfg.write_text(
        cfg.read_text(encoding="utf-8").replace('on_quit = "detach"', 'on_quit = "stop"', 1),
        encoding="utf-8",
    )
    added = _cli(cfg, "trades", "add", "--id", "m1", "--contract", STRANDED, "--side", "yes",
                 "--qty", "10", "--price", "0.47")  # fmt: skip
    assert added.returncode == 0, added.stderr
    try:
        tmux.start([str(APP), "--config", str(cfg)])
        tmux.wait_for(lambda s: "Open trades" in s and "m1" in s, "the attached screen")
        tmux.keys("q")
        tmux.wait_for(lambda s: "Quitting stops the engine" in s, "the stop warning")
        tmux.keys("y")
        tmux.wait_for(lambda _s: tmux.dead(), "the screen to exit")
        assert "stopped; its journal is closed" in tmux.screen(history=True)
        assert _cli(cfg, "status").stdout.startswith("engine:  not running")
    finally:
        _cli(cfg, "stop", "--yes")
