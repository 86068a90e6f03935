"""The engine as a background service, and the command-line verbs that steer a running one.

    trade-supervisor start          the engine in its own session, detached from the terminal
    trade-supervisor stop [--yes]   stop it (confirmed; warns about the trades losing protection)
    trade-supervisor arm | disarm | pause [ID] | resume [ID] | kill-switch on|off
                     | close ID | close-all [--yes] | reload

`start` runs `trade-supervisor --headless` (the foreground form, which serves the same control
socket) as a child in a new session (`start_new_session`), its output appended to
`<data_dir>/engine.log`, and returns once the engine answers on its control socket, or, if the
child exits first, prints what it printed (a locked journal, a bad key file) and returns its
exit code. The verbs talk to the engine over the control socket (engine/control.py); with no
engine running they say so and exit 1.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from engine.config import Config
from engine.control import ControlClient, ControlError, Error, NoEngine, socket_path
from engine.store import JOURNAL_FILENAME, Store

EXIT_OK, EXIT_FAIL, EXIT_CONFIG = 0, 1, 2
SERVICE_LOG = "engine.log"
START_TIMEOUT_SECONDS = 90.0
STOP_TIMEOUT_SECONDS = 30.0
POLL_SECONDS = 0.05
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _err(text: str) -> None:
    print(f"trade-supervisor: {text}", file=sys.stderr)


def engine_pid(config: Config) -> int | None:
    """The pid of the engine holding this config's journal, None when none runs."""
    return Store(config.data_path() / JOURNAL_FILENAME).engine_pid()


def _connect(config: Config, timeout: float = 30.0) -> ControlClient:
    return ControlClient(socket_path(config), timeout=timeout)


def _answers(config: Config) -> ControlClient | None:
    try:
        return _connect(config, timeout=5.0)
    except ControlError:
        return None


# ---------------------------------------------------------------------- start


def start(config: Config, config_path: Path | None, timeout: float = START_TIMEOUT_SECONDS) -> int:
    """Start the engine in the background; return once it answers, or with its exit code."""
    data = config.data_path()
    pid = engine_pid(config)
    if pid is not None:
        print(
            f"trade-supervisor: an engine already runs for {data.resolve()} (pid {pid}); "
            "`trade-supervisor status` shows it, `trade-supervisor stop` stops it"
        )
        return EXIT_OK
    data.mkdir(parents=True, exist_ok=True)
    log_path = data / SERVICE_LOG
    offset = log_path.stat().st_size if log_path.exists() else 0
    argv = [sys.executable, "-m", "engine.cli"]
    if config_path is not None:
        argv += ["--config", str(Path(config_path).resolve())]
    argv.append("--headless")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(PROJECT_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONUNBUFFERED"] = "1"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
            start_new_session=True,  # its own session: no terminal, no SIGHUP from ours
            close_fds=True,
        )
    deadline = time.monotonic() + timeout
    client: ControlClient | None = None
    while client is None:
        code = proc.poll()
        if code is not None:
            # It stopped during start-up: what it said is the reason (a locked journal ...).
            with open(log_path, "rb") as f:
                f.seek(offset)
                sys.stderr.write(f.read().decode("utf-8", "replace"))
            _err(f"the engine did not start (exit code {code}); its log: {log_path}")
            return code
        if time.monotonic() >= deadline:
            _err(
                f"the engine (pid {proc.pid}) did not answer on its control socket within "
                f"{timeout:.0f} s; it may still be starting: see {log_path}"
            )
            return EXIT_FAIL
        client = _answers(config) if engine_pid(config) == proc.pid else None
        if client is None:
            time.sleep(POLL_SECONDS)
    with client:
        w = client.welcome
    # The child lives on in its own session. A screen that started it (./run-app) may outlive
    # it: a daemon thread reaps it then, so no zombie stays behind until the screen quits.
    threading.Thread(target=proc.wait, name="engine-reaper", daemon=True).start()
    print(
        f"trade-supervisor: engine started (pid {w.pid}): venue {w.venue}, mode {w.mode}, "
        f"{'ARMED' if w.armed else 'disarmed'}{', PAUSED' if w.paused_all else ''}; "
        f"journal {w.journal}; log {log_path}; stop it with `trade-supervisor stop`"
    )
    return EXIT_OK


# ---------------------------------------------------------------------- confirmation


def confirm(word: str, prompt: str) -> bool:
    """Ask for `word` typed on stdin (a terminal or a pipe); False on anything else or EOF."""
    print(f"{prompt} Type {word} to go on: ", end="", file=sys.stderr, flush=True)
    line = sys.stdin.readline()
    return line.strip() == word


# ---------------------------------------------------------------------- stop


def stop(config: Config, yes: bool, timeout: float = STOP_TIMEOUT_SECONDS) -> int:
    """Stop the running engine (it flushes and closes the journal), after confirmation."""
    pid = engine_pid(config)
    try:
        client = _connect(config, timeout=10.0)
    except NoEngine:
        if pid is None:
            print(f"trade-supervisor: no engine runs for {config.data_path().resolve()}")
            return EXIT_FAIL
        _err(
            f"the engine (pid {pid}) does not answer on its control socket "
            f"{socket_path(config)}; stop it with `kill -TERM {pid}`"
        )
        return EXIT_FAIL
    except ControlError as e:
        _err(str(e))
        return EXIT_FAIL
    with client:
        st = client.status()
        if isinstance(st, Error):
            _err(st.message)
            return EXIT_FAIL
        n = len(st.open_trades)
        if n:
            shown = ", ".join(st.open_trades[:10]) + (", …" if n > 10 else "")
            lead = "WARNING: the engine is ARMED" if st.armed else "The engine"
            print(
                f"{lead} and watches {n} open trade(s) ({shown}): once it stops, nothing "
                "closes them by their rules until an engine runs again.",
                file=sys.stderr,
            )
        if not yes and not confirm("stop", f"Stop the engine (pid {st.pid})?"):
            _err("not stopped (confirm by typing stop, or pass --yes)")
            return EXIT_CONFIG
        return _stop_now(client, config, st.pid, timeout)


def _stop_now(client: ControlClient, config: Config, pid: int, timeout: float) -> int:
    r = client.stop()
    if isinstance(r, Error) or not r.ok:
        _err(f"the engine refused: {r.message}")
        return EXIT_FAIL
    if client.path == socket_path(config):  # this config's engine: wait for its journal
        deadline = time.monotonic() + timeout
        while engine_pid(config) is not None:
            if time.monotonic() >= deadline:
                _err(f"the engine (pid {pid}) did not stop within {timeout:.0f} s")
                return EXIT_FAIL
            time.sleep(POLL_SECONDS)
        print(f"trade-supervisor: engine (pid {pid}) stopped; its journal is closed")
    else:
        print(f"trade-supervisor: engine (pid {pid}): {r.message}")
    return EXIT_OK


def stop_at(path: Path, config: Config, timeout: float = STOP_TIMEOUT_SECONDS) -> int:
    """Stop the engine at `path` now (already confirmed: the screen's quit under on_quit =
    "stop")."""
    try:
        client = ControlClient(path, timeout=10.0)
    except ControlError as e:
        _err(f"the engine was not stopped: {e}")
        return EXIT_FAIL
    with client:
        return _stop_now(client, config, client.welcome.pid, timeout)


# ---------------------------------------------------------------------- the verbs


def _no_engine(config: Config) -> str:
    """Why nothing answers on the socket: no engine, or one without a socket (a screen's own)."""
    pid = engine_pid(config)
    data = config.data_path().resolve()
    if pid is None:
        return f"no engine runs for {data} (start one with `trade-supervisor start`)"
    return (
        f"the engine for {data} (pid {pid}) has no control socket: it runs inside a screen "
        '([ui] engine = "process" or "thread"); use that screen, or quit it and run '
        "`trade-supervisor start`"
    )


def verb(config: Config, name: str, arg: str | None = None, yes: bool = False) -> int:
    """One command to the running engine; prints its answer; 0 when it accepted."""
    if name == "kill-switch":
        if arg not in ("on", "off"):
            _err("kill-switch takes on or off")
            return EXIT_CONFIG
        action, trade_id = ("pause_all" if arg == "on" else "resume_all"), None
    elif name in ("pause", "resume"):
        action, trade_id = (name if arg else f"{name}_all"), arg
    elif name == "close":
        action, trade_id = "close", arg
    else:
        action, trade_id = {"close-all": "close_all"}.get(name, name), None
    try:
        client = _connect(config)
    except NoEngine:
        _err(_no_engine(config) + "; nothing was sent")
        return EXIT_FAIL
    except ControlError as e:
        _err(f"{e}; nothing was sent")
        return EXIT_FAIL
    with client:
        if action == "close_all" and not yes:
            st = client.status()
            n = 0 if isinstance(st, Error) else len(st.open_trades)
            if not confirm("CLOSE", f"Send an exit for every open trade ({n})?"):
                _err("nothing was sent (confirm by typing CLOSE, or pass --yes)")
                return EXIT_CONFIG
        try:
            r = client.command(action, trade_id)
        except ControlError as e:
            _err(f"{e}; the command may not have run: check `trade-supervisor status`")
            return EXIT_FAIL
    if isinstance(r, Error):
        _err(f"the engine refused the request: {r.message}")
        return EXIT_FAIL
    print(r.message)
    return EXIT_OK if r.ok else EXIT_FAIL
