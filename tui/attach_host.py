"""The screen attached to a running engine over its control socket (engine/control.py).

`SocketEngineHost` has the `tui.host.Host` interface the screen uses, like `EngineHost` (a
thread) and `ProcessEngineHost` (a child process), but the engine is not the screen's: it runs
as a service (`trade-supervisor start`, `--headless`), and several screens may attach to it.

- `start()` connects and handshakes (subscribed to snapshots); a refusal or no engine raises
  `EngineHostError` before any screen is drawn.
- A reader thread drains the socket as fast as frames come; a delivery thread hands them on in
  order (a snapshot before the reply of the command that produced it), decoding only the newest
  of several waiting snapshots.
- `command`, `trade_detail`, `sync` and `call(metrics_for)` are requests with ids, awaited
  from the screen's loop. `advance` (tests with a manual clock) and arbitrary `call`s are not
  available: nothing but data crosses this socket.
- `stop()` detaches: the engine keeps protecting. `stop_engine()` asks the engine to stop.
- The engine stopping (its `stopping` message) or the connection breaking calls `on_stopped`
  with the reason, as a child engine's death does: the header turns red.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from engine import control
from engine.commands import Command, CommandResult
from engine.config import Config
from engine.snapshot import Snapshot, TradeDetail
from tui.engine_process import _InOrder
from tui.host import EngineHostError

log = logging.getLogger(__name__)

T = TypeVar("T")


class SocketEngineHost:
    """A running engine reached through its control socket."""

    def __init__(
        self, config: Config, path: Path | None = None, *, read_only: bool = False
    ) -> None:
        self.config = config
        self.path = path or control.socket_path(config)
        self.read_only = read_only
        self.on_snapshot: Callable[[Snapshot], Any] = lambda _s: None
        self.on_stopped: Callable[[BaseException | None], Any] = lambda _e: None
        self.stopped = threading.Event()
        self.welcome: control.Welcome | None = None
        self._client: control.ControlClient | None = None
        self._send_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._pending: dict[int, concurrent.futures.Future[Any]] = {}
        self._pending_lock = threading.Lock()
        self._inbox: _InOrder | None = None
        self._reader: threading.Thread | None = None
        self._detaching = False
        self._announced = False

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 30.0) -> None:
        try:
            client = control.ControlClient(
                self.path,
                timeout=timeout,
                client="screen" + (" (read-only)" if self.read_only else ""),
                read_only=self.read_only,
                subscribe=True,
            )
        except control.ControlError as e:
            self.stopped.set()
            raise EngineHostError(str(e)) from e
        client.sock.settimeout(None)  # from now on the reader thread waits as long as it takes
        self._client = client
        self.welcome = client.welcome
        self._inbox = _InOrder(self._deliver, "attach-delivery")
        self._reader = threading.Thread(target=self._read, name="attach-reader", daemon=True)
        self._reader.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Detach: close this connection; the engine keeps running."""
        self._detaching = True
        client = self._client
        if client is not None:
            client.close()
        if self._reader is not None:
            self._reader.join(timeout)
        if self._inbox is not None:
            self._inbox.close()
        self.stopped.set()

    async def stop_engine(self) -> CommandResult:
        """Ask the engine itself to stop (it flushes and closes its journal)."""
        reply = await self._request(control.StopRequest)
        if isinstance(reply, control.Error):
            return CommandResult(False, reply.message)
        return CommandResult(reply.ok, reply.message)

    @property
    def running(self) -> bool:
        return self._client is not None and not self.stopped.is_set()

    # ------------------------------------------------------------------ requests

    def _submit(self, make: Callable[[int], Any]) -> concurrent.futures.Future[Any]:
        client = self._client
        if client is None or self.stopped.is_set():
            raise EngineHostError("not attached to an engine")
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        rid = next(self._ids)
        with self._pending_lock:
            self._pending[rid] = fut
        try:
            with self._send_lock:
                client.sock.sendall(control.frame(make(rid)))
        except OSError as e:
            with self._pending_lock:
                self._pending.pop(rid, None)
            raise EngineHostError(f"the engine is not reachable ({e})") from e
        return fut

    async def _request(self, make: Callable[[int], Any]) -> Any:
        return await asyncio.wrap_future(self._submit(make))

    async def command(self, cmd: Command) -> CommandResult:
        try:
            reply = await self._request(
                lambda i: control.CommandRequest(i, cmd.action, cmd.trade_id, dict(cmd.payload))  # type: ignore[arg-type]
            )
        except EngineHostError as e:
            return CommandResult(False, f"not sent: {e}")
        if isinstance(reply, control.Error):
            return CommandResult(False, f"refused: {reply.message}")
        return CommandResult(reply.ok, reply.message)

    async def trade_detail(self, trade_id: str) -> TradeDetail | None:
        reply = await self._request(lambda i: control.DetailRequest(i, trade_id))
        if isinstance(reply, control.Error):
            raise EngineHostError(reply.message)
        detail: TradeDetail | None = control.detail_from_json(reply.detail)
        return detail

    async def sync(self, force: bool = False) -> None:
        """The engine's current picture, delivered before this returns."""
        await self._request(control.SnapshotRequest)

    async def call(self, fn: Callable[..., Awaitable[T]]) -> T:
        from engine.analytics import metrics_for

        if fn is metrics_for:
            reply = await self._request(control.MetricsRequest)
            if isinstance(reply, control.Error):
                raise EngineHostError(reply.message)
            result: T = reply.metrics
            return result
        raise EngineHostError(
            f"{getattr(fn, '__name__', fn)!r} cannot run in an attached engine: only data "
            "crosses its control socket"
        )

    async def advance(self, seconds: float, step: float = 1.0) -> None:
        raise EngineHostError("advance() needs an engine of the test's own (a ManualClock)")

    # ------------------------------------------------------------------ the reader thread

    def _read(self) -> None:
        client = self._client
        assert client is not None and self._inbox is not None
        error: BaseException | None = None
        try:
            while True:
                msg = client.read()
                if isinstance(msg, control.SnapshotFrame):
                    self._inbox.put(("snap", msg))
                elif isinstance(msg, control.Stopping):
                    error = EngineHostError(f"the engine stopped: {msg.message}")
                    break
                else:
                    self._inbox.put(("reply", msg))
        except control.ControlError as e:
            if not self._detaching:
                error = EngineHostError(f"the connection to the engine was lost: {e}")
        self._inbox.put(("eof", error))

    def _deliver(self, item: tuple[Any, ...]) -> bool:
        kind, msg = item
        try:
            if kind == "snap":
                self.on_snapshot(control.snapshot_from_json(msg.snapshot))
            elif kind == "reply":
                with self._pending_lock:
                    fut = self._pending.pop(getattr(msg, "id", None) or -1, None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
            else:
                self._finish(msg)
                return False
        except Exception as e:
            log.exception("delivering a message from the engine failed")
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
                fut.set_exception(EngineHostError("not attached to an engine"))
        if self._detaching or self._announced:
            return
        self._announced = True
        with contextlib.suppress(Exception):
            self.on_stopped(error or EngineHostError("the engine closed the connection"))
