"""The engine in a child process of the screen, so that neither the GIL nor the screen's garbage
collections can delay an exit.

Measured (benchmarks/ui_reaction.py): with the engine on a thread of the screen's process, the
reaction p99 rose from ~1.5 ms headless to 10-28 ms while the screen rendered. Every journal
round trip of an exit waited for the screen's thread to hand back the GIL, and a full garbage
collection of the screen's heap (up to 240 ms) stopped both threads. A child process has its own
GIL and its own heap.

`ProcessEngineHost` has the interface of `tui.host.EngineHost` (start, stop, running, stopped,
on_snapshot, on_stopped, call, submit, command, trade_detail, sync, advance), and the child runs
an ordinary `EngineHost` inside it: the engine, its thread and loop, its publisher, its start-up
and shutdown are the same code in both designs.

The pipe (a private socket pair, messages encoded by `tui.wire`):

    screen -> engine   ("call", id, fn)              fn(engine) awaited on the engine loop
                       ("host", id, (name, args))    host.<name>(*args): advance, sync,
                                                     command, trade_detail
                       ("stop", 0, None)
                       (the third item pickled on its own, so a bad one fails only its call)
    engine -> screen   ("ready",) / ("start_error", message)        once, at start
                       ("snap", wire.encode_snapshot(...))           the publisher's snapshots
                       ("result", id, value) / ("error", id, exc)
                       ("stopped", message or None)                  journal flushed and closed

In the child, snapshots are encoded on the engine loop in chunks that let reactions through
(`wire.encode_snapshot`); a sender thread pickles the small messages and writes everything, in
order (a snapshot is dropped when a newer one is already queued behind it), so the engine loop
never waits for the pipe or the screen. A snapshot always reaches the screen before the reply of the call that published it.

The child lives and dies with the screen: it stops when told, when the pipe closes (the screen
died: end of file), or on SIGTERM (a service manager stopping the whole group); it ignores SIGINT
and SIGHUP, which a terminal sends to both processes, and lets the screen decide. In every case
the engine stops and closes the journal before the process exits.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import functools
import itertools
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, TypeVar

from engine import private_files
from engine.clock import Clock, ManualClock
from engine.commands import Command, CommandResult
from engine.config import Config
from engine.snapshot import Snapshot, TradeDetail
from engine.supervisor import Engine
from tui import wire
from tui.host import STOP_TIMEOUT_SECONDS, EngineHost, EngineHostError

log = logging.getLogger(__name__)

T = TypeVar("T")

# The engine thread must win the GIL back quickly from the child's other threads (the sender
# writing a snapshot, the request reader).
CHILD_SWITCH_INTERVAL = 0.0005
HOST_METHODS = frozenset({"advance", "sync", "command", "trade_detail"})
PROJECT_ROOT = Path(__file__).resolve().parent.parent
LOG_FORMAT = "%(asctime)s %(levelname)s [engine process] %(name)s: %(message)s"


@dataclass(frozen=True)
class ChildSpec:
    """What the child needs to build its `EngineHost` (pickled once, at spawn)."""

    config: Config
    config_path: Path | None
    clock: Clock | None
    drive: bool
    db_path: Path | None
    auto_publish: bool
    log_path: Path | None


# ---------------------------------------------------------------------- the child process


class _Terminate(BaseException):
    """SIGTERM in the child: stop the engine and leave."""


class _InOrder:
    """A thread that handles messages one by one in the order they were put. A snapshot is
    skipped when a newer one is already queued behind it: only the newest is worth drawing.
    `handle` returns False to end the thread (the rest is dropped)."""

    def __init__(self, handle: Callable[[tuple[Any, ...]], bool], name: str) -> None:
        self._handle = handle
        self._queue: collections.deque[tuple[Any, ...]] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, msg: tuple[Any, ...]) -> None:
        with self._cond:
            self._queue.append(msg)
            self._cond.notify()

    def close(self, timeout: float = 10.0) -> None:
        """Handle what is queued, then end the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _next(self) -> tuple[Any, ...] | None:
        with self._cond:
            while True:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return None
                msg = self._queue.popleft()
                if msg[0] == "snap" and any(m[0] == "snap" for m in self._queue):
                    continue
                return msg

    def _run(self) -> None:
        while (msg := self._next()) is not None:
            if not self._handle(msg):
                with self._cond:
                    self._queue.clear()
                    self._closed = True
                return


class _Outbox(_InOrder):
    """The child's one writer to the pipe: encodes (small messages) and sends, in order."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        super().__init__(self._send, "engine-sender")

    def snapshot(self, encoded: Any) -> None:
        """Queue a snapshot already encoded on the engine loop (`wire.encode_snapshot`)."""
        self.put(("snap", encoded))

    def _send(self, msg: tuple[Any, ...]) -> bool:
        try:
            self._conn.send_bytes(_encode(msg))
        except (OSError, EOFError):  # the screen is gone; the main thread sees EOF too
            return False
        return True


def _encode(msg: tuple[Any, ...]) -> bytes:
    try:
        return wire.dumps(msg)
    except Exception as e:  # an unpicklable result or exception: say what it was instead
        if msg[0] in ("result", "error"):
            err = EngineHostError(f"the engine's answer could not be sent: {e!r}")
            return wire.dumps(("error", msg[1], err))
        raise


def _error_text(e: BaseException | None) -> str | None:
    return None if e is None else f"{type(e).__name__}: {e}"


def _setup_child_logging(log_path: Path | None) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    if log_path is None:
        # Never the terminal: the screen owns it. (Tests: pytest captures fd 2.)
        root.addHandler(logging.NullHandler())
        return
    # A log line that cannot be written (a full disk) is dropped: logging's own complaint would
    # go to fd 2, the screen's terminal.
    logging.raiseExceptions = False
    handler = logging.FileHandler(log_path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def child_main(conn: Connection) -> None:
    """The engine process: read the spec from the pipe, run the engine, serve the screen."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)

    def terminate(_sig: int, _frame: object) -> None:
        raise _Terminate

    signal.signal(signal.SIGTERM, terminate)
    try:
        paths, spec = _read_spec(conn)
    except (EOFError, OSError):
        return  # the screen went away before sending anything
    for p in reversed(paths):
        if p not in sys.path:
            sys.path.insert(0, p)
    _setup_child_logging(spec.log_path)
    sys.setswitchinterval(CHILD_SWITCH_INTERVAL)
    out = _Outbox(conn)
    host = EngineHost(
        spec.config,
        spec.config_path,
        clock=spec.clock,
        drive=spec.drive,
        db_path=spec.db_path,
        auto_publish=spec.auto_publish,
    )
    host.on_stopped = lambda e: out.put(("stopped", _error_text(e)))
    try:
        try:
            host.start()
        except BaseException as e:
            out.put(("start_error", str(e) or type(e).__name__))
            host.stop()
            return
        out.put(("ready",))
        # Snapshots only after "ready" (the screen asks for one as soon as it is drawn).
        host.encode = functools.partial(
            wire.encode_snapshot, pause=host.engine.let_reactions_through
        )
        host.on_snapshot = out.snapshot
        _serve(conn, host, out)
    except _Terminate:
        log.info("SIGTERM: stopping the engine")
    finally:
        with contextlib.suppress(_Terminate):
            host.stop()
        out.close()
        conn.close()


def _serve(conn: Connection, host: EngineHost, out: _Outbox) -> None:
    """Read requests until told to stop or the pipe closes; run each on the engine loop.

    A request is (kind, id, payload): the payload is decoded here, so one that cannot be (a
    function the engine process cannot import) is answered with an error, not a crash.
    """
    while True:
        try:
            kind, rid, payload = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            log.warning("the screen's end of the pipe closed: stopping the engine")
            return
        if kind == "stop":
            return
        try:
            body = pickle.loads(payload)
            if kind == "call":
                fut = host.submit(body)
            elif kind == "host" and body[0] in HOST_METHODS:
                method, args = getattr(host, body[0]), body[1]
                fut = host.submit(lambda _e, m=method, a=args: m(*a))
            else:
                raise EngineHostError(f"unknown request {kind!r}")
        except Exception as e:
            out.put(("error", rid, EngineHostError(f"the engine could not take the request: {e}")))
            continue
        fut.add_done_callback(lambda f, rid=rid: out.put(_reply(rid, f)))


def _reply(rid: int, fut: concurrent.futures.Future[Any]) -> tuple[Any, ...]:
    if fut.cancelled():
        return ("error", rid, EngineHostError("the request was cancelled (the engine stopped)"))
    e = fut.exception()
    if e is not None:
        return ("error", rid, e)
    return ("result", rid, fut.result())


def _read_spec(conn: Connection) -> tuple[list[str], ChildSpec]:
    paths, spec = pickle.loads(conn.recv_bytes())
    return paths, spec


def main(argv: list[str] | None = None) -> None:
    """`python -m tui.engine_process FD`: FD is the child's end of the screen's socket pair."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not args[0].isdigit():
        sys.exit("usage: python -m tui.engine_process FD (started by the screen, not by hand)")
    child_main(Connection(int(args[0])))


# ---------------------------------------------------------------------- the screen's side


class ProcessEngineHost:
    """The engine in a child process; the interface of `EngineHost` for the screen.

    `call(fn)` and `submit(fn)` pickle `fn`: pass a module-level function or a
    `functools.partial` of one, not a lambda or closure.
    """

    def __init__(
        self,
        config: Config,
        config_path: Path | None,
        *,
        clock: Clock | None = None,
        drive: bool = True,
        db_path: Path | None = None,
        auto_publish: bool = True,
        log_path: Path | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.clock = clock  # a ManualClock here is kept in step with the child's by advance()
        self.drive = drive
        self.db_path = db_path
        self.auto_publish = auto_publish
        self.log_path = log_path
        self.on_snapshot: Callable[[Snapshot], Any] = lambda _s: None
        self.on_stopped: Callable[[BaseException | None], Any] = lambda _e: None
        self.stopped = threading.Event()
        self.process: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._reader: threading.Thread | None = None
        self._inbox: _InOrder | None = None
        self._send_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._pending: dict[int, concurrent.futures.Future[Any]] = {}
        self._pending_lock = threading.Lock()
        self._stop_requested = False
        self._announced_stop = False

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 60.0) -> None:
        """Start the engine process and wait until its journal is open and the engine started.

        Raises `EngineHostError` with the engine's own message (a locked journal, a bad
        database) before any screen is drawn.
        """
        ours, theirs = socket.socketpair()
        spec = ChildSpec(
            self.config,
            self.config_path,
            self.clock,
            self.drive,
            self.db_path,
            self.auto_publish,
            self.log_path,
        )
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(PROJECT_ROOT), *filter(None, [env.get("PYTHONPATH")])]
        )
        stderr: Any = None  # tests: pytest captures it
        if self.log_path is not None:  # the screen owns the terminal: crashes go to the log
            stderr = private_files.open_append(self.log_path, binary=True)  # closed below
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tui.engine_process", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=stderr if stderr is not None else subprocess.DEVNULL,
                stderr=stderr,
                env=env,
                close_fds=True,
            )
        finally:
            theirs.close()
            if stderr is not None:
                stderr.close()
        self.process = proc
        conn = self._conn = Connection(ours.detach())
        try:
            # The child's sys.path first (functions from tests and benchmarks), then the spec.
            conn.send_bytes(pickle.dumps((list(sys.path), spec), protocol=wire.PROTOCOL))
            if not conn.poll(timeout):
                raise EngineHostError(f"the engine did not start within {timeout:.0f} s")
            first = wire.loads(conn.recv_bytes())
        except (EOFError, OSError) as e:
            code = self._wait(5)
            self.stopped.set()
            raise EngineHostError(
                f"the engine process ended during start-up (exit code {code}); "
                "see the log in the data directory"
            ) from e
        except BaseException:
            self._kill()
            self.stopped.set()
            raise
        if first[0] == "start_error":
            self._wait(STOP_TIMEOUT_SECONDS)
            self.stopped.set()
            raise EngineHostError(first[1])
        self._inbox = _InOrder(self._deliver, "engine-delivery")
        self._reader = threading.Thread(target=self._read, name="engine-reader", daemon=True)
        self._reader.start()

    def _wait(self, timeout: float) -> int | None:
        proc = self.process
        if proc is None:
            return None
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
        return proc.returncode

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        """Ask the engine to stop (it flushes and closes the journal) and wait for the process."""
        proc = self.process
        if proc is None:
            return
        self._stop_requested = True
        with contextlib.suppress(EngineHostError):
            # Also after the engine stopped itself (it said "stopped"): its process still
            # serves the pipe and waits for this.
            self._send("stop", force=True)
        if self._wait(timeout) is None:
            log.error("the engine process did not stop within %.0f s; terminating it", timeout)
            self._kill()
        if self._reader is not None:
            self._reader.join(5)
        if self._inbox is not None:
            self._inbox.close()
        if self._conn is not None:
            self._conn.close()
        self.stopped.set()

    def _kill(self) -> None:
        proc = self.process
        if proc is None:
            return
        proc.terminate()  # SIGTERM: the child still closes the journal
        if self._wait(5) is None:
            proc.kill()
            self._wait(5)

    @property
    def running(self) -> bool:
        proc = self.process
        return proc is not None and proc.poll() is None and not self.stopped.is_set()

    # ------------------------------------------------------------------ calls

    def _send(self, kind: str, rid: int = 0, body: Any = None, force: bool = False) -> None:
        conn = self._conn
        if conn is None or (self.stopped.is_set() and not force):
            raise EngineHostError("the engine is not running")
        try:
            payload = pickle.dumps(body, protocol=wire.PROTOCOL)
        except (pickle.PicklingError, AttributeError, TypeError) as e:
            raise EngineHostError(
                f"cannot send this {kind} to the engine process (it must be picklable: a "
                f"module-level function or a functools.partial of one): {e}"
            ) from e
        data = pickle.dumps((kind, rid, payload), protocol=wire.PROTOCOL)
        try:
            with self._send_lock:
                conn.send_bytes(data)
        except (OSError, ValueError) as e:
            raise EngineHostError(f"the engine is not running ({e})") from e

    def _request(self, kind: str, body: Any) -> concurrent.futures.Future[Any]:
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        rid = next(self._ids)
        with self._pending_lock:
            self._pending[rid] = fut
        try:
            self._send(kind, rid, body)
        except BaseException:
            with self._pending_lock:
                self._pending.pop(rid, None)
            raise
        return fut

    def submit(self, fn: Callable[[Engine], Awaitable[T]]) -> concurrent.futures.Future[T]:
        """Run `fn(engine)` on the engine loop in the child; `fn` must be picklable."""
        return self._request("call", fn)

    async def call(self, fn: Callable[[Engine], Awaitable[T]]) -> T:
        return await asyncio.wrap_future(self.submit(fn))

    async def _host(self, name: str, *args: Any) -> Any:
        return await asyncio.wrap_future(self._request("host", (name, args)))

    async def command(self, cmd: Command) -> CommandResult:
        try:
            result: CommandResult = await self._host("command", cmd)
        except EngineHostError as e:
            return CommandResult(False, f"not sent: {e}")
        return result

    async def trade_detail(self, trade_id: str) -> TradeDetail | None:
        detail: TradeDetail | None = await self._host("trade_detail", trade_id)
        return detail

    async def sync(self, force: bool = False) -> None:
        await self._host("sync", force)

    async def advance(self, seconds: float, step: float = 1.0) -> None:
        if not isinstance(self.clock, ManualClock):
            raise EngineHostError("advance() needs a host built with a ManualClock")
        await self._host("advance", seconds, step)
        self.clock.advance(seconds)

    # ------------------------------------------------------------------ the reader thread

    def _read(self) -> None:
        """Read messages as fast as they come and queue them for delivery. Decoding a big
        snapshot here would leave the engine's sender thread writing it in many small pieces,
        each taking the engine process's GIL: the pipe is always drained at once instead."""
        conn = self._conn
        assert conn is not None
        try:
            while True:
                self._inbox.put(wire.loads(conn.recv_bytes()))
        except (EOFError, OSError):
            self._inbox.put(("eof", None))
        except Exception as e:  # a message that does not decode: the pipe cannot be trusted
            log.exception("reading from the engine process failed")
            self._inbox.put(
                ("eof", EngineHostError(f"the engine's messages could not be read: {e!r}"))
            )

    def _deliver(self, msg: tuple[Any, ...]) -> bool:
        """The delivery thread: in order, so a snapshot reaches the screen before the reply of
        the call that published it."""
        kind = msg[0]
        try:
            if kind == "snap":
                self.on_snapshot(wire.decode_snapshot(msg[1]))
            elif kind in ("result", "error"):
                with self._pending_lock:
                    fut = self._pending.pop(msg[1], None)
                if fut is not None and not fut.done():
                    if kind == "result":
                        fut.set_result(msg[2])
                    else:
                        fut.set_exception(msg[2])
            elif kind == "stopped":
                self._finish(None if msg[1] is None else EngineHostError(msg[1]))
            elif kind == "eof":
                error = msg[1]
                if not self._announced_stop and not self._stop_requested and error is None:
                    code = self._wait(1)
                    error = EngineHostError(
                        f"the engine process ended unexpectedly (exit code {code}); "
                        "see the log in the data directory"
                    )
                self._finish(error)
                return False
        except Exception as e:
            log.exception("delivering a message from the engine process failed")
            self._finish(EngineHostError(f"the engine's messages could not be read: {e!r}"))
            return False
        return True

    def _finish(self, error: BaseException | None) -> None:
        self.stopped.set()
        with self._pending_lock:
            pending = list(self._pending.values())
            self._pending.clear()
        for fut in pending:
            if not fut.done():
                fut.set_exception(EngineHostError("the engine is not running"))
        if not self._announced_stop:
            self._announced_stop = True
            try:
                self.on_stopped(error)
            except Exception:
                log.exception("on_stopped failed")


if __name__ == "__main__":
    # Run from the imported module, not this `__main__` copy, so that the classes the screen
    # pickles (tui.engine_process.ChildSpec) are the ones in use.
    from tui.engine_process import main as _main

    _main()
