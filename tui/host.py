"""Hosts the engine on its own thread and event loop.

`run_app` runs this host inside a child process (`tui.engine_process`), so that the screen shares
neither the GIL nor the heap with the engine; with `[ui] engine = "thread"` it runs it in the
screen's own process. Either way, the thread that calls the host and the engine thread share
nothing but three narrow paths:

- snapshots: a publisher task on the engine loop takes `engine.snapshot_async()` at most every
  `refresh_seconds` (real time) and hands it to `on_snapshot`, which must not block — the app
  passes `App.post_message`, which is thread-safe and never waits for the UI (unlike
  `call_from_thread`, which would make the engine wait for a frame);
- commands and queries: `await host.command(cmd)` / `await host.call(fn)` from the UI loop run
  the coroutine on the engine loop (`run_coroutine_threadsafe`) and await its result;
- stop: `host.stop()` asks the engine to stop, waits for it to flush and close the journal.

Tests drive a host built with `drive=False` and a `ManualClock`: nothing runs on its own, and
`advance()` moves the clock, steps the simulated market and ticks the engine, deterministically.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from engine.clock import Clock, ManualClock
from engine.commands import Command, CommandResult
from engine.config import Config
from engine.runtime import Runtime, build_runtime
from engine.snapshot import Snapshot, TradeDetail
from engine.supervisor import Engine

log = logging.getLogger(__name__)

T = TypeVar("T")

STOP_TIMEOUT_SECONDS = 15.0


class EngineHostError(RuntimeError):
    """The engine could not start (its message says why and what to do)."""


class Host(Protocol):
    """What the screen needs from wherever the engine runs: `EngineHost` (a thread of this
    process) or `tui.engine_process.ProcessEngineHost` (a child process)."""

    config: Config
    stopped: threading.Event
    on_snapshot: Callable[[Snapshot], Any]
    on_stopped: Callable[[BaseException | None], Any]

    def start(self, timeout: float = ...) -> None: ...
    def stop(self, timeout: float = ...) -> None: ...
    @property
    def running(self) -> bool: ...
    async def call(self, fn: Callable[[Engine], Awaitable[T]]) -> T: ...
    async def command(self, cmd: Command) -> CommandResult: ...
    async def trade_detail(self, trade_id: str) -> TradeDetail | None: ...
    async def sync(self, force: bool = False) -> None: ...
    async def advance(self, seconds: float, step: float = 1.0) -> None: ...


class EngineHost:
    """The engine, its journal, venue and feeds on a background thread with its own loop."""

    def __init__(
        self,
        config: Config,
        config_path: Path | None,
        *,
        clock: Clock | None = None,
        drive: bool = True,
        db_path: Path | None = None,
        auto_publish: bool = True,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.clock = clock
        self.drive = drive
        self.db_path = db_path
        self.auto_publish = auto_publish
        self.on_snapshot: Callable[[Snapshot], Any] = lambda _s: None
        self.on_stopped: Callable[[BaseException | None], Any] = lambda _e: None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.runtime: Runtime | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._quit: asyncio.Event | None = None
        self._last_seq = -1
        self._last_sent_seq = -1
        # Set by the engine process: turns a snapshot into what `on_snapshot` gets (its wire
        # form), on the engine loop, letting reactions through as it goes.
        self.encode: Callable[[Snapshot], Awaitable[Any]] | None = None
        self.stopped = threading.Event()

    # ------------------------------------------------------------------ lifecycle (UI thread)

    @property
    def engine(self) -> Engine:
        assert self.runtime is not None, "the engine host is not started"
        return self.runtime.engine

    def start(self, timeout: float = 60.0) -> None:
        """Start the thread and wait until the journal is open and the engine has started.

        Raises `EngineHostError` (or the store's error) when it cannot start, before any
        screen is drawn, so the trader reads the reason in the plain terminal.
        """
        self._thread = threading.Thread(target=self._main, name="engine", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise EngineHostError(f"the engine did not start within {timeout:.0f} s")
        if self._start_error is not None:
            raise self._start_error

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        """Stop the engine (it flushes and closes the journal) and join its thread."""
        loop = self.loop
        if loop is not None and not loop.is_closed() and self._thread is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed
                loop.call_soon_threadsafe(self._request_stop)
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("the engine thread did not stop within %.0f s", timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self.stopped.is_set()

    # ------------------------------------------------------------------ calls (UI loop)

    def submit(self, fn: Callable[[Engine], Awaitable[T]]) -> concurrent.futures.Future[T]:
        """Schedule `fn(engine)` on the engine loop; returns a thread-safe future."""
        loop = self.loop
        if loop is None or loop.is_closed() or self.stopped.is_set():
            raise EngineHostError("the engine is not running")

        async def run() -> T:
            return await fn(self.engine)

        return asyncio.run_coroutine_threadsafe(run(), loop)

    async def call(self, fn: Callable[[Engine], Awaitable[T]]) -> T:
        """Run `fn(engine)` on the engine loop and await its result from another loop."""
        return await asyncio.wrap_future(self.submit(fn))

    async def command(self, cmd: Command) -> CommandResult:
        """Send a command through the engine's one command interface."""
        try:
            return await self.call(lambda e: e.command(cmd))
        except EngineHostError as e:
            return CommandResult(False, f"not sent: {e}")

    async def trade_detail(self, trade_id: str) -> TradeDetail | None:
        return await self.call(lambda e: e.trade_detail(trade_id))

    async def sync(self, force: bool = False) -> None:
        """Publish the engine's current picture now (tests; the app after a command)."""

        async def publish(_e: Engine) -> None:
            await self._publish(force)

        await self.call(publish)

    async def advance(self, seconds: float, step: float = 1.0) -> None:
        """Tests and benchmarks with a ManualClock: move time on, feeding the simulated market
        and ticking the engine every `step` seconds, then publish."""
        if not isinstance(self.clock, ManualClock):
            raise EngineHostError("advance() needs a host built with a ManualClock")
        clock = self.clock

        async def run(e: Engine) -> None:
            assert self.runtime is not None
            left = seconds
            while left > 1e-9:
                dt = min(step, left)
                clock.advance(dt)
                left -= dt
                now = clock.now()
                for feed in self.runtime.feeds:
                    market = getattr(feed, "market", None)
                    if market is not None:
                        for ev in market.advance_to(now):
                            await e.handle_safely(ev)
                await e.tick()
            await self._publish()

        await self.call(run)

    # ------------------------------------------------------------------ engine thread

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self.loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._amain())
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()
                self.stopped.set()

    async def _amain(self) -> None:
        self._quit = asyncio.Event()
        try:
            self.runtime = await build_runtime(
                self.config, self.config_path, clock=self.clock, db_path=self.db_path
            )
        except BaseException as e:
            self._start_error = e
            self._ready.set()
            return
        self._ready.set()
        rt = self.runtime
        publisher = asyncio.create_task(self._publisher()) if self.auto_publish else None
        error: BaseException | None = None
        try:
            if self.drive:
                run = asyncio.create_task(rt.engine.run(rt.feeds))
                quit_ = asyncio.create_task(self._quit.wait())
                await asyncio.wait([run, quit_], return_when=asyncio.FIRST_COMPLETED)
                rt.engine.stop()
                quit_.cancel()
                await run  # re-raises an engine failure
            else:
                quit_ = asyncio.create_task(self._quit.wait())
                stopping = asyncio.create_task(rt.engine.wait_stopping())
                await asyncio.wait([quit_, stopping], return_when=asyncio.FIRST_COMPLETED)
                for t in (quit_, stopping):
                    t.cancel()
                if rt.engine.fatal is not None:
                    raise rt.engine.fatal
        except BaseException as e:  # reported to the UI; the journal is still closed below
            log.exception("the engine stopped with an error")
            error = e
        finally:
            if publisher is not None:
                publisher.cancel()
            try:
                await rt.close()
            except Exception as e:
                log.exception("closing the journal failed")
                error = error or e
            self.stopped.set()
            try:
                self.on_stopped(error)
            except Exception:
                log.exception("on_stopped failed")

    def _request_stop(self) -> None:
        if self.runtime is not None:
            self.runtime.engine.stop()
        if self._quit is not None:
            self._quit.set()

    async def _publisher(self) -> None:
        period = self.config.ui.refresh_seconds
        while True:
            try:
                # Built in slices: a quote or an exit never waits for the whole picture.
                await self._send(await self.engine.snapshot_async())
            except Exception:
                log.exception("building the snapshot failed")
            await asyncio.sleep(period)  # real time: how fresh the screen is, not market time

    async def _publish(self, force: bool = False) -> None:
        # Rebuilt only when something changed; in slices, like the publisher's (a sync after
        # every command must not hold the loop for a whole picture either).
        await self._send(await self.engine.snapshot_async(), force)

    async def _send(self, snap: Snapshot, force: bool = False) -> None:
        if not force and snap.seq == self._last_seq:
            return
        self._last_seq = snap.seq
        payload: Any = snap if self.encode is None else await self.encode(snap)
        if snap.seq < self._last_sent_seq:
            return  # a newer picture went out while this one was encoded
        self._last_sent_seq = snap.seq
        self.on_snapshot(payload)
